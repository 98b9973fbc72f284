"""Metric formulas against hand-computed cases: Wilson intervals, DER, seed aggregation, ranking."""

from __future__ import annotations

import math

import pytest

from cleanbench.metrics import (
    Proportion,
    der,
    der_bounds,
    interval_ranks,
    proportion,
    stealthiness,
    summarize_proportions,
    summarize_values,
    t_interval,
)

Z = 1.959963984540054  # standard normal 97.5 % quantile
T2 = 4.302652729911275  # Student t 97.5 % quantile, 2 degrees of freedom
T1 = 12.706204736174705  # ... 1 degree of freedom


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


def test_der_bounds_take_the_corners_of_the_defended_intervals():
    ca = Proportion(70, 100, 0.70, 0.60, 0.78)
    asr = Proportion(30, 100, 0.30, 0.22, 0.40)
    low, high = der_bounds(0.8, ca, 0.9, asr)
    assert low == pytest.approx((0.9 - 0.40 - (0.8 - 0.60) + 1) / 2)
    assert high == pytest.approx((0.9 - 0.22 - (0.8 - 0.78) + 1) / 2)
    assert low < der(0.8, 0.70, 0.9, 0.30) < high


def test_t_interval_by_hand():
    low, high = t_interval([0.1, 0.2, 0.3])  # mean 0.2, sd 0.1, half width t * 0.1 / sqrt(3)
    assert (low, high) == pytest.approx((0.2 - T2 * 0.1 / math.sqrt(3), 0.2 + T2 * 0.1 / math.sqrt(3)))
    assert t_interval([0.4, 0.4]) == (0.4, 0.4)
    with pytest.raises(ValueError):
        t_interval([0.5])


def test_summarize_values():
    s = summarize_values([0.1, 0.2, 0.3], clip=(0.0, 1.0))
    assert (s.mean, s.std, s.n, s.method) == (pytest.approx(0.2), pytest.approx(0.1), 3, "t")
    assert s.low == 0.0  # 0.2 - 0.2484 clipped at 0
    assert s.high == pytest.approx(0.2 + T2 * 0.1 / math.sqrt(3))
    one = summarize_values([0.7, math.nan, None])
    assert (one.mean, one.n, one.method) == (0.7, 1, "none") and math.isnan(one.std) and math.isnan(one.low)
    empty = summarize_values([])
    assert empty.n == 0 and math.isnan(empty.mean)


def test_summarize_proportions_one_seed_is_wilson_several_are_t():
    one = summarize_proportions([{"successes": 5, "total": 10}])
    wilson = proportion(5, 10)
    assert (one.mean, one.low, one.high, one.method) == (0.5, wilson.low, wilson.high, "wilson")
    two = summarize_proportions([{"successes": 3, "total": 10}, {"successes": 5, "total": 10}, {"successes": 0, "total": 0}])
    # 0.3 and 0.5: mean 0.4, sd 0.1414, half width t(1) * 0.1414 / sqrt(2) = 1.2706, clipped to [0, 1]
    assert (two.mean, two.std, two.n, two.method) == (pytest.approx(0.4), pytest.approx(math.sqrt(0.02)), 2, "t")
    assert 0.4 - T1 * 0.1 < 0 and 0.4 + T1 * 0.1 > 1
    assert (two.low, two.high) == (0.0, 1.0)
    three = summarize_proportions([{"successes": k, "total": 100} for k in (30, 40, 50)])
    assert (three.low, three.high) == pytest.approx((0.4 - T2 * 0.1 / math.sqrt(3), 0.4 + T2 * 0.1 / math.sqrt(3)))
    assert (three.low, three.high) == pytest.approx((0.1516, 0.6484), abs=1e-4)


def test_interval_ranks_tie_where_intervals_overlap():
    means = [0.90, 0.85, 0.50, math.nan, 0.86]
    lows = [0.86, 0.80, 0.45, math.nan, math.nan]
    highs = [0.94, 0.87, 0.55, math.nan, math.nan]
    # 0.90 [0.86, 0.94] and 0.85 [0.80, 0.87] overlap; 0.86 has no interval (a point) inside both
    assert interval_ranks(means, lows, highs) == [1, 1, 4, None, 1]
    # lower is better: the 0.50 row is now first, the others overlap each other
    assert interval_ranks(means, lows, highs, higher_is_better=False) == [2, 2, 1, None, 2]
    assert interval_ranks([0.3, 0.2, 0.1], [0.3, 0.2, 0.1], [0.3, 0.2, 0.1]) == [1, 2, 3]


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
