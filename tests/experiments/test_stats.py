"""The statistics module against independent routes: coverage on simulated data (the
interval holds the true value about ``level`` of the time, within a binomial tolerance),
textbook formulas computed by hand, and the invariances that make pairing worth it."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from experiments.common import stats

# Coverage is checked over R simulated experiments; the observed coverage is binomial
# with standard error sqrt(level (1 - level) / R): 4 standard errors is the tolerance.
R, LEVEL = 3000, 0.95
TOL = 4 * math.sqrt(LEVEL * (1 - LEVEL) / R)


def coverage(intervals, truth: float) -> float:
    return float(np.mean([iv.low <= truth <= iv.high for iv in intervals]))


def test_seed_interval_is_the_textbook_t_interval_and_covers():
    """mean +- t_{S-1} s / sqrt(S), by hand; and it holds the true mean 95% of the time."""
    rng = np.random.default_rng(0)
    v = rng.normal(3.0, 2.0, size=5)
    iv = stats.seed_interval(v)
    half = sps.t.ppf(0.975, 4) * v.std(ddof=1) / math.sqrt(5)
    assert iv.value == pytest.approx(v.mean())
    assert (iv.low, iv.high) == pytest.approx((v.mean() - half, v.mean() + half))
    sims = [stats.seed_interval(rng.normal(1.0, 0.5, size=3)) for _ in range(R)]
    assert abs(coverage(sims, 1.0) - LEVEL) < TOL


def test_seed_interval_of_identical_values_is_a_point_and_one_seed_is_refused():
    """All seeds equal: the t-interval degenerates to the value (no division by zero)."""
    iv = stats.seed_interval([0.0, 0.0, 0.0])
    assert (iv.value, iv.low, iv.high) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="at least 2"):
        stats.seed_interval([0.5])


def test_pooled_interval_covers_under_seed_and_sampling_noise():
    """value_s = mu + b_s + e_s: the pooled interval covers mu at least 95% of the time
    (it is conservative by construction), whichever variance dominates."""
    rng = np.random.default_rng(1)
    for tau, se in ((1.0, 0.1), (0.1, 1.0), (0.5, 0.5)):
        sims = []
        for _ in range(R):
            v = 2.0 + rng.normal(0, tau, 3) + rng.normal(0, se, 3)
            sims.append(stats.pooled_interval(v, [se] * 3))
        assert coverage(sims, 2.0) > LEVEL - TOL


@given(st.lists(st.floats(-10, 10), min_size=2, max_size=6), st.floats(0.0, 5.0))
def test_pooled_interval_is_never_narrower_than_sampling_or_seed_noise(values, se):
    """Not narrower than the t-interval over seeds, nor than the known sampling error."""
    pooled = stats.pooled_interval(values, [se] * len(values))
    seed = stats.seed_interval(values)
    q = sps.t.ppf(0.975, len(values) - 1)
    assert pooled.high - pooled.low >= seed.high - seed.low - 1e-9
    assert pooled.high - pooled.low >= 2 * q * se / math.sqrt(len(values)) - 1e-9


def test_pooled_interval_of_one_seed_is_the_normal_sampling_interval():
    iv = stats.pooled_interval([0.4], [0.02])
    assert (iv.low, iv.high) == pytest.approx((0.4 - 1.959964 * 0.02, 0.4 + 1.959964 * 0.02))
    assert "1 seed" in iv.method


def test_paired_difference_equals_scipys_paired_t_test():
    """scipy's ttest_rel (the paired t-test) gives the same interval, by another route."""
    rng = np.random.default_rng(2)
    a, b = rng.normal(0, 1, 6), rng.normal(0.3, 1, 6)
    d = stats.paired_difference(a, b)
    ci = sps.ttest_rel(a, b).confidence_interval(0.95)
    assert (d.low, d.high) == pytest.approx((ci.low, ci.high))
    assert d.value == pytest.approx(np.mean(a - b))
    assert d.positive == int(np.sum(a > b))
    assert d.diffs == pytest.approx(tuple(a - b))


@given(st.lists(st.floats(-1e3, 1e3), min_size=3, max_size=3))
@settings(max_examples=50)
def test_paired_difference_ignores_what_both_models_share_per_seed(shift):
    """Adding the same per-seed offset to both arms (a seed that is hard for every model)
    leaves the paired effect unchanged: that is what pairing removes."""
    a, b = np.array([0.7, 0.8, 0.75]), np.array([0.6, 0.62, 0.7])
    base = stats.paired_difference(a, b)
    moved = stats.paired_difference(a + shift, b + shift)
    assert (moved.value, moved.low, moved.high) == pytest.approx(
        (base.value, base.low, base.high), abs=1e-9)


