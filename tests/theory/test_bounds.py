"""Closed-form rates and bounds (theory/bounds.py: Thm 4.3, small-t form, Lemma C.1, App. C)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sympy as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate

from theory import symbolic as S
from theory.bounds import (
    gaussian_hessian_norm,
    integrated_small_t_gap,
    lemma_c1_bounds,
    pairwise_sq_distance_range,
    small_t_gap,
    thm43_rate,
)
from theory.empirical import EmpiricalScore
from theory.mixtures import GaussianMixture

FAST = settings(max_examples=30, deadline=None)


def coeffs(t: float) -> tuple[float, float]:
    return math.exp(-t / 2), -math.expm1(-t)


def brute_sq_distances(points: torch.Tensor) -> tuple[float, float]:
    """min and max over i != j of ||x_i - x_j||^2 by explicit differences."""
    sq = (points[:, None, :] - points[None, :, :]).square().sum(-1)
    off = ~torch.eye(points.shape[0], dtype=torch.bool)
    return float(sq[off].min()), float(sq[off].max())


def spectral_norms(h: torch.Tensor) -> torch.Tensor:
    return torch.linalg.matrix_norm(h, ord=2)


def exact(expr: sp.Expr, **values: float) -> float:
    """A sympy expression in t (or in a = alpha_t, s = sigma_t) evaluated at 40 digits, the
    symbols named by ``values`` (t, lam, mu, x, ...) set to those doubles exactly."""
    subs = {getattr(S, name): sp.Float(v, 40) for name, v in values.items()}
    return float(S.in_time(sp.sympify(expr)).evalf(40, subs=subs))


# -- Lemma C.1 ----------------------------------------------------------------------------------


@FAST
@given(data=st.data())
def test_pairwise_sq_distance_range_is_brute_force(strat, data):
    case = data.draw(strat.cases(n=(2, 40), d=(1, 6)))
    pts = case.points
    if data.draw(st.booleans()):  # exact duplicates: the minimum is 0
        pts = torch.cat([pts, pts[:1]])
    lo_ref, hi_ref = brute_sq_distances(pts)
    tol = 1e-12 * float(pts.square().sum(1).max())
    for chunk in sorted({1, 2, 3, pts.shape[0] - 1, pts.shape[0], 2048}):
        lo, hi = pairwise_sq_distance_range(pts, chunk_size=chunk)
        assert abs(lo - lo_ref) <= tol + 1e-9 * lo_ref, chunk
        assert abs(hi - hi_ref) <= tol + 1e-9 * hi_ref, chunk


@FAST
@given(data=st.data())
def test_lemma_c1_upper_bound_holds_everywhere(strat, data):
    """||grad^2 log p_hat_t(x)||_2 <= 1/sigma^2 + alpha^2/(4 sigma^4) max||x_i - x_j||^2 at any x:
    queries near the data, around it, 1e3 away, and at midpoints of pairs."""
    case = data.draw(strat.cases(n=(2, 12), d=(1, 5), t=(1e-3, 10.0), far=1e3))
    pts, t = case.points, case.t
    a, _ = coeffs(t)
    mid = a * (pts[:-1] + pts[1:]) / 2
    x = torch.cat([case.x, mid])
    norms = spectral_norms(EmpiricalScore(pts).hessian(x, t))
    lower, upper = lemma_c1_bounds(pts, t)
    assert lower <= upper
    assert torch.all(norms <= upper * (1 + 1e-9))


@FAST
@given(data=st.data())
def test_lemma_c1_upper_bound_is_attained_for_two_points(strat, data):
    """n = 2, at the midpoint alpha (x_1 + x_2)/2: Cov = (x_1 - x_2)(x_1 - x_2)^T / 4, so the
    Hessian has eigenvalues alpha^2 D^2/(4 sigma^4) - 1/sigma^2 (along x_1 - x_2) and
    -1/sigma^2 (the other d - 1 directions): the upper bound less 2/sigma^2 when D is large."""
    case = data.draw(strat.cases(n=(2, 2), d=(1, 6), t=(1e-3, 5.0)))
    pts, t = case.points, case.t
    a, s2 = coeffs(t)
    x = a * pts.mean(0, keepdim=True)
    norm = float(spectral_norms(EmpiricalScore(pts).hessian(x, t))[0])
    dist2 = float((pts[0] - pts[1]).square().sum())
    along = a**2 * dist2 / (4 * s2**2) - 1 / s2
    exact = max(abs(along), 1 / s2) if case.d > 1 else abs(along)
    assert norm == pytest.approx(exact, rel=1e-9)
    _, upper = lemma_c1_bounds(pts, t)
    assert norm <= upper * (1 + 1e-12)


@FAST
@given(data=st.data())
def test_lemma_c1_lower_bound_at_closest_pair_midpoint(strat, data):
    """At small t the norm at the midpoint of the closest pair is >= the lower bound.

    delta = min distance. Every other point is >= sqrt(3)/2 delta from that midpoint, so at
    sigma_t^2 <= delta^2/100 its weight is <= exp(-25) and the pair's posterior variance along
    x_i - x_j is ~ delta^2/4 > delta^2/16."""
    case = data.draw(strat.cases(n=(2, 15), d=(1, 6)))
    pts = case.points
    sq = (pts[:, None] - pts[None]).square().sum(-1) + torch.diag(
        torch.full((case.n,), math.inf, dtype=pts.dtype)
    )
    flat = int(sq.argmin())
    i, j = divmod(flat, case.n)
    delta2 = float(sq[i, j])
    t = data.draw(strat.log_uniform(1e-10, max(1e-10, min(delta2 / 100, 0.5))))
    a, _ = coeffs(t)
    x = a * (pts[i] + pts[j])[None] / 2
    norm = float(spectral_norms(EmpiricalScore(pts).hessian(x, t))[0])
    lower, _ = lemma_c1_bounds(pts, t)
    assert lower <= norm * (1 + 1e-9)
    assert lower > 0  # the regime where the bound says something


@pytest.mark.parametrize("t", [1e-4, 1e-6, 1e-8, 1e-10])
def test_lemma_c1_two_point_midpoint_at_tiny_t(t):
    """The two-point midpoint identity and the upper bound hold at tiny t as well.

    Exact weights are (1/2, 1/2), so Cov = D^2/4 along x_1 - x_2 and the norm is
    alpha^2 D^2/(4 sigma^4) - 1/sigma^2, which sits 2/sigma^2 (a relative 8 sigma^2/(alpha^2 D^2))
    below the upper bound. Nothing cancels, so float64 should give it to ~1e-12."""
    pts = torch.tensor([[3.0, -2.0], [-1.0, 4.0]], dtype=torch.float64)
    a, s2 = coeffs(t)
    x = a * pts.mean(0, keepdim=True)
    emp = EmpiricalScore(pts)
    torch.testing.assert_close(emp.weights(x, t), torch.full((1, 2), 0.5, dtype=torch.float64))
    norm = float(spectral_norms(emp.hessian(x, t))[0])
    along = a**2 * 52.0 / (4 * s2**2) - 1 / s2
    assert norm == pytest.approx(along, rel=1e-10)
    _, upper = lemma_c1_bounds(pts, t)
    assert norm <= upper


def test_lemma_c1_bounds_shapes_and_scaling():
    """The bounds equal Lemma C.1's statement evaluated by sympy at 40 digits, with alpha_t and
    sigma_t^2 from theory/symbolic.py and min/max ||x_i - x_j||^2 by brute force (1 and 10);
    guards the schedule (exp(-t) vs exp(-t/2)), the expm1 at small t, the constants 16 and 4
    and which distance goes where. Upper * sigma^4 -> max||x_i - x_j||^2 / 4 as t -> 0 (a
    sympy limit), the sigma^-4 blow-up."""
    pts = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 3.0]], dtype=torch.float64)
    dmin, dmax = brute_sq_distances(pts)
    assert (dmin, dmax) == (1.0, 10.0)
    t = np.array([1e-9, 1e-4, 1e-2, 1.0, 30.0])
    lower, upper = lemma_c1_bounds(pts, t)
    assert lower.shape == upper.shape == t.shape
    s2, a2 = S.sigma2_t(), S.alpha_t() ** 2
    lower_expr = -1 / s2 + a2 / (16 * s2**2) * sp.Rational(dmin)
    upper_expr = 1 / s2 + a2 / (4 * s2**2) * sp.Rational(dmax)
    for k, tk in enumerate(t):
        assert lower[k] == pytest.approx(exact(lower_expr, t=tk), rel=1e-12)
        assert upper[k] == pytest.approx(exact(upper_expr, t=tk), rel=1e-12)
    limit = sp.limit(s2**2 * upper_expr, S.t, 0)
    assert limit == sp.Rational(dmax) / 4
    assert upper[0] * float(-np.expm1(-t[0])) ** 2 == pytest.approx(float(limit), rel=1e-8)
    # t -> infinity: alpha -> 0, so the bounds tend to -1 and +1 (the Hessian -> -I)
    assert lower[-1] == pytest.approx(-1.0, rel=1e-12)
    assert upper[-1] == pytest.approx(1.0, rel=1e-12)


@FAST
@given(data=st.data())
def test_lemma_c1_lower_bound_constant_is_attained_pointwise(strat, data):
    """The constant 1/16 of Lemma C.1's lower bound is a posterior variance of delta^2/16
    along the closest pair: for two points it is the Hessian norm at the point x* of the
    segment where the pair's weights are (w, 1 - w), w (1 - w) = 1/16 (so the bound is
    attained exactly there, by brute-force Hessian); the supremum C_t, reached at the midpoint
    (variance delta^2/4, checked on a grid of queries), exceeds it by 3 alpha^2 delta^2 /
    (16 sigma^4). Needs alpha^2 delta^2 / sigma^2 > 32, where the along-pair eigenvalue
    dominates the -1/sigma^2 of the other directions."""
    case = data.draw(strat.cases(n=(2, 2), d=(1, 4), scale=(0.5, 3.0)))
    pts = case.points
    delta2 = float((pts[0] - pts[1]).square().sum())
    snr = data.draw(strat.log_uniform(40.0, 1e5))  # alpha^2 delta^2 / sigma^2
    t = math.log1p(delta2 / snr)  # alpha^2 / sigma^2 = 1 / (e^t - 1)
    a, s2 = coeffs(t)
    assert a**2 * delta2 / s2 == pytest.approx(snr, rel=1e-9)
    w = (1 - math.sqrt(3) / 2) / 2  # w (1 - w) = 1/16
    lam = 0.5 + s2 * math.log(w / (1 - w)) / (a**2 * delta2)  # weight of x_2 is w there
    x_star = a * (pts[0] + lam * (pts[1] - pts[0]))[None]
    emp = EmpiricalScore(pts)
    assert float(emp.weights(x_star, t)[0, 1]) == pytest.approx(w, rel=1e-9)
    lower, _ = lemma_c1_bounds(pts, t)
    norm_star = float(spectral_norms(emp.hessian(x_star, t))[0])
    assert norm_star == pytest.approx(float(lower), rel=1e-8)
    # the supremum over a grid around the segment sits at the midpoint, 4x the bound's variance
    u = torch.linspace(-0.5, 1.5, 81, dtype=torch.float64)
    e = (pts[1] - pts[0]) / math.sqrt(delta2)
    perp = torch.randn(case.d, generator=strat.torch_gen(case.seed), dtype=torch.float64)
    perp = perp - (perp @ e) * e
    offsets = torch.linspace(-1.0, 1.0, 9, dtype=torch.float64)[:, None] * perp
    grid = a * (pts[0] + u[:, None] * (pts[1] - pts[0]))
    queries = (grid[None] + a * offsets[:, None]).reshape(-1, case.d)
    sup = float(spectral_norms(emp.hessian(queries, t)).max())
    midpoint = a**2 * delta2 / (4 * s2**2) - 1 / s2
    assert sup == pytest.approx(midpoint, rel=1e-8)  # u = 1/2 is on the grid
    assert sup - float(lower) == pytest.approx(3 * a**2 * delta2 / (16 * s2**2), rel=1e-8)


# -- Gaussian data: O(1) Lipschitz constant -----------------------------------------------------


@FAST
@given(data=st.data())
def test_gaussian_hessian_norm_is_mixture_k1_hessian_norm(strat, data):
    """1/(sigma^2 + alpha^2 lam_min) equals the spectral norm of the K = 1 mixture's Hessian
    and max_j |d^2/dx^2 log p_t| of sympy's per-eigenvalue derivation (numpy eigenvalues)."""
    d = data.draw(st.integers(1, 6))
    seed = data.draw(strat.seeds)
    t = data.draw(strat.log_uniform(1e-4, 10.0))
    kind = data.draw(strat.cov_kinds)
    cov = strat.covariances(d, seed, kind)
    mu = strat.randn((1, d), seed + 1)
    mix = GaussianMixture(mu, cov=cov)
    x = 3 * strat.randn((3, d), seed + 2)
    norms = spectral_norms(mix.hessian(x, t))
    if kind == "scalar":
        expected = gaussian_hessian_norm(t, cov, d)
    else:
        lam = torch.linalg.eigvalsh(cov) if kind == "full" else cov
        expected = gaussian_hessian_norm(t, lam.numpy())
    np.testing.assert_allclose(norms.numpy(), float(expected), rtol=1e-10)
    # sympy: d^2/dx^2 log p_t differentiated from the integrated marginal, per eigenvalue
    if kind == "scalar":
        lam = np.full(d, cov)
    else:  # numpy's eigenvalues, not the mixture's own
        lam = np.linalg.eigvalsh(cov.numpy()) if kind == "full" else cov.numpy()
    derived = max(abs(exact(S.gaussian_hessian(), x=0.0, t=t, mu=0.0, lam=lj)) for lj in lam)
    assert float(expected) == pytest.approx(derived, rel=1e-12)


