"""Model factory: every model is an open_clip CLIP, built offline or from local weights.

`cleanbench-tiny` (the default) is registered as an open_clip model config whose image tower is the
timm-registered `cleanbench_tinycnn`; its tokenizer is open_clip's BPE tokenizer remapped onto the
embedded dataset's vocabulary. Any other name goes to `open_clip.create_model` with `pretrained` a
tag (resolved through open_clip's cache) or a local file.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from torch import nn

from cleanbench import tiny_tower  # noqa: F401  (registers the timm tower)
from cleanbench.data.embedded import vocabulary_words
from cleanbench.errors import RunError, UsageError
from cleanbench.text import CompactTokenizer

TINY_MODEL = "cleanbench-tiny"
_CONFIG_DIR = Path(__file__).parent / "model_configs"
open_clip.add_model_config(_CONFIG_DIR)


@dataclass
class ModelBundle:
    """An open_clip CLIP with the tokenizer and input normalisation that belong to it."""

    model: nn.Module
    tokenizer: Callable[[Sequence[str]], torch.Tensor]
    name: str
    image_size: int
    mean: tuple[float, float, float] = OPENAI_DATASET_MEAN
    std: tuple[float, float, float] = OPENAI_DATASET_STD

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Float images in [0, 1] -> the model's normalised input."""
        mean = torch.tensor(self.mean, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
        return (images - mean) / std

    def model_input(self, images_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 images -> normalised float input at the model's resolution."""
        images = images_uint8.float().div_(255)
        if images.shape[-1] != self.image_size or images.shape[-2] != self.image_size:
            images = nn.functional.interpolate(
                images, size=(self.image_size, self.image_size), mode="bicubic", antialias=True
            ).clamp_(0, 1)
        return self.normalize(images)


@contextlib.contextmanager
def _quiet_root_logger(enabled: bool):
    """Silence open_clip's "no pretrained weights loaded" warning for models built from scratch."""
    logger = logging.getLogger()
    level = logger.level
    if enabled:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def available_models() -> list[str]:
    """Model names open_clip can build (cleanbench-tiny included)."""
    return open_clip.list_models()


def tokenizer_for(name: str) -> Callable[[Sequence[str]], torch.Tensor]:
    """The tokenizer that belongs to model `name`."""
    if name == TINY_MODEL:
        return CompactTokenizer(vocabulary_words(), context_length=24)
    return open_clip.get_tokenizer(name)


def check_model(name: str, pretrained: str | None = None) -> None:
    """UsageError unless open_clip knows `name` (and `pretrained` fits it); no weights are read."""
    if name not in open_clip.list_models():
        import difflib

        close = difflib.get_close_matches(name, open_clip.list_models(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see `cleanbench list models`"
        raise UsageError(f"unknown model {name!r}{hint}")
    if pretrained and name == TINY_MODEL and not os.path.isfile(pretrained):
        raise UsageError(f"{TINY_MODEL} has no pretrained tags; pass a checkpoint file with --pretrained PATH")


def build_model(name: str = TINY_MODEL, pretrained: str | None = None, device: str = "cpu") -> ModelBundle:
    """Build model `name` (random init, or `pretrained` tag/file) on `device`."""
    check_model(name, pretrained)
    try:
        with _quiet_root_logger(pretrained is None):
            model = open_clip.create_model(name, pretrained=pretrained, device=device)
    except RuntimeError as error:
        raise RunError(
            f"could not load weights {pretrained!r} for {name}: {error}. Offline, put the weights in "
            "open_clip's cache or pass a local file with --pretrained PATH"
        ) from error
    image_size = model.visual.image_size
    image_size = image_size[0] if isinstance(image_size, (tuple, list)) else int(image_size)
    mean = getattr(model.visual, "image_mean", None) or OPENAI_DATASET_MEAN
    std = getattr(model.visual, "image_std", None) or OPENAI_DATASET_STD
    return ModelBundle(model, tokenizer_for(name), name, image_size, tuple(mean), tuple(std))
