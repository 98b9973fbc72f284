"""BadCLIP: a patch optimised on a clean surrogate CLIP, guided by two embeddings (Liang et al., CVPR 2024).

The patch sits at the image centre. It is optimised with Adam on the frozen surrogate so that a
patched image's embedding
- matches a natural caption of the target (the CLIP loss between the patched images and captions of
  the pretraining set that name the target: the text-embedding term), and
- lies nearer a real target-class image than the same image without the patch (a triplet margin
  loss on the L2-normalised embeddings, anchor the patched image, positive a random target-class
  image, negative the clean image: the image-embedding term, weighted `image_weight`).

The optimisation images are pretraining images not of the target, each paired once with a random
caption of the pool; with probability `aug_prob` a batch image is an augmented view (crop, flip,
colour jitter) before the patch is pasted. The poisoned pairs get the patch and a caption drawn
from the same pool of natural target captions. Sizes are at the 224-px scale (`Attack.pixels`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from cleanbench.attacks.base import Attack, FittedTrigger, Surrogate, _names, quantize
from cleanbench.augment import crop_jitter_view
from cleanbench.data.base import PairSet
from cleanbench.losses import clip_loss

EMBED_BATCH = 256
"""Images or captions embedded at once when the fixed embeddings are computed."""


@dataclass
class BadCLIPOptions:
    """Options of the BadCLIP patch and its optimisation; `patch_size` in pixels at 224 px."""

    patch_size: int = 28
    epochs: int = 5
    batch_size: int = 64
    lr: float = 0.01
    max_pairs: int = 10_000
    caption_pool: int = 128
    image_weight: float = 500.0
    margin: float = 1.0
    aug_prob: float = 0.5

    def __post_init__(self) -> None:
        if self.patch_size < 1:
            raise ValueError("patch_size must be >= 1")
        if min(self.epochs, self.batch_size, self.max_pairs, self.caption_pool) < 1:
            raise ValueError("epochs, batch_size, max_pairs and caption_pool must be >= 1")
        if self.lr <= 0 or self.image_weight < 0 or self.margin < 0:
            raise ValueError("lr must be > 0, image_weight and margin >= 0")
        if not 0 <= self.aug_prob <= 1:
            raise ValueError(f"aug_prob must be in [0, 1], not {self.aug_prob}")


class BadCLIP(Attack):
    """A centred patch optimised on a clean surrogate towards the target's text and image embeddings."""

    name = "badclip"
    description = "centred patch optimised on a clean surrogate (dual-embedding guided), natural target captions"
    paper = "Liang et al., BadCLIP: Dual-Embedding Guided Backdoor Attack on Multimodal Contrastive Learning, CVPR 2024"
    Options = BadCLIPOptions
    needs_surrogate = True

    def setup(self, generator: torch.Generator) -> None:
        self.size = self.pixels(self.options.patch_size)
        if self.size > self.image_size:
            raise ValueError(f"patch of {self.size} px does not fit a {self.image_size}-px image")
        self.corner = (self.image_size - self.size) // 2
        self.patch = (0.5 + 0.25 * torch.randn(3, self.size, self.size, generator=generator)).clamp(0, 1)
        self.captions: list[str] = []

    def sample(self, count: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return {}

    def paste(self, images: torch.Tensor, patch: torch.Tensor) -> torch.Tensor:
        """`images` (a new tensor) with `patch` at the centre; differentiable in `patch`."""
        out = images.clone()
        end = self.corner + self.size
        out[:, :, self.corner : end, self.corner : end] = patch.to(device=images.device, dtype=images.dtype)
        return out

    def apply(self, images: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.paste(images, self.patch)

    def apply_uint8(self, images: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """Only the patch is rounded; the rest of the image is copied."""
        return self.paste(images, quantize(self.patch))

    def poison_caption(self, caption: str, target_name: str, templates: Sequence[str], rng: random.Random) -> str:
        """A natural caption of the target from the fitted pool (a template before `fit`)."""
        if not self.fitted:
            return super().poison_caption(caption, target_name, templates, rng)
        return self.captions[rng.randrange(len(self.captions))]

    def fit(self, surrogate: Surrogate, pairs: PairSet, target_index: int, target_name: str,
            generator: torch.Generator) -> FittedTrigger:
        o = self.options
        pool = natural_captions(pairs, target_name, o.caption_pool, generator)
        sources = self.candidates(pairs, target_index, target_name)
        sources = sources[torch.randperm(len(sources), generator=generator)[: o.max_pairs]]
        captions_of = torch.randint(len(pool), (len(sources),), generator=generator)
        device = surrogate.device
        with torch.no_grad():
            texts = torch.cat([surrogate.encode_texts(pool[i : i + EMBED_BATCH]) for i in range(0, len(pool), EMBED_BATCH)])
            positives = _embed_images(surrogate, pairs, target_rows(pairs, target_index, target_name)[: o.max_pairs])
        patch = self.patch.clone().to(device).requires_grad_(True)
        optimiser = torch.optim.Adam([patch], lr=o.lr)
        view, scale = crop_jitter_view(), torch.tensor(surrogate.logit_scale, device=device)
        history: list[list[float]] = []
        for _ in range(o.epochs):
            sums, batches = torch.zeros(3), 0
            order = torch.randperm(len(sources), generator=generator)
            for start in range(0, len(order), o.batch_size):
                rows = order[start : start + o.batch_size]
                images = _augmented(pairs.images[sources[rows]], view, o.aug_prob, generator).to(device).float().div(255)
                positive = positives[torch.randint(len(positives), (len(rows),), generator=generator).to(device)]
                with torch.no_grad():
                    clean = surrogate.encode_images(images)
                patched = surrogate.encode_images(self.paste(images, patch))
                text_loss = clip_loss(patched, texts[captions_of[rows].to(device)], scale)
                image_loss = F.triplet_margin_loss(patched, positive, clean, margin=o.margin)
                loss = text_loss + o.image_weight * image_loss
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                with torch.no_grad():
                    patch.clamp_(0, 1)
                sums += torch.stack([loss.detach(), text_loss.detach(), image_loss.detach()]).cpu()
                batches += 1
            history.append((sums / batches).tolist())
        losses = [dict(zip(("loss", "text_loss", "image_loss"), epoch)) for epoch in (history[0], history[-1])]
        fitted = FittedTrigger({"patch": patch.detach().cpu()}, {
            "steps": o.epochs * -(-len(sources) // o.batch_size), "pairs": len(sources), "positives": len(positives),
            "first_epoch_losses": losses[0], "final_losses": losses[1], "captions": pool})
        self.restore(fitted)
        return fitted

    def restore(self, fitted: FittedTrigger) -> None:
        patch = fitted.tensors["patch"].detach().cpu().float()
        if patch.shape != (3, self.size, self.size):
            raise ValueError(f"a fitted patch of shape {tuple(patch.shape)} does not fit this attack's "
                             f"{self.size}-px patch")
        self.patch = patch.clamp(0, 1)
        self.captions = list(fitted.record["captions"])
        self.fitted = True

    def describe(self) -> dict:
        return {**super().describe(), "patch_pixels": self.size, "corner_pixels": self.corner,
                "fitted": self.fitted}


def natural_captions(pairs: PairSet, target_name: str, count: int, generator: torch.Generator) -> list[str]:
    """Up to `count` distinct pretraining captions that name the target, chosen at random (sorted
    first, so the choice depends on the captions only). ValueError when none names it."""
    named = sorted({caption for caption in pairs.captions if _names(caption, target_name)})
    if not named:
        raise ValueError(f"no pretraining caption names the target {target_name!r}: BadCLIP needs natural "
                         "target captions; choose a target that the captions name")
    return [named[i] for i in torch.randperm(len(named), generator=generator)[:count].tolist()]


def target_rows(pairs: PairSet, target_index: int, target_name: str) -> torch.Tensor:
    """Indices of the target's images: by label where it is known, else by a caption that names it."""
    by_caption = torch.tensor([_names(c, target_name) for c in pairs.captions], dtype=torch.bool)
    rows = torch.nonzero(torch.where(pairs.labels >= 0, pairs.labels == target_index, by_caption)).flatten()
    if len(rows) == 0:
        raise ValueError(f"no pretraining image shows the target {target_name!r}: BadCLIP needs target images")
    return rows


def _embed_images(surrogate: Surrogate, pairs: PairSet, rows: torch.Tensor) -> torch.Tensor:
    """The surrogate's embeddings of the images at `rows`."""
    chunks = [pairs.images[rows[i : i + EMBED_BATCH]].to(surrogate.device).float().div(255)
              for i in range(0, len(rows), EMBED_BATCH)]
    return torch.cat([surrogate.encode_images(chunk) for chunk in chunks])


def _augmented(images: torch.Tensor, view, probability: float, generator: torch.Generator) -> torch.Tensor:
    """uint8 `images` where each is replaced by its augmented view with `probability`."""
    if probability == 0:
        return images
    chosen = (torch.rand(len(images), generator=generator) < probability)[:, None, None, None]
    return torch.where(chosen, view(images, generator), images)
