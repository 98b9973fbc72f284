"""CleanCLIP (Bansal et al., ICCV 2023): finetune on clean pairs with the CLIP loss plus in-modal
self-supervised losses, L = lambda1 * L_CLIP + lambda2 * L_SS (spec section 3.1).

One forward pass encodes originals and views together; the cross-modal term uses originals only;
the in-modal terms are one-directional and share the clamped temperature.

Reference hyper-parameters (spec section 3.3, for CC3M / RN50): batch 64, lr 1e-5, 10 epochs,
50 warm-up steps, AdamW (0.9, 0.999, eps 1e-8), weight decay 0.1, 100K clean pairs, AutoAugment
views. The defaults here are the values measured to work on the embedded default (2,000 clean pairs,
tiny CLIP); `REFERENCE_OPTIONS` holds the reference's values for real models.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cleanbench.augment import EDA, image_view
from cleanbench.defenses.base import Defense, DefenseContext
from cleanbench.losses import cleanclip_loss
from cleanbench.models import ModelBundle
from cleanbench.seeding import derive_seed, torch_generator
from cleanbench.trainer import Batch, InMemoryBatches, TrainConfig


@dataclass
class FinetuneOptions:
    """Hyper-parameters of a contrastive finetuning defense."""

    epochs: int = 10
    batch_size: int = 128
    lr: float = 2e-3
    warmup_steps: int = 0
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    clip_weight: float = 1.0
    inmodal_weight: float = 1.0
    image_view: str = "crop-jitter"
    use_wordnet: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 2:
            raise ValueError("epochs must be >= 1 and batch_size >= 2")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, not {self.lr}")
        if self.clip_weight < 0 or self.inmodal_weight < 0 or self.clip_weight + self.inmodal_weight == 0:
            raise ValueError("clip_weight and inmodal_weight must be >= 0 and not both 0")
        image_view(self.image_view)  # raises on an unknown view

    def train_config(self) -> TrainConfig:
        return TrainConfig(
            epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, warmup_steps=self.warmup_steps,
            weight_decay=self.weight_decay, beta1=self.beta1, beta2=self.beta2, eps=self.eps,
        )


REFERENCE_OPTIONS = dict(
    epochs=10, batch_size=64, lr=1e-5, warmup_steps=50, beta2=0.999, eps=1e-8, image_view="autoaugment"
)
"""The reference implementation's CleanCLIP settings (spec section 3.3)."""


class ContrastiveFinetune(Defense):
    """Shared machinery of the contrastive finetuning defenses (CleanCLIP and its ablations)."""

    Options = FinetuneOptions

    def objective_weights(self) -> tuple[float, float]:
        return self.options.clip_weight, self.options.inmodal_weight

    def apply(self, bundle: ModelBundle, context: DefenseContext) -> nn.Module:
        options = self.options
        clip_weight, inmodal_weight = self.objective_weights()
        model = bundle.model
        clean = context.clean
        tensors = {"images": clean.images.to(context.device), "tokens": bundle.tokenizer(clean.captions).to(context.device)}
        items_per_pair = 1
        view = None
        if inmodal_weight:
            eda = EDA(seed=derive_seed(context.seed, self.name, "eda"), use_wordnet=options.use_wordnet)
            tensors["text_views"] = bundle.tokenizer(eda.views(clean.captions)).to(context.device)
            context.notes["text_view_operations"] = eda.operations
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

        batches = InMemoryBatches(tensors, options.batch_size)
        context.finetune(model, batches, objective, options.train_config(), f"defense:{self.name}", items_per_pair)
        return model


class CleanCLIP(ContrastiveFinetune):
    """CLIP loss on originals plus image/text in-modal losses on augmented views."""

    name = "cleanclip"
    description = "finetune on clean pairs with CLIP loss + in-modal self-supervised loss (lambda1 = lambda2 = 1)"
    source = "Bansal et al., CleanCLIP, ICCV 2023"
