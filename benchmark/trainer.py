"""The one trainer used for poisoned pretraining and for every finetuning defense.

AdamW with the reference's weight-decay exclusions (parameters whose name contains `bn`, `ln`,
`bias` or `logit_scale`), linear warm-up then cosine decay computed per step (without the
reference's one-epoch offset, docs/reference.md §7, item 2), the logit scale clamped to [0, ln 100] after
every step, AMP on CUDA (bf16 where supported), a tqdm bar, and a NaN check that stops at once.
Under torchrun the objective gets a `distributed.ShardedModel` (DDP, embeddings gathered across ranks).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn
from tqdm.auto import tqdm

from cleanbench import distributed
from cleanbench.config import TrainConfig
from cleanbench.data.batches import Batch, Batches
from cleanbench.environment import autocast
from cleanbench.errors import NonFiniteLossError
from cleanbench.seeding import derive_seed, torch_generator

if TYPE_CHECKING:
    from cleanbench.data.base import PairSet
    from cleanbench.models import ModelBundle

Objective = Callable[[nn.Module, Batch], dict[str, torch.Tensor]]


@dataclass
class TrainStats:
    """What a training stage did and cost."""

    stage: str
    steps: int
    seconds: float
    items_per_second: float
    final_loss: float
    epoch_losses: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


InMemoryBatches = Batches
"""The trainer's batches under the name plugins import: `cleanbench.data.batches.Batches`, built from
tensors and image columns alike."""


def pair_batches(bundle: ModelBundle, pairs: PairSet, device: torch.device, batch_size: int,
                 captions: Sequence[str] | None = None, **columns: torch.Tensor) -> Batches:
    """Training batches of `pairs`: their images (on `device`), their tokenised captions (or
    `captions`, one per pair, e.g. augmented ones), and any extra per-pair `columns`."""
    tokens = bundle.tokenizer(pairs.captions if captions is None else list(captions))
    return Batches({"images": pairs.images.to(device), "tokens": tokens.to(device), **columns}, batch_size)


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: no decay for names containing bn, ln, bias or logit_scale (the reference's rule)."""
    excluded = ("bn", "ln", "bias", "logit_scale")
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (no_decay if any(word in name for word in excluded) else decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def adamw(model: nn.Module, config: TrainConfig, **options: bool) -> torch.optim.AdamW:
    """The trainer's AdamW on `model` with `config`'s hyperparameters and `decay_groups`; `options`
    picks the implementation (`foreach=True`, `fused=True`), which `cleanbench bench --speedups` times."""
    return torch.optim.AdamW(decay_groups(model, config.weight_decay), lr=config.lr,
                             betas=(config.beta1, config.beta2), eps=config.eps, **options)


def learning_rate(step: int, base_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up to `base_lr` over `warmup_steps`, then cosine decay to 0 at `total_steps`."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / span)) * base_lr


def train(
    model: nn.Module,
    batches: Batches,
    objective: Objective,
    config: TrainConfig,
    *,
    seed: int,
    stage: str,
    device: torch.device | str = "cpu",
    progress: bool = True,
    items_per_pair: int = 1,
    on_epoch: Callable[[int], None] | None = None,
) -> TrainStats:
    """Train `model` in place with `objective` over `batches` for `config.epochs` epochs.

    `on_epoch(epoch)` (0-based) runs before each epoch: a pretraining-stage defense changes its
    objective's schedule there (e.g. which epochs match captions, which pairs count as safe)."""
    device = torch.device(device)
    model.train()
    optimizer = adamw(model, config)
    use_scaler = device.type == "cuda" and not torch.cuda.is_bf16_supported()
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    order = torch_generator(derive_seed(seed, stage, "batch-order"))
    total = config.epochs * len(batches)
    max_log_scale = math.log(config.max_logit_scale)
    logit_scale = getattr(model, "logit_scale", None)
    step, last, epoch_losses = 0, float("nan"), []
    start = time.perf_counter()
    bar = tqdm(total=total, desc=stage, disable=not progress or not distributed.is_main(), leave=False, unit="step")
    with distributed.sharded(model, device) as view:
        for epoch in range(config.epochs):
            if on_epoch is not None:
                on_epoch(epoch)
            running, seen = 0.0, 0
            for batch in batches.epoch(order):
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(step, config.lr, config.warmup_steps, total)
                with autocast(device):
                    loss = objective(view, batch)["loss"]
                    if isinstance(view, distributed.ShardedModel):
                        loss = view.with_every_parameter(loss)
                value = float(loss.detach())
                if not math.isfinite(value):
                    bar.close()
                    raise NonFiniteLossError(stage, step, value)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                if logit_scale is not None:
                    with torch.no_grad():
                        logit_scale.clamp_(0, max_log_scale)
                running, seen, last = running + value, seen + 1, value
                step += 1
                bar.update()
                bar.set_postfix(loss=f"{value:.3f}")
            epoch_losses.append(running / max(1, seen))
    bar.close()
    seconds = time.perf_counter() - start
    items = step * batches.batch_size * items_per_pair
    return TrainStats(stage, step, seconds, items / max(seconds, 1e-9), last, epoch_losses)
