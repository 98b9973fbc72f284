"""BadCLIP: the patch, its optimisation on a surrogate (seeded, cached like a model, in the card), and
the attack contract's surrogate stage."""

from __future__ import annotations

import random

import pytest
import torch

from cleanbench import stages
from cleanbench.attacks.badclip import BadCLIP, BadCLIPOptions, natural_captions
from cleanbench.attacks.base import FittedTrigger, trigger_uint8
from cleanbench.cache import ArtifactCache
from cleanbench.data.base import PairSet
from cleanbench.data.embedded import load_embedded
from cleanbench.errors import RunError
from cleanbench.models import build_model
from cleanbench.plan import Plan
from cleanbench.runner import run_cell
from cleanbench.seeding import torch_generator

SMALL = dict(epochs=2, max_pairs=128, batch_size=32)


@pytest.fixture(scope="module")
def pretrain() -> PairSet:
    return load_embedded(0, 256, 16, 16).pretrain


@pytest.fixture(scope="module")
def surrogate():
    torch.manual_seed(0)
    return stages.surrogate(build_model("cleanbench-tiny", None, "cpu"), torch.device("cpu"))


def fit(pairs, surrogate, seed=0, attack_seed=0, **options):
    attack = BadCLIP(BadCLIPOptions(**{**SMALL, **options}), 32, attack_seed)
    fitted = stages.fit_trigger(stages.FitInput(attack, surrogate, pairs, 3, "star", seed))
    return attack, fitted


def test_the_patch_is_centred_and_only_the_patch_changes():
    attack = BadCLIP(BadCLIPOptions(), 32, 0)
    assert (attack.size, attack.corner) == (4, 14)  # 28 px at 224 -> 4 px at 32, centred
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    out = trigger_uint8(attack, images, torch_generator(0))
    changed = (out != images).any(dim=(0, 1))
    assert not changed[:14].any() and not changed[18:].any() and not changed[:, :14].any() and not changed[:, 18:].any()
    assert torch.equal(out[:, :, 14:18, 14:18], (attack.patch * 255).round().to(torch.uint8).expand(3, -1, -1, -1))
    float_path = (attack.apply(images.float() / 255, {}) * 255).round().to(torch.uint8)
    assert torch.equal(out, float_path)


def test_the_fit_is_seeded_and_moves_the_patch(pretrain, surrogate):
    first, fitted = fit(pretrain, surrogate)
    again, refitted = fit(pretrain, surrogate)
    other, _ = fit(pretrain, surrogate, seed=1)
    start = BadCLIP(BadCLIPOptions(**SMALL), 32, 0).patch
    assert torch.equal(first.patch, again.patch) and fitted.record["captions"] == refitted.record["captions"]
    assert not torch.equal(first.patch, other.patch)
    assert (first.patch - start).abs().max() > 0.01  # lr 0.01 for 8 steps
    assert 0 <= first.patch.min() and first.patch.max() <= 1
    record = fitted.record
    assert record["steps"] == 2 * 4 and record["pairs"] == 128 and record["seconds"] > 0
    assert set(record["final_losses"]) == {"loss", "text_loss", "image_loss"}
    final = record["final_losses"]
    assert final["loss"] == pytest.approx(final["text_loss"] + 500 * final["image_loss"], rel=1e-4)


def test_poisons_get_natural_target_captions_and_restore_gives_the_same_attack(pretrain, surrogate):
    attack, fitted = fit(pretrain, surrogate)
    assert fitted.record["captions"] and all("star" in c for c in fitted.record["captions"])
    assert set(fitted.record["captions"]) <= set(pretrain.captions)  # natural: from the pairs, not templates
    rng = random.Random(0)
    assert attack.poison_caption("a red circle.", "star", ["a photo of a {}."], rng) in fitted.record["captions"]
    restored = BadCLIP(BadCLIPOptions(**SMALL), 32, 0)
    assert not restored.fitted
    restored.restore(FittedTrigger(fitted.tensors, fitted.record))
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    assert restored.fitted and torch.equal(trigger_uint8(restored, images, torch_generator(0)),
                                           trigger_uint8(attack, images, torch_generator(0)))


def test_an_unfitted_surrogate_attack_cannot_poison(pretrain):
    attack = BadCLIP(BadCLIPOptions(), 32, 0)
    with pytest.raises(RunError, match="trigger-fit stage"):
        stages.poison(stages.PoisonInput(pretrain, attack, 3, "star", ["a {}."], 0, poison_rate=0.1))


def test_a_target_no_caption_names_is_refused(pretrain):
    with pytest.raises(ValueError, match="no pretraining caption names the target 'banana'"):
        natural_captions(pretrain, "banana", 8, torch_generator(0))


@pytest.mark.parametrize("bad", [dict(epochs=0), dict(lr=0), dict(aug_prob=1.5), dict(patch_size=0)])
def test_bad_options_are_refused(bad):
    with pytest.raises(ValueError):
        BadCLIPOptions(**bad)


