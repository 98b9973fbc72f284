"""Numbers in docs come from cards: the committed tables equal what `cleanbench doc-tables` makes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cleanbench.doctables import DEFAULT_FILES, markdown_files, render
from cleanbench.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]


def test_committed_tables_match_their_run_cards(monkeypatch):
    monkeypatch.chdir(ROOT)
    files = markdown_files(DEFAULT_FILES)
    assert Path("README.md") in files
    stale = [str(p) for p in files if render(p.read_text(), str(p)) != p.read_text()]
    assert not stale, f"tables differ from their run cards in {stale}: run `cleanbench doc-tables`"


def test_a_table_is_filled_from_the_cards_and_a_marker_without_cards_is_an_error(tmp_path, monkeypatch):
    card = json.loads((ROOT / "tests" / "expected" / "small-cell.json").read_text())
    (tmp_path / "r" / "runs").mkdir(parents=True)
    (tmp_path / "r" / "runs" / "a.json").write_text(json.dumps(card))
    monkeypatch.chdir(tmp_path)
    text = ("<!-- cleanbench-table cards r where=config.attack=badnet columns=seed,defended_asr -->\n"
            "| stale |\n<!-- /cleanbench-table -->")
    asr = f"{100 * card['metrics']['defended']['asr']['value']:.1f}"
    assert render(text, "x.md") == text.replace("| stale |", f"| seed | defended ASR |\n| --- | --- |\n| 0 | {asr} |")
    with pytest.raises(UsageError, match="x.md: no run card in 'r' matches"):
        render(text.replace("attack=badnet", "attack=wanet"), "x.md")
    with pytest.raises(UsageError, match="unknown table column 'nope'"):
        render(text.replace("columns=seed,defended_asr", "columns=nope"), "x.md")
    schedule = render(text.replace("columns=seed,defended_asr", "columns=pretrain_epochs,pretrain_lr"), "x.md")
    pretrain = card["config"]["pretrain"]
    assert f"| pretraining epochs | pretraining lr |\n| --- | --- |\n| {pretrain['epochs']} | {pretrain['lr']:g} |" in schedule


def test_a_leaderboard_excerpt_keeps_the_named_attacks_and_defenses(tmp_path, monkeypatch):
    card = json.loads((ROOT / "tests" / "expected" / "small-cell.json").read_text())
    (tmp_path / "r" / "runs").mkdir(parents=True)
    (tmp_path / "r" / "runs" / "a.json").write_text(json.dumps(card))
    monkeypatch.chdir(tmp_path)
    attack, defense = card["config"]["attack"], card["config"]["defense"]
    text = f"<!-- cleanbench-table leaderboard r defenses={defense} -->\n| stale |\n<!-- /cleanbench-table -->"
    rows = [line for line in render(text, "x.md").splitlines() if line.startswith(f"| {attack} ")]
    assert rows and all(f" {defense} " in row for row in rows)
    with pytest.raises(UsageError, match="no leaderboard rows"):
        render(text.replace(f"defenses={defense}", "defenses=nosuch"), "x.md")
    with pytest.raises(UsageError, match="no leaderboard rows"):
        render(text.replace(f"defenses={defense}", "attacks=nosuch"), "x.md")
