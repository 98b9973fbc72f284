"""PAR, Perturb and Recover (Singh, Croce, Hein, arXiv 2412.00727): finetune the poisoned model on
clean pairs with L = L_CLIP - 1/2 [h(D_I) + h(D_T)] (`cleanbench.losses.par_loss`).

D_I and D_T are the batch-mean squared distances between the trained model's and a frozen copy of
the poisoned model's normalised embeddings of the same (augmented) images and captions; h(D) = D
while D <= tau and 0 beyond. So both towers are pushed away from the poisoned embeddings until
their mean distance reaches tau (2.15: a mean cosine of about -0.08 to the old embedding), while
the CLIP loss, at the frozen model's temperature, recovers the image-text alignment. The images
are augmented as in the paper: with probability 0.5, clipped Gaussian noise (std 0.2, positive
part only) is added, then with probability 0.5 a square of 0.5-1 % of the image is set to 0 after
normalisation. No trigger knowledge, no poisoned data.

The paper's settings (`REFERENCE_OPTIONS`): 2 epochs over 250k CC3M pairs, batch 2048, AdamW
(0.9, 0.98), weight decay 1e-4, lr 3e-5 falling linearly to 3e-6 over the first half and then by a
cosine to 0. Here the shared trainer's schedule (no warm-up, cosine from the peak) replaces theirs,
and the defaults are the standard setting's (docs/defenses.md, "PAR"): the other defenses' 180
steps (10 epochs of batch 64 over the 1,200 clean pairs) and lr 1.2e-4, the paper's lr scaled by
the ratio of pretraining learning rates (3e-5 / 5e-4 x 2e-3). The strength knob is the lr, over
the other finetuning defenses' grid: in the paper tau trades CA against ASR, but on the standard
setting the push never reaches even tau = 0.5 within the 180 steps (mean squared distance 0.17 for
images, 0.02 for captions at lr 1.2e-4), so every tau gives the same model and only the lr sets
how far the push goes (docs/par.md).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from cleanbench.defenses.base import Defense, DefenseContext, Strength
from cleanbench.defenses.contrastive import LR_GRID, TrainingOptions
from cleanbench.losses import par_loss
from cleanbench.seeding import derive_seed, torch_generator
from cleanbench.trainer import Batch, InMemoryBatches, Objective, pair_batches

if TYPE_CHECKING:
    from cleanbench.models import ModelBundle

REFERENCE_OPTIONS: dict[str, Any] = dict(
    epochs=2, batch_size=2048, lr=3e-5, warmup_steps=0, weight_decay=1e-4, beta1=0.9, beta2=0.98, eps=1e-8, tau=2.15,
)
"""The paper's settings (ViT-B/32, 250k CC3M pairs, 4 GPUs x 512); its lr schedule differs (above)."""


