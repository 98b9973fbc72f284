"""SafeCLIP's safe/risky split of the pretraining pairs (Yang et al., ICML 2024).

A two-component Gaussian mixture is fitted by EM to the pairs' image-caption cosine similarities;
a pair's safety is its posterior probability of belonging to the component with the larger mean.
The first split keeps the pairs whose posterior reaches a threshold (0.9 in the paper), which sets
the safe fraction r; every later epoch refits the mixture, ranks the pairs by posterior, keeps the
top r * N as safe, and grows r by a fixed step up to a cap (+0.01 per epoch up to 0.85 in the paper).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Mixture:
    """A fitted two-component 1-D Gaussian mixture: component 1 has the larger mean."""

    weights: tuple[float, float]
    means: tuple[float, float]
    variances: tuple[float, float]
    iterations: int
    log_likelihood: float

    def posterior_high(self, values: np.ndarray) -> np.ndarray:
        """P(component with the larger mean | value) for each value."""
        log_joint = np.stack([_log_normal(values, self.means[k], self.variances[k]) + math.log(self.weights[k])
                              for k in (0, 1)])
        return np.exp(log_joint[1] - np.logaddexp(log_joint[0], log_joint[1]))


def _log_normal(values: np.ndarray, mean: float, variance: float) -> np.ndarray:
    return -0.5 * (np.log(2 * np.pi * variance) + (values - mean) ** 2 / variance)


def fit_two_gaussians(values: np.ndarray, max_iter: int = 200, tol: float = 1e-6, min_variance: float = 1e-6) -> Mixture:
    """Fit a two-component Gaussian mixture to 1-D `values` by EM (deterministic).

    Initialisation: the values split at their median, each half giving a component's mean and
    variance, equal weights. EM stops when the mean log-likelihood improves by less than `tol` or
    after `max_iter` iterations; `min_variance` is added to each variance (as scikit-learn's
    `reg_covar`) so a component collapsing onto one value stays finite."""
    x = np.asarray(values, dtype=np.float64).ravel()
    if len(x) < 2 or not np.all(np.isfinite(x)):
        raise ValueError(f"a two-component mixture needs at least 2 finite values, got {len(x)}")
    order = np.sort(x)
    low, high = order[: len(x) // 2], order[len(x) // 2:]
    means = np.array([low.mean(), high.mean()])
    variances = np.array([low.var(), high.var()]) + min_variance
    weights = np.array([0.5, 0.5])
    previous = -np.inf
    iterations = 0
    for iterations in range(1, max_iter + 1):
        log_joint = np.stack([_log_normal(x, means[k], variances[k]) + np.log(weights[k]) for k in (0, 1)])
        log_total = np.logaddexp(log_joint[0], log_joint[1])
        likelihood = float(log_total.mean())
        responsibility = np.exp(log_joint - log_total)
        mass = responsibility.sum(axis=1) + 10 * np.finfo(np.float64).eps
        weights = mass / len(x)
        means = responsibility @ x / mass
        variances = (responsibility * (x[None, :] - means[:, None]) ** 2).sum(axis=1) / mass + min_variance
        if abs(likelihood - previous) < tol:
            break
        previous = likelihood
    high_index = int(np.argmax(means))
    pick = (1 - high_index, high_index)
    log_total = np.logaddexp(*[_log_normal(x, means[k], variances[k]) + np.log(weights[k]) for k in (0, 1)])
    return Mixture(tuple(float(weights[k]) for k in pick), tuple(float(means[k]) for k in pick),
                   tuple(float(variances[k]) for k in pick), iterations, float(log_total.mean()))


def safety(similarities: np.ndarray) -> tuple[np.ndarray, Mixture]:
    """Each pair's posterior of the high-similarity component, and the fitted mixture."""
    mixture = fit_two_gaussians(similarities)
    return mixture.posterior_high(np.asarray(similarities, dtype=np.float64)), mixture


def safe_by_threshold(posteriors: np.ndarray, threshold: float) -> np.ndarray:
    """Indices (ascending) of the pairs whose posterior is at least `threshold`: the first split."""
    return np.flatnonzero(np.asarray(posteriors) >= threshold)


def safe_by_ratio(posteriors: np.ndarray, ratio: float) -> np.ndarray:
    """Indices (ascending) of the round(ratio * N) pairs with the highest posteriors (ties: lower index first)."""
    posteriors = np.asarray(posteriors)
    count = min(len(posteriors), max(0, round(ratio * len(posteriors))))
    ranked = np.argsort(-posteriors, kind="stable")
    return np.sort(ranked[:count])


def next_ratio(ratio: float, growth: float, cap: float) -> float:
    """The next epoch's safe fraction: `ratio + growth`, at most `cap`."""
    return min(ratio + growth, cap)
