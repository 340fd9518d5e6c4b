"""Symbolic (sympy) derivations that the tests hold the numeric code against (§3, §4).

The numeric modules (process, mixtures, empirical, loss_gap, bounds) implement closed
forms by hand. This module derives the same quantities from first principles with sympy,
so that a test can compare two independent routes to each number:

- §3, the OU process: alpha_t = exp(-t/2), sigma_t^2 = 1 - exp(-t), with the identities
  alpha^2 + sigma^2 = 1, d sigma^2/dt = alpha^2, d alpha/dt = -alpha/2, and sigma_t^2
  solving the variance ODE dV/dt = -V + 1, V(0) = 0, of dX = -X/2 dt + dB.
- §4, one Gaussian N(mu, lam) per coordinate (a diagonal Gaussian factors over
  coordinates, so every loss below is a sum over coordinates): the marginal density at
  time t as the integral of N(x; a x0, s^2) N(x0; mu, lam) over x0, its score and
  Hessian by differentiation, and the population DSM loss (eq. 3.1) of the true score
  as an exact Gaussian expectation.
- Prop. 4.1 for n = 1: with one training point x1 the empirical score is the score of
  N(a x1, s^2); the Loss-Gap in the direct (difference of losses) and Fisher forms, its
  closed form given x1, and its expectation over x1 ~ N(mu, lam), which equals the
  small-t formula a^2 lam / (s^2 (a^2 lam + s^2)) of PAPER.md §2 exactly.
- The integral of the small-t formula over [t0, T] through the antiderivative
  log(e^t - 1) - log(e^t - 1 + lam), checked by differentiation.

Derivations run in abstract positive symbols ``a`` (alpha_t) and ``s`` (sigma_t), which is
fast and shows that none of the Gaussian results needs a^2 + s^2 = 1; the ``*_t`` forms
substitute a = exp(-t/2), s = sqrt(1 - exp(-t)). Every derivation is cached. The ``numeric``
functions at the end are numpy ``lambdify`` versions of the derived expressions (with
1 - exp(-t) written as -expm1(-t) so that small t keeps full precision); they act per
coordinate and broadcast, and the ``diag_*`` helpers sum over the last (coordinate) axis.

Only sympy and numpy are imported: nothing here depends on the numeric code it checks.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import numpy as np
import sympy as sp
from sympy.codegen.cfunctions import expm1

__all__ = [
    # symbols
    "t", "t0", "T", "lam", "mu", "x", "x0", "x1", "eps", "a", "s",
    # §3
    "alpha_t", "sigma2_t", "sigma_t", "in_time", "ou_identities", "ou_variance_ode_solution",
    # Gaussian expectations
    "gaussian_moment", "gaussian_expectation", "is_zero",
    # §4, one Gaussian per coordinate
    "marginal_density", "marginal_variance", "gaussian_score", "gaussian_hessian",
    "dsm_integrand", "gaussian_dsm_loss", "dsm_loss_closed_form",
    # Prop 4.1, n = 1
    "empirical_score_n1", "loss_gap_n1_fisher", "loss_gap_n1_direct", "loss_gap_n1_closed_form",
    "expected_loss_gap_n1",
    # small-t formula and its integral
    "small_t_gap_expr", "small_t_antiderivative", "integrated_small_t_gap_expr",
    # numeric (lambdified)
    "lambdify_t", "score_np", "hessian_np", "dsm_loss_np", "loss_gap_n1_np",
    "expected_loss_gap_n1_np", "small_t_gap_np", "small_t_antiderivative_np",
    "integrated_small_t_gap_np", "diag_gaussian_score", "diag_gaussian_hessian",
    "diag_gaussian_dsm_loss", "diag_loss_gap_n1", "diag_expected_loss_gap_n1",
]  # fmt: skip

# -- symbols ------------------------------------------------------------------------------

t = sp.Symbol("t", positive=True)  # diffusion time
t0 = sp.Symbol("t0", positive=True)  # early-stopping time
T = sp.Symbol("T", positive=True)  # final time
lam = sp.Symbol("lam", positive=True)  # data variance of one coordinate (an eigenvalue)
mu = sp.Symbol("mu", real=True)  # data mean of one coordinate
x = sp.Symbol("x", real=True)  # query point X_t
x0 = sp.Symbol("x0", real=True)  # clean data X_0
x1 = sp.Symbol("x1", real=True)  # the single training point (n = 1)
eps = sp.Symbol("eps", real=True)  # standard normal noise
a = sp.Symbol("a", positive=True)  # alpha_t, kept abstract in the Gaussian derivations
s = sp.Symbol("s", positive=True)  # sigma_t, kept abstract in the Gaussian derivations


# -- §3: the OU process -------------------------------------------------------------------


def alpha_t() -> sp.Expr:
    """alpha_t = exp(-t/2), the signal coefficient of X_t | X_0 (§3)."""
    return sp.exp(-t / 2)


def sigma2_t() -> sp.Expr:
    """sigma_t^2 = 1 - exp(-t), the noise variance of X_t | X_0 (§3)."""
    return 1 - sp.exp(-t)


def sigma_t() -> sp.Expr:
    """sigma_t = sqrt(1 - exp(-t)) (§3)."""
    return sp.sqrt(sigma2_t())


def in_time(expr: sp.Expr) -> sp.Expr:
    """Substitute a = alpha_t, s = sigma_t into an expression derived in (a, s) (§3)."""
    return expr.subs({a: alpha_t(), s: sigma_t()})


@cache
def ou_variance_ode_solution() -> sp.Expr:
    """Var X_t for dX = -X/2 dt + dB, X_0 = 0: the solution of V' = -V + 1, V(0) = 0 (§3).

    By Ito, d E[X^2] = 2 E[X dX] + dt = (-E[X^2] + 1) dt, solved here with sympy's dsolve.
    """
    V = sp.Function("V")
    sol = sp.dsolve(sp.Eq(V(t).diff(t), -V(t) + 1), V(t), ics={V(0): 0})
    return sol.rhs


def ou_identities() -> dict[str, sp.Expr]:
    """Expressions in t that vanish identically for the OU schedule (§3), by name."""
    al, s2 = alpha_t(), sigma2_t()
    return {
        "alpha^2 + sigma^2 = 1": al**2 + s2 - 1,
        "d sigma^2/dt = alpha^2": sp.diff(s2, t) - al**2,
        "d alpha/dt = -alpha/2": sp.diff(al, t) + al / 2,
        "sigma^2 solves V' = -V + 1": sp.diff(s2, t) - (-s2 + 1),
        "sigma^2(0) = 0": s2.subs(t, 0),
        "dsolve(V' = -V + 1, V(0) = 0) = sigma^2": ou_variance_ode_solution() - s2,
    }


# -- Gaussian expectations ----------------------------------------------------------------


def gaussian_moment(k: int, mean: sp.Expr, variance: sp.Expr) -> sp.Expr:
    """E[Z^k] for Z ~ N(mean, variance): sum_j C(k, j) mean^(k-j) variance^(j/2) (j-1)!!."""
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    mean, variance = sp.sympify(mean), sp.sympify(variance)
    return sp.Add(
        *(
            sp.binomial(k, j)
            * mean ** (k - j)
            * variance ** sp.Rational(j, 2)
            * sp.factorial2(j - 1)
            for j in range(0, k + 1, 2)
        )
    )


def gaussian_expectation(
    expr: sp.Expr, var: sp.Symbol, mean: sp.Expr, variance: sp.Expr
) -> sp.Expr:
    """E[expr] over var ~ N(mean, variance), for expr polynomial in var (exact, by moments)."""
    poly = sp.Poly(sp.expand(expr), var)
    return sp.Add(*(coef * gaussian_moment(k, mean, variance) for (k,), coef in poly.terms()))


def is_zero(expr: sp.Expr) -> bool:
    """True when sympy can simplify expr to 0 (tries simplify, then a rewrite in exp)."""
    expr = sp.sympify(expr)
    if sp.simplify(expr) == 0:
        return True
    return sp.simplify(sp.expand(expr.rewrite(sp.exp))) == 0


# -- §4: one Gaussian N(mu, lam), per coordinate ------------------------------------------


@cache
def marginal_density() -> sp.Expr:
    """p_t(x) = int N(x; a x0, s^2) N(x0; mu, lam) dx0, integrated by sympy (§3, §4)."""
    kernel = sp.exp(-((x - a * x0) ** 2) / (2 * s**2)) / sp.sqrt(2 * sp.pi * s**2)
    prior = sp.exp(-((x0 - mu) ** 2) / (2 * lam)) / sp.sqrt(2 * sp.pi * lam)
    return sp.simplify(sp.integrate(kernel * prior, (x0, -sp.oo, sp.oo)))


def marginal_variance() -> sp.Expr:
    """v = a^2 lam + s^2, the variance of the marginal N(a mu, v) (§4)."""
    return a**2 * lam + s**2


@cache
def gaussian_score() -> sp.Expr:
    """d/dx log p_t(x), differentiated from the integrated marginal (§4)."""
    return sp.simplify(sp.diff(sp.expand_log(sp.log(marginal_density()), force=True), x))


@cache
def gaussian_hessian() -> sp.Expr:
    """d^2/dx^2 log p_t(x) = -1/v (App. C), from the derived score."""
    return sp.simplify(sp.diff(gaussian_score(), x))


def dsm_integrand(score: sp.Expr, clean: sp.Symbol = x0) -> sp.Expr:
    """(eps/s + score(a clean + s eps))^2, the DSM regression residual of eq. (3.1)."""
    return (eps / s + score.subs(x, a * clean + s * eps)) ** 2


@cache
def gaussian_dsm_loss() -> sp.Expr:
    """E_{x0 ~ N(mu, lam), eps ~ N(0, 1)} of the DSM integrand of the true score (eq. 3.1)."""
    inner = gaussian_expectation(dsm_integrand(gaussian_score()), eps, 0, 1)
    return sp.simplify(gaussian_expectation(inner, x0, mu, lam))


def dsm_loss_closed_form() -> sp.Expr:
    """a^2 lam / (s^2 v): the claimed closed form of the true score's DSM loss (§4)."""
    return a**2 * lam / (s**2 * marginal_variance())


