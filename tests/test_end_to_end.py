"""End to end on small configurations: a run card with everything, and (slow) the backdoor implants
and CleanCLIP lowers it."""

import json

import pytest

from cleanbench.config import DataConfig, RunConfig
from cleanbench.runner import run_cell
from cleanbench.trainer import TrainConfig


def test_tiny_run_writes_a_complete_card(tiny):
    card, path = run_cell(tiny(), progress=False, log=lambda _: None)
    saved = json.loads(path.read_text())
    assert saved["status"] == "ok" and saved["schema_version"] == 1
    for key in ("config", "seed", "poison", "metrics", "costs", "versions", "device", "git_commit", "artifacts"):
        assert key in saved
    poison = saved["poison"]
    assert poison["count"] == len(poison["indices"]) == round(0.05 * 256)
    for stage in ("poisoned", "defended"):
        for metric in ("ca_top1", "ca_top5", "asr", "ra"):
            m = saved["metrics"][stage][metric]
            assert 0 <= m["low"] <= m["value"] <= m["high"] <= 1
    star = saved["poison"]["target_index"]
    assert saved["metrics"]["poisoned"]["asr"]["total"] < 100  # target-class test images excluded
    assert star == 3
    for stage in ("data", "poison", "pretrain", "eval", "defense", "total"):
        assert saved["costs"][f"{stage}_seconds"] >= 0


def test_none_attack_is_a_clean_control(tiny):
    card, _ = run_cell(tiny(attack="none", defense="none", defense_options={}), progress=False, log=lambda _: None)
    assert card["poison"]["count"] == 0 and card["poison"]["indices"] == []
    assert card["metrics"]["change"]["ca_top1"] == 0.0


@pytest.mark.slow
def test_default_trigger_implants_and_cleanclip_lowers_asr(tmp_path):
    """A small version of the default cell (about 90 s on 2 idle cores), fixed seed.

    Measured (seed 0): poisoned CA 70.8 % / ASR 97.1 %, after CleanCLIP CA 68.6 % / ASR 38.5 %.
    """
    config = RunConfig(
        data=DataConfig(n_pretrain=4000, n_clean=1000, n_test=500),
        pretrain=TrainConfig(epochs=10, batch_size=128, warmup_steps=25),
        defense_options={"epochs": 10},
        poison_rate=0.05,
        seed=0,
        results_dir=str(tmp_path / "results"),
        cache_dir=str(tmp_path / "cache"),
    )
    card, _ = run_cell(config, progress=False, log=lambda _: None)
    before, after = card["metrics"]["poisoned"], card["metrics"]["defended"]
    assert before["ca_top1"]["value"] > 0.5
    assert before["asr"]["value"] > 0.8
    assert after["asr"]["value"] < before["asr"]["value"] - 0.1
