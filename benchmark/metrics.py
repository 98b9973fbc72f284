"""Metric formulas, defined once: proportions with Wilson 95 % intervals.

- CA (clean accuracy): top-1 (and top-5) zero-shot accuracy on clean test images.
- ASR (attack success rate): on triggered test images whose true class is NOT the target, the
  fraction predicted as the target (the reference's released zero-shot code reports accuracy on
  triggered images instead; spec section 5.2).
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


def stealthiness(clean: torch.Tensor, triggered: torch.Tensor) -> dict[str, float]:
    """Mean L-inf and L2 distance (images scaled to [0, 1]) and mean PSNR (dB) between image batches.

    PSNR of an image pair that is identical is infinite; the mean is then taken over the changed
    images only (NaN if none changed).
    """
    a = clean.double().flatten(1) / 255
    b = triggered.double().flatten(1) / 255
    diff = b - a
    mse = diff.pow(2).mean(dim=1)
    changed = mse > 0
    psnr = 10 * torch.log10(1 / mse[changed]) if changed.any() else torch.tensor([math.nan])
    return {
        "linf": float(diff.abs().amax(dim=1).mean()),
        "l2": float(diff.norm(dim=1).mean()),
        "psnr_db": float(psnr.mean()),
        "changed_fraction": float(changed.double().mean()),
    }
