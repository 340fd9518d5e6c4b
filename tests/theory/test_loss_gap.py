"""The DSM loss and the loss gap (theory/loss_gap.py, eq. 3.1, Prop. 4.1, Thm 4.3).

Every check here is statistical: fixed seeds (derandomized hypothesis) and tolerances of
Z standard errors of the relevant per-draw quantity.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, stats

from theory.bounds import small_t_gap
from theory.empirical import EmpiricalScore
from theory.loss_gap import (
    Estimate,
    dataset_mean,
    draw_training_noise,
    dsm_loss,
    dsm_loss_terms,
    expected_loss_gap,
    integrated_loss_gap,
    loss_gap,
)
from theory.mixtures import GaussianMixture, paper_mixture

Z = 4.0
STAT = settings(max_examples=8, deadline=None, derandomize=True)


def coeffs(t: float) -> tuple[float, float]:
    return math.exp(-t / 2), -math.expm1(-t)


def n1_gap(t: float, x1: torch.Tensor, mu: torch.Tensor, lam: torch.Tensor) -> float:
    """Exact Loss-Gap_t for the single training point x1 (d,) and data N(mu, diag(lam)).

    The empirical score of one point is the regression target itself (its loss is 0), so
    the gap is l_t(x1, s) with s(x) = -(x - alpha mu)/v, v = alpha^2 lam + sigma^2:
        sum_j alpha^4 lam_j^2 / (sigma^2 v_j^2) + alpha^2 (x1 - mu)_j^2 / v_j^2.
    """
    a, s2 = coeffs(t)
    v = a**2 * lam + s2
    return float((a**4 * lam**2 / (s2 * v**2) + a**2 * (x1 - mu) ** 2 / v**2).sum())


# -- the DSM loss -----------------------------------------------------------------------------


@STAT
@given(data=st.data())
def test_perturbed_empirical_score_loss_excess_is_mean_sq_norm(strat, data):
    """l_t(s_hat + h) - l_t(s_hat) = E_{P_hat_t} ||h||^2 (the identity behind Prop. 4.1).

    Common draws (i, eps); the per-draw difference minus ||h(X_t)||^2 is
    2 <h, eps/sigma + s_hat(X_t)>, whose mean is 0 because E[target | X_t] = s_hat."""
    case = data.draw(strat.cases(n=(2, 30), d=(1, 6), t=(1e-2, 3.0)))
    kind = data.draw(st.sampled_from(["linear", "constant", "both"]))
    g = strat.torch_gen(case.seed + 11)
    m = torch.randn((case.d, case.d), generator=g, dtype=torch.float64) / math.sqrt(case.d)
    c = torch.randn((1, case.d), generator=g, dtype=torch.float64)
    m = m if kind != "constant" else torch.zeros_like(m)
    c = c if kind != "linear" else torch.zeros_like(c)

    def h(x, t):
        return x @ m + c

    emp = EmpiricalScore(case.points)

    def perturbed(x, t):
        return emp(x, t) + h(x, t)

    num = 4000
    idx, eps = draw_training_noise(case.points, num, g)
    x0 = case.points[idx]
    diff = dsm_loss_terms(perturbed, x0, case.t, eps) - dsm_loss_terms(emp, x0, case.t, eps)
    a, s2 = coeffs(case.t)
    hsq = h(a * x0 + math.sqrt(s2) * eps, case.t).square().sum(1)
    resid = diff - hsq
    assert abs(resid.mean()) <= Z * resid.std() / math.sqrt(num)
    assert diff.mean() >= -Z * diff.std() / math.sqrt(num)  # the gap is >= 0


@STAT
@given(data=st.data())
def test_dsm_loss_is_mean_of_terms_and_ignores_batch_size(strat, data):
    case = data.draw(strat.cases(n=(1, 20), d=(1, 5), t=(1e-2, 3.0)))
    mix = GaussianMixture(case.points, cov=0.5)
    num = 300
    est = dsm_loss(mix, case.points, case.t, num, strat.torch_gen(case.seed), batch_size=7)
    again = dsm_loss(mix, case.points, case.t, num, strat.torch_gen(case.seed), batch_size=1024)
    assert est.value == pytest.approx(again.value, rel=1e-12)
    idx, eps = draw_training_noise(case.points, num, strat.torch_gen(case.seed))
    terms = dsm_loss_terms(mix, case.points[idx], case.t, eps)
    assert est.value == pytest.approx(float(terms.mean()), rel=1e-12)
    assert est.stderr == pytest.approx(float(terms.std()) / math.sqrt(num), rel=1e-10)
    assert est.num == num


def test_dsm_loss_terms_of_the_target_itself_are_zero():
    """s(x) = -(x - alpha x0)/sigma^2 is the regression target: every term is 0 (n = 1)."""
    x0 = torch.randn(50, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    eps = torch.randn(50, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    emp = EmpiricalScore(x0[:1])
    terms = dsm_loss_terms(emp, x0[:1].expand(50, 3), 0.3, eps)
    assert terms.abs().max() <= 1e-20 + 1e-12 * (eps.square().sum(1) / 0.3).max()


# -- Prop. 4.1: the two forms of the loss gap -------------------------------------------------


@pytest.mark.parametrize("t", [0.01, 0.1, 0.5, 1.5])
@pytest.mark.parametrize("n", [20, 200])
def test_prop41_direct_equals_fisher(n, t):
    mix = paper_mixture(8, seed=1)
    g = torch.Generator().manual_seed(1000 * n + int(100 * t))
    points = mix.sample(n, g)
    gap = loss_gap(mix, points, t, num=2048, generator=g)
    combined = math.hypot(gap.direct.stderr, gap.fisher.stderr)
    assert abs(gap.direct.value - gap.fisher.value) <= Z * combined
    assert gap.fisher.value > 0
    assert gap.direct.num == gap.fisher.num == 2048


@STAT
@given(data=st.data())
def test_prop41_per_draw(strat, data):
    """Sharper: the per-draw difference of the two forms, on common draws, has mean 0."""
    mix = paper_mixture(data.draw(st.integers(2, 8)), K=data.draw(st.integers(1, 8)), seed=2)
    seed = data.draw(strat.seeds)
    n = data.draw(st.integers(1, 100))
    t = data.draw(strat.log_uniform(1e-2, 2.0))
    g = strat.torch_gen(seed)
    points = mix.sample(n, g)
    emp = EmpiricalScore(points)
    num = 4000
    idx, eps = draw_training_noise(points, num, g)
    x0 = points[idx]
    direct = dsm_loss_terms(mix, x0, t, eps) - dsm_loss_terms(emp, x0, t, eps)
    a, s2 = coeffs(t)
    xt = a * x0 + math.sqrt(s2) * eps
    fisher = (emp(xt, t) - mix(xt, t)).square().sum(1)
    diff = direct - fisher
    assert abs(diff.mean()) <= Z * diff.std() / math.sqrt(num) + 1e-12 * fisher.mean()


# -- n = 1, where the gap is known exactly ------------------------------------------------------


def _gaussian(d: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(d, generator=g, dtype=torch.float64)
    lam = 0.2 + 2 * torch.rand(d, generator=g, dtype=torch.float64)
    x1 = mu + lam.sqrt() * torch.randn(d, generator=g, dtype=torch.float64)
    return GaussianMixture(mu[None], cov=lam), mu, lam, x1


@STAT
@given(data=st.data())
def test_single_point_gap_is_exact(strat, data):
    d = data.draw(st.integers(1, 6))
    seed = data.draw(strat.seeds)
    t = data.draw(strat.log_uniform(1e-3, 5.0))
    mix, mu, lam, x1 = _gaussian(d, seed)
    gap = loss_gap(mix, x1[None], t, num=2048, generator=strat.torch_gen(seed + 1))
    exact = n1_gap(t, x1, mu, lam)
    assert abs(gap.fisher.value - exact) <= Z * gap.fisher.stderr
    assert abs(gap.direct.value - exact) <= Z * gap.direct.stderr


def test_expected_single_point_gap_is_small_t_gap():
    """For n = 1, E_{x1}[Loss-Gap_t] = sum_j alpha^2 lam_j / (sigma^2 (alpha^2 lam_j + sigma^2))
    exactly: the small-t closed form of theory.bounds."""
    mix, mu, lam, _ = _gaussian(4, seed=5)
    for t in (0.05, 0.5, 2.0):
        # analytically: replace (x1 - mu)_j^2 by its mean lam_j in the exact gap
        assert n1_gap(t, mu + lam.sqrt(), mu, lam) == pytest.approx(
            float(small_t_gap(t, lam.numpy())), rel=1e-12
        )
        _, fisher = expected_loss_gap(mix, 1, t, num_datasets=40, num=256, seed=9)
        assert abs(fisher.mean - float(small_t_gap(t, lam.numpy()))) <= Z * fisher.stderr


def test_integrated_loss_gap_single_point():
    """Log-time Gauss-Legendre quadrature of the n = 1 gap against scipy.quad of the exact gap."""
    mix, mu, lam, x1 = _gaussian(3, seed=3)
    t0, T = 1e-3, 2.0
    exact, _ = integrate.quad(lambda t: n1_gap(t, x1, mu, lam), t0, T, limit=200, epsrel=1e-10)
    est, nodes, gaps = integrated_loss_gap(
        mix, x1[None], t0, T, num_nodes=16, num=1024, generator=torch.Generator().manual_seed(0)
    )
    assert nodes.shape == (16,) and len(gaps) == 16
    assert np.all(np.diff(nodes) > 0) and t0 < nodes[0] and nodes[-1] < T
    assert abs(est.value - exact) <= Z * est.stderr
    # the quadrature itself, applied to the exact integrand, is far more accurate than the MC
    u, w = np.polynomial.legendre.leggauss(16)
    lo, hi = math.log(t0), math.log(T)
    tj = np.exp(0.5 * (hi - lo) * u + 0.5 * (hi + lo))
    quad16 = sum(
        0.5 * (hi - lo) * wj * t * n1_gap(t, x1, mu, lam) for wj, t in zip(w, tj, strict=True)
    )
    np.testing.assert_allclose(nodes, tj, rtol=1e-12)
    assert quad16 == pytest.approx(exact, rel=1e-6)


# -- Thm 4.3 regime: the expected gap against the small-t closed form ---------------------------


@pytest.mark.parametrize("t", [0.01, 0.1, 0.3])
def test_expected_loss_gap_matches_small_t_closed_form(t):
    """n = 1000, d = 32, K = 8 paper mixture: E_D[Loss-Gap_t] within 5% of d / (e^t - 1), with
    the interval over datasets equal to scipy's t-interval of the per-dataset values."""
    mix = paper_mixture(32, K=8, seed=0)
    direct, fisher = expected_loss_gap(mix, 1000, t, num_datasets=3, num=1024, seed=1)
    closed = 32 / math.expm1(t)
    assert float(small_t_gap(t, 1.0, 32)) == pytest.approx(closed, rel=1e-12)
    assert abs(fisher.mean / closed - 1) <= 0.05
    assert abs(direct.mean / closed - 1) <= 0.05
    # the reported interval is scipy's 95% Student-t interval of the per-dataset values
    v = np.asarray(fisher.values)
    assert v.size == 3 and fisher.mean == pytest.approx(v.mean(), rel=1e-12)
    lo, hi = stats.t.interval(0.95, v.size - 1, loc=v.mean(), scale=stats.sem(v))
    assert (fisher.ci_low, fisher.ci_high) == pytest.approx((lo, hi), rel=1e-10)


