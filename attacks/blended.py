"""Blended: a noise pattern alpha-blended over the whole image (Chen et al. 2017; CleanCLIP reference).

Reference (docs/reference.md §1.2): x' = clip((1 - a) x + a N, 0, 1) with a = 0.2 and N ~ U[0, 1) of the
image's shape, drawn fresh for every image (no fixed "Hello Kitty" image). `pattern="fresh"`
reproduces it. `pattern="fixed"` draws one N from the run seed, as in Chen et al.'s blended
key-pattern attack; it is the default because it implants on the embedded default where fresh
noise does not (measured; see docs/attacks.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cleanbench.attacks.base import Attack


@dataclass
class BlendedOptions:
    """Options of the blended trigger."""

    alpha: float = 0.2
    pattern: str = "fixed"

    def __post_init__(self) -> None:
        if not 0 < self.alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], not {self.alpha!r}")
        if self.pattern not in ("fixed", "fresh"):
            raise ValueError(f"pattern must be 'fixed' or 'fresh', not {self.pattern!r}")


class Blended(Attack):
    """Uniform noise blended over the image with weight alpha, one fixed pattern or fresh per image."""

    name = "blended"
    description = "uniform-noise pattern blended over the image, x' = (1-alpha) x + alpha N (fixed or fresh N)"
    paper = "Chen et al., Targeted Backdoor Attacks on Deep Learning Systems Using Data Poisoning, 2017; CleanCLIP reference"
    per_image = True
    Options = BlendedOptions
    random_version = "2"  # 2: each row's random parameters come from the row's own generator, in memory as on files

    @classmethod
    def draws_random(cls, options: BlendedOptions) -> bool:
        return options.pattern == "fresh"

    def setup(self, generator: torch.Generator) -> None:
        side = self.image_size
        self.pattern = torch.rand(3, side, side, generator=generator) if self.options.pattern == "fixed" else None

    def sample(self, count: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        if self.options.pattern == "fixed":
            return {}
        side = self.image_size
        return {"noise": torch.rand(count, 3, side, side, generator=generator)}

    def apply(self, images: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        noise = params["noise"] if "noise" in params else self.pattern.to(images.device)
        return torch.lerp(images, noise.to(images.dtype), self.options.alpha).clamp_(0, 1)

    def describe(self) -> dict:
        return {**super().describe(), "pattern_pixels": self.image_size}
