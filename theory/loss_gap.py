"""The DSM loss and the loss gap between the true and the empirical score (§4).

Per-time DSM loss (eq. 3.1), for a training point x_i and a score function s:

    l_t(x_i, s) = E_eps || eps/sigma_t + s(alpha_t x_i + sigma_t eps, t) ||^2

(the regression target -(X_t - alpha_t x_i)/sigma_t^2 equals -eps/sigma_t).

    Loss-Gap_t = (1/n) sum_i [ l_t(x_i, grad log p_t) - l_t(x_i, grad log p_hat_t) ]

Prop. 4.1: Loss-Gap_t = Fisher(P_hat_t, P_t)
                    = E_{X ~ P_hat_t} ||grad log p_hat_t(X) - grad log p_t(X)||^2,
because E[target | X_t] is the empirical score, so l_t(s) = E||s - s_hat||^2 + const.
Both forms are estimated here from the same draws (i ~ uniform, eps ~ N(0, I)),
so they can be compared draw by draw. Scores are any callables s(x, t) -> (batch, d).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy import stats

from theory._checks import check_finite, check_int, check_matrix
from theory.empirical import EmpiricalScore
from theory.mixtures import GaussianMixture
from theory.process import alpha, check_time, generator, sigma

__all__ = [
    "Estimate",
    "LossGap",
    "DatasetMean",
    "ScoreFn",
    "draw_training_noise",
    "dsm_loss_terms",
    "dsm_loss",
    "loss_gap",
    "integrated_loss_gap",
    "dataset_mean",
    "expected_loss_gap",
]

ScoreFn = Callable[[torch.Tensor, float], torch.Tensor]


@dataclass(frozen=True)
class Estimate:
    """A Monte Carlo mean with its standard error over ``num`` iid draws."""

    value: float
    stderr: float
    num: int

    @classmethod
    def from_draws(cls, draws: torch.Tensor) -> Estimate:
        """Mean and standard error of iid draws, shape (num,)."""
        draws = draws.double()
        num = draws.numel()
        if num < 2:
            raise ValueError(f"need at least 2 draws for a standard error, got {num}")
        check_finite(draws, "draws")
        return cls(float(draws.mean()), float(draws.std() / math.sqrt(num)), num)

    def ci(self, level: float = 0.95) -> tuple[float, float]:
        """Normal-approximation confidence interval."""
        z = stats.norm.ppf(0.5 + level / 2)
        return self.value - z * self.stderr, self.value + z * self.stderr

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class LossGap:
    """Loss-Gap_t estimated twice from the same draws (Prop. 4.1)."""

    direct: Estimate  # difference of the two training losses, common random numbers
    fisher: Estimate  # E_{P_hat_t} ||s_hat - s||^2

    def to_dict(self) -> dict:
        return {"direct": self.direct.to_dict(), "fisher": self.fisher.to_dict()}


def draw_training_noise(
    points: torch.Tensor, num: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draws (i, eps): i uniform over the n points (num,), eps ~ N(0, I) (num, d).

    X_t = alpha_t x_i + sigma_t eps is then a draw from P_hat_t.
    """
    check_matrix(points, "points")
    check_int(num, "num", 1)
    idx = torch.randint(points.shape[0], (num,), generator=generator)
    eps = torch.randn((num, points.shape[1]), generator=generator, dtype=points.dtype)
    return idx.to(points.device), eps.to(points.device)


def dsm_loss_terms(
    score: ScoreFn, x0: torch.Tensor, t: float, eps: torch.Tensor
) -> torch.Tensor:
    """||eps/sigma_t + s(alpha_t x0 + sigma_t eps, t)||^2 per draw, shape (num,) (eq. 3.1).

    x0, eps: (num, d). The mean over eps of this is l_t(x0, s).
    """
    check_time(t)
    if eps.shape != x0.shape:
        raise ValueError(f"eps must have the shape of x0 {tuple(x0.shape)}, got {tuple(eps.shape)}")
    s = sigma(t)
    return (eps / s + score(alpha(t) * x0 + s * eps, t)).square().sum(dim=1)


def _batched(num: int, batch_size: int) -> list[tuple[int, int]]:
    """(lo, hi) of consecutive batches of at most batch_size of num draws."""
    check_int(batch_size, "batch_size", 1)
    return [(lo, min(lo + batch_size, num)) for lo in range(0, num, batch_size)]


def dsm_loss(
    score: ScoreFn,
    points: torch.Tensor,
    t: float,
    num: int = 4096,
    generator: torch.Generator | None = None,
    batch_size: int = 1024,
) -> Estimate:
    """(1/n) sum_i l_t(x_i, s): the per-time training DSM loss of eq. (3.1), by Monte Carlo."""
    batches = _batched(num, batch_size)
    idx, eps = draw_training_noise(points, num, generator)
    terms = [dsm_loss_terms(score, points[idx[lo:hi]], t, eps[lo:hi]) for lo, hi in batches]
    return Estimate.from_draws(torch.cat(terms))