def test_expected_loss_gap_is_reproducible():
    mix = paper_mixture(4, K=2, seed=0)
    a = expected_loss_gap(mix, 30, 0.2, num_datasets=2, num=64, seed=5)
    b = expected_loss_gap(mix, 30, 0.2, num_datasets=2, num=64, seed=5)
    c = expected_loss_gap(mix, 30, 0.2, num_datasets=2, num=64, seed=6)
    assert a == b and a != c


# -- summaries --------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(values=st.lists(st.floats(-1e6, 1e6), min_size=2, max_size=20))
def test_dataset_mean_interval(values):
    dm = dataset_mean(values)
    v = np.asarray(values)
    assert dm.mean == pytest.approx(v.mean(), rel=1e-12, abs=1e-9)
    assert dm.stderr == pytest.approx(v.std(ddof=1) / math.sqrt(v.size), rel=1e-9, abs=1e-12)
    assert dm.ci_low <= dm.mean <= dm.ci_high
    assert dm.values == tuple(float(x) for x in values)
    half = stats.t.ppf(0.975, v.size - 1) * dm.stderr
    assert dm.ci_high - dm.mean == pytest.approx(half, rel=1e-9, abs=1e-9)


def test_dataset_mean_coverage():
    """The 95% t-interval over 3 datasets covers the true mean 95% of the time (a normal
    interval would cover ~84%)."""
    rng = np.random.default_rng(0)
    reps = 4000
    hits = sum(
        dm.ci_low <= 1.0 <= dm.ci_high
        for dm in (dataset_mean(rng.normal(1.0, 2.0, size=3)) for _ in range(reps))
    )
    assert abs(hits / reps - 0.95) <= Z * math.sqrt(0.95 * 0.05 / reps)