# -- Thm 4.3 rate and the small-t closed form ---------------------------------------------------


@FAST
@given(data=st.data())
def test_thm43_rate(strat, data):
    """d / sigma_t^2 + tr(Sigma) against sympy's sigma_t^2 = 1 - exp(-t) at 40 digits (so the
    expm1 at t ~ 1e-12 is checked), decreasing in t, ~ d/t as t -> 0 and d + tr at large t."""
    d = data.draw(st.integers(1, 4096))
    tr = data.draw(st.floats(0.0, 1e4))
    t = np.sort(np.array([data.draw(strat.log_uniform(1e-12, 50.0)) for _ in range(5)]))
    rate = thm43_rate(t, d, tr)
    assert rate.shape == t.shape
    for k, tk in enumerate(t):
        assert rate[k] == pytest.approx(exact(d / S.sigma2_t() + sp.Float(tr), t=tk), rel=1e-13)
    assert np.all(np.diff(rate) <= 0)  # decreasing in t
    assert thm43_rate(t.reshape(5, 1), d, tr).shape == (5, 1)
    assert (float(thm43_rate(1e-12, d, tr)) - tr) * 1e-12 == pytest.approx(d, rel=1e-9)  # ~ d/t
    assert float(thm43_rate(60.0, d, tr)) == pytest.approx(d + tr, rel=1e-14)


