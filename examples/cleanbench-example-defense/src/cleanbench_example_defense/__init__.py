"""noisy-finetune: an example cleanbench defense that lives outside cleanbench.

It perturbs the image tower's weights with seeded Gaussian noise, then finetunes the whole model on
the clean pairs with the CLIP loss, using cleanbench's shared trainer (`DefenseContext.finetune`).
Everything a defense needs is public API: `Defense`, `DefenseContext`, `TrainingOptions` (the
finetuning hyper-parameters, extended here by `noise`), `clip_objective`, the trainer's
`Batches`, and the seeding helpers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from cleanbench.defenses import Defense, DefenseContext, TrainingOptions, clip_objective
from cleanbench.seeding import derive_seed, torch_generator
from cleanbench.trainer import Batches

if TYPE_CHECKING:  # only annotations use it: listing the plugin does not import open_clip
    from cleanbench.models import ModelBundle

__all__ = ["NoisyFinetune", "NoisyFinetuneOptions"]


@dataclass
class NoisyFinetuneOptions(TrainingOptions):
    """The finetuning hyper-parameters (`TrainingOptions`: epochs, batch size, AdamW and schedule)
    plus the noise; each can be set with `--defense-opt KEY=VALUE` or YAML `defense_options:`."""

    noise: float = 0.1
    """Noise standard deviation, relative to each weight tensor's own standard deviation."""
    epochs: int = 5
    lr: float = 1e-3

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.noise < 0:
            raise ValueError(f"noise must be >= 0, not {self.noise}")


class NoisyFinetune(Defense):
    """Perturb the image tower's weights, then finetune on clean pairs with the CLIP loss."""

    name = "noisy-finetune"
    description = "perturb the image tower's weights with seeded noise, then finetune with the CLIP loss (example plugin)"
    source = "cleanbench-example-defense (an example, not a published defense)"
    stage = "post-training finetuning"
    needs = frozenset({"clean_pairs"})
    Options = NoisyFinetuneOptions
    version = "2"

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
        batches = Batches(
            {"images": clean.images.to(context.device), "tokens": bundle.tokenizer(clean.captions).to(context.device)},
            options.batch_size,
        )
        context.finetune(model, batches, clip_objective(bundle), options.train_config(), stage=f"defense:{self.name}")
        return model
