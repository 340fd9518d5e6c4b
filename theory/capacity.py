"""The smallest network that implements a score: Thm 5.1 measured (§5).

Thm 5.1: approximating the empirical score of n points to error eps/sigma_t^4 under
P_hat_t takes width W1 = O~(n), while the true score needs a size independent of n.
Here a grid of widths (one ``MLPEnsemble``, so the whole sweep trains as one model) is
fit to a target score with a fixed, documented budget, and each fit is scored by

    r = E_{P_hat_t} ||s_net - s_target||^2 / E_{P_hat_t} ||s_hat - s_true||^2,

the error in units of the separation itself (the Loss-Gap of Prop. 4.1), on fresh
draws from P_hat_t. A network "implements" the target when r <= eps; the smallest such
width is read off by log-linear interpolation between grid points.

Fits regress the network's denoiser onto the target's denoiser
D(x, t) = (x + sigma_t^2 s(x, t)) / alpha_t (Tweedie), the parametrization practical
models use: an absolute error on D is an error sigma_t^-4 alpha_t^2 times larger on the
score, which is the scaling of eq. (5.1).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from theory._checks import check_int, check_matrix, check_real
from theory.empirical import EmpiricalScore
from theory.networks import MLPEnsemble
from theory.process import alpha, check_time, forward_sample, generator, sigma2

__all__ = ["FitBudget", "WidthSweep", "fit_width_sweep", "smallest_width"]

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class FitBudget:
    """The fixed training budget of every fit: AdamW with a cosine learning-rate decay."""

    steps: int = 3000
    batch: int = 256
    lr: float = 3e-3
    weight_decay: float = 0.0
    eval_draws: int = 4096

    def __post_init__(self) -> None:
        for name in ("steps", "batch", "eval_draws"):
            check_int(getattr(self, name), name, 1)
        check_real(self.lr, "lr", "> 0", lambda v: v > 0)
        check_real(self.weight_decay, "weight_decay", ">= 0", lambda v: v >= 0)


@dataclass(frozen=True)
class WidthSweep:
    """Errors r of one width sweep: widths (G,), r (G,), and the parameter counts N (G,)."""

    widths: tuple[int, ...]
    ratio: tuple[float, ...]
    num_params: tuple[int, ...]

    def to_dict(self) -> dict:
        return asdict(self)


def _draw_times(t_range: tuple[float, float], num: int, g: torch.Generator) -> torch.Tensor:
    """num times log-uniform on [t_a, t_b] (all equal to t_a when t_a = t_b), float64."""
    lo, hi = math.log(t_range[0]), math.log(t_range[1])
    return torch.exp(lo + (hi - lo) * torch.rand(num, generator=g, dtype=torch.float64))


def _draw_empirical(points: torch.Tensor, t: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """X_t ~ P_hat_t at per-row times t (num,): alpha_t x_i + sigma_t eps, shape (num, d)."""
    idx = torch.randint(points.shape[0], (t.shape[0],), generator=g)
    return forward_sample(points[idx], t.to(points.dtype), g)[0]


def _denoiser(score: ScoreFn, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Tweedie: E[X_0 | X_t = x] = (x + sigma_t^2 s(x, t)) / alpha_t for per-row t (batch,)."""
    tc = t[:, None]
    return (x + sigma2(tc) * score(x, t)) / alpha(tc)


def fit_width_sweep(
    target: ScoreFn,
    points: torch.Tensor,
    true_score: ScoreFn,
    t_range: tuple[float, float],
    widths: Sequence[int],
    depth: int = 1,
    budget: FitBudget = FitBudget(),
    seed: int = 0,
    emb_dim: int = 16,
) -> WidthSweep:
    """Fit every width to ``target`` on t in t_range under P_hat_t; return the errors r (§5).

    target, true_score: score functions s(x (batch, d), t (batch,)) -> (batch, d), e.g. an
    EmpiricalScore or a GaussianMixture; points: the training set (n, d) that defines
    P_hat_t and the empirical score s_hat. The denominator of r is the Fisher divergence
    E||s_hat - s_true||^2 on the same fresh draws. Deterministic for a seed (CPU).
    """
    check_matrix(points, "points")
    check_time(t_range[0], name="t_range[0]")
    if not t_range[1] >= t_range[0]:
        raise ValueError(f"t_range must be (t_a, t_b) with t_b >= t_a, got {t_range}")
    emp = EmpiricalScore(points)
    d = points.shape[1]
    net = MLPEnsemble(d, widths, depth, emb_dim, parametrization="denoiser", seed=seed)
    net = net.to(points.dtype)
    opt = torch.optim.AdamW(net.parameters(), lr=budget.lr, weight_decay=budget.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=budget.steps)
    g = generator(seed, 1)
    for _ in range(budget.steps):
        t = _draw_times(t_range, budget.batch, g).to(points.dtype)
        x = _draw_empirical(points, t, g)
        with torch.no_grad():
            goal = _denoiser(target, x, t)  # (batch, d)
        loss = (net.raw(x, t) - goal).square().sum(-1).mean(-1).sum()  # sum over members
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    # Fresh draws for the error, never the training batches.
    g_eval = generator(seed, 2)
    t = _draw_times(t_range, budget.eval_draws, g_eval).to(points.dtype)
    x = _draw_empirical(points, t, g_eval)
    with torch.no_grad():
        s_target, s_hat, s_true = target(x, t), emp.score(x, t), true_score(x, t)
        gap = (s_hat - s_true).square().sum(-1).mean()
        err = (net(x, t) - s_target).square().sum(-1).mean(-1)  # (G,)
    return WidthSweep(
        tuple(int(w) for w in widths), tuple((err / gap).tolist()), tuple(net.num_params())
    )


def smallest_width(widths: Sequence[int], ratio: Sequence[float], eps: float) -> float:
    """The smallest width with r <= eps, interpolated linearly in (log width, log r).

    Scans the grid from the smallest width; at the first crossing between w_k (r > eps)
    and w_{k+1} (r <= eps) returns the interpolated width. Returns widths[0] if it
    already meets eps and inf if no width does.
    """
    w = np.asarray(widths, dtype=float)
    r = np.asarray(ratio, dtype=float)
    if w.ndim != 1 or w.shape != r.shape or w.size == 0:
        raise ValueError(f"widths and ratio must be 1-D of equal length, got {w.shape}, {r.shape}")
    if not (np.all(np.diff(w) > 0) and np.all(r > 0) and eps > 0):
        raise ValueError("widths must increase, ratio and eps must be > 0")
    below = np.nonzero(r <= eps)[0]
    if below.size == 0:
        return math.inf
    k = int(below[0])
    if k == 0:
        return float(w[0])
    lw, lr = np.log(w[k - 1 : k + 1]), np.log(r[k - 1 : k + 1])
    frac = (math.log(eps) - lr[0]) / (lr[1] - lr[0])
    return float(np.exp(lw[0] + frac * (lw[1] - lw[0])))
