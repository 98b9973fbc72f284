"""`cleanbench detect` end to end on a tiny configuration: the run's poisoned model, cards, table, errors."""

import json

import pytest
import yaml

from cleanbench.cli import main
from cleanbench.detection import DetectionPlan, resolve_detectors
from cleanbench.plan import Plan
from cleanbench.runner import run_cell

TINY = {"data": {"n_pretrain": 256, "n_clean": 128, "n_test": 100},
        "pretrain": {"epochs": 1, "batch_size": 64, "warmup_steps": 1}, "poison_rate": 0.05}


@pytest.fixture
def tiny_yaml(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY | {"results_dir": str(tmp_path / "results")}))
    return path


def _run(capsys, *args):
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_detect_writes_cards_and_shares_the_runs_poisoned_model(capsys, tmp_path, tiny_yaml, tiny):
    code, out, err = _run(capsys, "detect", "--config", str(tiny_yaml), "--seed", "0", "--seed", "1", "--quiet")
    assert code == 0, err
    assert "trained the poisoned model" in err
    cards = [json.loads(p.read_text()) for p in sorted((tmp_path / "results" / "detections").glob("*.json"))]
    assert sorted((c["detector"]["name"], c["seed"]) for c in cards) == sorted(
        (name, seed) for name in ("cosine", "dao", "k-distance", "slof") for seed in (0, 1))
    for card in cards:
        assert card["status"] == "ok" and card["kind"] == "detection"
        assert card["poison"]["count"] == 13 and card["scored_pairs"] == 256
        assert card["metrics"]["positives"] == 13 and card["metrics"]["negatives"] == 243
        assert all(0.0 <= card["metrics"][m] <= 1.0 for m in ("auroc", "auprc", "tpr_at_1pct_fpr"))
    assert "AUROC" in out and "mean [95 % interval] over seeds" in out and "0,1" in out

    # the cell's run finds the poisoned model that detect trained: same key, reused
    config = tiny(seed=0, defense="none", defense_options={})
    card, _ = run_cell(config, progress=False, log=lambda message: None)
    seed0 = next(c for c in cards if c["seed"] == 0)
    assert card["artifacts"]["poisoned_model"] == seed0["artifacts"]["poisoned_model"]
    assert card["artifacts"]["poisoned_model_reused"] is True

    # a second detection reuses the model, and the pooled table reads the cards back
    code, out, err = _run(capsys, "detect", "--config", str(tiny_yaml), "--detector", "slof", "--quiet")
    assert code == 0 and "reused cached poisoned model" in err
    code, out, err = _run(capsys, "detections", str(tmp_path / "results"))
    assert code == 0 and out.count("badnet") == 4 and "[" in out


def test_detection_key_is_the_runs_poisoned_model_key(tiny):
    config = tiny(defense="cleanclip")
    plan = DetectionPlan(config, resolve_detectors(["slof"]))
    assert plan.cell.poisoned_model_key() == Plan(config).poisoned_model_key()
    other = DetectionPlan(config, resolve_detectors(["slof"], {"slof": {"k": 8}}))
    assert other.card_key(other.detectors[0]) != plan.card_key(plan.detectors[0])
    assert other.card_path(other.detectors[0]) != plan.card_path(plan.detectors[0])


@pytest.mark.parametrize("args, message", [
    (["--detector", "slfo"], "did you mean 'slof'"),
    (["--attack", "none"], "nothing to detect"),
    (["--detector", "dao", "--detector-opt", "form=exp"], "form 'exp' is not one of power, log-mean"),
    (["--detector-opt", "k=3"], "say which detector it is for"),
    (["--detector", "slof", "--detector-opt", "dao.k=3"], "options given for detector 'dao'"),
    (["--detector-opt", "slof.kk=3"], "unknown key 'kk'"),
    (["--poison-rate", "2"], "outside (0, 1]"),
])
def test_bad_input_is_one_line_and_nothing_starts(capsys, tmp_path, tiny_yaml, args, message):
    code, _, err = _run(capsys, "detect", "--config", str(tiny_yaml), *args)
    assert code == 2 and message in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "results").exists()


BROKEN = '''
import numpy as np
from dataclasses import dataclass
from cleanbench.detectors import Detector
from cleanbench.registry import register_detector

@dataclass
class Options:
    pass

@register_detector
class Broken(Detector):
    name = "broken"
    description = "raises"
    source = "test"
    Options = Options

    def score(self, context):
        raise RuntimeError("boom")
'''


def test_a_failing_detector_keeps_the_others_cards(capsys, tmp_path, tiny_yaml):
    plugin = tmp_path / "broken.py"
    plugin.write_text(BROKEN)
    code, _, err = _run(capsys, "detect", "--config", str(tiny_yaml), "--plugin", str(plugin),
                        "--detector", "broken", "--detector", "k-distance", "--quiet")
    assert code == 1 and "detector 'broken' raised RuntimeError: boom" in err.strip().splitlines()[-1]
    cards = {p.name.split("__")[1]: json.loads(p.read_text()) for p in (tmp_path / "results" / "detections").iterdir()}
    assert cards["broken"]["status"] == "failed" and "boom" in cards["broken"]["error"]
    assert cards["k-distance"]["status"] == "ok"


def test_list_shows_detectors(capsys):
    code, out, _ = _run(capsys, "list", "detectors")
    assert code == 0 and all(name in out for name in ("k-distance", "slof", "dao", "cosine"))


@pytest.mark.parametrize("name", ["slof", "cosine"])
def test_check_plugin_passes_builtin_detectors(capsys, name):
    code, out, err = _run(capsys, "check-plugin", name, "--kind", "detector")
    assert code == 0, err
    assert all(f"ok    {check}" in out for check in ("loads", "scores", "read-only", "deterministic"))
    assert out.strip().endswith(f"PASS {name}")


UNSEEDED = '''
from dataclasses import dataclass
import numpy as np
from cleanbench.detectors import Detector
from cleanbench.registry import register_detector

@dataclass
class Options:
    pass

@register_detector
class Unseeded(Detector):
    name = "unseeded"
    description = "draws from the global generator"
    source = "test"
    Options = Options

    def score(self, context):
        return np.random.random(len(context.pairs))

@register_detector
class Trains(Detector):
    name = "trains"
    description = "changes the model"
    source = "test"
    Options = Options

    def score(self, context):
        for parameter in context.bundle.model.parameters():
            parameter.data.add_(1.0)
        return np.zeros(len(context.pairs))
'''


@pytest.mark.parametrize("name, check", [("unseeded", "deterministic"), ("trains", "read-only")])
def test_check_plugin_catches_a_broken_detector(capsys, tmp_path, name, check):
    plugin = tmp_path / "plugins.py"
    plugin.write_text(UNSEEDED)
    code, _, err = _run(capsys, "check-plugin", name, "--kind", "detector", "--plugin", str(plugin))
    assert code == 1 and f"FAILED at {check}" in err


def test_without_config_detect_uses_the_setting_run_uses():
    from cleanbench.detect_command import _config

    options = dict(config_file=None, preset=None, attack=None, target=None, device=None, results_dir=None,
                   poison_rate=None, poison_count=None, attack_opt=())
    assert _config(options)["setting"] == "standard-v2"
