"""noisy-finetune: an example cleanbench defense that lives outside cleanbench.

It perturbs the image tower's weights with seeded Gaussian noise, then finetunes the whole model on
the clean pairs with the CLIP loss, using cleanbench's shared trainer (`DefenseContext.finetune`).
Everything a defense needs is public API: `Defense`, `DefenseContext`, the trainer's
`InMemoryBatches` and `TrainConfig`, `clip_loss`, and the seeding helpers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from cleanbench.defenses import Defense, DefenseContext
from cleanbench.losses import clip_loss
from cleanbench.seeding import derive_seed, torch_generator
from cleanbench.trainer import Batch, InMemoryBatches, TrainConfig

if TYPE_CHECKING:  # only annotations use it: listing the plugin does not import open_clip
    from cleanbench.models import ModelBundle

__all__ = ["NoisyFinetune", "NoisyFinetuneOptions"]


@dataclass
class NoisyFinetuneOptions:
    """Hyper-parameters; each can be set with `--defense-opt KEY=VALUE` or YAML `defense_options:`."""

    noise: float = 0.1
    """Noise standard deviation, relative to each weight tensor's own standard deviation."""
    epochs: int = 5
    batch_size: int = 128
    lr: float = 1e-3

    def __post_init__(self) -> None:
        if self.noise < 0:
            raise ValueError(f"noise must be >= 0, not {self.noise}")
        if self.epochs < 1 or self.batch_size < 2 or self.lr <= 0:
            raise ValueError("epochs must be >= 1, batch_size >= 2 and lr > 0")


class NoisyFinetune(Defense):
    """Perturb the image tower's weights, then finetune on clean pairs with the CLIP loss."""

    name = "noisy-finetune"
    description = "perturb the image tower's weights with seeded noise, then finetune with the CLIP loss (example plugin)"
    source = "cleanbench-example-defense (an example, not a published defense)"
    stage = "post-training finetuning"
    needs = frozenset({"clean_pairs"})
    Options = NoisyFinetuneOptions
    version = "1"

    def apply(self, bundle: ModelBundle, context: DefenseContext) -> nn.Module:
        model, options = bundle.model, self.options
        generator = torch_generator(derive_seed(context.seed, self.name, "noise"))
        with torch.no_grad():
            for parameter in model.visual.parameters():
                if parameter.dim() > 1:  # weight matrices and kernels, not biases or norms
                    noise = torch.randn(parameter.shape, generator=generator).to(parameter.device)
                    parameter.add_(noise * options.noise * parameter.std())
        context.notes["noise"] = options.noise

        clean = context.clean
        batches = InMemoryBatches(
            {"images": clean.images.to(context.device), "tokens": bundle.tokenizer(clean.captions).to(context.device)},
            options.batch_size,
        )

        def objective(model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
            images = model.encode_image(bundle.model_input(batch["images"]), normalize=True)
            texts = model.encode_text(batch["tokens"], normalize=True)
            return {"loss": clip_loss(images, texts, model.logit_scale.exp())}

        config = TrainConfig(epochs=options.epochs, batch_size=options.batch_size, lr=options.lr, warmup_steps=0)
        context.finetune(model, batches, objective, config, stage=f"defense:{self.name}")
        return model