def test_pairing_shows_a_consistent_effect_that_unpaired_intervals_hide():
    """Seeds differ a lot, the effect is the same on each: the paired interval excludes 0,
    Welch's unpaired interval does not."""
    seed_level = np.array([0.2, 0.5, 0.8])
    a, b = seed_level + 0.05, seed_level + np.array([0.0, 0.01, -0.01])
    assert stats.paired_difference(a, b).excludes_zero()
    welch = sps.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert welch.low < 0 < welch.high


def test_paired_bootstrap_covers_and_needs_enough_seeds():
    rng = np.random.default_rng(3)
    sims = [stats.paired_difference(rng.normal(1, 1, 30), rng.normal(0.5, 1, 30),
                                    method="bootstrap", seed=i) for i in range(300)]
    # 300 repetitions: tolerance 4 SE of a binomial proportion at 0.95
    assert abs(coverage(sims, 0.5) - LEVEL) < 4 * math.sqrt(0.95 * 0.05 / 300) + 0.02
    with pytest.raises(ValueError, match="8 seeds"):
        stats.paired_difference([1, 2, 3], [0, 1, 2], method="bootstrap")


def test_proportion_interval_covers_the_binomial_truth():
    rng = np.random.default_rng(4)
    p, total = 0.3, 200
    sims = [stats.proportion_interval(int(rng.binomial(total, p)), total) for _ in range(R)]
    assert abs(coverage(sims, p) - LEVEL) < TOL + 0.01  # Wilson is approximate
    edge = stats.proportion_interval(0, 500)
    assert edge.low == 0.0 and 0 < edge.high < 0.01


def test_slope_interval_recovers_a_power_law_and_covers():
    """log W = 1.3 log n + noise: the fitted slope's interval holds 1.3 about 95% of the time
    and the slope equals numpy's least-squares fit."""
    rng = np.random.default_rng(5)
    x = np.log([4, 8, 16, 32, 64, 128])
    y = 1.3 * x + 0.4 + rng.normal(0, 0.1, x.size)
    assert stats.slope_interval(x, y).value == pytest.approx(np.polyfit(x, y, 1)[0])
    sims = [stats.slope_interval(x, 1.3 * x + rng.normal(0, 0.1, x.size)) for _ in range(R)]
    assert abs(coverage(sims, 1.3) - LEVEL) < TOL


@given(c=st.floats(-1e3, 1e3), m=st.integers(3, 9))
def test_slope_interval_of_a_constant_is_zero_wide_not_nan(c, m):
    """The limit of y = c + s * noise as s -> 0: slope 0, interval [0, 0] (scipy's
    linregress alone gives NaN here, which reached a results file)."""
    x = np.log(np.arange(2, 2 + m))
    flat = stats.slope_interval(x, np.full(m, c))
    assert flat.low == flat.value == flat.high and abs(flat.value) < 1e-12  # 0 up to rounding
    noise = np.random.default_rng(m).normal(0, 1, m)
    near = stats.slope_interval(x, c + 1e-9 * noise)
    assert max(abs(near.low), abs(near.high)) < 1e-6


def test_slope_over_seeds_covers_when_seeds_shift_whole_curves():
    """Each seed has its own intercept and slope deviation (correlated points): the
    per-seed interval covers the mean slope at about 95%."""
    rng = np.random.default_rng(6)
    x = np.tile(np.log([4, 8, 16, 32]), 3)
    seeds = np.repeat([0, 1, 2], 4)
    sims = []
    for _ in range(R):
        intercept = rng.normal(0, 1, 3)[seeds]
        slope = 1.0 + rng.normal(0, 0.2, 3)[seeds]
        sims.append(stats.slope_over_seeds(x, intercept + slope * x, seeds))
    assert abs(coverage(sims, 1.0) - LEVEL) < TOL


@pytest.mark.parametrize("call, match", [
    (lambda: stats.seed_interval([1.0, float("nan")]), "finite"),
    (lambda: stats.seed_interval([1.0, 2.0], level=1.0), "level"),
    (lambda: stats.paired_difference([1, 2], [1, 2, 3]), "one value per seed"),
    (lambda: stats.paired_difference([1, 2], [1, 2], method="z"), "method"),
    (lambda: stats.pooled_interval([1, 2], [0.1]), "stderrs"),
    (lambda: stats.pooled_interval([1, 2], [0.1, -1]), ">= 0"),
    (lambda: stats.proportion_interval(5, 3), "hits"),
    (lambda: stats.slope_interval([1, 1, 1], [1, 2, 3]), "distinct"),
    (lambda: stats.slope_over_seeds([1, 2, 1], [1, 2, 3], [0, 0, 1]), "seed 1"),
])
def test_bad_input_is_refused_naming_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()