@FAST
@given(data=st.data())
def test_small_t_gap(strat, data):
    """The small-t formula against sympy's E_{x_1}[Loss-Gap_t] for n = 1 (derived from the
    Fisher form of Prop. 4.1 in theory/symbolic.py, which it equals exactly) at 40 digits;
    positive, decreasing, d / (e^t - 1) for Sigma = I, and its t -> 0 and t -> inf limits."""
    d = data.draw(st.integers(1, 64))
    seed = data.draw(strat.seeds)
    lam = (0.05 + 3 * torch.rand(d, generator=strat.torch_gen(seed), dtype=torch.float64)).numpy()
    t = np.sort(np.array([data.draw(strat.log_uniform(1e-10, 50.0)) for _ in range(4)]))
    gap = small_t_gap(t, lam)
    assert gap.shape == t.shape
    derived = S.expected_loss_gap_n1()  # in (a, s, lam); mu drops out
    for k, tk in enumerate(t):
        want = math.fsum(exact(derived, t=tk, lam=lj) for lj in lam)
        assert gap[k] == pytest.approx(want, rel=1e-12)
    assert np.all(np.diff(gap) <= 0) and np.all(gap > 0)
    # Sigma = I: d / (e^t - 1), as a scalar with d or as a vector of ones
    np.testing.assert_allclose(small_t_gap(t, 1.0, d), d / np.expm1(t), rtol=1e-12)
    np.testing.assert_allclose(small_t_gap(t, np.ones(d)), d / np.expm1(t), rtol=1e-12)
    # t -> 0: sigma^2 * gap -> d;  t -> infinity: gap -> 0
    tiny = 1e-12
    assert float(small_t_gap(tiny, lam)) * -math.expm1(-tiny) == pytest.approx(
        d, rel=1e-10 / lam.min()
    )
    assert float(small_t_gap(60.0, lam)) < 1e-20 * d / lam.min()


