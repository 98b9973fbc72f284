"""The contrastive finetuning defenses' shared machinery: options and one objective.

`finetune`, `unimodal` and `cleanclip` finetune the poisoned model on the clean pairs with the
shared trainer and L = lambda1 * L_CLIP + lambda2 * L_SS (docs/reference.md §3.1); they differ only in
the weights and so in whether augmented views are made. One forward pass encodes originals and
views together; the cross-modal term uses originals only; the in-modal terms are one-directional
and share the clamped temperature.

The default hyper-parameters are the embedded default's (2,000 clean pairs, tiny CLIP, 32 px);
`REFERENCE_TRAINING` holds the reference implementation's (docs/reference.md §3.3: CC3M 100K clean
pairs, RN50), for real models.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from cleanbench.augment import EDA, image_view
from cleanbench.defenses.base import Defense, DefenseContext, Strength
from cleanbench.losses import cleanclip_loss
from cleanbench.seeding import derive_seed, torch_generator
from cleanbench.synonyms import check_source_name, synonym_source
from cleanbench.trainer import Batch, Batches, Objective, TrainConfig

if TYPE_CHECKING:
    from cleanbench.models import ModelBundle

REFERENCE_TRAINING: dict[str, Any] = dict(
    epochs=10, batch_size=64, lr=1e-5, warmup_steps=50, weight_decay=0.1, beta1=0.9, beta2=0.999, eps=1e-8
)
"""The reference's optimisation settings for every contrastive defense (docs/reference.md §3.3)."""

LR_GRID: tuple[float, ...] = (5e-5, 1e-4, 2e-4, 5e-4)
"""Learning rates `cleanbench tune` tries for a finetuning defense, weakest first: 1/40 to 1/4 of
the tiny model's pretraining lr (2e-3), i.e. well below it, as a defender's finetuning is."""


@dataclass
class TrainingOptions:
    """Optimisation hyper-parameters of a finetuning defense (AdamW, linear warm-up, cosine decay)."""

    epochs: int = 10
    batch_size: int = 128
    lr: float = 2e-3
    warmup_steps: int = 0
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 2:
            raise ValueError("epochs must be >= 1 and batch_size >= 2")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, not {self.lr}")
        if self.warmup_steps < 0 or self.weight_decay < 0:
            raise ValueError("warmup_steps and weight_decay must be >= 0")

    def train_config(self) -> TrainConfig:
        """The trainer's configuration."""
        return TrainConfig(
            epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, warmup_steps=self.warmup_steps,
            weight_decay=self.weight_decay, beta1=self.beta1, beta2=self.beta2, eps=self.eps,
        )


@dataclass
class ViewOptions(TrainingOptions):
    """Training options plus the augmented views of the in-modal losses (benchmark/augment.py)."""

    image_view: str = "autoaugment"
    synonyms: str = "embedded"

    def __post_init__(self) -> None:
        super().__post_init__()
        image_view(self.image_view)  # raises on an unknown view
        check_source_name(self.synonyms)  # raises on an unknown source, or on `wordnet` without WordNet


class ContrastiveFinetune(Defense):
    """Finetune on the clean pairs with lambda1 * L_CLIP + lambda2 * L_SS; subclasses set the weights."""

    Options: ClassVar[type] = TrainingOptions
    strength: ClassVar[Strength] = Strength("lr", LR_GRID)

    def objective_weights(self) -> tuple[float, float]:
        """(lambda1, lambda2): the weights of the cross-modal and the in-modal terms."""
        raise NotImplementedError

    def prepare(self, bundle: ModelBundle, context: DefenseContext) -> tuple[Batches, Objective, int]:
        """The batches (with the text views, made here once), the objective and the encoded items per
        pair that `apply` trains with; `cleanbench bench` times these."""
        options = self.options
        clip_weight, inmodal_weight = self.objective_weights()
        clean = context.clean
        tensors = {"images": clean.images.to(context.device), "tokens": bundle.tokenizer(clean.captions).to(context.device)}
        items_per_pair = 1
        view = None
        if inmodal_weight:
            eda = EDA(seed=derive_seed(context.seed, self.name, "eda"), synonyms=synonym_source(options.synonyms))
            tensors["text_views"] = bundle.tokenizer(eda.views(clean.captions)).to(context.device)
            context.notes["text_view_operations"] = eda.operations
            context.notes["synonyms_from"] = eda.source.origin
            context.notes["image_view"] = options.image_view
            view = image_view(options.image_view)
            items_per_pair = 2
        generator = torch_generator(derive_seed(context.seed, self.name, "views"))

        def objective(model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
            images, tokens = batch["images"], batch["tokens"]
            count = len(images)
            if view is not None:
                images = torch.cat([images, view(images, generator)])
                tokens = torch.cat([tokens, batch["text_views"]])
            image_features = model.encode_image(bundle.model_input(images), normalize=True)
            text_features = model.encode_text(tokens, normalize=True)
            scale = model.logit_scale.exp()
            return cleanclip_loss(
                image_features[:count], text_features[:count], image_features[count:], text_features[count:],
                scale, clip_weight, inmodal_weight,
            )

        return Batches(tensors, options.batch_size), objective, items_per_pair

    def apply(self, bundle: ModelBundle, context: DefenseContext) -> nn.Module:
        batches, objective, items_per_pair = self.prepare(bundle, context)
        context.finetune(bundle.model, batches, objective, self.options.train_config(), f"defense:{self.name}",
                         items_per_pair)
        return bundle.model
