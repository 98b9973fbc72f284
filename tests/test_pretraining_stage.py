"""Defenses that act during pretraining: the runner trains a fresh model with the defense on the
poisoned pairs, caches it under its own key and evaluates it as the defended model; check-plugin,
list and tune know the stage."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest
import torch

from cleanbench.cache import DEFENDED_MODELS, POISONED_MODELS, ArtifactCache
from cleanbench.cli import main
from cleanbench.config import ModelConfig
from cleanbench.conformance import check_defense
from cleanbench.errors import UsageError
from cleanbench.registry import load_plugin_file
from cleanbench.plan import Plan
from cleanbench.runner import run_cell
from cleanbench.stages import initial_model

HEADER = """
import torch
from cleanbench.defenses import Defense
from cleanbench.losses import clip_objective
from cleanbench.options import NoOptions
from cleanbench.registry import register_defense
from cleanbench.trainer import pair_batches
"""

RETRAIN = """
    def apply(self, bundle, context):
        pairs = context.pretrain_pairs()
        batches = pair_batches(bundle, pairs, context.device, context.pretrain_config.batch_size)
        context.pretrain(bundle.model, batches, clip_objective(bundle), "pretrain")
        return bundle.model
"""
"""Plain CLIP pretraining on all the poisoned pairs: must give exactly the poisoned model."""


def _plugin(tmp_path: Path, name: str, body: str, needs: str = "{'clean_pairs', 'pretrain_pairs'}",
            stage: str = "pretraining") -> str:
    cls = "".join(part.capitalize() for part in name.split("-"))
    path = tmp_path / f"{cls.lower()}.py"
    path.write_text(HEADER + textwrap.dedent(f"""
        @register_defense
        class {cls}(Defense):
            name = {name!r}
            description = "a test plugin"
            source = "tests"
            stage = {stage!r}
            needs = frozenset({needs})
            Options = NoOptions
    """) + textwrap.indent(textwrap.dedent(body), "    "))
    load_plugin_file(path)
    return str(path)


def _run(capsys, *args):
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_plain_retraining_reproduces_the_poisoned_model_under_its_own_key(tmp_path, tiny):
    _plugin(tmp_path, "retrain-all", RETRAIN)
    card, _ = run_cell(tiny(defense="retrain-all", defense_options={}), progress=False, log=lambda _: None)
    assert card.defense["stage"] == "pretraining"
    keys = card.artifacts
    assert keys["defended_model"] != keys["poisoned_model"]
    for metric in ("ca_top1", "ca_top5", "asr", "ra"):
        assert card.metrics["defended"][metric] == card.metrics["poisoned"][metric]
    assert card.defense["training"][0]["steps"] == card.pretrain["steps"]
    assert card.costs["defense_seconds"] > 0
    cache = ArtifactCache(tiny().cache_dir)
    defended, poisoned = (initial_model(ModelConfig(), 0, torch.device("cpu")).model for _ in range(2))
    cache.load(DEFENDED_MODELS, keys["defended_model"], defended)
    cache.load(POISONED_MODELS, keys["poisoned_model"], poisoned)
    assert all(torch.equal(v, poisoned.state_dict()[k]) for k, v in defended.state_dict().items())


def test_the_stored_defended_model_is_the_one_the_defense_trained(tmp_path, tiny):
    body = """
    def apply(self, bundle, context):
        context.pretrain_pairs()
        model = bundle.model
        with torch.no_grad():
            model.logit_scale.fill_(1.25)
        return model
    """
    _plugin(tmp_path, "sets-scale", body)
    config = tiny(defense="sets-scale", defense_options={})
    first, _ = run_cell(config, progress=False, log=lambda _: None)
    again, _ = run_cell(config, progress=False, log=lambda _: None)
    assert "defended_model" in again.reused
    assert again.metrics["defended"]["ca_top1"] == first.metrics["defended"]["ca_top1"]
    plan = Plan(config)
    bundle = initial_model(config.model, 0, torch.device("cpu"))
    ArtifactCache(config.cache_dir).load(DEFENDED_MODELS, plan.defended_model_key(), bundle.model)
    assert bundle.model.logit_scale.item() == pytest.approx(1.25)


@pytest.mark.parametrize("change", [
    {"pretrain": {"epochs": 2}}, {"poison_rate": 0.1}, {"seed": 1}, {"attack": "blended"},
    {"data": {"n_pretrain": 192}},
])
def test_the_defended_key_holds_pretraining_config_data_attack_rate_and_seed(tmp_path, tiny, change):
    _plugin(tmp_path, "retrain-all", RETRAIN)
    base = tiny(defense="retrain-all", defense_options={})
    changed = dataclasses.replace(base, **{k: (dataclasses.replace(getattr(base, k), **v) if isinstance(v, dict) else v)
                                           for k, v in change.items()})
    assert Plan(changed).defended_model_key() != Plan(base).defended_model_key()


def test_a_pretraining_defense_without_pretrain_pairs_is_refused_before_any_work(tmp_path, tiny):
    _plugin(tmp_path, "no-pairs", RETRAIN, needs="{'clean_pairs'}")
    with pytest.raises(UsageError, match="does not declare 'pretrain_pairs'"):
        Plan(tiny(defense="no-pairs", defense_options={}))


def test_check_plugin_passes_a_pretraining_defense(tmp_path):
    _plugin(tmp_path, "retrain-check", RETRAIN)
    report = check_defense("retrain-check")
    checks = dict(report.passed)
    assert "pretraining" in checks["loads"]
    assert checks["pretrains"].startswith("read the poisoned pairs, trained from the initial weights")
    assert "poisoned pairs read from PNG files" in checks["files"]
    assert report.cost["training_steps"] == 8  # two tiny epochs of 256 pairs in batches of 64


@pytest.mark.parametrize("name, body, reason", [
    ("returns-poisoned", """
    def apply(self, bundle, context):
        context.pretrain_pairs()
        return context.poisoned_model().model
    """, "returned the poisoned model"),
    ("never-trains", """
    def apply(self, bundle, context):
        context.pretrain_pairs()
        return bundle.model
    """, "still has its initial weights"),
    ("ignores-the-pairs", """
    def apply(self, bundle, context):
        return context.poisoned_model().model
    """, "never read the poisoned pairs"),
])
def test_check_plugin_fails_a_pretraining_defense_that_does_not_pretrain(tmp_path, capsys, name, body, reason):
    path = _plugin(tmp_path, name, body, needs="{'clean_pairs', 'pretrain_pairs', 'poisoned_model'}")
    code, _, err = _run(capsys, "check-plugin", name, "--plugin", path)
    assert code == 1
    assert f"check-plugin {name!r} FAILED at pretrains:" in err and reason in err


def test_check_plugin_refuses_a_pretraining_defense_without_pretrain_pairs(tmp_path, capsys):
    path = _plugin(tmp_path, "blind", RETRAIN, needs="{'clean_pairs'}")
    code, _, err = _run(capsys, "check-plugin", "blind", "--plugin", path)
    assert code == 1 and "FAILED at loads" in err and "'pretrain_pairs'" in err


def test_list_shows_the_stage_and_tune_refuses_it(tmp_path, capsys):
    path = _plugin(tmp_path, "listed", RETRAIN)
    code, out, _ = _run(capsys, "list", "defenses", "--plugin", path)
    assert code == 0 and "[stage: pretraining]" in next(line for line in out.splitlines() if "listed" in line)
    code, _, err = _run(capsys, "tune", "--defense", "listed", "--plugin", path, "--results-dir", str(tmp_path))
    assert code == 2
    assert "acts during pretraining" in err and "does not apply" in err
    assert not list(tmp_path.rglob("runs"))  # refused before any cell ran


def test_context_pretrain_outside_the_pretraining_stage_names_the_fix(tmp_path, tiny, capsys):
    body = RETRAIN.replace("context.pretrain_config.batch_size", "64")
    _plugin(tmp_path, "wrong-stage", body, stage="post-training finetuning")
    config = tiny(defense="wrong-stage", defense_options={})
    with pytest.raises(Exception, match="outside the pretraining stage; declare stage = 'pretraining'"):
        run_cell(config, progress=False, log=lambda _: None)
