"""The RunCard type: the published cards read back unchanged, and a card written is the card read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cleanbench.runcard import CardInvalid, RunCard, finished_card, read_card, write_card

RESULTS = Path(__file__).parent.parent / "results"


def test_every_published_card_reads_back_to_the_same_json():
    paths = sorted(RESULTS.glob("**/runs/*.json"))
    assert paths, "the repository publishes run cards under results/"
    for path in paths:
        card = read_card(path)
        assert card.to_dict() == json.loads(path.read_text()), path
        assert card.ok and card.metric("defended", "ca_top1") == card.metrics["defended"]["ca_top1"]["value"]


def test_a_written_card_reads_back_equal_and_unknown_keys_survive(tmp_path):
    published = read_card(sorted(RESULTS.glob("**/runs/*.json"))[0])
    values = {**published.to_dict(), "annotation": {"kept": True}}
    card = RunCard.from_dict(values)
    assert card.extra == {"annotation": {"kept": True}}
    path = write_card(tmp_path / "runs" / "cell.json", card)
    assert read_card(path) == card and json.loads(path.read_text()) == values
    assert finished_card(path, card.cell_key) == card and finished_card(path, "another cell") is None


def test_a_running_card_is_refused_and_a_failed_one_must_say_why(tmp_path):
    card = read_card(sorted(RESULTS.glob("**/runs/*.json"))[0])
    with pytest.raises(CardInvalid, match="status"):
        RunCard.from_dict({**card.to_dict(), "status": "running"})
    with pytest.raises(CardInvalid, match="error"):
        RunCard.from_dict({**card.to_dict(), "status": "failed"})


def test_number_lists_are_written_on_one_line_and_read_back_unchanged(tmp_path):
    from cleanbench.fileio import json_text, write_json_atomic

    value = {"poison": {"indices": list(range(0, 4000, 5)), "ranks": [3, -1, 2.5e-07], "names": ["a", "b"]},
             "nested": [[1, 2], [3]], "empty": []}
    path = write_json_atomic(tmp_path / "card.json", value)
    text = path.read_text()
    assert json.loads(text) == value and text == json_text(value)
    assert '"indices": [0, 5, 10,' in text and '"ranks": [3, -1, 2.5e-07]' in text
    assert '"names": [\n' in text  # lists of strings keep one item per line
    assert len(text.splitlines()) < 20
