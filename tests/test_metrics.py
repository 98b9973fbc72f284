"""Metric formulas against hand-computed cases: Wilson intervals, DER, the leaderboard's bootstrap,
ranking and implant test."""

from __future__ import annotations

import math

import pytest

import numpy as np
from scipy.stats import beta, hypergeom

from cleanbench.leaderboard.uncertainty import (
    bootstrap_ranks,
    count_draws,
    der_array,
    generator,
    implant_test,
    interval,
    seed_weights,
    weighted_mean,
)
from cleanbench.metrics import der, proportion, stealthiness

Z = 1.959963984540054  # standard normal 97.5 % quantile


def test_wilson_interval_by_hand():
    # k = 5, n = 10: centre (p + z^2/2n) / (1 + z^2/n) = 0.5, half width z sqrt(p(1-p)/n + z^2/4n^2) / (1 + z^2/n)
    half = Z * math.sqrt(0.25 / 10 + Z**2 / 400) / (1 + Z**2 / 10)
    p = proportion(5, 10)
    assert (p.value, p.low, p.high) == pytest.approx((0.5, 0.5 - half, 0.5 + half))
    assert p.low == pytest.approx(0.2366, abs=1e-4)
    # k = 0: low 0, high z^2 / (n + z^2)
    zero = proportion(0, 10)
    assert zero.low == pytest.approx(0.0, abs=1e-12) and zero.high == pytest.approx(Z**2 / (10 + Z**2))
    assert math.isnan(proportion(0, 0).value)
    with pytest.raises(ValueError):
        proportion(11, 10)


def test_der_by_hand():
    # Zhu et al. (ICCV 2023), Table 1, FT against BadNets-A2O: ACC 91.82 -> 90.29, ASR 93.79 -> 1.70, DER 95.28 %
    assert der(0.9182, 0.9029, 0.9379, 0.0170) == pytest.approx(0.9528, abs=5e-5)
    assert der(0.8, 0.8, 1.0, 0.0) == 1.0  # backdoor removed at no cost
    assert der(0.8, 0.8, 0.9, 0.9) == 0.5  # nothing changed
    assert der(1.0, 0.0, 0.9, 0.9) == 0.0  # accuracy destroyed, backdoor kept
    assert der(0.9, 0.9, 0.1, 0.5) == 0.5  # an ASR increase is not penalised (max with 0)
    assert der(0.5, 0.7, 0.9, 0.9) == 0.5  # a CA increase is not rewarded
    assert der(0.8, 0.7, 0.9, 0.3) == pytest.approx((0.6 - 0.1 + 1) / 2)
    assert math.isnan(der(math.nan, 0.7, 0.9, 0.3))


def test_der_array_is_der_elementwise():
    cases = [(0.9182, 0.9029, 0.9379, 0.0170), (0.8, 0.7, 0.9, 0.3), (0.9, 0.9, 0.1, 0.5), (0.5, 0.7, 0.9, 0.9)]
    columns = [np.array(c) for c in zip(*cases)]
    assert der_array(*columns) == pytest.approx([der(*c) for c in cases])


def test_bootstrap_draws_by_hand():
    rng = generator("test")
    draws = count_draws(0, 1790, rng, replicates=20000)
    # Jeffreys Beta(0.5, 1790.5): 0 of 1,790 still has an upper bound
    assert interval(draws) == pytest.approx(tuple(beta.ppf([0.025, 0.975], 0.5, 1790.5)), abs=5e-5)
    weights = seed_weights(3, rng, replicates=5000)
    assert (weights.sum(axis=1) == 3).all() and weights.mean() == pytest.approx(1, abs=0.03)
    values = np.array([[0.1, 0.2, 0.3]] * 2)
    assert weighted_mean(values, np.array([[1.0, 2.0, 0.0], [0.0, 0.0, 0.0]])) == pytest.approx([0.5 / 3, 0.2])
    assert interval(np.arange(1001) / 1000) == pytest.approx((0.025, 0.975))
    assert interval(np.arange(1001) / 1000, 0.1, 0.9) == pytest.approx((0.1, 0.9))


def test_bootstrap_ranks_by_hand():
    base = np.linspace(0, 1, 1000)
    a, b, c = base + 2.0, base + 0.5, base[::-1] + 0.45  # a beats both; b beats c in only ~55 % of the pairs
    ranks, best, tied = bootstrap_ranks([a, b, c])
    assert ranks == [1, 2, 2] and best == [True, False, False] and tied == [[], [2], [1]]
    ranks, best, _ = bootstrap_ranks([a, b, c], higher_is_better=False)
    assert ranks == [3, 1, 1] and best == [False, False, False]  # b and c share first place: no star
    assert bootstrap_ranks([a]) == ([1], [False], [[]])
    assert bootstrap_ranks([b, base + 0.45])[0] == [1, 2]  # paired replicates: b is above in every one


def test_implant_test_is_a_one_sided_fisher_test_in_every_seed():
    # 30 of 100 against 10 of 100: the one-sided Fisher p is P(X >= 30), X hypergeometric(200, 40, 100)
    p = implant_test([(30, 100)], lambda seed: (10, 100), [0])
    assert p == pytest.approx(hypergeom.sf(29, 200, 40, 100))
    assert p < 0.001
    # a second seed at the base rate: not above it in every seed, so the largest p-value decides
    both = implant_test([(30, 100), (10, 100)], lambda seed: (10, 100), [0, 1])
    assert both == pytest.approx(hypergeom.sf(9, 200, 20, 100)) and both > 0.05


def test_stealthiness_by_hand():
    import torch

    clean = torch.zeros(2, 3, 2, 2, dtype=torch.uint8)
    triggered = clean.clone()
    triggered[0, 0, 0, 0], triggered[0, 1, 1, 1] = 255, 51  # image 0 changed in two values, image 1 not at all
    result = stealthiness(clean, triggered)
    mse = (1 + 0.2**2) / 12
    assert result["linf"] == pytest.approx(0.5, rel=1e-15)
    assert result["l2"] == pytest.approx(math.sqrt(1 + 0.2**2) / 2, rel=1e-15)
    assert result["psnr_db"] == pytest.approx(10 * math.log10(1 / mse), rel=1e-15)  # the changed image only
    assert result["changed_fraction"] == 0.5
    # 224 px, every value off by 255: the sum of squares (9.8e9) stays exact
    big = stealthiness(torch.zeros(1, 3, 224, 224, dtype=torch.uint8), torch.full((1, 3, 224, 224), 255, dtype=torch.uint8))
    assert big["l2"] == math.sqrt(3 * 224 * 224) and big["linf"] == 1.0 and big["psnr_db"] == 0.0
    with pytest.raises(TypeError, match="uint8"):
        stealthiness(clean.float(), triggered.float())
