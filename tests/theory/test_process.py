"""The OU forward process, time grids, the Beta time sampler and seeds (theory/process.py, §3)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, stats

from theory.process import (
    BetaTimeSampler,
    alpha,
    check_time,
    derive_seed,
    forward_sample,
    generator,
    log_time_grid,
    sigma,
    sigma2,
    time_column,
)

EPS64 = float(np.finfo(np.float64).eps)
# Statistical checks use fixed seeds (derandomize) and a z-tolerance of 5 standard
# errors per compared quantity: a correct implementation fails with probability < 1e-5.
Z = 5.0
STAT = settings(max_examples=8, deadline=None, derandomize=True)


# -- alpha_t and sigma_t ------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_alpha_sq_plus_sigma_sq_is_one(strat, data):
    t = data.draw(strat.log_uniform(1e-12, 200.0))
    assert abs(alpha(t) ** 2 + sigma(t) ** 2 - 1.0) <= 4 * EPS64
    tt = torch.tensor([t, 2 * t, t / 3], dtype=torch.float64)
    total = alpha(tt).square() + sigma(tt).square()
    assert torch.all((total - 1).abs() <= 4 * EPS64)
    assert sigma2(t) == pytest.approx(sigma(t) ** 2, rel=4 * EPS64)


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_sigma_accurate_at_tiny_t(strat, data):
    """sigma_t^2 = 1 - e^{-t} = t - t^2/2 + ..., to full relative precision down to t = 1e-300.

    Computing 1 - exp(-t) directly would give 0 at t = 1e-16 (sigma_t = 1e-8)."""
    t = data.draw(strat.log_uniform(1e-300, 1e-5))
    series = t - t * t / 2 + t**3 / 6
    assert sigma2(t) == pytest.approx(series, rel=4 * EPS64)
    assert sigma(t) == pytest.approx(math.sqrt(series), rel=4 * EPS64)
    tt = torch.tensor([t], dtype=torch.float64)
    assert sigma2(tt).item() == pytest.approx(series, rel=4 * EPS64)
    assert sigma(tt).item() == pytest.approx(math.sqrt(series), rel=4 * EPS64)


def test_sigma_at_1e_minus_16():
    assert sigma(1e-16) == pytest.approx(1e-8, rel=1e-15)
    t32 = torch.tensor([1e-8], dtype=torch.float32)
    assert sigma(t32).item() == pytest.approx(1e-4, rel=1e-6)


def test_alpha_sigma_limits():
    assert alpha(60.0) == pytest.approx(math.exp(-30.0), rel=1e-14)
    assert sigma(60.0) == 1.0
    assert alpha(1e-300) == 1.0


# -- forward sampling ---------------------------------------------------------------------


@STAT
@given(data=st.data())
def test_forward_sample_moments(strat, data):
    """X_t | X_0 = x0 has mean alpha_t x0 and variance sigma_t^2 per coordinate."""
    seed = data.draw(strat.seeds)
    t = data.draw(strat.log_uniform(1e-3, 10.0))
    d = data.draw(st.integers(1, 4))
    num = 20_000
    x0 = (3 * strat.randn((1, d), seed)).expand(num, d)
    xt, eps = forward_sample(x0, t, strat.torch_gen(seed + 1))
    a, s = alpha(t), sigma(t)
    torch.testing.assert_close(xt, a * x0 + s * eps, rtol=0, atol=0)
    mean_se = s / math.sqrt(num)
    assert torch.all((xt.mean(0) - a * x0[0]).abs() <= Z * mean_se)
    var_se = s**2 * math.sqrt(2 / (num - 1))
    assert torch.all((xt.var(0) - s**2).abs() <= Z * var_se)


def test_forward_sample_per_row_times_and_seed():
    x0 = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([1e-4, 0.01, 0.1, 1.0, 5.0, 30.0], dtype=torch.float64)
    xt, eps = forward_sample(x0, t, torch.Generator().manual_seed(1))
    expected = alpha(t)[:, None] * x0 + sigma(t)[:, None] * eps
    torch.testing.assert_close(xt, expected, rtol=1e-15, atol=0)
    xt2, eps2 = forward_sample(x0, t, torch.Generator().manual_seed(1))
    assert torch.equal(xt, xt2) and torch.equal(eps, eps2)
    assert xt.dtype == torch.float64


# -- time grid ----------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_log_time_grid(strat, data):
    t_min = data.draw(strat.log_uniform(1e-8, 1.0))
    ratio = data.draw(strat.log_uniform(1.01, 1e6))
    num = data.draw(st.integers(2, 50))
    grid = log_time_grid(t_min, t_min * ratio, num)
    assert grid.shape == (num,)
    assert grid[0] == pytest.approx(t_min, rel=1e-12)
    assert grid[-1] == pytest.approx(t_min * ratio, rel=1e-12)
    assert np.all(np.diff(grid) > 0)
    steps = np.diff(np.log(grid))
    np.testing.assert_allclose(steps, math.log(ratio) / (num - 1), rtol=1e-8)


# -- Beta time sampler --------------------------------------------------------------------


@STAT
@given(data=st.data())
def test_beta_time_sampler(strat, data):
    a = data.draw(st.floats(0.3, 5.0))
    b = data.draw(st.floats(0.3, 5.0))
    t0 = data.draw(strat.log_uniform(1e-5, 0.1))
    T = t0 + data.draw(st.floats(0.1, 10.0))
    seed = data.draw(strat.seeds)
    sampler = BetaTimeSampler(a, b, t0, T)
    num = 20_000
    t = sampler.sample(num, strat.torch_gen(seed), dtype=torch.float64)
    assert t.shape == (num,) and t.dtype == torch.float64
    assert torch.all((t >= t0) & (t <= T))
    assert torch.equal(t, sampler.sample(num, strat.torch_gen(seed), dtype=torch.float64))
    u = ((t - t0) / (T - t0)).numpy()
    mean = a / (a + b)
    sd = math.sqrt(a * b / ((a + b) ** 2 * (a + b + 1)))
    assert abs(u.mean() - mean) <= Z * sd / math.sqrt(num)
    # the whole law, not only its mean: Kolmogorov-Smirnov against Beta(a, b)
    assert stats.kstest(u, stats.beta(a, b).cdf).pvalue > 1e-5


def test_beta_time_sampler_paper_law_on_the_experiments_range():
    """Our sampler with the law every experiment uses (Beta(0.8, 2) on [t0, T] = [1e-3, 8]):
    its empirical CDF at fixed times equals the law's CDF obtained by integrating the Beta
    density u^(a-1) (1-u)^(b-1) / B(a, b) with quad at u = (t - t0)/(T - t0) (no betainc),
    within Z binomial standard errors each, and the whole sample passes a two-sample
    Kolmogorov-Smirnov test against t0 + (T - t0) X/(X + Y), X ~ Gamma(0.8), Y ~ Gamma(2)
    drawn by numpy (an independent construction of the Beta law). Guards the law's
    parameters (e.g. swapped to Beta(2, 0.8)) and the mapping of [0, 1] onto [t0, T]."""
    a, b, t0, T = 0.8, 2.0, 1e-3, 8.0
    sampler = BetaTimeSampler(a, b, t0, T)
    num = 50_000
    t = sampler.sample(num, torch.Generator().manual_seed(0), dtype=torch.float64).numpy()
    assert t.min() >= t0 and t.max() <= T
    norm = math.gamma(a) * math.gamma(b) / math.gamma(a + b)

    def cdf(time: float) -> float:  # u^(a-1) has an integrable singularity at 0: quad's alg
        u = (time - t0) / (T - t0)
        val, _ = integrate.quad(lambda v: (1 - v) ** (b - 1), 0, u, weight="alg",
                                wvar=(a - 1, 0), epsabs=0, epsrel=1e-12)
        return val / norm

    assert cdf(T) == pytest.approx(1.0, rel=1e-10)
    for time in (1.001e-3, 1.01e-3, 0.01, 0.1, 0.5, 1.0, 2.0, 4.0, 7.0):
        p = cdf(time)
        frac = float((t <= time).mean())
        assert abs(frac - p) <= Z * math.sqrt(p * (1 - p) / num), (time, frac, p)
    # the paper's "most mass at small t": over half of our draws lie in the first quarter
    # of [t0, T] (the law gives 0.528), by more than Z standard errors
    below = float((t <= 2.0).mean())
    assert below - Z * math.sqrt(below * (1 - below) / num) > 0.5
    rng = np.random.default_rng(1)
    x, y = rng.gamma(a, size=num), rng.gamma(b, size=num)
    ref = t0 + (T - t0) * x / (x + y)
    assert stats.ks_2samp(t, ref).pvalue > 1e-5
    assert "a=0.8" in repr(sampler)
    assert sampler.sample(4).dtype == torch.float32


# -- seeds --------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**62),
    keys1=st.lists(st.integers(0, 2**31), max_size=3),
    keys2=st.lists(st.integers(0, 2**31), max_size=3),
)
def test_derive_seed_deterministic_and_distinct(seed, keys1, keys2):
    s1 = derive_seed(seed, *keys1)
    assert s1 == derive_seed(seed, *keys1)
    assert 0 <= s1 < 2**63
    if keys1 != keys2:
        assert s1 != derive_seed(seed, *keys2)
    assert s1 != derive_seed(seed + 1, *keys1)


def test_derive_seed_many_keys_distinct_and_generators_reproducible():
    seeds = {derive_seed(7, k) for k in range(2000)} | {derive_seed(7, 0, k) for k in range(2000)}
    assert len(seeds) == 4000
    a = torch.randn(5, generator=generator(3, 1, 2))
    b = torch.randn(5, generator=generator(3, 1, 2))
    c = torch.randn(5, generator=generator(3, 2, 1))
    assert torch.equal(a, b) and not torch.equal(a, c)


# -- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize("t", [0.0, -1e-3, math.nan, math.inf, torch.tensor([0.1, 0.0])])
def test_check_time_rejects(t):
    with pytest.raises(ValueError, match="t must be"):
        check_time(t)


def test_check_time_allow_zero():
    check_time(0.0, allow_zero=True)
    with pytest.raises(ValueError, match="t must be >= 0"):
        check_time(-1.0, allow_zero=True)


def test_forward_sample_rejects_bad_time():
    x0 = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="t must be"):
        forward_sample(x0, 0.0)
    with pytest.raises(ValueError, match="t must be"):
        forward_sample(x0, torch.full((4,), 0.5))
    with pytest.raises(ValueError, match="t must be"):
        time_column(torch.full((3, 1), 0.5), x0)


def test_grid_and_sampler_reject_bad_arguments():
    with pytest.raises(ValueError, match="t_min"):
        log_time_grid(0.0, 1.0, 5)
    with pytest.raises(ValueError, match="t_max"):
        log_time_grid(1.0, 1.0, 5)
    with pytest.raises(ValueError, match="num"):
        log_time_grid(0.1, 1.0, 1)
    with pytest.raises(ValueError, match="parameter a"):
        BetaTimeSampler(0.0, 2.0, 1e-3, 1.0)
    with pytest.raises(ValueError, match="parameter b"):
        BetaTimeSampler(0.8, -1.0, 1e-3, 1.0)
    with pytest.raises(ValueError, match="t0"):
        BetaTimeSampler(0.8, 2.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="T must"):
        BetaTimeSampler(0.8, 2.0, 1.0, 0.5)
