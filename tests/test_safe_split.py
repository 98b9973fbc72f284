"""SafeCLIP's split: the two-Gaussian EM against known mixtures, the posterior, the safe-set rules."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cleanbench.defenses.safe_split import (
    Mixture,
    fit_two_gaussians,
    next_ratio,
    safe_by_ratio,
    safe_by_threshold,
    safety,
)


def _sample(rng: np.random.Generator, weights, means, sds, n: int) -> np.ndarray:
    counts = rng.multinomial(n, weights)
    return rng.permutation(np.concatenate([rng.normal(m, s, c) for m, s, c in zip(means, sds, counts)]))


@pytest.mark.parametrize(
    ("weights", "means", "sds"),
    [((0.5, 0.5), (-1.0, 1.0), (0.3, 0.3)),
     ((0.2, 0.8), (0.05, 0.45), (0.05, 0.1)),  # a small low-similarity group, as poisoned pairs are
     ((0.9, 0.1), (0.1, 0.6), (0.1, 0.05))],  # the larger component has the lower mean
)
def test_em_recovers_a_known_mixture(weights, means, sds):
    values = _sample(np.random.default_rng(0), weights, means, sds, 20_000)
    mixture = fit_two_gaussians(values)
    assert mixture.means[0] < mixture.means[1]
    np.testing.assert_allclose(mixture.weights, weights, atol=0.02)
    np.testing.assert_allclose(mixture.means, means, atol=0.02)
    np.testing.assert_allclose(np.sqrt(mixture.variances), sds, rtol=0.06)


def test_em_increases_the_likelihood_over_its_initialisation():
    values = _sample(np.random.default_rng(1), (0.3, 0.7), (0.0, 0.5), (0.1, 0.1), 5_000)
    fitted = fit_two_gaussians(values)
    one_step = fit_two_gaussians(values, max_iter=1)
    assert fitted.iterations > 1
    assert fitted.log_likelihood > one_step.log_likelihood


def test_posterior_matches_bayes_rule_by_hand():
    mixture = Mixture(weights=(0.25, 0.75), means=(0.0, 1.0), variances=(1.0, 4.0), iterations=0, log_likelihood=0.0)
    x = 0.5
    low = 0.25 * math.exp(-0.5 * x**2) / math.sqrt(2 * math.pi)
    high = 0.75 * math.exp(-0.5 * (x - 1) ** 2 / 4) / math.sqrt(2 * math.pi * 4)
    assert mixture.posterior_high(np.array([x]))[0] == pytest.approx(high / (low + high), rel=1e-12)


def test_safety_ranks_similar_pairs_safe():
    rng = np.random.default_rng(2)
    poisoned = rng.normal(0.05, 0.03, 200)  # pairs whose image and caption disagree
    clean = rng.normal(0.5, 0.08, 1800)
    posterior, mixture = safety(np.concatenate([poisoned, clean]))
    assert mixture.means[1] == pytest.approx(0.5, abs=0.02)
    assert posterior[:200].max() < 0.01 and posterior[200:].mean() > 0.99
    safe = safe_by_threshold(posterior, 0.9)
    assert np.all(safe >= 200) and len(safe) > 1700


def test_fit_is_deterministic_and_handles_equal_values():
    values = np.array([0.2] * 50 + [0.7] * 50)
    assert fit_two_gaussians(values) == fit_two_gaussians(values.copy())
    mixture = fit_two_gaussians(values)
    assert mixture.means == pytest.approx((0.2, 0.7))
    assert np.all(np.isfinite(mixture.posterior_high(values)))


@pytest.mark.parametrize("values", [np.array([0.3]), np.array([0.1, np.nan, 0.4])])
def test_fit_rejects_too_few_or_non_finite_values(values):
    with pytest.raises(ValueError, match="at least 2 finite"):
        fit_two_gaussians(values)


def test_safe_by_threshold_and_ratio():
    posterior = np.array([0.95, 0.2, 0.9, 0.89, 0.99, 0.5])
    assert safe_by_threshold(posterior, 0.9).tolist() == [0, 2, 4]
    assert safe_by_ratio(posterior, 0.5).tolist() == [0, 2, 4]
    assert safe_by_ratio(posterior, 0.67).tolist() == [0, 2, 3, 4]
    assert safe_by_ratio(posterior, 0.0).tolist() == []
    assert safe_by_ratio(np.array([0.5, 0.5, 0.5]), 1 / 3).tolist() == [0]  # ties: lower index first


def test_ratio_grows_by_its_step_up_to_the_cap():
    ratios = [0.8]
    for _ in range(8):
        ratios.append(next_ratio(ratios[-1], 0.01, 0.85))
    assert ratios[:6] == pytest.approx([0.80, 0.81, 0.82, 0.83, 0.84, 0.85])
    assert ratios[6:] == pytest.approx([0.85] * 3)
    assert next_ratio(0.9, 0.01, 0.85) == 0.85  # a first split above the cap comes down to it
