"""The shared trainer: schedule, weight-decay groups, logit-scale clamp, NaN stop, determinism."""

import math

import pytest
import torch

from cleanbench.errors import NonFiniteLossError
from cleanbench.models import build_model
from cleanbench.trainer import InMemoryBatches, TrainConfig, decay_groups, learning_rate, train


def test_warmup_then_cosine_without_offset():
    lrs = [learning_rate(s, 1.0, 10, 110) for s in range(110)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0) and lrs[60] == pytest.approx(0.5)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # never rises after warm-up
    assert lrs[-1] < 0.001


def test_weight_decay_exclusions_follow_the_reference():
    model = build_model().model
    decay, no_decay = decay_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    excluded = {names[id(p)] for p in no_decay["params"]}
    assert "logit_scale" in excluded
    assert any(".bn." in n for n in excluded) and any("ln_" in n for n in excluded)
    assert all(any(w in n for w in ("bn", "ln", "bias", "logit_scale")) for n in excluded)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0


def _toy(n=16):
    return InMemoryBatches({"x": torch.randn(n, 3), "y": torch.randn(n, 1)}, batch_size=4)


class _Linear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(3, 1)
        self.logit_scale = torch.nn.Parameter(torch.tensor(10.0))


def _mse(model, batch):
    return {"loss": ((model.layer(batch["x"]) - batch["y"]) ** 2).mean() + 0 * model.logit_scale}


def test_logit_scale_is_clamped_and_training_is_deterministic():
    torch.manual_seed(0)
    a = _Linear()
    torch.manual_seed(0)
    b = _Linear()
    data = _toy()
    config = TrainConfig(epochs=2, batch_size=4, lr=0.01, warmup_steps=1)
    stats = train(a, data, _mse, config, seed=1, stage="t", progress=False)
    train(b, data, _mse, config, seed=1, stage="t", progress=False)
    assert a.logit_scale.item() <= math.log(100) + 1e-6
    assert torch.equal(a.layer.weight, b.layer.weight)
    assert stats.steps == 8 and len(stats.epoch_losses) == 2


def test_nan_loss_stops_at_once_with_stage_and_step():
    def objective(model, batch):
        return {"loss": model.layer(batch["x"]).sum() * float("nan")}

    with pytest.raises(NonFiniteLossError, match="pretrain: the loss became nan at step 0"):
        train(_Linear(), _toy(), objective, TrainConfig(epochs=1, batch_size=4), seed=0, stage="pretrain", progress=False)


def test_batches_follow_the_epoch_order_and_place_it_once(device_copies):
    data = _toy(10)
    copies = device_copies()
    batches = list(data.epoch(torch.Generator().manual_seed(0)))
    order = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    assert [b["index"].tolist() for b in batches] == [order[:4].tolist(), order[4:8].tolist()]
    for batch in batches:
        assert torch.equal(batch["x"], data.columns["x"][batch["index"]])
        assert torch.equal(batch["y"], data.columns["y"][batch["index"]])
    assert len(copies) == 1  # the order, once an epoch, not once per batch and tensor
