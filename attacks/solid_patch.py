"""Solid patch: a square of one colour pasted onto the image (CleanCLIP reference's `yellow` trigger).

Reference (docs/reference.md §1.2): a 16x16 square of (R, G, B) = (1, 1, 0) at 224 px, at a fresh
random location per image (or in the four corners). As for `badnet`, the default is a fixed location
at the bottom-right corner and 28 px at 224 scale (4 px at 32): random locations do not implant on
the embedded default. `location="random", patch_size=16` gives the reference.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from cleanbench.attacks.base import Attack, paste_squares, quantize

COLOURS: dict[str, tuple[float, float, float]] = {
    "yellow": (1.0, 1.0, 0.0),
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "blue": (0.0, 0.0, 1.0),
    "magenta": (1.0, 0.0, 1.0),
    "cyan": (0.0, 1.0, 1.0),
    "white": (1.0, 1.0, 1.0),
    "black": (0.0, 0.0, 0.0),
}


def parse_colour(text: str) -> tuple[float, float, float]:
    """A colour name from `COLOURS` or a hex triple `rrggbb` (with or without '#') -> RGB in [0, 1]."""
    if text.lower() in COLOURS:
        return COLOURS[text.lower()]
    match = re.fullmatch(r"#?([0-9a-fA-F]{6})", text)
    if match is None:
        raise ValueError(f"colour {text!r} is neither a name ({', '.join(COLOURS)}) nor a hex triple like ffff00")
    value = match.group(1)
    return tuple(int(value[i : i + 2], 16) / 255 for i in (0, 2, 4))  # type: ignore[return-value]


@dataclass
class SolidPatchOptions:
    """Options of the solid patch; sizes in pixels at 224 px."""

    patch_size: int = 28
    location: str = "fixed"
    colour: str = "yellow"
    margin: int = 7

    def __post_init__(self) -> None:
        if self.location not in ("fixed", "random"):
            raise ValueError(f"location must be 'fixed' or 'random', not {self.location!r}")
        if self.patch_size < 1 or self.margin < 0:
            raise ValueError("patch_size must be >= 1 and margin >= 0")
        parse_colour(str(self.colour))


class SolidPatch(Attack):
    """A solid colour square at a fixed corner or a random location."""

    name = "solid-patch"
    description = "solid colour square (yellow by default) at a fixed corner or a random location"
    paper = "CleanCLIP reference's `yellow` trigger (Bansal et al., ICCV 2023)"
    Options = SolidPatchOptions
    random_version = "2"  # 2: each row's random parameters come from the row's own generator, in memory as on files

    @classmethod
    def draws_random(cls, options: SolidPatchOptions) -> bool:
        return options.location == "random"

    def setup(self, generator: torch.Generator) -> None:
        self.size = self.pixels(self.options.patch_size)
        if self.size > self.image_size:
            raise ValueError(f"patch of {self.size} px does not fit a {self.image_size}-px image")
        self.margin = min(self.pixels(self.options.margin) if self.options.margin else 0, self.image_size - self.size)
        self.colour = torch.tensor(parse_colour(str(self.options.colour))).view(1, 3, 1, 1)

    def sample(self, count: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        if self.options.location == "fixed":
            return {}
        return {"top_left": torch.randint(0, self.image_size - self.size + 1, (count, 2), generator=generator)}

    def apply(self, images: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._painted(images, self.colour.to(images.device, images.dtype), params)

    def apply_uint8(self, images: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """Only the square is written (the rounded colour); the rest of the image is copied."""
        return self._painted(images, quantize(self.colour.to(images.device)), params)

    def _painted(self, images: torch.Tensor, colour: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """A copy of `images` with each image's square set to `colour` (1, 3, 1, 1), of the images' dtype."""
        out = images.clone()
        if "top_left" not in params:
            start = self.image_size - self.size - self.margin
            out[:, :, start : start + self.size, start : start + self.size] = colour
        else:
            paste_squares(out, colour.expand(len(images), -1, self.size, self.size), params["top_left"])
        return out

    def describe(self) -> dict:
        return {**super().describe(), "patch_pixels": self.size, "margin_pixels": self.margin,
                "colour_rgb": self.colour.flatten().tolist()}
