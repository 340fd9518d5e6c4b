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
