"""The numeric theory code held against the sympy derivations of theory/symbolic.py.

Two kinds of checks: symbolic identities that must simplify to 0 (§3 OU schedule, §4
Gaussian score, DSM loss, Prop 4.1 at n = 1, the small-t formula and its integral), and
numeric agreement between the lambdified derivations and theory.mixtures, theory.loss_gap
and theory.bounds. Monte Carlo checks use fixed seeds and a tolerance of 4 standard errors
of the estimator; deterministic checks use a relative error of 1e-10 (float64).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import sympy as sp
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy import integrate
from sympy import stats as sps

from theory import symbolic as S
from theory.bounds import gaussian_hessian_norm, integrated_small_t_gap, small_t_gap
from theory.loss_gap import dsm_loss, loss_gap
from theory.mixtures import GaussianMixture
from theory.process import generator

REL = 1e-10  # deterministic float64 comparisons
NUM_SE = 4.0  # Monte Carlo tolerance in standard errors


def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    """max |got - want| / max |want| (the error relative to the size of the answer)."""
    got, want = np.asarray(got, dtype=float), np.asarray(want, dtype=float)
    assert got.shape == want.shape, (got.shape, want.shape)
    return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


def random_gaussian(rng: np.random.Generator, d: int | None = None):
    """(mu (d,), lam (d,)) for a diagonal Gaussian with 1 <= d <= 6."""
    d = int(rng.integers(1, 7)) if d is None else d
    return rng.normal(0.0, 2.0, d), rng.uniform(0.05, 4.0, d)


def mixture_of(mu: np.ndarray, lam: np.ndarray) -> GaussianMixture:
    """The single Gaussian N(mu, diag(lam)) as a K = 1 GaussianMixture in float64."""
    return GaussianMixture(torch.tensor(mu)[None], cov=torch.tensor(lam))


# -- symbolic identities ------------------------------------------------------------------


@pytest.mark.parametrize("name", list(S.ou_identities()))
def test_ou_identity(name: str) -> None:
    expr = S.ou_identities()[name]
    assert S.is_zero(expr), f"{name}: {sp.simplify(expr)}"


def test_ou_variance_ode_solution_is_sigma2() -> None:
    assert sp.simplify(S.ou_variance_ode_solution() - (1 - sp.exp(-S.t))) == 0


@pytest.mark.parametrize("k", range(7))
def test_gaussian_moment_matches_sympy_stats(k: int) -> None:
    m, v = sp.Symbol("m", real=True), sp.Symbol("v", positive=True)
    z = sps.Normal("Z", m, sp.sqrt(v))
    assert sp.simplify(sps.E(z**k) - S.gaussian_moment(k, m, v)) == 0


def test_marginal_is_normal_with_variance_v() -> None:
    v = S.marginal_variance()
    normal = sp.exp(-((S.x - S.a * S.mu) ** 2) / (2 * v)) / sp.sqrt(2 * sp.pi * v)
    log_diff = sp.expand_log(sp.log(S.marginal_density()), force=True) - sp.expand_log(
        sp.log(normal), force=True
    )
    assert S.is_zero(log_diff)


def test_score_and_hessian_closed_forms() -> None:
    v = S.marginal_variance()
    assert S.is_zero(S.gaussian_score() + (S.x - S.a * S.mu) / v)
    assert S.is_zero(S.gaussian_hessian() + 1 / v)


def test_dsm_loss_closed_form() -> None:
    assert S.is_zero(S.gaussian_dsm_loss() - S.dsm_loss_closed_form())


def test_empirical_score_n1_closed_form() -> None:
    assert S.is_zero(S.empirical_score_n1() + (S.x - S.a * S.x1) / S.s**2)


def test_loss_gap_n1_closed_form_and_prop41() -> None:
    # Fisher form = claimed closed form, and direct form = Fisher form (Prop 4.1, n = 1).
    assert S.is_zero(S.loss_gap_n1_fisher() - S.loss_gap_n1_closed_form())
    assert S.is_zero(S.loss_gap_n1_direct() - S.loss_gap_n1_fisher())


def test_expected_loss_gap_n1_is_small_t_formula() -> None:
    expected = S.expected_loss_gap_n1()
    assert S.mu not in expected.free_symbols
    assert S.is_zero(expected - S.dsm_loss_closed_form())
    assert S.is_zero(S.in_time(expected) - S.small_t_gap_expr())


def test_small_t_antiderivative_derivative() -> None:
    assert S.is_zero(sp.diff(S.small_t_antiderivative(), S.t) - S.small_t_gap_expr())


# -- score and Hessian against GaussianMixture --------------------------------------------


def check_score_hessian(mu: np.ndarray, lam: np.ndarray, t: float, x: np.ndarray) -> None:
    mix = mixture_of(mu, lam)
    xt = torch.tensor(x)
    score = mix.score(xt, t).numpy()
    hess = mix.hessian(xt, t).numpy()
    assert rel_err(score, S.diag_gaussian_score(x, t, mu, lam)) < REL
    assert rel_err(hess, S.diag_gaussian_hessian(x, t, mu, lam)) < REL


def test_score_hessian_match_mixture_random_cases() -> None:
    rng = np.random.default_rng(0)
    for _ in range(30):
        mu, lam = random_gaussian(rng)
        t = float(rng.uniform(1e-3, 5.0))
        x = rng.normal(0.0, 3.0, (8, mu.size))
        check_score_hessian(mu, lam, t, x)


@st.composite
def gaussian_and_query(draw):
    d = draw(st.integers(1, 6))
    coord = st.floats(-10.0, 10.0, allow_nan=False)
    mu = draw(st.lists(coord, min_size=d, max_size=d))
    lam = draw(st.lists(st.floats(1e-2, 10.0), min_size=d, max_size=d))
    x = draw(st.lists(coord, min_size=d, max_size=d))
    x = np.array(x)
    if np.max(np.abs(x)) == 0.0:  # the score at x = mu = 0 is exactly 0: nothing to compare
        x[0] = 1.0
    return np.array(mu), np.array(lam), x[None]


@settings(max_examples=25, deadline=None)
@given(case=gaussian_and_query(), t=st.floats(1e-3, 5.0))
def test_lambdified_score_matches_mixture(case, t: float) -> None:
    mu, lam, x = case
    # Away from x ~ alpha mu, where the score is ~0 and its relative error is all cancellation.
    assume(np.max(np.abs(x - math.exp(-t / 2) * mu)) >= 1e-6 * np.max(np.abs(x)))
    check_score_hessian(mu, lam, t, x)


def test_hessian_norm_matches_bounds() -> None:
    rng = np.random.default_rng(1)
    for _ in range(10):
        mu, lam = random_gaussian(rng)
        t = float(rng.uniform(1e-3, 5.0))
        norm = np.max(np.abs(S.hessian_np(0.0, t, mu, lam)))
        assert rel_err(norm, gaussian_hessian_norm(t, lam)) < REL


# -- DSM loss of the true score -----------------------------------------------------------


def test_dsm_loss_of_true_score_matches_closed_form() -> None:
    """dsm_loss(score, points) vs the derived population loss, and vs its exact value given
    the points (each point's loss is the n = 1 Loss-Gap formula: the target has zero loss
    against the n = 1 empirical score)."""
    rng = np.random.default_rng(2)
    for case in range(3):
        mu, lam = random_gaussian(rng, d=3)
        mix = mixture_of(mu, lam)
        t = float(rng.uniform(1e-3, 2.0))
        points = mix.sample(4000, generator(2, case))
        est = dsm_loss(mix.score, points, t, num=2**15, generator=generator(2, case, 1))
        per_point = S.diag_loss_gap_n1(points.numpy(), t, mu, lam)  # (4000,)
        # Given the points, the estimator's mean is exactly the average per-point loss.
        conditional = float(per_point.mean())
        assert abs(est.value - conditional) <= NUM_SE * est.stderr, (case, est, conditional)
        # Over the points too: add the spread of the point average to the standard error.
        population = S.diag_gaussian_dsm_loss(t, mu, lam)
        se = math.hypot(est.stderr, per_point.std(ddof=1) / math.sqrt(per_point.size))
        assert abs(est.value - population) <= NUM_SE * se, (case, est, population)


# -- Loss-Gap with one training point (Prop 4.1) ------------------------------------------


def test_loss_gap_n1_matches_exact_formula() -> None:
    rng = np.random.default_rng(3)
    for case in range(6):
        mu, lam = random_gaussian(rng)
        mix = mixture_of(mu, lam)
        x1 = mu + np.sqrt(lam) * rng.normal(size=mu.size)
        t = float(np.exp(rng.uniform(math.log(1e-3), math.log(3.0))))
        gap = loss_gap(mix, torch.tensor(x1)[None], t, num=8192, generator=generator(3, case))
        exact = float(S.diag_loss_gap_n1(x1, t, mu, lam))
        for name, est in (("direct", gap.direct), ("fisher", gap.fisher)):
            assert abs(est.value - exact) <= NUM_SE * est.stderr, (case, t, name, est, exact)


def test_expected_loss_gap_n1_equals_small_t_gap() -> None:
    rng = np.random.default_rng(4)
    times = np.geomspace(1e-6, 10.0, 60)
    for _ in range(10):
        _, lam = random_gaussian(rng)
        assert rel_err(S.diag_expected_loss_gap_n1(times, lam), small_t_gap(times, lam)) < REL
        lam_scalar = float(lam[0])  # the (scalar eigenvalue, d) form of small_t_gap
        want = lam.size * small_t_gap(times, lam_scalar, d=1)
        assert rel_err(small_t_gap(times, lam_scalar, d=lam.size), want) < REL


# -- the integral of the small-t formula --------------------------------------------------


@pytest.mark.parametrize("t0, T", [(1e-3, 5.0), (1e-2, 1.0), (0.3, 2.0), (1e-4, 8.0)])
def test_integrated_small_t_gap_matches_quadrature(t0: float, T: float) -> None:
    rng = np.random.default_rng(5)
    _, lam = random_gaussian(rng)
    closed = integrated_small_t_gap(t0, T, lam)

    # Quadrature in u = log t, where the ~1/t integrand is smooth.
    def integrand(u: float) -> float:
        return float(small_t_gap(math.exp(u), lam)) * math.exp(u)

    quad, _ = integrate.quad(integrand, math.log(t0), math.log(T), epsabs=0.0, epsrel=1e-12)
    assert rel_err(closed, quad) < 1e-7
    assert rel_err(closed, S.integrated_small_t_gap_np(t0, T, lam).sum()) < REL


def test_lambdified_antiderivative_matches_integral() -> None:
    lam = np.array([0.5, 1.0, 3.0])
    t0, T = 2e-3, 4.0
    F = S.small_t_antiderivative_np
    value = float((F(T, lam) - F(t0, lam)).sum())
    quad, _ = integrate.quad(
        lambda t: float(S.small_t_gap_np(t, lam).sum()), t0, T, epsabs=0.0, epsrel=1e-12, limit=200
    )
    assert rel_err(value, quad) < 1e-7