def loss_gap(
    true_score: ScoreFn,
    points: torch.Tensor,
    t: float,
    num: int = 4096,
    generator: torch.Generator | None = None,
    empirical: EmpiricalScore | None = None,
    batch_size: int = 1024,
) -> LossGap:
    """Loss-Gap_t of the true score against the empirical score of ``points`` (n, d) (§4).

    Returns both estimators of Prop. 4.1 over the same ``num`` draws from P_hat_t:
    direct = l_t(x_i, s) - l_t(x_i, s_hat) with common (i, eps), and
    fisher = ||s_hat(X_t) - s(X_t)||^2. Pass ``empirical`` to reuse a built EmpiricalScore.
    """
    check_time(t)
    batches = _batched(num, batch_size)
    emp = empirical if empirical is not None else EmpiricalScore(points)
    idx, eps = draw_training_noise(points, num, generator)
    a, s = alpha(t), sigma(t)
    direct, fisher = [], []
    for lo, hi in batches:
        x_t = a * points[idx[lo:hi]] + s * eps[lo:hi]
        target = -eps[lo:hi] / s
        s_true, s_emp = true_score(x_t, t), emp.score(x_t, t)
        direct.append((s_true - target).square().sum(1) - (s_emp - target).square().sum(1))
        fisher.append((s_emp - s_true).square().sum(1))
    return LossGap(Estimate.from_draws(torch.cat(direct)), Estimate.from_draws(torch.cat(fisher)))


def integrated_loss_gap(
    true_score: ScoreFn,
    points: torch.Tensor,
    t0: float,
    T: float,
    num_nodes: int = 16,
    num: int = 2048,
    generator: torch.Generator | None = None,
) -> tuple[Estimate, np.ndarray, list[LossGap]]:
    """int_{t0}^{T} Loss-Gap_t dt by Gauss-Legendre quadrature in u = log t (§4).

    int g(t) dt = int g(e^u) e^u du; independent draws at each node, so the standard
    error is sqrt(sum_j (w_j t_j se_j)^2). Returns (integral from the Fisher form,
    nodes t_j (num_nodes,), per-node LossGap).
    """
    check_time(t0, name="t0")
    check_time(T, name="T")
    if not T > t0:
        raise ValueError(f"T must exceed t0={t0}, got {T}")
    check_int(num_nodes, "num_nodes", 1)
    u, w = np.polynomial.legendre.leggauss(num_nodes)
    lo, hi = math.log(t0), math.log(T)
    u = 0.5 * (hi - lo) * u + 0.5 * (hi + lo)
    w = 0.5 * (hi - lo) * w
    nodes = np.exp(u)
    emp = EmpiricalScore(points)
    gaps = [loss_gap(true_score, points, float(tj), num, generator, emp) for tj in nodes]
    coef = w * nodes
    value = float(sum(c * g.fisher.value for c, g in zip(coef, gaps, strict=True)))
    se = math.sqrt(sum((c * g.fisher.stderr) ** 2 for c, g in zip(coef, gaps, strict=True)))
    return Estimate(value, se, num * num_nodes), nodes, gaps


@dataclass(frozen=True)
class DatasetMean:
    """E_D[...] over repeated draws of the training set, with a t-interval."""

    mean: float
    stderr: float
    ci_low: float
    ci_high: float
    values: tuple[float, ...]

    def to_dict(self) -> dict:
        return asdict(self)


def dataset_mean(values: Sequence[float], level: float = 0.95) -> DatasetMean:
    """Mean over datasets D of per-dataset estimates, with a Student-t confidence interval.

    The spread across datasets already contains each estimate's Monte Carlo noise.
    """
    v = np.asarray(values, dtype=float)
    if v.size < 2:
        raise ValueError(f"values must hold estimates from at least 2 datasets, got {v.size}")
    if not np.isfinite(v).all():
        raise ValueError("values must be finite")
    se = float(v.std(ddof=1) / math.sqrt(v.size))
    half = float(stats.t.ppf(0.5 + level / 2, df=v.size - 1)) * se
    m = float(v.mean())
    return DatasetMean(m, se, m - half, m + half, tuple(float(x) for x in v))


def expected_loss_gap(
    mixture: GaussianMixture,
    n: int,
    t: float,
    num_datasets: int = 8,
    num: int = 2048,
    seed: int = 0,
) -> tuple[DatasetMean, DatasetMean]:
    """E_D[Loss-Gap_t] for training sets D of n iid draws from ``mixture`` (Thm 4.3).

    Dataset r uses the stream (seed, r). Returns (direct form, Fisher form), each the
    mean over datasets with a 95% t-interval.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    direct, fisher = [], []
    for r in range(num_datasets):
        g = generator(seed, r)
        gap = loss_gap(mixture, mixture.sample(n, g), t, num, g)
        direct.append(gap.direct.value)
        fisher.append(gap.fisher.value)
    return dataset_mean(direct), dataset_mean(fisher)
