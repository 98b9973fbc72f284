"""SafeCLIP's pretraining (Yang et al., ICML 2024): warm-ups, the per-epoch split, the mixed objective.

Every pair gives two augmented image views (made each step) and two EDA caption views (made once).
Three phases run with the shared trainer on the (poisoned) pretraining pairs:

1. unimodal warm-up: L_uni = 1/2 [InfoNCE(I2 -> I1) + InfoNCE(T2 -> T1)] on every pair, so the
   images and captions of poisoned pairs are not pulled together;
2. cross-modal warm-up: the CLIP loss on every pair's original image and caption, at a low
   learning rate;
3. mixed epochs: at the start of each, every pair is scored by its image-caption cosine similarity
   (eval mode, original images), `safe_split` splits the pairs into safe and risky, then one pass of
   L_uni over the risky pairs and one pass of the crosswise CLIP loss
   1/2 [InfoNCE(I1 -> T2) + InfoNCE(T1 -> I2)] over the safe pairs.

All InfoNCE terms share CLIP's learnable temperature (`losses.inmodal_loss`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from cleanbench.augment import EDA, ImageView
from cleanbench.config import TrainConfig
from cleanbench.data.base import PairSet
from cleanbench.defenses.safe_split import next_ratio, safe_by_ratio, safe_by_threshold, safety
from cleanbench.detectors.base import embed_pairs
from cleanbench.losses import clip_loss, inmodal_loss
from cleanbench.seeding import derive_seed, torch_generator
from cleanbench.trainer import Batch, InMemoryBatches, Objective, TrainStats

if TYPE_CHECKING:
    from cleanbench.models import ModelBundle


@dataclass(frozen=True)
class Schedule:
    """SafeCLIP's schedule: phase lengths in epochs, the warm-up's learning rate, and the split's rule."""

    unimodal_epochs: int
    align_epochs: int
    align_lr: float
    mixed_epochs: int
    threshold: float
    growth: float
    cap: float


def unimodal_loss(image_1: torch.Tensor, image_2: torch.Tensor, text_1: torch.Tensor, text_2: torch.Tensor,
                  scale: torch.Tensor) -> torch.Tensor:
    """1/2 [InfoNCE(I2 -> I1) + InfoNCE(T2 -> T1)]: each second view must pick its own first view."""
    return 0.5 * (inmodal_loss(image_2, image_1, scale) + inmodal_loss(text_2, text_1, scale))


def crosswise_clip_loss(image_1: torch.Tensor, image_2: torch.Tensor, text_1: torch.Tensor, text_2: torch.Tensor,
                        scale: torch.Tensor) -> torch.Tensor:
    """1/2 [InfoNCE(I1 -> T2) + InfoNCE(T1 -> I2)]: the CLIP loss with the views taken crosswise."""
    return 0.5 * (inmodal_loss(image_1, text_2, scale) + inmodal_loss(text_1, image_2, scale))