def test_estimate_from_draws():
    draws = torch.arange(10, dtype=torch.float64)
    est = Estimate.from_draws(draws)
    assert est.value == pytest.approx(4.5)
    assert est.stderr == pytest.approx(float(draws.std()) / math.sqrt(10))
    lo, hi = est.ci(0.95)
    assert (hi - lo) / 2 == pytest.approx(1.959963984540054 * est.stderr, rel=1e-9)
    with pytest.raises(ValueError, match="draws"):
        Estimate.from_draws(torch.ones(1))


# -- bad input --------------------------------------------------------------------------------


def test_rejects_bad_input():
    points = torch.randn(5, 3, dtype=torch.float64)
    mix = GaussianMixture(points)
    eps = torch.randn(5, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="eps"):
        dsm_loss_terms(mix, points, 0.1, eps[:, :2])
    with pytest.raises(ValueError, match="t must"):
        dsm_loss_terms(mix, points, 0.0, eps)
    with pytest.raises(ValueError, match="t must"):
        loss_gap(mix, points, -1.0, num=4)
    with pytest.raises(ValueError, match="num"):
        draw_training_noise(points, 0)
    with pytest.raises(ValueError, match="points"):
        draw_training_noise(torch.empty(0, 3, dtype=torch.float64), 4)
    with pytest.raises(ValueError, match="points"):
        loss_gap(mix, points[:, :1].expand(5, 3).clone().fill_(math.nan), 0.1, num=4)
    with pytest.raises(ValueError, match="t0"):
        integrated_loss_gap(mix, points, 0.0, 1.0)
    with pytest.raises(ValueError, match="T must"):
        integrated_loss_gap(mix, points, 0.5, 0.5)
    with pytest.raises(ValueError, match="n must"):
        expected_loss_gap(mix, 0, 0.1)
    with pytest.raises(ValueError, match="at least 2"):
        dataset_mean([1.0])
    with pytest.raises(ValueError, match="values"):
        dataset_mean([1.0, math.nan])