@dataclass
class PAROptions(TrainingOptions):
    """PAR's hyper-parameters: training, the push threshold `tau`, and the image augmentation."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 1.2e-4
    weight_decay: float = 1e-4
    beta2: float = 0.98
    tau: float = 2.15
    noise_probability: float = 0.5
    noise_std: float = 0.2
    erase_probability: float = 0.5
    erase_min_area: float = 0.005
    erase_max_area: float = 0.01

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.tau <= 4:
            raise ValueError(f"tau must be in (0, 4] (squared distance of unit vectors), not {self.tau}")
        for name in ("noise_probability", "erase_probability"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], not {getattr(self, name)}")
        if self.noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, not {self.noise_std}")
        if not 0 < self.erase_min_area <= self.erase_max_area < 1:
            raise ValueError("erase areas must satisfy 0 < erase_min_area <= erase_max_area < 1 (fractions of the image)")


def par_view(bundle: ModelBundle, images: torch.Tensor, options: PAROptions, generator: torch.Generator) -> torch.Tensor:
    """PAR's augmentation of uint8 images, as the model's normalised input: per image, with
    `noise_probability`, x + clip(N(0, noise_std^2), 0, 1) clipped to [0, 1]; after normalisation, with
    `erase_probability`, a square of `erase_min_area`..`erase_max_area` of the image set to 0."""
    count, _, height, width = images.shape
    x = images.float().div(255)
    noise = (torch.randn(x.shape, generator=generator) * options.noise_std).clamp_(0, 1).to(x.device)
    noisy = (torch.rand(count, generator=generator) < options.noise_probability).to(x.device)
    x = torch.where(noisy.view(-1, 1, 1, 1), (x + noise).clamp_(0, 1), x)
    x = bundle.float_input(x)
    height, width = x.shape[-2:]
    area = torch.empty(count).uniform_(options.erase_min_area, options.erase_max_area, generator=generator)
    side = (area * height * width).sqrt().round().clamp(1, min(height, width)).long()
    top = (torch.rand(count, generator=generator) * (height - side + 1)).long()
    left = (torch.rand(count, generator=generator) * (width - side + 1)).long()
    erase = torch.rand(count, generator=generator) < options.erase_probability
    rows, cols = torch.arange(height), torch.arange(width)
    inside_rows = (rows >= top[:, None]) & (rows < (top + side)[:, None])
    inside_cols = (cols >= left[:, None]) & (cols < (left + side)[:, None])
    mask = (inside_rows[:, :, None] & inside_cols[:, None, :] & erase[:, None, None]).to(x.device)
    return x.masked_fill(mask[:, None], 0.0)


class PAR(Defense):
    """Push both towers' embeddings away from the frozen poisoned model's (up to tau) while the CLIP
    loss on clean pairs recovers the alignment."""

    name = "par"
    description = "finetune on clean pairs with the CLIP loss minus a thresholded push away from the poisoned embeddings (tau)"
    source = "Singh, Croce, Hein, Perturb and Recover, arXiv 2412.00727"
    Options = PAROptions
    strength: ClassVar[Strength] = Strength("lr", LR_GRID)

    def prepare(
        self, bundle: ModelBundle, context: DefenseContext
    ) -> tuple[InMemoryBatches, Objective, list[tuple[float, float]]]:
        """The batches and the objective (with the frozen copy of the poisoned model) that `apply`
        trains with, and the list to which the objective appends each step's (D_I, D_T)."""
        options = self.options
        frozen = copy.deepcopy(bundle.model).requires_grad_(False)
        generator = torch_generator(derive_seed(context.seed, self.name, "views"))
        distances: list[tuple[float, float]] = []

        def objective(model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
            images = par_view(bundle, batch["images"], options, generator)
            tokens = batch["tokens"]
            frozen.train(model.training)  # the same mode (batch-norm statistics): D measures the weights' change
            with torch.no_grad():
                frozen_images = frozen.encode_image(images, normalize=True)
                frozen_texts = frozen.encode_text(tokens, normalize=True)
                scale = frozen.logit_scale.exp()
            parts = par_loss(model.encode_image(images, normalize=True), model.encode_text(tokens, normalize=True),
                             frozen_images, frozen_texts, scale, options.tau)
            distances.append((float(parts["image_distance"]), float(parts["text_distance"])))
            return parts

        return pair_batches(bundle, context.clean, context.device, options.batch_size), objective, distances

    def apply(self, bundle: ModelBundle, context: DefenseContext) -> nn.Module:
        batches, objective, distances = self.prepare(bundle, context)
        context.finetune(bundle.model, batches, objective, self.options.train_config(), f"defense:{self.name}")
        tau = self.options.tau
        context.notes["push"] = {
            "final_image_distance": round(distances[-1][0], 4), "final_text_distance": round(distances[-1][1], 4),
            "steps_pushing_images": sum(d[0] <= tau for d in distances),
            "steps_pushing_texts": sum(d[1] <= tau for d in distances), "steps": len(distances),
        }
        return bundle.model
