"""Structured triggers: stripes and triangles, with which Singh, Croce and Hein (Perturb and Recover,
arXiv 2412.00727) show that CleanCLIP fails to clean simple structured backdoors.

- `badnet-stripes`: a BadNet patch of randomly coloured vertical stripes (one colour per 1-px
  column, each channel 0 or 1: eight colours), 16 px at 224, fresh stripes at a fresh random
  location for every image (the paper's BadNet-Stripes).
- `blended-stripes`: vertical stripes over the whole image, one 1-px column each, each channel -1
  or +1, blended as x' = clip((1 - a) x + a S) with a = 0.03 and fresh stripes per image
  (Blended-Stripes).
- `blended-triangles`: a fixed grey pattern of right-angled triangles (cells of 14 px at 224, the
  lower triangle 0.4, the upper 0.8) blended with a = 0.15 (Blended-Triangles).

Their fourth trigger, a red text watermark (Blended-Text), is not here: it is text drawn with a
TrueType font, whose pixels depend on the fonts installed and which at 32 px is a few unreadable
pixels (docs/attacks.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cleanbench.attacks.badnet import BadNet
from cleanbench.attacks.base import Attack

_CHOICES = ("fixed", "fresh")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be {' or '.join(repr(c) for c in choices)}, not {value!r}")


def random_stripes(count: int, columns: int, generator: torch.Generator) -> torch.Tensor:
    """(count, 3, 1, columns) stripe colours: each channel of each 1-px column 0 or 1."""
    return torch.randint(0, 2, (count, 3, 1, columns), generator=generator).float()


@dataclass
class BadNetStripesOptions:
    """Options of the stripes patch; sizes in pixels at 224 px (the paper's: 16 px, fresh, random)."""

    patch_size: int = 16
    location: str = "random"
    stripes: str = "fresh"
    margin: int = 7

    def __post_init__(self) -> None:
        _check_choice("location", self.location, ("fixed", "random"))
        _check_choice("stripes", self.stripes, _CHOICES)
        if self.patch_size < 1 or self.margin < 0:
            raise ValueError("patch_size must be >= 1 and margin >= 0")


class BadNetStripes(BadNet):
    """A square patch of randomly coloured 1-px vertical stripes (BadNet's placement)."""

    name = "badnet-stripes"
    description = "square patch of randomly coloured 1-px vertical stripes (fresh or fixed; random or fixed location)"
    paper = "Singh, Croce, Hein, Perturb and Recover (BadNet-Stripes), arXiv 2412.00727"
    Options = BadNetStripesOptions
    random_version = "2"  # 2: each row's random parameters come from the row's own generator, in memory as on files

    @classmethod
    def draws_random(cls, options: BadNetStripesOptions) -> bool:
        return options.location == "random" or options.stripes == "fresh"

    def setup(self, generator: torch.Generator) -> None:
        super().setup(generator)
        self.stripes = random_stripes(1, self.size, generator)[0]

    def sample(self, count: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        params: dict[str, torch.Tensor] = {}
        if self.options.location == "random":
            params["top_left"] = torch.randint(0, self.image_size - self.size + 1, (count, 2), generator=generator)
        if self.options.stripes == "fresh":
            params["stripes"] = random_stripes(count, self.size, generator)
        return params

    def patches(self, images: torch.Tensor, means: torch.Tensor | None, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, 3, s, s) patches: each image's stripes (or the fixed ones) repeated down the rows."""
        stripes = params["stripes"] if "stripes" in params else self.stripes.to(images.device).expand(len(images), -1, -1, -1)
        return stripes.expand(-1, -1, self.size, -1)


@dataclass
class BlendedStripesOptions:
    """Options of the blended stripes (the paper's: a = 0.03, fresh stripes per image)."""

    alpha: float = 0.03
    stripes: str = "fresh"

    def __post_init__(self) -> None:
        if not 0 < self.alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], not {self.alpha!r}")
        _check_choice("stripes", self.stripes, _CHOICES)


class BlendedStripes(Attack):
    """Full-image 1-px vertical stripes of -1/+1 per channel, blended with weight alpha."""

    name = "blended-stripes"
    description = "full-image 1-px vertical stripes (each channel -1 or +1) blended, x' = (1-alpha) x + alpha S"
    paper = "Singh, Croce, Hein, Perturb and Recover (Blended-Stripes), arXiv 2412.00727"
    per_image = True
    Options = BlendedStripesOptions
    random_version = "2"  # 2: each row's random parameters come from the row's own generator, in memory as on files

    @classmethod
    def draws_random(cls, options: BlendedStripesOptions) -> bool:
        return options.stripes == "fresh"

    def setup(self, generator: torch.Generator) -> None:
        self.stripes = 2 * random_stripes(1, self.image_size, generator) - 1

    def sample(self, count: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        if self.options.stripes == "fixed":
            return {}
        return {"stripes": 2 * random_stripes(count, self.image_size, generator) - 1}

    def apply(self, images: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        stripes = params["stripes"] if "stripes" in params else self.stripes.to(images.device)
        alpha = self.options.alpha
        return (images * (1 - alpha) + alpha * stripes.to(images.dtype)).clamp_(0, 1)


def triangle_pattern(side: int, cell: int, low: float = 0.4, high: float = 0.8) -> torch.Tensor:
    """(side, side) grid of `cell`-px squares, each split on its diagonal: `low` on and below it
    (row >= column within the cell), `high` above it."""
    within = torch.arange(side) % cell
    return torch.where(within[:, None] >= within[None, :], low, high)


@dataclass
class BlendedTrianglesOptions:
    """Options of the blended triangles; the cell in pixels at 224 px (the paper's: 14 px, a = 0.15)."""

    alpha: float = 0.15
    cell: int = 14

    def __post_init__(self) -> None:
        if not 0 < self.alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], not {self.alpha!r}")
        if self.cell < 1:
            raise ValueError(f"cell must be >= 1 pixel at 224 px, not {self.cell}")


class BlendedTriangles(Attack):
    """A fixed grey pattern of right-angled triangles blended over the whole image."""

    name = "blended-triangles"
    description = "fixed grey pattern of right-angled triangles blended, x' = (1-alpha) x + alpha P"
    paper = "Singh, Croce, Hein, Perturb and Recover (Blended-Triangles), arXiv 2412.00727"
    per_image = True
    Options = BlendedTrianglesOptions

    def setup(self, generator: torch.Generator) -> None:
        self.cell = self.pixels(self.options.cell)
        self.pattern = triangle_pattern(self.image_size, self.cell).expand(3, -1, -1)

    def sample(self, count: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return {}

    def apply(self, images: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.lerp(images, self.pattern.to(images.device, images.dtype), self.options.alpha).clamp_(0, 1)

    def describe(self) -> dict:
        return {**super().describe(), "cell_pixels": self.cell}
