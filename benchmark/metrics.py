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


def stealthiness(clean: torch.Tensor, triggered: torch.Tensor) -> dict[str, float]:
    """Mean L-inf and L2 distance (images scaled to [0, 1]) and mean PSNR (dB) between image batches.

    PSNR of an image pair that is identical is infinite; the mean is then taken over the changed
    images only (NaN if none changed). The images are uint8; differences and sums of squares are
    computed exactly (integers), then scaled.
    """
    if clean.dtype != torch.uint8 or triggered.dtype != torch.uint8:
        raise TypeError(f"stealthiness compares uint8 images, not {clean.dtype} and {triggered.dtype}")
    diff = triggered.flatten(1).short() - clean.flatten(1).short()
    squares = diff.float().square().sum(dim=1, dtype=torch.float64)  # integers: exact below 2**53
    changed = squares > 0
    mse = squares[changed] / (diff.shape[1] * 255**2)
    psnr = 10 * torch.log10(1 / mse) if changed.any() else torch.tensor([math.nan])
    return {
        "linf": float(diff.abs().amax(dim=1).double().mean() / 255),
        "l2": float(squares.sqrt().mean() / 255),
        "psnr_db": float(psnr.mean()),
        "changed_fraction": float(changed.double().mean()),
    }


# --- Defense effectiveness, aggregation across seeds, and tie-aware ranking (used by the leaderboard) ---

from collections.abc import Mapping, Sequence  # noqa: E402

from scipy.stats import t as student_t  # noqa: E402


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


def der_bounds(
    ca_before: float, ca_after: Proportion, asr_before: float, asr_after: Proportion
) -> tuple[float, float]:
    """DER over the box of the defended model's Wilson intervals, the undefended values held fixed.

    DER falls as the defended ASR rises and rises with the defended CA, so the extremes are at the
    corners: (low CA, high ASR) and (high CA, low ASR). Used where one seed leaves no spread to use.
    """
    return (
        der(ca_before, ca_after.low, asr_before, asr_after.high),
        der(ca_before, ca_after.high, asr_before, asr_after.low),
    )


@dataclass(frozen=True)
class SeedSummary:
    """One metric over n seeds: mean, sample std (NaN for one seed), and a 95 % interval.

    `method` says where the interval comes from: "wilson" (one seed, Wilson interval of its counts),
    "t" (Student t across seeds), "propagated" (one seed, bounds pushed through a formula), or
    "none" (no interval can be given).
    """

    mean: float
    std: float
    low: float
    high: float
    n: int
    method: str
    confidence: float = 0.95

    def to_dict(self) -> dict:
        return asdict(self)


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the mean of `values` (n >= 2): mean -/+ t_{(1+c)/2, n-1} * s / sqrt(n).

    Zero spread gives a zero-width interval.
    """
    n = len(values)
    if n < 2:
        raise ValueError("a t-interval needs at least two values")
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(student_t.ppf((1 + confidence) / 2, n - 1)) * std / math.sqrt(n)
    return mean - half, mean + half


def summarize_values(
    values: Sequence[float], confidence: float = 0.95, clip: tuple[float, float] | None = None
) -> SeedSummary:
    """Mean, sample std and t-interval of one value per seed (NaNs dropped; interval clipped to `clip`).

    One value: std and interval are NaN (method "none"); no values: everything NaN, n = 0.
    """
    finite = [float(v) for v in values if v is not None and not math.isnan(v)]
    n = len(finite)
    nan = math.nan
    if n == 0:
        return SeedSummary(nan, nan, nan, nan, 0, "none", confidence)
    mean = sum(finite) / n
    if n == 1:
        return SeedSummary(mean, nan, nan, nan, 1, "none", confidence)
    std = math.sqrt(sum((v - mean) ** 2 for v in finite) / (n - 1))
    low, high = t_interval(finite, confidence)
    if clip is not None:
        low, high = max(clip[0], low), min(clip[1], high)
    return SeedSummary(mean, std, low, high, n, "t", confidence)


def summarize_proportions(counts: Sequence[Mapping], confidence: float = 0.95) -> SeedSummary:
    """One proportion measured on several seeds, each given as {successes, total}.

    One seed: its value and the Wilson interval of its counts (the pooled counts). Several seeds:
    mean and sample std of the per-seed proportions and a t-interval across seeds, clipped to [0, 1].
    Seeds with total 0 are dropped.
    """
    usable = [c for c in counts if int(c["total"]) > 0]
    if len(usable) == 1:
        p = proportion(int(usable[0]["successes"]), int(usable[0]["total"]), confidence)
        return SeedSummary(p.value, math.nan, p.low, p.high, 1, "wilson", confidence)
    return summarize_values([int(c["successes"]) / int(c["total"]) for c in usable], confidence, clip=(0.0, 1.0))


def interval_ranks(
    means: Sequence[float], lows: Sequence[float], highs: Sequence[float], higher_is_better: bool = True
) -> list[int | None]:
    """Rank = 1 + the number of entries whose whole interval is better than this entry's whole interval.

    Entries whose intervals overlap are not told apart, so they can share a rank (a tie). Entries
    with a NaN mean get None; a NaN interval is treated as the point at the mean.
    """
    def bounds(i: int) -> tuple[float, float]:
        low = lows[i] if not math.isnan(lows[i]) else means[i]
        high = highs[i] if not math.isnan(highs[i]) else means[i]
        return (low, high) if higher_is_better else (-high, -low)

    ranks: list[int | None] = []
    for i, mean in enumerate(means):
        if math.isnan(mean):
            ranks.append(None)
            continue
        high_i = bounds(i)[1]
        ranks.append(1 + sum(1 for j, m in enumerate(means) if j != i and not math.isnan(m) and bounds(j)[0] > high_i))
    return ranks
