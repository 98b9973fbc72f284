"""The tuning protocol: the choice rule, the record, and a run that uses it."""

from __future__ import annotations

import json

import pytest
import yaml

from cleanbench.cli import main
from cleanbench.config import RunConfig
from cleanbench.errors import UsageError
from cleanbench.registry import DEFENSES
from cleanbench.tuning import RULE, apply_record, choose, defense_record, merge_records, record, tuning_runs, write_record


def test_the_strongest_value_within_the_budget_is_chosen():
    grid = [1e-5, 1e-4, 1e-3, 1e-2]
    assert choose(grid, [0.1, 1.5, 2.0, 9.0], 2.0) == (1e-3, True)
    assert choose(grid, [0.1, 2.5, 1.0, 9.0], 2.0) == (1e-3, True)  # the strongest within, not the first break
    assert choose(grid, [3.0, 4.0, 5.0, 9.0], 2.0) == (1e-5, False)  # none within: the weakest, flagged


def card(before: float, after: float, key: str = "k") -> dict:
    return {"cell_key": key, "metrics": {"validation": {"poisoned": {"ca_top1": {"value": before}},
                                                        "defended": {"ca_top1": {"value": after}}}}}


def test_a_drop_of_exactly_the_budget_is_within_it():
    exact = {"cell_key": "k", "metrics": {"validation": {
        "poisoned": {"ca_top1": {"successes": 900, "total": 1000, "value": 900 / 1000}},
        "defended": {"ca_top1": {"successes": 880, "total": 1000, "value": 880 / 1000}}}}}
    assert 100 * (900 / 1000 - 880 / 1000) > 2.0  # in floats the drop would miss the budget
    assert defense_record("lr", [1e-4], [[exact]], 2.0)["within_budget"]


def test_drops_are_averaged_over_seeds_and_a_card_without_validation_is_refused():
    entry = defense_record("lr", [1e-4, 1e-3], [[card(0.9, 0.89), card(0.9, 0.87)], [card(0.9, 0.8), card(0.9, 0.9)]], 2.0)
    assert entry["validation_ca_drop_points"] == [2.0, 5.0] and entry["chosen"] == 1e-4
    with pytest.raises(UsageError, match="needs a validation split"):
        defense_record("lr", [1e-4], [[{"cell_key": "k", "metrics": {}}]], 2.0)


def test_finetuning_defenses_declare_their_lr_as_the_strength_knob():
    for name in ("finetune", "unimodal", "cleanclip"):
        strength = DEFENSES.get(name).strength
        assert strength.knob == "lr" and list(strength.grid) == sorted(strength.grid)
    assert DEFENSES.get("none").strength is None


def test_tuning_runs_are_clean_controls_of_the_defense(tmp_path):
    base = RunConfig(attack="badnet", poison_rate=0.05, defense="cleanclip", defense_options={"epochs": 2})
    runs = tuning_runs(base, "cleanclip", "lr", [1e-4, 1e-3], [0, 1])
    assert [(r.attack, r.poison_rate, r.defense_options["lr"], r.seed) for r in runs] == [
        ("none", None, 1e-4, 0), ("none", None, 1e-4, 1), ("none", None, 1e-3, 0), ("none", None, 1e-3, 1)]
    assert all(r.defense_options["epochs"] == 2 for r in runs)


def test_a_record_sets_the_option_and_refuses_a_contradicting_one(tmp_path):
    entry = defense_record("lr", [1e-4, 1e-3], [[card(0.9, 0.9)], [card(0.9, 0.85)]], 2.0)
    path = write_record(tmp_path / "t.json", record("standard", [0], 2.0, {"finetune": entry}))
    config = RunConfig(defense="finetune", tuning=str(path))
    applied = apply_record(config)
    assert config.defense_options["lr"] == 1e-4 and applied["rule"] == RULE and applied["chosen"] == 1e-4
    assert apply_record(RunConfig(defense="cleanclip", tuning=str(path))) is None  # not in the record
    with pytest.raises(UsageError, match="contradicts the tuning record"):
        apply_record(RunConfig(defense="finetune", defense_options={"lr": 5e-4}, tuning=str(path)))
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(UsageError, match="is not a tuning record"):
        apply_record(RunConfig(defense="finetune", tuning=str(tmp_path / "bad.json")))


def test_tune_then_run_records_the_choice_in_the_card(tmp_path, capsys):
    values = {"data": {"n_pretrain": 256, "n_clean": 64, "n_test": 64, "n_validation": 64},
              "pretrain": {"epochs": 1, "batch_size": 64, "warmup_steps": 1},
              "defense_options": {"epochs": 1, "batch_size": 32}, "defense": "finetune",
              "cache_dir": str(tmp_path / "cache")}
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(values))
    out = tmp_path / "tuned.json"
    assert main(["tune", "--config", str(config), "--defense", "finetune", "--grid", "1e-6,1e-1", "--budget", "100",
                 "--results-dir", str(tmp_path / "tuning"), "--output", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "finetune: lr=0.1 (within 100 points)" in printed
    tuned = json.loads(out.read_text())
    assert tuned["defenses"]["finetune"]["chosen"] == 0.1 and tuned["rule"] == RULE
    assert len(list((tmp_path / "tuning" / "runs").glob("none__finetune__*.json"))) == 2
    assert main(["run", "--config", str(config), "--attack", "badnet", "--poison-rate", "0.05", "--tuning", str(out),
                 "--results-dir", str(tmp_path / "results"), "--quiet"]) == 0
    [path] = (tmp_path / "results" / "runs").glob("badnet__finetune__*.json")
    run = json.loads(path.read_text())
    assert run["config"]["defense_options"]["lr"] == 0.1 and run["defense"]["tuning"]["chosen"] == 0.1
    assert run["metrics"]["validation"]["defended"]["ca_top1"]["value"] >= 0


def test_update_adds_an_entry_and_refuses_another_protocol_before_any_run(tmp_path, capsys):
    entry = defense_record("lr", [1e-4], [[card(0.9, 0.9)]], 2.0)
    path = write_record(tmp_path / "t.json", record("tiny", [0], 2.0, {"finetune": entry}))
    other = defense_record("tau", [1.0, 2.0], [[card(0.9, 0.9)], [card(0.9, 0.8)]], 2.0)
    merged = merge_records(json.loads(path.read_text()), record("tiny", [0], 2.0, {"par": other}))
    assert merged["defenses"] == {"finetune": entry, "par": other} and merged["rule"] == RULE
    with pytest.raises(UsageError, match="has seeds \\[0\\], this tuning \\[0, 1\\]"):
        merge_records(merged, record("tiny", [0, 1], 2.0, {}))
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({"cache_dir": str(tmp_path / "cache")}))
    assert main(["tune", "--config", str(config), "--defense", "finetune", "--budget", "3", "--output", str(path),
                 "--update", "--results-dir", str(tmp_path / "tuning"), "--quiet"]) == 2
    assert "has budget_points 2.0, this tuning 3.0" in capsys.readouterr().err
    assert not (tmp_path / "tuning").exists()  # refused before any run
