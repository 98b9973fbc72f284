"""WaNet: a fixed warping field applied with `grid_sample` (Nguyen & Tran 2021; CleanCLIP reference).

Grid (docs/reference.md §1.3): ins ~ U(-1, 1) of shape (1, 2, k, k), divided by mean |ins|, bicubic
upsampled to the image side (align_corners=True); identity grid from linspace(-1, 1) with channel 0
the horizontal coordinate; grid = clamp((identity + s * noise / side) * grid_rescale, -1, 1);
x' = grid_sample(x, grid, bilinear, align_corners=True). The grid is drawn once from the run seed
(the reference's is unseeded, or loaded from its shipped file) and is the same for poisoning and test.

- `variant="reference"`: k = the image side and s = 1, i.e. an i.i.d. per-pixel jitter of up to
  about 1 px (mean |g| = 1, range about +-2) -- not a smooth warp.
- `variant="original"` (the default): k = 4 and s = 0.5, the smooth low-frequency warp of the WaNet
  paper, with its "noise mode": `noise_ratio` x the poison budget of other training pairs get the
  warp plus a fresh random offset of up to 1 px per pixel (grid + U(-1, 1) / side, clamped) and
  keep their captions, so the model must learn this warp and not warping in general.
  The reference has no noise mode (`noise_ratio` 0).

`k`, `s` and `noise_ratio` override the variant's values. `s` is a displacement in pixels of the image being
triggered (both codes divide by the input height), so it is not scaled to 224 px: the reference's
per-pixel jitter stays a one-pixel jitter at 32 px instead of vanishing to 1/7 px.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cleanbench.attacks.base import Attack

VARIANTS: dict[str, tuple[int | None, float, float]] = {"reference": (None, 1.0, 0.0), "original": (4, 0.5, 2.0)}
"""Variant -> (k, s, noise_ratio); k None means the image side. WaNet's cross ratio is 2."""


@dataclass
class WaNetOptions:
    """Options of the WaNet warp; `k` and `s` default to the variant's values."""

    variant: str = "original"
    k: int | None = None
    s: float | None = None
    grid_rescale: float = 1.0
    noise_ratio: float | None = None

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be 'reference' or 'original', not {self.variant!r}")
        if self.k is not None and self.k < 2:
            raise ValueError(f"k (control grid side) must be >= 2, not {self.k}")
        if self.s is not None and self.s < 0:
            raise ValueError(f"s (warp strength in pixels) must be >= 0, not {self.s}")
        if self.grid_rescale <= 0:
            raise ValueError(f"grid_rescale must be > 0, not {self.grid_rescale}")
        if self.noise_ratio is not None and self.noise_ratio < 0:
            raise ValueError(f"noise_ratio (noise-mode pairs per poisoned pair) must be >= 0, not {self.noise_ratio}")


def noise_grid(k: int, side: int, generator: torch.Generator) -> torch.Tensor:
    """(1, side, side, 2) offsets: U(-1, 1) on a k x k grid, divided by mean |.|, bicubic upsampled."""
    ins = torch.rand(1, 2, k, k, generator=generator) * 2 - 1
    ins = ins / ins.abs().mean()
    return F.interpolate(ins, size=side, mode="bicubic", align_corners=True).permute(0, 2, 3, 1)


def identity_grid(side: int) -> torch.Tensor:
    """(1, side, side, 2) grid that samples every pixel at its own place (channel 0: horizontal)."""
    axis = torch.linspace(-1, 1, side)
    rows, cols = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack((cols, rows), dim=2)[None]


class WaNet(Attack):
    """A fixed seeded warp: a smooth warp with noise mode (original WaNet) or per-pixel jitter (reference)."""

    name = "wanet"
    description = ("fixed warping field from the run seed: smooth warp k=4, s=0.5 with noise mode (original, default) "
                   "or per-pixel jitter k=side, s=1 (reference)")
    paper = "Nguyen & Tran, WaNet - Imperceptible Warping-based Backdoor Attack, ICLR 2021; CleanCLIP reference"
    per_image = True
    Options = WaNetOptions
    version = "2"  # 2: original variant with noise mode is the default
    random_version = "3"  # 3: the noise mode's offsets come from each row's own generator, in memory as on files

    @classmethod
    def draws_random(cls, options: WaNetOptions) -> bool:
        """Whether the noise mode is on (its offsets are random; the warp itself is fixed)."""
        ratio = VARIANTS[options.variant][2] if options.noise_ratio is None else options.noise_ratio
        return ratio > 0

    def setup(self, generator: torch.Generator) -> None:
        default_k, default_s, default_ratio = VARIANTS[self.options.variant]
        self.k = self.options.k or default_k or self.image_size
        self.s = default_s if self.options.s is None else self.options.s
        self.noise_ratio = default_ratio if self.options.noise_ratio is None else self.options.noise_ratio
        self.noise = noise_grid(self.k, self.image_size, generator)
        grid = (identity_grid(self.image_size) + self.s * self.noise / self.image_size) * self.options.grid_rescale
        self.grid = grid.clamp(-1, 1)

    def sample(self, count: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return {}

    def apply(self, images: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        if images.shape[-2:] != self.grid.shape[1:3]:
            raise ValueError(f"WaNet grid is {self.image_size} px but the images are {tuple(images.shape[-2:])}")
        grid = self.grid.to(images.device, images.dtype).expand(len(images), -1, -1, -1)
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=True)

    def noise_count(self, budget: int) -> int:
        """Noise-mode pairs for a poison budget: `noise_ratio` x budget."""
        return round(self.noise_ratio * budget)

    def noise_mode(self) -> Attack:
        """The noise-mode transform: this warp plus a fresh per-pixel offset for every image."""
        return WaNetNoise(self)

    def max_displacement(self) -> float:
        """The largest sampling offset of the grid along one axis, in pixels."""
        offset = self.grid - identity_grid(self.image_size)
        return float(offset.abs().amax() * (self.image_size - 1) / 2)

    def describe(self) -> dict:
        return {**super().describe(), "k": self.k, "s_pixels": self.s, "noise_ratio": self.noise_ratio,
                "max_displacement_pixels": round(self.max_displacement(), 4)}


class WaNetNoise(WaNet):
    """WaNet's noise mode: the attack's grid plus U(-1, 1) / side per pixel, clamped (a fresh draw per image)."""

    def __init__(self, warp: WaNet) -> None:  # shares the warp's grid; nothing is drawn at construction
        self.options, self.image_size, self.seed = warp.options, warp.image_size, warp.seed
        self.k, self.s, self.noise_ratio, self.noise, self.grid = warp.k, warp.s, 0.0, warp.noise, warp.grid

    def sample(self, count: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        side = self.image_size
        return {"offsets": (torch.rand(count, side, side, 2, generator=generator) * 2 - 1) / side}

    def apply(self, images: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        if images.shape[-2:] != self.grid.shape[1:3]:
            raise ValueError(f"WaNet grid is {self.image_size} px but the images are {tuple(images.shape[-2:])}")
        grid = (self.grid.to(images.device, images.dtype) + params["offsets"].to(images.dtype)).clamp(-1, 1)
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
