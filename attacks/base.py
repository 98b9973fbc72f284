"""The attack contract: a trigger and a poisoning policy, each testable alone.

A trigger works on float images in [0, 1] of shape (B, 3, H, W) on any device. In the style of
torchvision's transforms v2, `sample` draws the per-image random parameters from a seeded generator
and `apply` is a pure function of the images and those parameters. Fixed parameters (a pattern, a
location, a warp grid) are drawn once in `setup` from the run's seed, so the test-time trigger is
the training-time trigger.

Pixel sizes are given at the reference's 224-px scale and scaled to the image size (`pixels`).

Poisoned and triggered test images are stored as uint8: `trigger_uint8` samples the parameters and
calls `apply_uint8`, which by default is `quantize(apply(images / 255, params))`. An attack may
override `apply_uint8` with a cheaper path that gives the same bytes (a patch attack rounds only its
patch; the rest of the image is unchanged); an attack whose `apply` treats every image on its own
sets `per_image`, and the default then runs on cache-sized chunks of the batch on the CPU.

An attack whose trigger is optimised on a model sets `needs_surrogate`: before the poison stage the
runner hands `fit` a frozen clean `Surrogate` (the setting's clean-control model, or the
`--pretrained` weights the victim starts from) and the clean pretraining pairs; `fit` optimises the
trigger from the run's seed and returns it as a `FittedTrigger`, which the runner caches like a
model and gives back through `restore` when it is reused.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import torch

from cleanbench.data.base import PairSet
from cleanbench.options import NoOptions
from cleanbench.seeding import derive_seed, torch_generator

REFERENCE_IMAGE_SIZE = 224


@dataclass
class Surrogate:
    """A frozen clean CLIP that an attack may optimise its trigger on.

    `encode_images` maps float images in [0, 1] of shape (B, 3, H, W) at the attack's image size to
    L2-normalised embeddings and is differentiable in its input; `encode_texts` maps captions to
    L2-normalised embeddings; `logit_scale` is the model's exponentiated logit scale."""

    encode_images: Callable[[torch.Tensor], torch.Tensor]
    encode_texts: Callable[[Sequence[str]], torch.Tensor]
    logit_scale: float
    device: torch.device


@dataclass
class FittedTrigger:
    """An optimised trigger: its tensors, and a JSON record that the run card shows. The record holds
    `steps` (optimisation steps) and `final_losses` (loss name -> value), plus anything else the
    attack records or `restore` needs (such as the captions the poisons get)."""

    tensors: dict[str, torch.Tensor]
    record: dict[str, Any] = field(default_factory=dict)