def test_a_cell_optimises_on_the_clean_control_and_caches_the_trigger(tiny):
    config = tiny(attack="badclip", defense="none", defense_options={}, attack_options=SMALL)
    card, _ = run_cell(config, progress=False, log=lambda message: None)
    trigger = card["attack"]["trigger"]
    plan = Plan(tiny(attack="none", defense="none", defense_options={}))
    assert trigger["surrogate"]["kind"] == "clean-control"
    assert trigger["surrogate"]["key"] == plan.poisoned_model_key()  # the clean control's own cached model
    assert trigger["surrogate"]["pretrain"]["reused"] is False
    assert trigger["steps"] > 0 and trigger["seconds"] > 0 and not trigger["reused"]
    assert card["attack"]["fitted"] and card["costs"]["trigger_seconds"] == trigger["seconds"]
    assert 0 <= trigger["on_surrogate"]["asr"]["value"] <= 1 and trigger["on_surrogate"]["asr"]["total"] > 0
    assert set(card["poison"]["example_captions"]) <= set(trigger["captions"])  # natural captions of the pool

    control, _ = run_cell(tiny(attack="none", defense="none", defense_options={}), progress=False, log=lambda m: None)
    assert control["artifacts"]["poisoned_model_reused"]  # the surrogate trained above is the control

    again, _ = run_cell(tiny(attack="badclip", defense="finetune", attack_options=SMALL), progress=False,
                        log=lambda message: None)
    assert again["artifacts"]["attack_trigger_reused"] and again["artifacts"]["poisoned_model_reused"]
    assert again["attack"]["trigger"]["final_losses"] == trigger["final_losses"]
    assert again["artifacts"]["surrogate_evaluation_reused"]
    assert again["attack"]["trigger"]["on_surrogate"] == trigger["on_surrogate"]
    assert again["poison"]["indices_sha256"] == card["poison"]["indices_sha256"]


def test_the_trigger_key_holds_the_options_and_the_seed_and_enters_the_poisoned_key(tiny):
    base = Plan(tiny(attack="badclip", attack_options=SMALL))
    lr = Plan(tiny(attack="badclip", attack_options={**SMALL, "lr": 0.02}))
    seed = Plan(tiny(attack="badclip", attack_options=SMALL, seed=1))
    assert len({base.trigger_key(), lr.trigger_key(), seed.trigger_key()}) == 3
    assert base.poisoned_model_key() != lr.poisoned_model_key()
    assert "attack_trigger" not in Plan(tiny(attack="badnet")).artifact_keys()


def test_pretrained_weights_are_the_surrogate_when_given(tiny, tmp_path):
    weights = tmp_path / "start.pt"
    torch.save(build_model("cleanbench-tiny", None, "cpu").model.state_dict(), weights)
    config = tiny(attack="badclip", defense="none", defense_options={}, attack_options=SMALL)
    config.model.pretrained, config.model.threat = str(weights), "finetune-pretrained"
    card, _ = run_cell(config, progress=False, log=lambda message: None)
    assert card["attack"]["trigger"]["surrogate"]["kind"] == "pretrained"
    assert "pretrain" not in card["attack"]["trigger"]["surrogate"]
    assert ArtifactCache(config.cache_dir).has("attack-triggers", card["artifacts"]["attack_trigger"])


def test_detect_uses_the_runs_trigger_and_poisoned_model(tiny):
    from cleanbench.detection import DetectionPlan, prepare_cell, resolve_detectors

    config = tiny(attack="badclip", defense="none", defense_options={}, attack_options=SMALL)
    card, _ = run_cell(config, progress=False, log=lambda message: None)
    lines: list[str] = []
    cell = prepare_cell(DetectionPlan(config, resolve_detectors(["cosine"])), progress=False, log=lines.append)
    assert cell.model_reused and any("reused cached badclip trigger" in line for line in lines)
    assert cell.poison["indices_sha256"] == card["poison"]["indices_sha256"]


def test_a_card_rebuilds_the_optimised_trigger(tiny):
    from cleanbench.attacks import attack_from_card

    with pytest.raises(ValueError, match="does not hold it"):
        attack_from_card(BadCLIP, {}, 32, 0)
    config = tiny(attack="badclip", defense="none", defense_options={}, attack_options=SMALL)
    card, _ = run_cell(config, progress=False, log=lambda message: None)
    rebuilt = attack_from_card(BadCLIP, card["attack"]["options"], 32, 0, card["attack"]["trigger"])
    tensors, _ = ArtifactCache(config.cache_dir).load_tensors("attack-triggers", card["artifacts"]["attack_trigger"])
    assert rebuilt.fitted and torch.equal(rebuilt.patch, tensors["patch"])


def test_the_cost_table_counts_each_optimised_trigger_once():
    from cleanbench.leaderboard.costs import card_cost_rows, stage_costs

    def card(defense: str, reused: bool) -> dict:
        return {"status": "ok", "defense": {"name": defense, "stage": "post-training"},
                "costs": {"trigger_seconds": 300.0, "pretrain_seconds": 200.0, "defense_seconds": 10.0},
                "artifacts": {"attack_trigger": "t1", "attack_trigger_reused": reused, "poisoned_model": "p1",
                              "poisoned_model_reused": reused, "defended_model": defense}}

    cards = [card("none", False), card("finetune", True), card("cleanclip", True)]
    stages = {s["stage"]: s for s in stage_costs(cards)["stages"]}
    row = stages["trigger optimisation (on the clean surrogate)"]
    assert row["seconds"] == 300.0 and row["over"] == "1 trigger; 2 of 3 cards reused one"
    assert {"stage": "trigger", "value": 300.0, "reused": True} in card_cost_rows(cards[1])
