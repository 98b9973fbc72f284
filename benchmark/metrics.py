"""Metric formulas, defined once: proportions with Wilson 95 % intervals.

- CA (clean accuracy): top-1 (and top-5) zero-shot accuracy on clean test images.
- ASR (attack success rate): on triggered test images whose true class is NOT the target, the
  fraction predicted as the target (the reference's released zero-shot code reports accuracy on
  triggered images instead; docs/reference.md §5.2).
- RA (robust accuracy): on the same triggered images, the fraction predicted as their true class.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import math

import torch
from scipy.stats import binomtest


@dataclass(frozen=True)
class Proportion:
    """k successes out of n, with a Wilson score interval at `confidence`."""

    successes: int
    total: int
    value: float
    low: float
    high: float
    confidence: float = 0.95

    def to_dict(self) -> dict:
        return asdict(self)


def proportion(successes: int, total: int, confidence: float = 0.95) -> Proportion:
    """The proportion successes/total with its Wilson interval (NaN everywhere when total is 0)."""
    successes, total = int(successes), int(total)
    if total == 0:
        nan = float("nan")
        return Proportion(0, 0, nan, nan, nan, confidence)
    if not 0 <= successes <= total:
        raise ValueError(f"successes {successes} outside 0..{total}")
    interval = binomtest(successes, total).proportion_ci(confidence_level=confidence, method="wilson")
    return Proportion(successes, total, successes / total, float(interval.low), float(interval.high), confidence)


Distances = tuple[torch.Tensor, torch.Tensor, int]
"""Per image pair: the largest absolute difference (0..255, float64), the sum of squared differences
(float64, exact: integers below 2**53), and the values per image."""


def image_distances(clean: torch.Tensor, triggered: torch.Tensor) -> Distances:
    """The `Distances` of two uint8 image batches, pair by pair; `summarize_distances` averages them."""
    if clean.dtype != torch.uint8 or triggered.dtype != torch.uint8:
        raise TypeError(f"stealthiness compares uint8 images, not {clean.dtype} and {triggered.dtype}")
    diff = triggered.flatten(1).short() - clean.flatten(1).short()
    squares = diff.float().square().sum(dim=1, dtype=torch.float64)
    return diff.abs().amax(dim=1).double(), squares, diff.shape[1]


def summarize_distances(parts: list[Distances]) -> dict[str, float]:
    """Mean L-inf and L2 distance (images scaled to [0, 1]) and mean PSNR (dB) over the image pairs of
    the parts (of one image size). PSNR of an identical pair is infinite; the mean is then taken over
    the changed images only (NaN if none changed; everything NaN without images)."""
    linf = torch.cat([part[0] for part in parts]) if parts else torch.empty(0, dtype=torch.float64)
    if len(linf) == 0:
        return {"linf": math.nan, "l2": math.nan, "psnr_db": math.nan, "changed_fraction": math.nan}
    squares = torch.cat([part[1] for part in parts])
    changed = squares > 0
    mse = squares[changed] / (parts[0][2] * 255**2)
    psnr = 10 * torch.log10(1 / mse) if changed.any() else torch.tensor([math.nan])
    return {
        "linf": float(linf.mean() / 255),
        "l2": float(squares.sqrt().mean() / 255),
        "psnr_db": float(psnr.mean()),
        "changed_fraction": float(changed.double().mean()),
    }


def stealthiness(clean: torch.Tensor, triggered: torch.Tensor) -> dict[str, float]:
    """Mean L-inf and L2 distance (images scaled to [0, 1]) and mean PSNR (dB) between uint8 image
    batches (`summarize_distances` of `image_distances`)."""
    return summarize_distances([image_distances(clean, triggered)])


# --- Defense effectiveness (used by the leaderboard) ---


def der(ca_before: float, ca_after: float, asr_before: float, asr_after: float) -> float:
    """Defense effectiveness rating in [0, 1] (Zhu et al., ICCV 2023, Eq. 7; used by BackdoorBench).

    DER = [max(0, dASR) - max(0, dCA) + 1] / 2 with d = undefended - defended (a drop). 1: the
    defense removes an ASR of 1 at no CA cost; 0.5: no change; 0: CA falls from 1 to 0 and ASR stays.
    Inputs are fractions; NaN propagates.
    """
    values = (ca_before, ca_after, asr_before, asr_after)
    if any(math.isnan(v) for v in values):
        return math.nan
    return (max(0.0, asr_before - asr_after) - max(0.0, ca_before - ca_after) + 1) / 2
