"""Closed-form rates and bounds of §4, §5 and Appendix C.

- Thm 4.3: E_D[Loss-Gap_t] = Omega(d / sigma_t^2 + tr(Sigma)) in the small-time window.
- Small-t closed form (PAPER.md §2; exact in expectation for n = 1, see theory/symbolic.py):
      E_D[Loss-Gap_t] ~= sum_j alpha_t^2 lam_j / (sigma_t^2 (alpha_t^2 lam_j + sigma_t^2)),
  which is the population DSM loss of a Gaussian's true score: once the empirical
  score has one-hot weights its own loss is zero, so the gap is the true score's loss.
- Its integral over [t0, T]: since a/(s(a + s)) = 1/s - 1/(a + s) with a = alpha^2 lam,
  s = sigma^2, and d/dt log(e^t - 1) = 1/sigma_t^2,
  d/dt log(e^t - 1 + lam) = 1/(alpha^2 lam + sigma^2),
      int = sum_j [ log(e^t - 1) - log(e^t - 1 + lam_j) ]_{t0}^{T}  ~ d log(1/t0) for Sigma = I.
- Lemma C.1: the empirical score's Lipschitz constant C_t = sup_x ||grad^2 log p_hat_t(x)||_2
  lies between -1/sigma^2 + alpha^2/(16 sigma^4) min_{i!=j}||x_i - x_j||^2 and
  1/sigma^2 + alpha^2/(4 sigma^4) max_{i!=j}||x_i - x_j||^2.
- A Gaussian N(mu, Sigma) has ||grad^2 log p_t||_2 = 1/(sigma_t^2 + alpha_t^2 lam_min) = O(1).

Times are floats or NumPy arrays (any shape); eigenvalues are 1-D arrays.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from theory._checks import check_int, check_matrix

__all__ = [
    "thm43_rate",
    "small_t_gap",
    "integrated_small_t_gap",
    "pairwise_sq_distance_range",
    "lemma_c1_bounds",
    "gaussian_hessian_norm",
]


def _times(t: float | np.ndarray, name: str = "t") -> np.ndarray:
    arr = np.asarray(t, dtype=float)
    if not np.isfinite(arr).all() or (arr <= 0).any():
        raise ValueError(f"{name} must be finite and > 0, got {t!r}")
    return arr


def _eigvals(eigvals: np.ndarray | torch.Tensor | float, d: int | None = None) -> np.ndarray:
    lam = np.atleast_1d(np.asarray(eigvals, dtype=float))
    if d is not None and lam.size == 1:
        lam = np.full(d, float(lam[0]))
    if lam.ndim != 1 or lam.size == 0 or not np.isfinite(lam).all() or (lam < 0).any():
        raise ValueError(
            f"eigvals must be a non-empty 1-D array of finite values >= 0, got {eigvals!r}"
        )
    return lam


def thm43_rate(t: float | np.ndarray, d: int, trace_cov: float) -> np.ndarray:
    """The rate shape of Thm 4.3: d / sigma_t^2 + tr(Sigma) (no constant), shape of t."""
    t = _times(t)
    if d < 1 or trace_cov < 0:
        raise ValueError(f"need d >= 1 and trace_cov >= 0, got d={d}, trace_cov={trace_cov}")
    return d / -np.expm1(-t) + trace_cov


def small_t_gap(
    t: float | np.ndarray, eigvals: np.ndarray | float, d: int | None = None
) -> np.ndarray:
    """sum_j alpha^2 lam_j / (sigma^2 (alpha^2 lam_j + sigma^2)), shape of t (PAPER.md §2).

    eigvals: the covariance eigenvalues (d,), or a scalar together with d.
    Equals d / (e^t - 1) for Sigma = I.
    """
    t = _times(t)
    lam = _eigvals(eigvals, d)
    a2 = np.exp(-t)[..., None]
    s2 = -np.expm1(-t)[..., None]
    return (a2 * lam / (s2 * (a2 * lam + s2))).sum(-1)


def integrated_small_t_gap(
    t0: float, T: float, eigvals: np.ndarray | float, d: int | None = None
) -> float:
    """int_{t0}^{T} small_t_gap(t) dt in closed form (the d log(1/t0) term of §4)."""
    _times(t0, "t0")
    if not T > t0:
        raise ValueError(f"T must exceed t0={t0}, got {T}")
    lam = _eigvals(eigvals, d)

    def antiderivative(t: float) -> float:
        # log(e^t - 1) - log(e^t - 1 + lam), divided through by e^t so that large T
        # neither overflows nor cancels.
        s2, a2 = -math.expm1(-t), math.exp(-t)
        return float(np.sum(math.log(s2) - np.log(s2 + a2 * lam)))

    return antiderivative(T) - antiderivative(t0)


def pairwise_sq_distance_range(points: torch.Tensor, chunk_size: int = 2048) -> tuple[float, float]:
    """min and max of ||x_i - x_j||^2 over pairs i != j of points (n, d), streamed in chunks."""
    check_matrix(points, "points")
    check_int(chunk_size, "chunk_size", 1)
    n = points.shape[0]
    if n < 2:
        raise ValueError(f"points needs n >= 2 rows for pairwise distances, got {n}")
    lo, hi = math.inf, 0.0
    for start in range(0, n, chunk_size):
        block = torch.cdist(points[start : start + chunk_size], points).square()  # (chunk, n)
        rows = torch.arange(block.shape[0], device=points.device)
        block[rows, rows + start] = math.inf
        lo = min(lo, block.min().item())
        block[rows, rows + start] = -math.inf
        hi = max(hi, block.max().item())
    return lo, hi


def lemma_c1_bounds(points: torch.Tensor, t: float | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lemma C.1's (lower, upper) bounds on the empirical score's Lipschitz constant C_t.

    points: (n, d), n >= 2; t: float or array. Returns two arrays shaped like t.
    """
    t = _times(t)
    dmin, dmax = pairwise_sq_distance_range(points)
    a2, s2 = np.exp(-t), -np.expm1(-t)
    lower = -1.0 / s2 + a2 / (16 * s2**2) * dmin
    upper = 1.0 / s2 + a2 / (4 * s2**2) * dmax
    return lower, upper


def gaussian_hessian_norm(
    t: float | np.ndarray, eigvals: np.ndarray | float, d: int | None = None
) -> np.ndarray:
    """||grad^2 log p_t||_2 = 1/(sigma_t^2 + alpha_t^2 lam_min) for data N(mu, Sigma) (App. C)."""
    t = _times(t)
    lam_min = _eigvals(eigvals, d).min()
    return 1.0 / (-np.expm1(-t) + np.exp(-t) * lam_min)
