"""The same number on every run: a small cell, run twice from a cold cache, gives exactly the
metrics of the committed expected card (tests/expected/small-cell.json)."""

from __future__ import annotations

import json
from pathlib import Path

from cleanbench import environment
from cleanbench.config import RunConfig, from_dict, load_yaml
from cleanbench.runner import run_cell
from cleanbench.verify import differing_metrics, metrics_bytes

EXPECTED = Path(__file__).parent / "expected"


def test_small_cell_reproduces_the_expected_card_from_a_cold_cache(tmp_path):
    expected = json.loads((EXPECTED / "small-cell.json").read_text())
    values = load_yaml(EXPECTED / "small-cell.yaml")
    for attempt in ("first", "second"):
        config = from_dict(RunConfig, {**values, "results_dir": str(tmp_path / attempt / "results"),
                                       "cache_dir": str(tmp_path / attempt / "cache")})
        card, _ = run_cell(config, progress=False, log=lambda message: None)
        assert card["reused"] == []  # cold cache: everything was computed
        facts = environment.differences(environment.recorded(expected), card["environment"])
        assert metrics_bytes(card) == metrics_bytes(expected), (
            f"{attempt} run: {differing_metrics(expected, card)[:6]}; environment differences: {facts or 'none'}")


def test_verify_reports_a_match_and_names_what_differs(tmp_path, capsys):
    from cleanbench.cli import main

    expected = json.loads((EXPECTED / "small-cell.json").read_text())
    runs = tmp_path / "submitted" / "runs"
    runs.mkdir(parents=True)
    (runs / "same.json").write_text(json.dumps(expected))
    changed = json.loads(json.dumps(expected))
    changed["metrics"]["defended"]["asr"]["successes"] += 1
    changed["environment"]["torch"] = "1.0.0"
    (runs / "changed.json").write_text(json.dumps(changed))
    code = main(["verify", str(tmp_path / "submitted"), "--workers", "2"])
    out = capsys.readouterr().out
    assert code == 1 and "2 cards: 1 match, 1 differ, 0 failed" in out
    assert "MATCH   badnet x cleanclip p0.05 s0" in out
    differ = out[out.index("DIFFER"):]
    assert "defended.asr.successes" not in differ.splitlines()[1] or "other entries" in differ
    assert "environment: torch 1.0.0 (now" in differ