def view_objective(bundle: ModelBundle, view: ImageView, generator: torch.Generator, phase: str) -> Objective:
    """The trainer's objective for a batch with `images`, `tokens` (the captions), `text_1` and
    `text_2` (their EDA views). `phase` is `align` (the CLIP loss on the original images and
    captions), `unimodal` (L_uni on two image views made with `view` and the two caption views) or
    `mixed` (a batch's `safe` flag picks the crosswise CLIP loss on the views, its absence or False
    L_uni)."""
    if phase not in ("unimodal", "align", "mixed"):
        raise ValueError(f"unknown SafeCLIP phase {phase!r}")

    def objective(model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        images = batch["images"]
        if phase == "align":
            image_features = model.encode_image(bundle.model_input(images), normalize=True)
            text_features = model.encode_text(batch["tokens"], normalize=True)
            return {"loss": clip_loss(image_features, text_features, model.logit_scale.exp())}
        count = len(images)
        views = torch.cat([view(images, generator), view(images, generator)])
        image_features = model.encode_image(bundle.model_input(views), normalize=True)
        text_features = model.encode_text(torch.cat([batch["text_1"], batch["text_2"]]), normalize=True)
        features = (image_features[:count], image_features[count:], text_features[:count], text_features[count:])
        scale = model.logit_scale.exp()
        if phase == "mixed" and bool(batch.get("safe", False)):
            return {"loss": crosswise_clip_loss(*features, scale)}
        return {"loss": unimodal_loss(*features, scale)}

    return objective


def pair_similarities(bundle: ModelBundle, pairs: PairSet, device: torch.device, progress: bool = False) -> np.ndarray:
    """Each pair's image-caption cosine similarity under the model (NaN where an image is unreadable)."""
    embeddings = embed_pairs(bundle, pairs, device, progress=progress)
    cosine = torch.nn.functional.cosine_similarity(embeddings.images.double(), embeddings.texts.double(), dim=1)
    similarities = np.full(len(pairs), np.nan)
    similarities[embeddings.rows] = cosine.numpy()
    return similarities


@dataclass
class SplitBatches:
    """The mixed phase's batches: each epoch scores and splits the pairs, then yields the risky pairs'
    batches (`safe` False) and then the safe pairs' (`safe` True), each set shuffled, drop_last.

    `splits` records each epoch's split (safe fraction, count, the mixture's means and weights);
    `safe_sets` the safe indices of each epoch."""

    bundle: ModelBundle
    pairs: PairSet
    columns: dict[str, Any]
    batch_size: int
    schedule: Schedule
    device: torch.device
    splits: list[dict[str, Any]] = field(default_factory=list)
    safe_sets: list[np.ndarray] = field(default_factory=list)
    ratio: float | None = None

    def __len__(self) -> int:
        return len(self.pairs) // self.batch_size

    def split(self) -> np.ndarray:
        """Score every pair with the model as it is now and return the safe indices (ascending)."""
        model = self.bundle.model
        was_training = model.training
        similarities = pair_similarities(self.bundle, self.pairs, self.device)
        model.train(was_training)
        scored = np.flatnonzero(np.isfinite(similarities))
        posterior, mixture = safety(similarities[scored])
        if self.ratio is None:
            safe = scored[safe_by_threshold(posterior, self.schedule.threshold)]
            self.ratio = len(safe) / len(self.pairs)
        else:
            self.ratio = next_ratio(self.ratio, self.schedule.growth, self.schedule.cap)
            safe = scored[safe_by_ratio(posterior, self.ratio * len(self.pairs) / len(scored))]
        self.safe_sets.append(safe)
        self.splits.append({"safe_fraction": round(len(safe) / len(self.pairs), 6), "safe_count": int(len(safe)),
                            "means": [round(m, 6) for m in mixture.means],
                            "weights": [round(w, 6) for w in mixture.weights],
                            "mean_similarity": round(float(np.nanmean(similarities)), 6)})
        return safe

    def _batches(self, rows: torch.Tensor, safe: bool) -> Iterator[Batch]:
        flag = torch.tensor(safe)
        for start in range(0, len(rows) - self.batch_size + 1, self.batch_size):
            chosen = rows[start:start + self.batch_size]
            batch = {name: column[chosen.to(column.device) if isinstance(column, torch.Tensor) else chosen]
                     for name, column in self.columns.items()}
            yield {**batch, "index": chosen, "safe": flag}

    def epoch(self, generator: torch.Generator) -> Iterator[Batch]:
        is_safe = np.zeros(len(self.pairs), dtype=bool)
        is_safe[self.split()] = True
        for safe in (False, True):
            rows = torch.from_numpy(np.flatnonzero(is_safe == safe))
            yield from self._batches(rows[torch.randperm(len(rows), generator=generator)], safe)


@dataclass
class SafeCLIPRun:
    """What SafeCLIP's pretraining did: each phase's training statistics and each mixed epoch's split."""

    stats: list[TrainStats]
    splits: list[dict[str, Any]]
    safe_sets: list[np.ndarray]


Trainer = Callable[[InMemoryBatches | SplitBatches, Objective, str, TrainConfig, int], TrainStats]
"""Trains the model with (batches, objective, stage name, configuration, images encoded per pair):
the defense's `context.pretrain`, or `trainer.train` around a model."""


def pretrain_safeclip(bundle: ModelBundle, pairs: PairSet, config: TrainConfig, schedule: Schedule, view: ImageView,
                      eda: EDA, seed: int, device: torch.device, trainer: Trainer) -> SafeCLIPRun:
    """Train `bundle.model` in place on `pairs` with SafeCLIP's three phases through `trainer`.

    `config` gives the optimisation (batch, learning rate, warm-up, decay) of the unimodal and mixed
    phases; the cross-modal warm-up runs at `schedule.align_lr` without warm-up. Each phase is one
    trainer call (a fresh AdamW with its own warm-up and cosine decay); `seed` seeds the image views."""
    tokens = {"tokens": bundle.tokenizer(pairs.captions).to(device),
              "text_1": bundle.tokenizer(eda.views(pairs.captions)).to(device),
              "text_2": bundle.tokenizer(eda.views(pairs.captions)).to(device)}
    columns = {"images": pairs.images.to(device), **tokens}
    generator = torch_generator(derive_seed(seed, "safeclip", "views"))
    stats: list[TrainStats] = []

    def run(batches: InMemoryBatches | SplitBatches, phase: str, phase_config: TrainConfig) -> None:
        items_per_pair = 1 if phase == "align" else 2
        stats.append(trainer(batches, view_objective(bundle, view, generator, phase), f"safeclip:{phase}", phase_config,
                             items_per_pair))

    everything = InMemoryBatches(columns, config.batch_size)
    if schedule.unimodal_epochs:
        run(everything, "unimodal", replace(config, epochs=schedule.unimodal_epochs))
    if schedule.align_epochs:
        run(everything, "align", replace(config, epochs=schedule.align_epochs, lr=schedule.align_lr, warmup_steps=0))
    split = SplitBatches(bundle, pairs, columns, config.batch_size, schedule, device)
    run(split, "mixed", replace(config, epochs=schedule.mixed_epochs))
    return SafeCLIPRun(stats, split.splits, split.safe_sets)
