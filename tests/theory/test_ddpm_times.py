"""The DDPM-schedule and log-uniform time laws of the pruning importance (theory.process)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from theory.process import DDPMBetaTimeSampler, LogUniformTimeSampler, ddpm_linear_times

N_DRAWS = 200_000


def direct_abar(steps: int = 1000, lo: float = 1e-4, hi: float = 0.02) -> np.ndarray:
    """abar_k = prod_{i <= k} (1 - beta_i) by the direct cumulative product (DDPM's route)."""
    return np.cumprod(1.0 - np.linspace(lo, hi, steps))


@pytest.fixture(scope="module")
def draws() -> torch.Tensor:
    return DDPMBetaTimeSampler().sample(N_DRAWS, torch.Generator().manual_seed(11), torch.float64)


def test_ddpm_times_equal_minus_log_of_the_cumulative_product():
    """Catches a wrong schedule (endpoints, step count, off-by-one cumsum) or lost precision."""
    t = ddpm_linear_times()
    ref = -np.log(direct_abar())
    assert t.shape == (1000,)
    np.testing.assert_allclose(t, ref, rtol=1e-12, atol=0)
    np.testing.assert_allclose(np.exp(-t), direct_abar(), rtol=1e-12, atol=0)
    assert np.all(np.diff(t) > 0)
    # first step: t = -log(1 - 1e-4), not 0; last: about 10.1
    assert t[0] == pytest.approx(-math.log1p(-1e-4), rel=1e-14)
    assert t[-1] == pytest.approx(10.1177, abs=1e-3)


@settings(max_examples=30, deadline=None)
@given(steps=st.integers(1, 400), lo=st.floats(1e-5, 0.05), ratio=st.floats(1.0, 20.0))
def test_ddpm_times_for_other_schedules(steps, lo, ratio):
    """Catches a schedule that ignores steps, beta_start or beta_end."""
    hi = min(lo * ratio, 0.5)
    t = ddpm_linear_times(steps, lo, hi)
    np.testing.assert_allclose(t, -np.log(direct_abar(steps, lo, hi)), rtol=1e-11, atol=0)


@pytest.mark.parametrize("args", [(0, 1e-4, 0.02), (10, 0.0, 0.02), (10, 0.03, 0.02),
                                  (10, 1e-4, 1.0)])
def test_ddpm_times_refuse_bad_schedules(args):
    """Catches a schedule built from no steps or betas outside (0, 1) or decreasing."""
    with pytest.raises(ValueError):
        ddpm_linear_times(*args)


def test_median_is_the_step_of_the_beta_median():
    """Catches a median read off the wrong step (floor vs ceil, 0- vs 1-based) or law."""
    k = math.ceil(1000 * stats.beta(0.8, 2.0).ppf(0.5))  # step 231
    assert k == 231
    m = DDPMBetaTimeSampler().median()
    assert m == pytest.approx(-math.log(direct_abar()[k - 1]), rel=1e-12)
    assert abs(m - 0.553) < 1e-3


def test_median_agrees_with_the_draws(draws):
    """Catches draws whose law differs from the one median() describes."""
    m = DDPMBetaTimeSampler().median()
    below = float((draws < m).double().mean())
    at_most = float((draws <= m).double().mean())
    se = math.sqrt(0.25 / N_DRAWS)
    # a discrete law: P(T < m) <= 1/2 <= P(T <= m), each up to sampling error
    assert below <= 0.5 + 4 * se and at_most >= 0.5 - 4 * se
    # and the exact masses of the step law: P(T <= t_k) = F_Beta(k / 1000)
    beta = stats.beta(0.8, 2.0)
    for p_exact, p_hat in ((beta.cdf(0.230), below), (beta.cdf(0.231), at_most)):
        assert abs(p_hat - p_exact) < 4 * math.sqrt(p_exact * (1 - p_exact) / N_DRAWS)
    assert float(draws.median()) == pytest.approx(m, abs=5e-3)


def test_tail_above_eight_is_about_one_percent_and_kept(draws):
    """Catches clipping at T = 8 or a tail from the wrong law (0.9% of draws exceed 8)."""
    t = ddpm_linear_times()
    k8 = int(np.argmax(t > 8.0))  # first 0-based step above 8 (step 890)
    p = 1 - stats.beta(0.8, 2.0).cdf(k8 / 1000)
    assert p == pytest.approx(0.009, abs=5e-4)
    p_hat = float((draws > 8.0).double().mean())
    assert abs(p_hat - p) < 4 * math.sqrt(p * (1 - p) / N_DRAWS)
    assert float(draws.max()) > 8.0


def test_draws_are_schedule_times(draws):
    """Catches interpolated times or an off-by-one step index (t(0) or t(1001))."""
    t = ddpm_linear_times()
    assert np.isin(draws.numpy(), t).all()
    assert float(draws.min()) >= t[0] and float(draws.max()) <= t[-1]
    # step 1 (u <= 1/1000) gets mass F(0.001) > 0: ~ 800 of 200k draws, not none
    assert int((draws == t[0]).sum()) > 0


def test_same_seed_same_draws_and_dtype():
    """Catches draws that ignore the generator or the dtype."""
    s = DDPMBetaTimeSampler()
    a = s.sample(500, torch.Generator().manual_seed(3), torch.float64)
    b = s.sample(500, torch.Generator().manual_seed(3), torch.float64)
    c = s.sample(500, torch.Generator().manual_seed(4), torch.float64)
    assert torch.equal(a, b) and not torch.equal(a, c)
    f = s.sample(500, torch.Generator().manual_seed(3))
    assert f.dtype == torch.float32 and torch.equal(f, a.float())


@pytest.mark.parametrize("a, b", [(0.0, 2.0), (-1.0, 2.0), (0.8, 0.0), (0.8, -2.0),
                                  (float("nan"), 2.0), (0.8, float("nan"))])
def test_ddpm_sampler_refuses_bad_beta_parameters(a, b):
    """Catches a Beta law built from non-positive or NaN parameters."""
    with pytest.raises(ValueError):
        DDPMBetaTimeSampler(a, b)


@pytest.mark.parametrize("t0, t1", [(1e-3, 0.1), (1e-5, 8.0), (0.5, 0.6)])
def test_log_uniform_draws_have_uniform_logs(t0, t1):
    """Catches a sampler uniform in t (or in the wrong range) instead of in log t."""
    x = LogUniformTimeSampler(t0, t1).sample(20_000, torch.Generator().manual_seed(5),
                                             torch.float64)
    assert float(x.min()) >= t0 and float(x.max()) <= t1
    lo, hi = math.log(t0), math.log(t1)
    assert stats.kstest(np.log(x.numpy()), stats.uniform(lo, hi - lo).cdf).pvalue > 1e-3
    # and not uniform in t (the alternative the test must reject) when the range is wide
    if t1 / t0 > 10:
        assert stats.kstest(x.numpy(), stats.uniform(t0, t1 - t0).cdf).pvalue < 1e-6


@settings(max_examples=40, deadline=None)
@given(t0=st.floats(1e-8, 10.0), ratio=st.floats(1.01, 1e6), seed=st.integers(0, 2**31 - 1))
def test_log_uniform_draws_lie_in_range(t0, ratio, seed):
    """Catches draws outside [t0, t1] or a generator that is not used."""
    t1 = t0 * ratio
    s = LogUniformTimeSampler(t0, t1)
    x = s.sample(256, torch.Generator().manual_seed(seed), torch.float64)
    assert x.shape == (256,) and x.dtype == torch.float64
    assert float(x.min()) >= t0 and float(x.max()) <= t1
    assert torch.equal(x, s.sample(256, torch.Generator().manual_seed(seed), torch.float64))


@pytest.mark.parametrize("t0, t1", [(0.1, 0.1), (0.1, 0.05), (0.0, 1.0), (-1.0, 1.0)])
def test_log_uniform_refuses_an_empty_range(t0, t1):
    """Catches t1 <= t0 or t0 <= 0 (log of a non-positive time) being accepted."""
    with pytest.raises(ValueError):
        LogUniformTimeSampler(t0, t1)