@FAST
@given(data=st.data())
def test_integrated_small_t_gap_is_the_integral(strat, data):
    d = data.draw(st.integers(1, 8))
    seed = data.draw(strat.seeds)
    lam = (0.05 + 3 * torch.rand(d, generator=strat.torch_gen(seed), dtype=torch.float64)).numpy()
    t0 = data.draw(strat.log_uniform(1e-6, 0.5))
    T = min(t0 * data.draw(strat.log_uniform(1.5, 1e4)), 100.0)

    def f(u):  # integrate in u = log t: the integrand ~ d/t at small t
        t = math.exp(u)
        return t * float(small_t_gap(t, lam))

    ref, _ = integrate.quad(f, math.log(t0), math.log(T), epsabs=0, epsrel=1e-11, limit=200)
    assert integrated_small_t_gap(t0, T, lam) == pytest.approx(ref, rel=1e-8)
    # Sigma = I: d [log(1 - e^{-T}) - log(1 - e^{-t0})] ~ d log(1/t0)
    exact = d * (math.log(-math.expm1(-T)) - math.log(-math.expm1(-t0)))
    assert integrated_small_t_gap(t0, T, 1.0, d) == pytest.approx(exact, rel=1e-10)


def test_integrated_small_t_gap_at_large_T():
    """Valid input with T past exp's range (T > 709): the integrand is ~0 there, so the
    integral up to T = 1000 equals the one up to T = 100 (to ~d e^{-100})."""
    value = integrated_small_t_gap(1e-3, 1000.0, 1.0, 2)
    assert value == pytest.approx(integrated_small_t_gap(1e-3, 100.0, 1.0, 2), rel=1e-12)