# -- Prop 4.1 with one training point x1 --------------------------------------------------


@cache
def empirical_score_n1() -> sp.Expr:
    """Score of P_hat_t = N(a x1, s^2) for n = 1: -(x - a x1)/s^2 (§3), by differentiation."""
    log_p_hat = -((x - a * x1) ** 2) / (2 * s**2) - sp.log(2 * sp.pi * s**2) / 2
    return sp.diff(log_p_hat, x)


@cache
def loss_gap_n1_fisher() -> sp.Expr:
    """E_eps (s_hat - s_true)^2 at x = a x1 + s eps: the Fisher form of Prop 4.1, n = 1."""
    diff = (empirical_score_n1() - gaussian_score()).subs(x, a * x1 + s * eps)
    return sp.simplify(gaussian_expectation(diff**2, eps, 0, 1))


@cache
def loss_gap_n1_direct() -> sp.Expr:
    """l_t(x1, s_true) - l_t(x1, s_hat): the training-loss difference of Prop 4.1, n = 1."""
    gap = dsm_integrand(gaussian_score(), x1) - dsm_integrand(empirical_score_n1(), x1)
    return sp.simplify(gaussian_expectation(gap, eps, 0, 1))


def loss_gap_n1_closed_form() -> sp.Expr:
    """(s/v - 1/s)^2 + a^2 (x1 - mu)^2 / v^2: the claimed n = 1 Loss-Gap given x1 (§4)."""
    v = marginal_variance()
    return (s / v - 1 / s) ** 2 + a**2 * (x1 - mu) ** 2 / v**2