class Attack(ABC):
    """Base class of attacks; subclasses set the class attributes and implement the trigger."""

    name: ClassVar[str]
    description: ClassVar[str]
    paper: ClassVar[str]
    Options: ClassVar[type] = NoOptions
    version: ClassVar[str] = "1"
    random_version: ClassVar[str | None] = None
    """The version of the option sets with per-image random parameters (`draws_random`), where a
    change touched only them (None: `version` for all); see `version_for`."""
    per_image: ClassVar[bool] = False
    """Whether `apply` gives every image the same bytes whatever batch it is in (and every param's
    first dimension is the image), so the uint8 path may split the batch."""
    needs_surrogate: ClassVar[bool] = False
    """Whether the trigger is optimised on a clean surrogate model (`fit`) before poisoning."""
    fitted: bool = False
    """Whether `fit` or `restore` gave this attack its optimised trigger (set by them)."""

    def __init__(self, options: Any, image_size: int, seed: int) -> None:
        self.options = options
        self.image_size = image_size
        self.seed = seed
        self.setup(torch_generator(derive_seed(seed, "attack", self.name)))

    @classmethod
    def draws_random(cls, options: Any) -> bool:
        """Whether under `options` the trigger (or its noise mode) draws per-image random parameters."""
        return False

    @classmethod
    def version_for(cls, options: Any) -> str:
        """The attack's version under `options`, in the cache keys and the run card."""
        if cls.random_version is not None and cls.draws_random(options):
            return cls.random_version
        return cls.version

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

    def apply_uint8(self, images: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """`apply` on uint8 images, rounded back to uint8: `quantize(apply(images / 255, params))`."""
        if not self.per_image:
            return quantize(self.apply(images.float().div(255), params))
        out = torch.empty_like(images)
        for rows in image_chunks(images):
            out[rows] = quantize(self.apply(images[rows].float().div(255), {k: v[rows] for k, v in params.items()}))
        return out

    def sample_to(self, images: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """`sample` for the batch `images`, moved to their device."""
        return {k: v.to(images.device) for k, v in self.sample(len(images), generator).items()}

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.apply(images, self.sample_to(images, generator))

    def candidates(self, pairs: PairSet, target_index: int, target_name: str) -> torch.Tensor:
        """Indices that may be poisoned: dirty-label attacks take pairs not of the target class."""
        known = pairs.labels >= 0
        not_target = pairs.labels != target_index
        by_caption = torch.tensor([not _names(c, target_name) for c in pairs.captions], dtype=torch.bool)
        return torch.nonzero(torch.where(known, not_target, by_caption)).flatten()

    def poison_caption(self, caption: str, target_name: str, templates: Sequence[str], rng: random.Random) -> str:
        """The caption a poisoned pair gets: a random template naming the target (dirty-label)."""
        return templates[rng.randrange(len(templates))].format(target_name)

    def prepare_poisoned(self, pairs: PairSet, indices: list[int], target_name: str, seed: int) -> torch.Tensor | None:
        """The uint8 images that replace the pairs' at `indices` before the trigger, or None to keep
        them (the default; label-consistent perturbs them adversarially first)."""
        return None

    def noise_count(self, budget: int) -> int:
        """How many other training pairs get `noise_mode()` for a poison budget (none by default)."""
        return 0

    def noise_mode(self) -> Attack | None:
        """A transform for extra training images that keep their captions (WaNet's noise mode), or None."""
        return None

    def fit(self, surrogate: Surrogate, pairs: PairSet, target_index: int, target_name: str,
            generator: torch.Generator) -> FittedTrigger:
        """Optimise the trigger on `surrogate` with the clean pretraining `pairs`, drawing every random
        choice from `generator`, and keep it (attacks with `needs_surrogate` implement this)."""
        raise NotImplementedError(f"attack {self.name} does not optimise its trigger on a surrogate")

    def restore(self, fitted: FittedTrigger) -> None:
        """Take back a trigger `fit` returned (loaded from the cache) and set `fitted`: the attack then
        triggers and poisons as right after that `fit`."""
        raise NotImplementedError(f"attack {self.name} does not optimise its trigger on a surrogate")

    def describe(self) -> dict[str, Any]:
        """Options and derived (scaled) parameters, for the run card."""
        return {"options": asdict(self.options), "image_size": self.image_size,
                "version": self.version_for(self.options)}


def _names(caption: str, word: str) -> bool:
    """Whether `caption` contains `word` as a whole word (case-insensitive)."""
    import re

    return re.search(rf"\b{re.escape(word.lower())}\b", caption.lower()) is not None


def quantize(images: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] -> uint8 by rounding and clamping (the reference truncates and wraps).

    The integers 0..255 go through int16, the same bytes as a direct cast, which on the CPU is
    several times slower than the two vectorized casts.
    """
    return images.mul(255).round_().clamp_(0, 255).to(torch.int16).to(torch.uint8)


def trigger_uint8(attack: Attack, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Apply `attack` to uint8 images and store the result as uint8, as poisoned files are stored.

    The same bytes as `quantize(attack(images.float().div(255), generator))`, by `apply_uint8`.
    """
    return apply_uint8(attack, images, attack.sample_to(images, generator))


def _owner(cls: type, name: str) -> type:
    return next(klass for klass in cls.__mro__ if name in vars(klass))


def apply_uint8(attack: Attack, images: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
    """`attack.apply_uint8(images, params)`, unless a subclass overrides `apply` below the class
    whose `apply_uint8` fast path was written for its own `apply`: then the plain round trip through
    the overriding `apply` (a fast path must never hide a subclass's trigger)."""
    cls = type(attack)
    if issubclass(_owner(cls, "apply_uint8"), _owner(cls, "apply")):
        return attack.apply_uint8(images, params)
    return Attack.apply_uint8(attack, images, params)


CHUNK_VALUES = 1 << 19
"""Values per chunk of a batch on the CPU: 2 MiB as float32, so the temporaries stay in cache."""


def image_chunks(images: torch.Tensor) -> list[slice]:
    """Slices of about `CHUNK_VALUES` values of the batch on the CPU; the whole batch elsewhere."""
    if images.device.type != "cpu":
        return [slice(None)]
    step = max(1, CHUNK_VALUES // max(1, images[0].numel()))
    return [slice(first, first + step) for first in range(0, len(images), step)]


def channel_means(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, 1, 1) channel means of uint8 images in [0, 1], bit for bit the float path's
    `images.float().div(255).mean(dim=(2, 3), keepdim=True)` (each mean is its own reduction)."""
    return torch.cat([images[rows].float().div(255).mean(dim=(2, 3), keepdim=True) for rows in image_chunks(images)])


def paste_squares(out: torch.Tensor, patches: torch.Tensor, top_left: torch.Tensor) -> None:
    """Write `patches` (B, C, s, s) into `out` (B, C, H, W) in place at each image's (row, col) `top_left`."""
    count, s = len(out), patches.shape[-1]
    offsets = torch.arange(s, device=out.device)
    rows = (top_left[:, 0, None] + offsets)[:, :, None]
    cols = (top_left[:, 1, None] + offsets)[:, None, :]
    batch = torch.arange(count, device=out.device)[:, None, None]
    out.permute(0, 2, 3, 1)[batch, rows, cols] = patches.permute(0, 2, 3, 1).to(out.dtype)


def draws_parameters(attack: Attack) -> bool:
    """Whether `attack.sample` draws any per-image parameters (probed on one image)."""
    return bool(attack.sample(1, torch_generator(0)))


def trigger_rows(attack: Attack, images: torch.Tensor, rows: torch.Tensor, seed: int, stream: str) -> torch.Tensor:
    """uint8 `images` of `rows` (on any device) with `attack`'s trigger, rounded back to uint8.

    Each row's random parameters come from a generator seeded with `derive_seed(seed, stream, row)`,
    so a row is triggered identically whichever storage, batch, worker, device or epoch reads it. A
    trigger without per-image parameters is applied to the batch at once.
    """
    if len(rows) == 0:
        return images
    if not draws_parameters(attack):
        return apply_uint8(attack, images, {})
    generator = torch.Generator()
    drawn = []
    for row in rows.tolist():
        generator.manual_seed(derive_seed(seed, stream, str(int(row))))
        drawn.append(attack.sample(1, generator))
    params = {key: torch.cat([d[key] for d in drawn]).to(images.device) for key in drawn[0]}
    return apply_uint8(attack, images, params)


@dataclass(frozen=True)
class Seeded:
    """`attack`'s trigger with its random parameters seeded from (`seed`, `stream`) and each row's
    number: `trigger(images, rows)` is `trigger_rows` (picklable, so file-reading workers apply it).
    It is the `cleanbench.data.column.SeededTrigger` that image columns apply."""

    attack: Attack
    seed: int
    stream: str

    def __call__(self, images: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return trigger_rows(self.attack, images, rows, self.seed, self.stream)
