"""Contrastive losses (docs/reference.md §3.1).

With s the exponentiated, clamped logit scale and L2-normalised embeddings:
- L_CLIP = 1/2 [CE(s I T^T, diag) + CE(s T I^T, diag)]  (open_clip's ClipLoss),
- L_SS   = 1/2 [CE(s I I~^T, diag) + CE(s T T~^T, diag)]: rows are the originals, columns the
  augmented views, one direction only, as in the CleanCLIP reference.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F

if TYPE_CHECKING:
    from cleanbench.models import ModelBundle


@functools.cache
def _open_clip_loss() -> torch.nn.Module:
    from open_clip.loss import ClipLoss  # imported when a loss is computed, not when a plugin is listed

    return ClipLoss()


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE between matching image and text embeddings."""
    return _open_clip_loss()(image_features, text_features, logit_scale)


def clip_objective(bundle: ModelBundle) -> Callable[[nn.Module, dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
    """The CLIP training objective for the trainer: L_CLIP between a batch's `images` (uint8, made the
    model's input by `bundle.model_input`) and its tokenised `tokens`. Pretraining uses it, and so can
    a finetuning defense: `context.finetune(model, batches, clip_objective(bundle), ...)`."""

    def objective(model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        images = model.encode_image(bundle.model_input(batch["images"]), normalize=True)
        texts = model.encode_text(batch["tokens"], normalize=True)
        return {"loss": clip_loss(images, texts, model.logit_scale.exp())}

    return objective


def inmodal_loss(originals: torch.Tensor, views: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """One-directional InfoNCE: each original must pick its own augmented view among the batch's."""
    logits = logit_scale * originals @ views.T
    return F.cross_entropy(logits, torch.arange(len(originals), device=originals.device))


def cleanclip_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    image_view_features: torch.Tensor,
    text_view_features: torch.Tensor,
    logit_scale: torch.Tensor,
    clip_weight: float = 1.0,
    inmodal_weight: float = 1.0,
) -> dict[str, torch.Tensor]:
    """lambda1 * L_CLIP (originals only) + lambda2 * L_SS; returns the total and both parts."""
    parts: dict[str, torch.Tensor] = {}
    total = image_features.new_zeros(())
    if clip_weight:
        parts["clip"] = clip_loss(image_features, text_features, logit_scale)
        total = total + clip_weight * parts["clip"]
    if inmodal_weight:
        parts["inmodal"] = 0.5 * (
            inmodal_loss(image_features, image_view_features, logit_scale)
            + inmodal_loss(text_features, text_view_features, logit_scale)
        )
        total = total + inmodal_weight * parts["inmodal"]
    parts["loss"] = total
    return parts


def thresholded_distance(features: torch.Tensor, reference: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """PAR's push term h(D): D = the batch mean of ||features - reference||^2, kept where D <= tau and
    0 (no gradient) beyond it; returns (h(D), D detached)."""
    distance = (features - reference).pow(2).sum(dim=1).mean()
    return torch.where(distance <= tau, distance, distance.new_zeros(())), distance.detach()


def par_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    frozen_image_features: torch.Tensor,
    frozen_text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    tau: float,
) -> dict[str, torch.Tensor]:
    """Perturb and Recover (Singh et al. 2024): L = L_CLIP - 1/2 [h(D_I) + h(D_T)], with D the mean
    squared distance between the trained and the frozen model's normalised embeddings of the same
    inputs; returns the total, `clip`, and `image_distance` / `text_distance` (D, detached)."""
    push_image, image_distance = thresholded_distance(image_features, frozen_image_features, tau)
    push_text, text_distance = thresholded_distance(text_features, frozen_text_features, tau)
    clip = clip_loss(image_features, text_features, logit_scale)
    return {"loss": clip - 0.5 * (push_image + push_text), "clip": clip,
            "image_distance": image_distance, "text_distance": text_distance}