# -- bad input --------------------------------------------------------------------------------


def test_rejects_bad_input():
    pts = torch.randn(3, 2, dtype=torch.float64)
    for bad in (0.0, -1.0, math.nan, np.array([0.1, 0.0])):
        with pytest.raises(ValueError, match="t must"):
            thm43_rate(bad, 2, 1.0)
        with pytest.raises(ValueError, match="t must"):
            small_t_gap(bad, 1.0, 2)
        with pytest.raises(ValueError, match="t must"):
            lemma_c1_bounds(pts, bad)
        with pytest.raises(ValueError, match="t must"):
            gaussian_hessian_norm(bad, 1.0, 2)
    with pytest.raises(ValueError, match="d >= 1"):
        thm43_rate(0.1, 0, 1.0)
    with pytest.raises(ValueError, match="trace_cov"):
        thm43_rate(0.1, 2, -1.0)
    with pytest.raises(ValueError, match="eigvals"):
        small_t_gap(0.1, np.array([1.0, -0.5]))
    with pytest.raises(ValueError, match="eigvals"):
        gaussian_hessian_norm(0.1, np.ones((2, 2)))
    with pytest.raises(ValueError, match="t0"):
        integrated_small_t_gap(0.0, 1.0, 1.0, 2)
    with pytest.raises(ValueError, match="T must"):
        integrated_small_t_gap(1.0, 0.5, 1.0, 2)
    with pytest.raises(ValueError, match="points"):
        pairwise_sq_distance_range(pts[:1])
    with pytest.raises(ValueError, match="points"):
        lemma_c1_bounds(pts[:1], 0.1)
    with pytest.raises(ValueError, match="points"):
        pairwise_sq_distance_range(torch.tensor([[0.0], [math.inf]], dtype=torch.float64))
