"""The content-addressed cache: integrity, locks, and keys that hold exactly what determines an artifact."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import cleanbench
from cleanbench.cache import EVALUATIONS, POISONED_MODELS, ArtifactCache, content_key
from cleanbench.config import DataConfig
from cleanbench.plan import Plan, _digest
from cleanbench.trainer import TrainConfig


def test_model_round_trip_and_damage(tmp_path):
    cache = ArtifactCache(tmp_path)
    model = torch.nn.Linear(3, 2)
    assert not cache.has(POISONED_MODELS, "k")
    cache.save(POISONED_MODELS, "k", model, {"stats": {"seconds": 1.0}})
    assert cache.has(POISONED_MODELS, "k")
    other = torch.nn.Linear(3, 2)
    meta = cache.load(POISONED_MODELS, "k", other)
    assert meta["stats"] == {"seconds": 1.0} and meta["key"] == "k"
    assert torch.equal(other.weight, model.weight)
    weights = tmp_path / POISONED_MODELS / "k.pt"
    weights.write_bytes(weights.read_bytes()[:-1] + b"x")  # a damaged file is ignored, not loaded
    assert cache.load(POISONED_MODELS, "k", torch.nn.Linear(3, 2)) is None
    assert cache.load(POISONED_MODELS, "absent", torch.nn.Linear(3, 2)) is None


def test_wrong_architecture_is_a_miss(tmp_path):
    cache = ArtifactCache(tmp_path)
    cache.save(POISONED_MODELS, "k", torch.nn.Linear(3, 2), {})
    assert cache.load(POISONED_MODELS, "k", torch.nn.Linear(4, 2)) is None


def test_json_artifacts(tmp_path):
    cache = ArtifactCache(tmp_path)
    assert cache.load_json(EVALUATIONS, "e") is None
    cache.save_json(EVALUATIONS, "e", {"ca": 0.5})
    assert cache.has(EVALUATIONS, "e")
    assert cache.load_json(EVALUATIONS, "e") == {"ca": 0.5}
    (tmp_path / EVALUATIONS / "f.json").write_text((tmp_path / EVALUATIONS / "e.json").read_text())
    assert cache.load_json(EVALUATIONS, "f") is None  # stored under another key
    (tmp_path / EVALUATIONS / "e.json").write_text('{"key": "e", "val')  # truncated
    assert cache.load_json(EVALUATIONS, "e") is None


def test_lock_excludes_another_process(tmp_path):
    cache = ArtifactCache(tmp_path)
    probe = (f"import sys; from filelock import FileLock, Timeout\n"
             f"try:\n    FileLock({str(tmp_path / POISONED_MODELS / 'k.lock')!r}, timeout=0.2).acquire()\n"
             f"except Timeout:\n    sys.exit(3)\n")
    with cache.lock(POISONED_MODELS, "k"):
        assert subprocess.run([sys.executable, "-c", probe]).returncode == 3
    assert subprocess.run([sys.executable, "-c", probe]).returncode == 0


def test_content_key_is_canonical():
    assert content_key({"a": 1, "b": [1, 2]}) == content_key({"b": [1, 2], "a": 1})
    assert content_key({"a": 1}) != content_key({"a": 2})


def _keys(config) -> dict[str, str]:
    plan = Plan(config)
    return {**plan.artifact_keys(), "cell": plan.cell_key()}


def test_keys_hold_exactly_their_inputs(tiny):
    base = _keys(tiny())
    lr = _keys(tiny(defense_options={"epochs": 1, "batch_size": 64, "lr": 1e-3}))
    assert lr["poisoned_model"] == base["poisoned_model"] and lr["poisoned_evaluation"] == base["poisoned_evaluation"]
    assert lr["defended_model"] != base["defended_model"] and lr["cell"] != base["cell"]

    clean = _keys(tiny(data=DataConfig(n_pretrain=256, n_clean=100, n_test=100)))
    assert clean["poisoned_model"] == base["poisoned_model"]  # the embedded splits are independent streams
    assert clean["defended_model"] != base["defended_model"]

    test = _keys(tiny(data=DataConfig(n_pretrain=256, n_clean=128, n_test=50)))
    assert test["poisoned_model"] == base["poisoned_model"] and test["defended_model"] == base["defended_model"]
    assert test["poisoned_evaluation"] != base["poisoned_evaluation"] and test["cell"] != base["cell"]

    for changed in (tiny(seed=1), tiny(poison_rate=0.1), tiny(attack="blended"), tiny(target="circle"),
                    tiny(pretrain=TrainConfig(epochs=2, batch_size=64, warmup_steps=1)),
                    tiny(data=DataConfig(n_pretrain=300, n_clean=128, n_test=100))):
        assert _keys(changed)["poisoned_model"] != base["poisoned_model"]

    # device, results folder and cache folder do not change what is computed
    same = _keys(tiny(device="cpu", results_dir="elsewhere", cache_dir="other-cache"))
    assert same == base


def test_identity_defense_reuses_the_poisoned_model(tiny):
    keys = _keys(tiny(defense="none", defense_options={}))
    assert keys["defended_model"] == keys["poisoned_model"]
    assert keys["defended_evaluation"] == keys["poisoned_evaluation"]


def test_versions_are_part_of_the_keys(tiny, monkeypatch):
    base = _keys(tiny())
    from cleanbench.registry import ATTACKS, DEFENSES

    monkeypatch.setattr(ATTACKS.get("badnet"), "version", "999")
    bumped_attack = _keys(tiny())
    assert bumped_attack["poisoned_model"] != base["poisoned_model"]
    monkeypatch.undo()
    monkeypatch.setattr(DEFENSES.get("cleanclip"), "version", "999")
    bumped_defense = _keys(tiny())
    assert bumped_defense["poisoned_model"] == base["poisoned_model"]
    assert bumped_defense["defended_model"] != base["defended_model"]
    monkeypatch.undo()
    monkeypatch.setattr(cleanbench, "__version__", "999")
    assert all(a != b for a, b in zip(_keys(tiny()).values(), base.values()))


def test_file_digest_follows_content(tmp_path):
    data = tmp_path / "pairs.csv"
    data.write_text("image,caption\na.png,a cat\n")
    first = _digest(str(data))
    data.write_text("image,caption\na.png,a dog\n")
    assert _digest(str(data)) != first
    folder = tmp_path / "eval"
    (folder / "cat").mkdir(parents=True)
    (folder / "cat" / "1.png").write_bytes(b"x")
    listing = _digest(str(folder))
    (folder / "cat" / "2.png").write_bytes(b"y")
    assert _digest(str(folder)) != listing
    assert _digest("torchvision:CIFAR10:/nowhere") is None and _digest(None) is None


def _untimed(values):
    """`values` without the `seconds` entries, at any depth."""
    if isinstance(values, dict):
        return {k: _untimed(v) for k, v in values.items() if k != "seconds"}
    return values


@pytest.mark.parametrize("defense", ["cleanclip", "none"])
def test_a_lost_card_is_rebuilt_from_artifacts_without_training(tiny, monkeypatch, defense):
    from cleanbench import runner

    options = {} if defense == "none" else {"epochs": 1, "batch_size": 64}
    first, path = runner.run_cell(tiny(defense=defense, defense_options=options), progress=False, log=lambda m: None)
    # `none` returns the poisoned model, so its evaluation is the poisoned model's, computed once
    assert first["reused"] == ([] if defense == "cleanclip" else ["defended_evaluation"])
    path.unlink()

    def no_training(*args, **kwargs):
        raise AssertionError("trained although every artifact is cached")

    monkeypatch.setattr("cleanbench.stages.train", no_training)
    monkeypatch.setattr("cleanbench.defenses.base.train", no_training)
    again, path = runner.run_cell(tiny(defense=defense, defense_options=options), progress=False, log=lambda m: None)
    assert path.is_file()
    assert again["reused"] == ["poisoned_model", "poisoned_evaluation", "defended_model", "defended_evaluation"]
    assert _untimed(again["metrics"]) == _untimed(first["metrics"])  # the validation split is scored again
    assert again["costs"]["pretrain_seconds"] == first["costs"]["pretrain_seconds"]  # the artifact's cost, kept