@cache
def expected_loss_gap_n1() -> sp.Expr:
    """E_{x1 ~ N(mu, lam)} of the n = 1 Loss-Gap (Thm 4.3's E_D at n = 1)."""
    return sp.simplify(gaussian_expectation(loss_gap_n1_fisher(), x1, mu, lam))


# -- the small-t formula and its integral (PAPER.md §2, §4) -------------------------------


def small_t_gap_expr() -> sp.Expr:
    """alpha^2 lam / (sigma^2 (alpha^2 lam + sigma^2)) in t, one coordinate (PAPER.md §2)."""
    al2, s2 = alpha_t() ** 2, sigma2_t()
    return al2 * lam / (s2 * (al2 * lam + s2))


def small_t_antiderivative() -> sp.Expr:
    """log(e^t - 1) - log(e^t - 1 + lam), an antiderivative in t of small_t_gap_expr (§4)."""
    return sp.log(sp.exp(t) - 1) - sp.log(sp.exp(t) - 1 + lam)


def integrated_small_t_gap_expr() -> sp.Expr:
    """int_{t0}^{T} small_t_gap_expr dt = F(T) - F(t0), F the antiderivative (§4)."""
    F = small_t_antiderivative()
    return F.subs(t, T) - F.subs(t, t0)


# -- numeric (numpy) versions -------------------------------------------------------------


def _stable(expr: sp.Expr) -> sp.Expr:
    """Rewrite exp(+-u) - 1 as expm1(+-u) for u in {t, t0, T} so small times stay accurate."""
    rules = {}
    for u in (t, t0, T):
        rules[sp.exp(-u)] = 1 + expm1(-u)
        rules[sp.exp(u)] = 1 + expm1(u)
    return expr.xreplace(rules)  # exact nodes only: exp(-t/2) stays as it is


def lambdify_t(expr: sp.Expr, args: tuple[sp.Symbol, ...]) -> Callable[..., np.ndarray]:
    """numpy function of ``args`` for an expression in (a, s) or t; a, s become alpha_t, sigma_t."""
    return sp.lambdify(args, _stable(in_time(sp.sympify(expr))), modules="numpy")


@cache
def _score_fn() -> Callable[..., np.ndarray]:
    return lambdify_t(gaussian_score(), (x, t, mu, lam))


@cache
def _hessian_fn() -> Callable[..., np.ndarray]:
    return lambdify_t(gaussian_hessian(), (x, t, mu, lam))


