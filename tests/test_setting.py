"""The named `standard` settings: their values, how a run departs from them, and the per-defense defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from cleanbench.config import RunConfig, from_dict
from cleanbench.errors import UsageError
from cleanbench.presets import preset_values, setting_record
from cleanbench.plan import Plan
from cleanbench.tuning import SHIPPED, record_path


def standard(**changes) -> RunConfig:
    values = preset_values("standard")
    values.update(changes)
    return from_dict(RunConfig, values)


def test_the_standard_setting_mirrors_the_paper_ratios():
    config = standard()
    assert config.setting == "standard"
    assert config.data.n_clean / config.data.n_pretrain == pytest.approx(0.03)
    steps = config.defense_defaults["cleanclip"]["epochs"] * (config.data.n_clean // 64)
    assert steps >= 150  # enough defense steps
    assert record_path(config.tuning) == SHIPPED / "standard.tuning.json"


def test_a_run_that_changes_a_setting_key_is_recorded_as_a_deviation_and_cell_keys_are_not():
    assert setting_record(standard()) == {"name": "standard", "deviations": []}
    assert setting_record(standard(attack="wanet", seed=3, poison_rate=0.05))["deviations"] == []
    changed = standard()
    changed.data.n_pretrain, changed.pretrain.epochs = 1000, 1
    assert setting_record(changed)["deviations"] == ["data.n_pretrain", "pretrain.epochs"]
    assert setting_record(RunConfig()) is None


def test_defense_defaults_of_the_setting_sit_under_explicit_options(tmp_path):
    values = dict(defense="finetune", defense_defaults={"finetune": {"epochs": 3, "batch_size": 64}},
                  results_dir=str(tmp_path))
    plan = Plan(from_dict(RunConfig, values))
    assert (plan.defense_options.epochs, plan.defense_options.batch_size) == (3, 64)
    plan = Plan(from_dict(RunConfig, {**values, "defense_options": {"epochs": 5}}))
    assert (plan.defense_options.epochs, plan.defense_options.batch_size) == (5, 64)
    with pytest.raises(UsageError, match="unknown key 'epoch'"):
        Plan(from_dict(RunConfig, {**values, "defense_defaults": {"finetune": {"epoch": 3}}}))


def test_the_setting_name_is_part_of_the_poisoned_model_key(tmp_path):
    named = Plan(from_dict(RunConfig, {"setting": "x", "results_dir": str(tmp_path)}))
    plain = Plan(from_dict(RunConfig, {"results_dir": str(tmp_path)}))
    assert named.poisoned_model_key() != plain.poisoned_model_key()


def test_a_plain_run_uses_the_standard_v2_setting_and_own_data_or_models_do_not():
    from cleanbench.cli import _default_preset

    plain = dict(config_file=None, data=None, eval_data=None, model=None, pretrained=None, threat=None)
    assert _default_preset(plain) == "standard-v2"
    for key, value in (("config_file", "c.yaml"), ("data", "train.csv"), ("model", "RN50")):
        assert _default_preset({**plain, key: value}) is None


def test_a_defense_without_a_strength_knob_never_reads_the_record(tmp_path):
    from cleanbench.tuning import apply_record

    assert apply_record(RunConfig(defense="none", tuning=str(tmp_path / "missing.json"))) is None


def test_the_leaderboard_labels_a_setting_by_its_name():
    from cleanbench.leaderboard.table import setting_of

    config = standard().to_dict()
    assert setting_of(config)[1].startswith("standard · cleanbench-tiny")
    assert setting_of({**config, "setting": None})[1].startswith("cleanbench-tiny")


def _published_grid_cell(grid_file: str):
    """A shipped grid file (results/) and the config of its badnet x cleanclip cell."""
    from cleanbench.config import merge
    from cleanbench.sweep.grid import load_grid

    grid = load_grid(Path(__file__).parent.parent / "results" / grid_file)
    return grid, from_dict(RunConfig, merge(grid.base, {"attack": "badnet", "defense": "cleanclip"}))


def test_standard_v2_changes_only_the_pretraining_schedule_and_the_tuning_record():
    old, new = preset_values("standard"), preset_values("standard-v2")
    assert (new["pretrain"]["epochs"], new["pretrain"]["lr"]) == (4, 4e-3)
    assert record_path(new["tuning"]) == SHIPPED / "standard-v2.tuning.json"
    changed = {key for key in old if old[key] != new[key]}
    assert changed == {"setting", "pretrain", "tuning"}
    assert {k for k in old["pretrain"] if old["pretrain"][k] != new["pretrain"][k]} == {"epochs", "lr"}


@pytest.mark.parametrize("grid_file", ["standard-sweep.yaml", "standard-methods.yaml", "standard-v2-sweep.yaml",
                                       "standard-v2-methods.yaml"])
def test_a_published_grid_runs_its_setting_as_published(grid_file):
    grid, config = _published_grid_cell(grid_file)
    assert setting_record(config) == {"name": grid.base["setting"], "deviations": []}
    assert config.tuning == grid.base["setting"]


@pytest.mark.parametrize("grid_file", ["standard-tradeoff.yaml", "standard-v2-tradeoff.yaml"])
def test_a_tradeoff_grid_runs_its_setting_with_every_lr_instead_of_the_tuned_one(grid_file):
    grid, config = _published_grid_cell(grid_file)
    assert setting_record(config) == {"name": grid.base["setting"], "deviations": ["tuning"]}
    assert {variant.options["lr"] for variant in grid.defenses if variant.name == "cleanclip"} == {5e-5, 1e-4, 2e-4, 5e-4}
