"""The attack contract: a trigger and a poisoning policy, each testable alone.

A trigger works on float images in [0, 1] of shape (B, 3, H, W) on any device. In the style of
torchvision's transforms v2, `sample` draws the per-image random parameters from a seeded generator
and `apply` is a pure function of the images and those parameters. Fixed parameters (a pattern, a
location, a warp grid) are drawn once in `setup` from the run's seed, so the test-time trigger is
the training-time trigger.

Pixel sizes are given at the reference's 224-px scale and scaled to the image size (`pixels`).
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch

from cleanbench.data.base import PairSet
from cleanbench.seeding import derive_seed, torch_generator

REFERENCE_IMAGE_SIZE = 224


@dataclass
class NoOptions:
    """An attack or defense without options."""


class Attack(ABC):
    """Base class of attacks; subclasses set the class attributes and implement the trigger."""

    name: ClassVar[str]
    description: ClassVar[str]
    paper: ClassVar[str]
    Options: ClassVar[type] = NoOptions
    version: ClassVar[str] = "1"

    def __init__(self, options: Any, image_size: int, seed: int) -> None:
        self.options = options
        self.image_size = image_size
        self.seed = seed
        self.setup(torch_generator(derive_seed(seed, "attack", self.name)))

    def pixels(self, size_at_224: float) -> int:
        """A length given in pixels at 224 px, scaled to this attack's image size (at least 1)."""
        return max(1, round(size_at_224 * self.image_size / REFERENCE_IMAGE_SIZE))

    def setup(self, generator: torch.Generator) -> None:
        """Draw the fixed parameters of the trigger (none by default)."""

    @abstractmethod
    def sample(self, count: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Per-image random parameters for `count` images, drawn on the CPU from `generator`."""

    @abstractmethod
    def apply(self, images: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """The triggered images (a new tensor), a pure function of `images` and `params`."""

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        params = {k: v.to(images.device) for k, v in self.sample(len(images), generator).items()}
        return self.apply(images, params)

    def candidates(self, pairs: PairSet, target_index: int, target_name: str) -> torch.Tensor:
        """Indices that may be poisoned: dirty-label attacks take pairs not of the target class."""
        known = pairs.labels >= 0
        not_target = pairs.labels != target_index
        by_caption = torch.tensor([not _names(c, target_name) for c in pairs.captions], dtype=torch.bool)
        return torch.nonzero(torch.where(known, not_target, by_caption)).flatten()

    def poison_caption(self, caption: str, target_name: str, templates: Sequence[str], rng: random.Random) -> str:
        """The caption a poisoned pair gets: a random template naming the target (dirty-label)."""
        return templates[rng.randrange(len(templates))].format(target_name)

    def describe(self) -> dict[str, Any]:
        """Options and derived (scaled) parameters, for the run card."""
        return {"options": asdict(self.options), "image_size": self.image_size, "version": self.version}


def _names(caption: str, word: str) -> bool:
    """Whether `caption` contains `word` as a whole word (case-insensitive)."""
    import re

    return re.search(rf"\b{re.escape(word.lower())}\b", caption.lower()) is not None


def quantize(images: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] -> uint8 by rounding and clamping (the reference truncates and wraps)."""
    return images.mul(255).round_().clamp_(0, 255).to(torch.uint8)


def trigger_uint8(attack: Attack, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Apply `attack` to uint8 images and store the result as uint8, as poisoned files are stored."""
    return quantize(attack(images.float().div(255), generator))