@pytest.mark.parametrize("t", [0.3, 1.0])
def test_expected_gap_is_capped_by_the_true_scores_own_loss(t):
    """E_D[Loss-Gap_t] <= d/sigma_t^2 - J(P_t), J the Fisher information of P_t (Tweedie:
    the true score's expected training loss; the empirical score's loss is >= 0), with
    equality at n = 1, where the empirical score's loss is exactly 0. J is estimated
    independently, from the mixture's exact score on fresh draws of P_t (paper_notes/
    thm_4_3.md: why the tr(Sigma) term cannot show above d/sigma_t^2)."""
    mixture = paper_mixture(4, 3, seed=0)
    d, a, s = 4, math.exp(-t / 2), math.sqrt(-math.expm1(-t))
    g = torch.Generator().manual_seed(1)
    x0 = mixture.sample(200_000, g)
    xt = a * x0 + s * torch.randn(x0.shape, generator=g, dtype=x0.dtype)
    sq = mixture.score(xt, t).square().sum(1)
    ceiling = d / s**2 - float(sq.mean())
    ceiling_se = float(sq.std()) / math.sqrt(sq.numel())
    _, one = expected_loss_gap(mixture, 1, t, num_datasets=48, num=1024, seed=3)
    assert abs(one.mean - ceiling) < Z * math.hypot(one.stderr, ceiling_se)
    _, many = expected_loss_gap(mixture, 16, t, num_datasets=16, num=1024, seed=3)
    assert many.mean < ceiling + Z * math.hypot(many.stderr, ceiling_se)
