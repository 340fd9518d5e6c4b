"""Samplers (§3): exact Gaussian score gives the Gaussian; the empirical score memorizes."""

from __future__ import annotations

import math

import pytest
import torch

from experiments.common.metrics import memorization_ratio
from experiments.common.sampling import sample, sampling_times
from theory.empirical import EmpiricalScore
from theory.mixtures import GaussianMixture


@pytest.mark.parametrize("method", ["exponential", "heun_ode"])
def test_gaussian_score_gives_gaussian_moments(method):
    """With the exact score of N(mu, diag lam), sample means and variances match within
    4 standard errors (variance: SE = var sqrt(2/m)) plus the discretization bias of
    200 steps, measured below 1% here."""
    mu = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    lam = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    gauss = GaussianMixture(mu[None], lam)
    m = 4000
    x = sample(gauss, m, 3, T=8.0, t0=1e-3, steps=200, method=method,
               generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    se_mean = (lam / m).sqrt()
    assert torch.all((x.mean(0) - mu).abs() <= 4 * se_mean + 0.01)
    var = x.var(0)
    assert torch.all((var - lam).abs() <= 4 * lam * math.sqrt(2 / m) + 0.01 * lam)


def test_empirical_score_samples_land_on_training_points():
    g = torch.Generator().manual_seed(1)
    train = 2 * torch.randn(20, 8, generator=g, dtype=torch.float64)
    x = sample(EmpiricalScore(train), 300, 8, T=8.0, t0=1e-3, steps=200,
               generator=g, dtype=torch.float64)
    assert memorization_ratio(x, train) >= 0.99


def test_times_and_bad_input():
    times = sampling_times(8.0, 1e-3, 10)
    assert times[0] == pytest.approx(8.0) and times[-1] == pytest.approx(1e-3)
    assert (times[1:] < times[:-1]).all()
    with pytest.raises(ValueError, match="method"):
        sample(lambda x, t: -x, 4, 2, method="ddim")
    with pytest.raises(ValueError, match="T must"):
        sampling_times(1e-3, 1.0, 10)
    with pytest.raises(ValueError, match="steps"):
        sampling_times(8.0, 1e-3, 0)


def _ou_law(c: torch.Tensor, H: float) -> tuple[torch.Tensor, float]:
    """Law after reverse time H of dX = (X/2 + c) dt + dB from X ~ N(0, I), solved by Ito:
    X_H = e^{H/2} X_0 + 2 (e^{H/2} - 1) c + int_0^H e^{(H-u)/2} dB_u, so the mean is
    2 (e^{H/2} - 1) c and the variance e^H + (e^H - 1) = 2 e^H - 1 per coordinate."""
    return 2 * math.expm1(H / 2) * c, 2 * math.exp(H) - 1


@pytest.mark.parametrize("steps", [1, 3])
def test_exponential_integrator_is_exact_for_a_constant_score(steps):
    """With a constant score c the reverse SDE is linear, and the exponential integrator
    (linear part exact, score frozen over a step) is exact in law for any step size: after
    1 or 3 large steps from T = 2 to t0 = 0.05 the samples have the Ito solution's mean and
    variance within Z = 4 standard errors (mean: sqrt(v/m); variance: v sqrt(2/(m-1))), no
    discretization bias. Guards the drift factor 2(e^{h/2} - 1) and the noise sqrt(e^h - 1)."""
    c = torch.tensor([0.5, -1.0], dtype=torch.float64)
    m, T, t0 = 20_000, 2.0, 0.05
    calls = []

    def score(x, t):
        calls.append(t)
        return c.expand_as(x)

    x = sample(score, m, 2, T=T, t0=t0, steps=steps, method="exponential",
               generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mean, var = _ou_law(c, T - t0)
    assert len(calls) == steps
    assert torch.all((x.mean(0) - mean).abs() <= 4 * math.sqrt(var / m))
    assert torch.all((x.var(0) - var).abs() <= 4 * var * math.sqrt(2 / (m - 1)))


def test_euler_maruyama_converges_to_the_linear_sde_law():
    """Euler-Maruyama x <- x + h (x/2 + c) + sqrt(h) z on 2,000 log-spaced steps from T = 1 to
    t0 = 1e-3 with a constant score c: mean and variance match the Ito solution within Z = 4
    standard errors plus the scheme's discretization bias, the difference between the
    scheme's exact moments (its linear recursion m <- (1 + h/2) m + h c,
    v <- (1 + h/2)^2 v + h, computed here on the same grid) and the solution's; that bias
    is itself below 0.5% (so a wrong drift or noise, which moves the variance by O(1), fails)."""
    c = torch.tensor([1.0, -0.5], dtype=torch.float64)
    m, T, t0, steps = 20_000, 1.0, 1e-3, 2000
    x = sample(lambda y, t: c.expand_as(y), m, 2, T=T, t0=t0, steps=steps,
               method="euler_maruyama", generator=torch.Generator().manual_seed(1),
               dtype=torch.float64)
    mean, var = _ou_law(c, T - t0)
    times = sampling_times(T, t0, steps)
    m_em, v_em = torch.zeros(2, dtype=torch.float64), 1.0
    for h in times[:-1] - times[1:]:
        m_em, v_em = (1 + h / 2) * m_em + h * c, (1 + h / 2) ** 2 * v_em + h
    bias_mean, bias_var = (m_em - mean).abs(), abs(v_em - var)
    assert bias_var <= 5e-3 * var and torch.all(bias_mean <= 5e-3 * mean.abs())
    assert torch.all((x.mean(0) - mean).abs() <= 4 * math.sqrt(var / m) + bias_mean)
    assert torch.all((x.var(0) - var).abs() <= 4 * var * math.sqrt(2 / (m - 1)) + bias_var)
