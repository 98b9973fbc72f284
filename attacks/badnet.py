"""BadNets: a square noise patch pasted onto the image (Gu et al. 2017; CleanCLIP reference).

Reference (docs/reference.md §1.2): a 16x16 patch at 224 px, values mu_c + N(0, 1) with mu_c the
image's channel mean, cast to uint8 with wrap-around (so effectively uniform colour noise), fresh
noise and a fresh uniformly random location for every image. `noise="fresh", location="random",
patch_size=16` reproduces it. The defaults differ, by measurement on the embedded default: a
random-location 4-px patch at 1 % implanted only 5-9 % ASR in a trial, a fixed pattern at a fixed
corner 94-99 % at 2 %. Default: one noise pattern drawn from the run seed, at the bottom-right
corner, 28 px at 224 scale (4 px at 32).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cleanbench.attacks.base import Attack, channel_means, paste_squares, quantize


@dataclass
class BadNetOptions:
    """Options of the BadNets patch; sizes in pixels at 224 px."""

    patch_size: int = 28
    location: str = "fixed"
    noise: str = "fixed"
    values: str = "wrap"
    margin: int = 7

    def __post_init__(self) -> None:
        if self.location not in ("fixed", "random"):
            raise ValueError(f"location must be 'fixed' or 'random', not {self.location!r}")
        if self.noise not in ("fixed", "fresh"):
            raise ValueError(f"noise must be 'fixed' or 'fresh', not {self.noise!r}")
        if self.values not in ("wrap", "clip"):
            raise ValueError(f"values must be 'wrap' or 'clip', not {self.values!r}")
        if self.patch_size < 1 or self.margin < 0:
            raise ValueError("patch_size must be >= 1 and margin >= 0")


class BadNet(Attack):
    """A square noise patch, fixed or fresh, at a fixed or random location."""

    name = "badnet"
    description = "square noise patch (fixed or fresh noise, fixed or random location)"
    paper = "Gu et al., BadNets, 2017; CleanCLIP reference (Bansal et al., ICCV 2023)"
    Options = BadNetOptions
    random_version = "2"  # 2: each row's random parameters come from the row's own generator, in memory as on files

    @classmethod
    def draws_random(cls, options: BadNetOptions) -> bool:
        return options.location == "random" or options.noise == "fresh"

    def setup(self, generator: torch.Generator) -> None:
        self.size = self.pixels(self.options.patch_size)
        if self.size > self.image_size:
            raise ValueError(f"patch of {self.size} px does not fit a {self.image_size}-px image")
        self.margin = min(self.pixels(self.options.margin) if self.options.margin else 0, self.image_size - self.size)
        self.pattern = torch.randn(3, self.size, self.size, generator=generator)

    def sample(self, count: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        params: dict[str, torch.Tensor] = {}
        if self.options.location == "random":
            params["top_left"] = torch.randint(0, self.image_size - self.size + 1, (count, 2), generator=generator)
        if self.options.noise == "fresh":
            params["noise"] = torch.randn(count, 3, self.size, self.size, generator=generator)
        return params

    def apply(self, images: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        means = images.mean(dim=(2, 3), keepdim=True) if "noise" in params else None
        out = images.clone()
        paste_squares(out, self.patches(images, means, params), self.top_left(images, params))
        return out

    def apply_uint8(self, images: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """Only the patch is computed in float and rounded; the rest of the image is copied."""
        means = channel_means(images) if "noise" in params else None
        out = images.clone()
        patches = quantize(self.patches(images, means, params))
        paste_squares(out, patches, self.top_left(images, params))
        return out

    def patches(self, images: torch.Tensor, means: torch.Tensor | None, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, 3, s, s) patch values in [0, 1]: fresh noise around the images' channel `means`, or the fixed pattern."""
        if means is not None:
            patch = means + params["noise"]
        else:
            patch = (0.5 + self.pattern.to(images.device)).expand(len(images), -1, -1, -1)
        return torch.remainder(patch, 1.0) if self.options.values == "wrap" else patch.clamp(0, 1)

    def top_left(self, images: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, 2) top-left (row, col) of each image's patch: sampled, or the fixed corner."""
        if "top_left" in params:
            return params["top_left"]
        corner = self.image_size - self.size - self.margin
        return torch.full((len(images), 2), corner, device=images.device)

    def describe(self) -> dict:
        return {**super().describe(), "patch_pixels": self.size, "margin_pixels": self.margin}
