"""SafeCLIP's pretraining: its losses by hand, the objective's phases, the per-epoch split, the phases."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from cleanbench.augment import EDA
from cleanbench.config import TrainConfig
from cleanbench.data.embedded import load_embedded
from cleanbench.defenses import safeclip_training as training
from cleanbench.defenses.safeclip_training import (
    Schedule,
    SplitBatches,
    crosswise_clip_loss,
    pretrain_safeclip,
    unimodal_loss,
    view_objective,
)
from cleanbench.losses import clip_loss
from cleanbench.models import build_model
from cleanbench.trainer import train

SCHEDULE = Schedule(unimodal_epochs=1, align_epochs=1, align_lr=1e-4, mixed_epochs=2, threshold=0.9, growth=0.1,
                    cap=0.85)


def _ce_diag(logits: torch.Tensor) -> float:
    return sum(-(row[i] - math.log(sum(math.exp(v) for v in row))) for i, row in enumerate(logits.tolist())) / len(logits)


def _unit(rows):
    return torch.nn.functional.normalize(torch.tensor(rows, dtype=torch.float64), dim=-1)


I1, I2 = _unit([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]), _unit([[0.8, 0.2], [0.7, 0.7], [0.2, 1.0]])
T1, T2 = _unit([[0.9, 0.1], [0.5, 0.5], [0.1, 0.9]]), _unit([[1.0, 0.3], [0.4, 0.6], [0.0, 1.0]])
SCALE = torch.tensor(10.0, dtype=torch.float64)


def test_unimodal_loss_has_second_views_pick_first_views():
    expected = 0.5 * (_ce_diag(10 * I2 @ I1.T) + _ce_diag(10 * T2 @ T1.T))
    assert float(unimodal_loss(I1, I2, T1, T2, SCALE)) == pytest.approx(expected, rel=1e-9)


def test_crosswise_clip_loss_pairs_first_views_with_the_other_modality_second_views():
    expected = 0.5 * (_ce_diag(10 * I1 @ T2.T) + _ce_diag(10 * T1 @ I2.T))
    assert float(crosswise_clip_loss(I1, I2, T1, T2, SCALE)) == pytest.approx(expected, rel=1e-9)
    assert float(crosswise_clip_loss(I1, I2, T1, T2, SCALE)) != pytest.approx(float(unimodal_loss(I1, I2, T1, T2, SCALE)))


@pytest.fixture(scope="module")
def tiny_pairs():
    torch.manual_seed(0)
    return build_model(), load_embedded(0, n_pretrain=256, n_clean=8, n_test=8).pretrain


def _batch(bundle, pairs, rows=slice(0, 16), safe=None):
    batch = {"images": pairs.images[rows], "tokens": bundle.tokenizer(pairs.captions[rows]),
             "text_1": bundle.tokenizer([c.upper() for c in pairs.captions[rows]]),
             "text_2": bundle.tokenizer(list(reversed(pairs.captions[rows])))}
    return batch if safe is None else {**batch, "safe": torch.tensor(safe)}


def _identity_view(images, generator):
    return images


def test_each_phase_takes_its_loss(tiny_pairs):
    bundle, pairs = tiny_pairs
    model = bundle.model.eval()
    batch = _batch(bundle, pairs)

    def loss(phase, **flag):
        objective = view_objective(bundle, _identity_view, torch.Generator(), phase)
        with torch.no_grad():
            return float(objective(model, _batch(bundle, pairs, **flag))["loss"])

    with torch.no_grad():
        image = model.encode_image(bundle.model_input(batch["images"]), normalize=True)
        text, text_1, text_2 = (model.encode_text(batch[k], normalize=True) for k in ("tokens", "text_1", "text_2"))
        scale = model.logit_scale.exp()
        crosswise = float(crosswise_clip_loss(image, image, text_1, text_2, scale))
        uni = float(unimodal_loss(image, image, text_1, text_2, scale))
        clip = float(clip_loss(image, text, scale))
    assert loss("mixed", safe=True) == pytest.approx(crosswise, rel=1e-5)
    assert loss("mixed", safe=False) == pytest.approx(uni, rel=1e-5)
    assert loss("mixed") == pytest.approx(uni, rel=1e-5)
    assert loss("unimodal") == pytest.approx(uni, rel=1e-5)
    assert loss("align") == pytest.approx(clip, rel=1e-5)
    assert len({round(v, 4) for v in (crosswise, uni, clip)}) == 3
    with pytest.raises(ValueError, match="unknown SafeCLIP phase"):
        view_objective(bundle, _identity_view, torch.Generator(), "crossmodal")


def test_split_batches_yield_risky_then_safe_and_grow_the_safe_set(tiny_pairs, monkeypatch):
    bundle, pairs = tiny_pairs
    rng = np.random.default_rng(0)
    similarities = np.where(np.arange(256) < 64, rng.normal(0.0, 0.02, 256), rng.normal(0.6, 0.05, 256))
    monkeypatch.setattr(training, "pair_similarities", lambda *args, **kwargs: similarities)
    columns = {"images": pairs.images, "text_1": bundle.tokenizer(pairs.captions),
               "text_2": bundle.tokenizer(pairs.captions)}
    batches = SplitBatches(bundle, pairs, columns, 16, SCHEDULE, torch.device("cpu"))
    assert len(batches) == 16
    generator = torch.Generator().manual_seed(0)
    first = list(batches.epoch(generator))
    flags = [bool(b["safe"]) for b in first]
    assert flags == sorted(flags) and flags.count(False) == 4 and flags.count(True) == 12
    for batch in first:
        rows = batch["index"]
        assert bool((rows >= 64).all()) == bool(batch["safe"]) and bool((rows < 64).all()) != bool(batch["safe"])
        assert torch.equal(batch["images"], pairs.images[rows])
    assert batches.safe_sets[0].tolist() == list(range(64, 256))
    assert batches.splits[0]["safe_fraction"] == 0.75
    second = list(batches.epoch(generator))
    assert batches.splits[1]["safe_count"] == round(0.85 * 256)  # 0.75 + 0.1 growth
    assert set(batches.safe_sets[0]) < set(batches.safe_sets[1])
    assert sum(bool(b["safe"]) for b in second) == round(0.85 * 256) // 16
    assert len(second) <= len(batches)


def test_pretraining_runs_the_three_phases_and_is_seeded(tiny_pairs):
    bundle, pairs = tiny_pairs
    config = TrainConfig(epochs=99, batch_size=32, lr=1e-3, warmup_steps=2)

    def run():
        copy_ = copy.copy(bundle)
        copy_.model = copy.deepcopy(bundle.model)
        def trainer(batches, objective, stage, phase_config, items_per_pair):
            return train(copy_.model, batches, objective, phase_config, seed=3, stage=stage,
                         items_per_pair=items_per_pair)

        result = pretrain_safeclip(copy_, pairs, config, SCHEDULE, _identity_view, EDA(seed=0), 3,
                                   torch.device("cpu"), trainer)
        return copy_.model, result

    model, result = run()
    assert [s.stage for s in result.stats] == ["safeclip:unimodal", "safeclip:align", "safeclip:mixed"]
    assert [s.steps for s in result.stats[:2]] == [8, 8]
    assert result.stats[2].steps <= 16 and len(result.stats[2].epoch_losses) == 2
    assert len(result.splits) == 2 and len(result.safe_sets) == 2
    assert all(0 <= split["safe_fraction"] <= 1 for split in result.splits)
    again, _ = run()
    for (name, a), b, c in zip(model.state_dict().items(), again.state_dict().values(), bundle.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert any(not torch.equal(a, c) for a, c in zip(model.state_dict().values(), bundle.model.state_dict().values()))


def test_default_schedule_gives_the_unimodal_warm_up_part_of_the_pretraining_budget():
    from cleanbench.defenses.safeclip import SafeCLIP, SafeCLIPOptions

    assert SafeCLIP(SafeCLIPOptions()).schedule(3) == Schedule(1, 1, 5e-4, 2, 0.9, 0.1, 0.85)
    assert SafeCLIP(SafeCLIPOptions()).schedule(1).mixed_epochs == 1
    assert SafeCLIP(SafeCLIPOptions(unimodal_epochs=5, mixed_epochs=7)).schedule(32).mixed_epochs == 7
    assert SafeCLIP(SafeCLIPOptions(unimodal_epochs=5)).schedule(32).mixed_epochs == 27


@pytest.mark.parametrize(("values", "message"), [
    ({"mixed_epochs": 0}, "mixed_epochs must be >= 1"),
    ({"align_lr": 0.0}, "align_lr must be > 0"),
    ({"threshold": 1.0}, "threshold must be in"),
    ({"cap": 0.0}, "cap in"),
    ({"unimodal_epochs": -1}, "must be >= 0"),
    ({"image_view": "mixup"}, "unknown image view"),
])
def test_bad_options_are_refused_with_the_reason(values, message):
    from cleanbench.defenses.safeclip import SafeCLIPOptions

    with pytest.raises(ValueError, match=message):
        SafeCLIPOptions(**values)


def test_a_run_records_each_phase_and_each_split(tiny):
    from cleanbench.runner import run_cell

    card, _ = run_cell(tiny(defense="safeclip", defense_options={}), progress=False, log=lambda _: None)
    assert card.status == "ok" and card.defense["stage"] == "pretraining"
    assert [t["stage"] for t in card.defense["training"]] == ["safeclip:unimodal", "safeclip:align", "safeclip:mixed"]
    splits = card.defense["notes"]["splits"]
    assert len(splits) == card.defense["notes"]["mixed_epochs"] == 1  # one pretraining epoch: at least one mixed
    assert 0 <= splits[0]["safe_fraction"] <= 1 and splits[0]["means"][0] <= splits[0]["means"][1]
    assert card.artifacts["defended_model"] != card.artifacts["poisoned_model"]
