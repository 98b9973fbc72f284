"""SIG: a horizontal sinusoid over the whole image (Barni et al. 2019; CleanCLIP reference).

S[c, i, j] = (amplitude / 255) * sin(2 pi f j / W), the same for every channel and row.

- `variant="reference"` (docs/reference.md §1.2): x' = clip(alpha S + (1 - alpha) x) with amplitude 60,
  f = 6 and alpha = 0.2: an effective amplitude of 12/255, and the image darkened by 0.8.
- `variant="original"` (Barni et al.): x' = clip(x + S), additive, amplitude (their Delta) 20 by
  default, f = 6. Barni et al. poison only images of the target class (clean-label); here, as in the
  reference, SIG is a dirty-label trigger (use `label-consistent` for the clean-label policy).

f counts cycles across the width, so it does not depend on the image size; nothing is in pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from cleanbench.attacks.base import Attack

DEFAULT_AMPLITUDE = {"reference": 60.0, "original": 20.0}


@dataclass
class SIGOptions:
    """Options of the sinusoidal signal; amplitude on the 0-255 scale (None: the variant's default)."""

    variant: str = "reference"
    amplitude: float | None = None
    frequency: float = 6.0
    alpha: float = 0.2

    def __post_init__(self) -> None:
        if self.variant not in DEFAULT_AMPLITUDE:
            raise ValueError(f"variant must be 'reference' or 'original', not {self.variant!r}")
        if self.amplitude is not None and not 0 < self.amplitude <= 255:
            raise ValueError(f"amplitude must be in (0, 255] (0-255 scale), not {self.amplitude}")
        if self.frequency <= 0:
            raise ValueError(f"frequency (cycles across the width) must be > 0, not {self.frequency}")
        if not 0 < self.alpha <= 1:
            raise ValueError(f"alpha (reference blend weight) must be in (0, 1], not {self.alpha}")


class SIG(Attack):
    """A horizontal sinusoid, blended (reference) or added (original SIG)."""

    name = "sig"
    description = "horizontal sinusoid, blended as in the reference (0.2 S + 0.8 x) or added (original SIG)"
    paper = "Barni et al., A New Backdoor Attack in CNNs by Training Set Corruption Without Label Poisoning, ICIP 2019; CleanCLIP reference"
    per_image = True
    Options = SIGOptions

    def setup(self, generator: torch.Generator) -> None:
        self.amplitude = self.options.amplitude or DEFAULT_AMPLITUDE[self.options.variant]
        columns = torch.arange(self.image_size, dtype=torch.float64)
        wave = (self.amplitude / 255) * torch.sin(2 * math.pi * self.options.frequency * columns / self.image_size)
        self.signal = wave.float().view(1, 1, 1, -1)

    def sample(self, count: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return {}

    def apply(self, images: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        signal = self.signal.to(images.device, images.dtype)
        if self.options.variant == "original":
            return (images + signal).clamp_(0, 1)
        alpha = self.options.alpha
        return (images * (1 - alpha) + alpha * signal).clamp_(0, 1)

    def describe(self) -> dict:
        effective = self.amplitude * (self.options.alpha if self.options.variant == "reference" else 1.0)
        return {**super().describe(), "amplitude_255": self.amplitude, "effective_amplitude_255": effective,
                "period_pixels": self.image_size / self.options.frequency}