@cache
def _dsm_fn() -> Callable[..., np.ndarray]:
    return lambdify_t(gaussian_dsm_loss(), (t, mu, lam))


@cache
def _gap_n1_fn() -> Callable[..., np.ndarray]:
    return lambdify_t(loss_gap_n1_fisher(), (x1, t, mu, lam))


@cache
def _expected_gap_fn() -> Callable[..., np.ndarray]:
    return lambdify_t(expected_loss_gap_n1(), (t, mu, lam))


@cache
def _small_t_fn() -> Callable[..., np.ndarray]:
    return lambdify_t(small_t_gap_expr(), (t, lam))


@cache
def _antiderivative_fn() -> Callable[..., np.ndarray]:
    return lambdify_t(small_t_antiderivative(), (t, lam))


@cache
def _integrated_fn() -> Callable[..., np.ndarray]:
    return lambdify_t(integrated_small_t_gap_expr(), (t0, T, lam))


def _broadcast(fn: Callable[..., np.ndarray], *args: object) -> np.ndarray:
    """Call fn and broadcast its result against all arguments (constants come back scalar)."""
    arrays = [np.asarray(arg, dtype=float) for arg in args]
    return np.broadcast_to(fn(*arrays), np.broadcast_shapes(*(arr.shape for arr in arrays)))


def score_np(x: np.ndarray, t: np.ndarray, mu: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """Derived score -(x - alpha mu)/v per coordinate, broadcast over all arguments (§4)."""
    return _broadcast(_score_fn(), x, t, mu, lam)


def hessian_np(x: np.ndarray, t: np.ndarray, mu: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """Derived second derivative -1/v per coordinate, broadcast over all arguments (App. C)."""
    return _broadcast(_hessian_fn(), x, t, mu, lam)


def dsm_loss_np(t: np.ndarray, mu: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """Derived population DSM loss of the true score per coordinate (eq. 3.1)."""
    return _broadcast(_dsm_fn(), t, mu, lam)


def loss_gap_n1_np(x1: np.ndarray, t: np.ndarray, mu: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """Derived n = 1 Loss-Gap given the training point, per coordinate (Prop 4.1).

    It is also l_t(x1, s_true), the true score's DSM loss at the point x1, because the
    n = 1 empirical score has zero loss there.
    """
    return _broadcast(_gap_n1_fn(), x1, t, mu, lam)


def expected_loss_gap_n1_np(t: np.ndarray, mu: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """Derived E_{x1} of the n = 1 Loss-Gap per coordinate (Thm 4.3 at n = 1)."""
    return _broadcast(_expected_gap_fn(), t, mu, lam)


def small_t_gap_np(t: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """The small-t formula per coordinate (PAPER.md §2), broadcast over t and lam."""
    return _broadcast(_small_t_fn(), t, lam)


def small_t_antiderivative_np(t: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """log(e^t - 1) - log(e^t - 1 + lam) per coordinate (§4), via expm1."""
    return _broadcast(_antiderivative_fn(), t, lam)


def integrated_small_t_gap_np(t0: float, T: float, lam: np.ndarray) -> np.ndarray:
    """int_{t0}^{T} of the small-t formula per coordinate (§4)."""
    return _broadcast(_integrated_fn(), t0, T, lam)


# Diagonal Gaussians N(mu, diag(lam)) in d dimensions: sums over the coordinate axis.


def diag_gaussian_score(x: np.ndarray, t: float, mu: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """Score of N(mu, diag(lam)) at time t: x (batch, d), mu and lam (d,) -> (batch, d) (§4)."""
    return score_np(x, t, mu, lam)


def diag_gaussian_hessian(x: np.ndarray, t: float, mu: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """Hessian of log p_t for N(mu, diag(lam)): x (batch, d) -> (batch, d, d), diagonal (App. C)."""
    diag = hessian_np(x, t, mu, lam)
    return diag[..., :, None] * np.eye(diag.shape[-1])


def diag_gaussian_dsm_loss(t: float, mu: np.ndarray, lam: np.ndarray) -> float:
    """Population DSM loss of the true score of N(mu, diag(lam)), summed over coordinates."""
    return float(dsm_loss_np(t, mu, lam).sum())


def diag_loss_gap_n1(x1: np.ndarray, t: float, mu: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """n = 1 Loss-Gap for training point(s) x1 (..., d), summed over coordinates -> (...)."""
    return loss_gap_n1_np(x1, t, mu, lam).sum(-1)


def diag_expected_loss_gap_n1(t: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """E_{x1} of the n = 1 Loss-Gap for N(mu, diag(lam)): t (...), lam (d,) -> (...)."""
    t = np.asarray(t, dtype=float)[..., None]
    return expected_loss_gap_n1_np(t, 0.0, lam).sum(-1)
