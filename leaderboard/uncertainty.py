"""One interval method for every number of the leaderboard: a bootstrap over seeds and test images.

A replicate of a cell redraws both sources of noise in its run cards:
- the seeds: the group's seeds are resampled with replacement (multinomial weights); every defense
  of one attack x rate group gets the same weights, because its seeds share the undefended model;
- the test images: each seed's proportion k/n is replaced by a draw from Beta(k + 1/2, n - k + 1/2),
  the Jeffreys distribution of its counts (so 0 of 1,790 still has an upper bound).
A cell's value is the mean over its seeds; its 95 % interval is the 2.5 and 97.5 percentiles of
the replicates. Ranks come from the same replicates: row i beats row j when i is better in at least
97.5 % of the paired replicates; rank = 1 + the number of rows that beat it; the best row (★) is the
one that beats every other row, so a star and a rank never disagree.

Whether an attack implanted is a test on the counts and a margin: in every seed, the undefended ASR
is above the clean control's (one-sided Fisher exact test at 5 %), and the mean undefended ASR over
the seeds is at least IMPLANT_MIN_GAIN above the clean control's mean (a 2 % ASR that is
significantly above a 0.2 % base rate is not a backdoor whose removal can be ranked).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import numpy as np
from scipy.stats import fisher_exact

REPLICATES = 4000
CONFIDENCE = 0.95
BEATS = (1 + CONFIDENCE) / 2
IMPLANT_ALPHA = 0.05
IMPLANT_MIN_GAIN = 0.10
METHOD = "bootstrap"


def generator(key: str) -> np.random.Generator:
    """A generator seeded by a text key, so a group's replicates do not depend on the other groups."""
    return np.random.default_rng(int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little"))


def seed_weights(n_seeds: int, rng: np.random.Generator, replicates: int = REPLICATES) -> np.ndarray:
    """(replicates, n_seeds) resampling counts: how often each seed is drawn in each replicate."""
    return rng.multinomial(n_seeds, np.full(n_seeds, 1 / n_seeds), size=replicates).astype(float)


def count_draws(successes: int, total: int, rng: np.random.Generator, replicates: int = REPLICATES) -> np.ndarray:
    """Replicates of one proportion k/n from its Jeffreys distribution Beta(k + 1/2, n - k + 1/2)."""
    return rng.beta(successes + 0.5, total - successes + 0.5, size=replicates)


def weighted_mean(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Per replicate, the weighted mean over seeds (columns); a replicate that drew none of these
    seeds (possible when a cell lacks some of its group's seeds) falls back to equal weights."""
    totals = weights.sum(axis=1, keepdims=True)
    weights = np.where(totals > 0, weights, 1.0)
    return (values * weights).sum(axis=1) / weights.sum(axis=1)


def interval(replicates: np.ndarray, low: float | None = None, high: float | None = None) -> tuple[float, float]:
    """The percentile 95 % interval of `replicates`, clipped to [low, high]."""
    tail = 100 * (1 - CONFIDENCE) / 2
    lo, hi = (float(v) for v in np.percentile(replicates, [tail, 100 - tail]))
    return (lo if low is None else max(low, lo), hi if high is None else min(high, hi))


def der_array(ca_before: np.ndarray, ca_after: np.ndarray, asr_before: np.ndarray, asr_after: np.ndarray) -> np.ndarray:
    """DER elementwise: [max(0, ASR drop) - max(0, CA drop) + 1] / 2 (the formula of `cleanbench.metrics.der`)."""
    return (np.maximum(0.0, asr_before - asr_after) - np.maximum(0.0, ca_before - ca_after) + 1) / 2


def beats(a: np.ndarray, b: np.ndarray, higher_is_better: bool = True) -> bool:
    """Whether `a` is better than `b` in at least 97.5 % of the paired replicates (ties count half)."""
    better = (a > b) if higher_is_better else (a < b)
    share = better.mean() + 0.5 * (a == b).mean()
    return bool(share >= BEATS)


def bootstrap_ranks(replicates: Sequence[np.ndarray], higher_is_better: bool = True) -> tuple[list[int], list[bool], list[list[int]]]:
    """Rank, whether the row is the best (it beats every other row), and the rows it cannot be told
    apart from (neither beats the other), for rows given by their paired replicates."""
    n = len(replicates)
    wins = [[i != j and beats(replicates[i], replicates[j], higher_is_better) for j in range(n)] for i in range(n)]
    ranks = [1 + sum(wins[j][i] for j in range(n)) for i in range(n)]
    best = [n > 1 and all(wins[i][j] for j in range(n) if j != i) for i in range(n)]
    tied = [[j for j in range(n) if j != i and not wins[i][j] and not wins[j][i]] for i in range(n)]
    return ranks, best, tied


def implant_test(attacked: Sequence[tuple[int, int]], clean: Callable[[int], tuple[int, int]],
                 seeds: Sequence[int]) -> float:
    """The p-value that the undefended ASR is above the clean control's in every seed.

    `attacked` holds each seed's (successes, total) of the undefended model; `clean(seed)` the clean
    control's counts to compare with. Each seed gets a one-sided Fisher exact test; the largest
    p-value is the p-value of "in every seed" (an intersection-union test).
    """
    worst = 0.0
    for seed, (k, n) in zip(seeds, attacked):
        k0, n0 = clean(seed)
        _, p = fisher_exact([[k, n - k], [k0, n0 - k0]], alternative="greater")
        worst = max(worst, float(p))
    return worst


def implant_gain(attacked: Sequence[tuple[int, int]], clean: Callable[[int], tuple[int, int]],
                 seeds: Sequence[int]) -> float:
    """The mean over seeds of the undefended ASR minus the mean of the clean control's (fractions)."""
    undefended = np.mean([k / n for k, n in attacked])
    base = np.mean([k0 / n0 for k0, n0 in (clean(seed) for seed in seeds)])
    return float(undefended - base)
