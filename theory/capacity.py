"""The smallest network that implements a score: Thm 5.1 measured (§5).

Thm 5.1: approximating the empirical score of n points to error eps/sigma_t^4 under
P_hat_t takes width W1 = O~(n), while the true score needs a size independent of n.
Here a grid of widths (one ``MLPEnsemble``, so the whole sweep trains as one model) is
fit to a target score; each member trains until its held-out error stops improving (a
plateau rule with learning-rate cuts, ``FitBudget``) or a step cap, and records which of
the two stopped it, so a fit limited by the budget rather than by its width is visible.
Each fit is scored by

    r = E_{P_hat_t} ||s_net - s_target||^2 / E_{P_hat_t} ||s_hat - s_true||^2,

the error in units of the separation itself (the Loss-Gap of Prop. 4.1), on fresh
draws from P_hat_t (for a time interval: the max over a grid of times, since eq. 5.1 holds
at every t). A network "implements" the target when r <= eps; the smallest such
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

__all__ = ["FitBudget", "WidthFits", "WidthSweep", "fit_width_sweep", "smallest_width", "time_grid"]

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class FitBudget:
    """How every member of a width sweep is trained: AdamW, a learning-rate grid, a plateau rule.

    Each width is trained once per learning rate in ``lrs`` (members of one ensemble). Every
    ``eval_every`` steps the error r of every member is measured on a fixed *validation*
    set of fresh draws (never the training batches, never the test draws that r is
    reported on). A member improves when its r falls below (1 - min_delta) x its best so
    far; after ``patience`` evaluations without improvement its learning rate is multiplied
    by ``decay_factor``, and after ``decays`` such cuts a further ``patience`` evaluations
    without improvement stop it: it has reached its **plateau**. ``steps`` is the cap; a
    member still improving there stopped on the **cap**. Each member ends at its best
    validation checkpoint. The schedule depends on the validation curve only, never on the
    cap, so a run with cap 2 s passes through exactly the states of a run with cap s
    (``snapshots`` records those: the budget check costs one run, not two).
    """

    steps: int = 3000
    batch: int = 256
    lrs: tuple[float, ...] = (1e-3, 3e-3)
    weight_decay: float = 0.0
    eval_draws: int = 4096
    eval_every: int = 100
    patience: int = 3
    min_delta: float = 0.01
    decays: int = 2
    decay_factor: float = 0.3
    snapshots: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        for name in ("steps", "batch", "eval_draws", "eval_every", "patience"):
            check_int(getattr(self, name), name, 1)
        check_int(self.decays, "decays", 0)
        if not (isinstance(self.lrs, tuple) and self.lrs):
            raise ValueError(f"lrs must be a non-empty tuple of learning rates, got {self.lrs!r}")
        for lr in self.lrs:
            check_real(lr, "lrs", "> 0", lambda v: v > 0)
        if len(set(self.lrs)) < len(self.lrs):
            raise ValueError(f"lrs must not repeat a learning rate, got {self.lrs!r}")
        check_real(self.weight_decay, "weight_decay", ">= 0", lambda v: v >= 0)
        check_real(self.min_delta, "min_delta", "in [0, 1)", lambda v: 0 <= v < 1)
        check_real(self.decay_factor, "decay_factor", "in (0, 1)", lambda v: 0 < v < 1)
        if self.steps % self.eval_every:
            raise ValueError(f"steps ({self.steps}) must be a multiple of eval_every "
                             f"({self.eval_every}): the plateau rule acts at evaluations")
        for s in self.snapshots:
            check_int(s, "snapshots", 1)
            if s % self.eval_every or s >= self.steps:
                raise ValueError(f"snapshots must be multiples of eval_every ({self.eval_every})"
                                 f" below steps ({self.steps}), got {self.snapshots!r}")


@dataclass(frozen=True)
class WidthFits:
    """The best fit of each width (over the learning rates) at one cap; all tuples (G,).

    ratio: r on the test draws (the max over the time grid), lr: the learning rate chosen
    on the validation draws, stop_step: the step the chosen member stopped at,
    on_plateau: whether it stopped by the plateau rule (False: the cap stopped it)."""

    ratio: tuple[float, ...]
    lr: tuple[float, ...]
    stop_step: tuple[int, ...]
    on_plateau: tuple[bool, ...]


@dataclass(frozen=True)
class WidthSweep:
    """A width sweep: widths (G,), their parameter counts N (G,), the time grid r is taken
    over, the fits at the cap, and at each snapshot step the fits a run capped there got."""

    widths: tuple[int, ...]
    num_params: tuple[int, ...]
    t_grid: tuple[float, ...]
    final: WidthFits
    snapshots: dict[int, WidthFits]

    @property
    def ratio(self) -> tuple[float, ...]:
        """r of each width at the cap (G,)."""
        return self.final.ratio

    def to_dict(self) -> dict:
        out = asdict(self)
        out["snapshots"] = {str(s): asdict(f) for s, f in self.snapshots.items()}
        return out


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


def time_grid(t_range: tuple[float, float], num: int) -> tuple[float, ...]:
    """The times r is measured at: t_a alone when t_a = t_b, else ``num`` log-spaced times
    from t_a to t_b (both ends included)."""
    if t_range[0] == t_range[1]:
        return (float(t_range[0]),)
    check_int(num, "t_points", 2)
    return tuple(float(v) for v in np.geomspace(t_range[0], t_range[1], num))


class _ErrorProbe:
    """r of every member on fixed draws, per time of the grid: (G, len(t_grid)).

    At each grid time t: ``draws`` fresh X_t ~ P_hat_t, the target score there and the
    separation E||s_hat - s_true||^2 (computed once); r_t = E||s_net - s_target||^2 over
    the separation. The sweep's r is the max over the grid (the theorem holds for all t)."""

    def __init__(self, target: ScoreFn, points: torch.Tensor, true_score: ScoreFn,
                 t_grid: Sequence[float], draws: int, g: torch.Generator) -> None:
        emp = EmpiricalScore(points)
        self.sets = []
        for t_k in t_grid:
            t = torch.full((draws,), t_k, dtype=points.dtype, device=points.device)
            x = _draw_empirical(points, t, g)
            with torch.no_grad():
                gap = (emp.score(x, t) - true_score(x, t)).square().sum(-1).mean()
                self.sets.append((x, t, target(x, t), gap))

    @torch.no_grad()
    def __call__(self, net: MLPEnsemble) -> torch.Tensor:
        cols = [(net(x, t) - goal).square().sum(-1).mean(-1) / gap
                for x, t, goal, gap in self.sets]
        return torch.stack(cols, dim=1)  # (G, grid)


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
    t_points: int = 5,
) -> WidthSweep:
    """Fit every width to ``target`` on t in t_range under P_hat_t; return the errors r (§5).

    target, true_score: score functions s(x (batch, d), t (batch,)) -> (batch, d), e.g. an
    EmpiricalScore or a GaussianMixture; points: the training set (n, d) that defines
    P_hat_t and the empirical score s_hat (repeated rows are copies: they weigh more).
    Training times are log-uniform on t_range; r is measured at ``time_grid(t_range,
    t_points)`` and its max over the grid is reported (eq. 5.1 bounds the error at every
    t). One ``MLPEnsemble`` holds len(widths) x len(budget.lrs) members, each with its own
    learning rate and plateau rule (``FitBudget``). Deterministic for a seed (CPU).
    """
    check_matrix(points, "points")
    check_time(t_range[0], name="t_range[0]")
    if not t_range[1] >= t_range[0]:
        raise ValueError(f"t_range must be (t_a, t_b) with t_b >= t_a, got {t_range}")
    widths = [int(w) for w in widths]
    lrs, n_lr = budget.lrs, len(budget.lrs)
    net = MLPEnsemble(points.shape[1], [w for w in widths for _ in lrs], depth, emb_dim,
                      parametrization="denoiser", seed=seed).to(points.dtype)
    members = net.G  # member m = (width m // n_lr, learning rate m % n_lr)
    grid = time_grid(t_range, t_points)
    validation = _ErrorProbe(target, points, true_score, grid, budget.eval_draws,
                             generator(seed, 3))
    test = _ErrorProbe(target, points, true_score, grid, budget.eval_draws, generator(seed, 2))

    # Per-member learning rates: AdamW's step (weight decay included) is linear in lr, so
    # a step with lr = 1 scaled elementwise by each member's lr is exactly AdamW at that lr.
    opt = torch.optim.AdamW(net.parameters(), lr=1.0, weight_decay=budget.weight_decay)
    lr_now = torch.tensor([lrs[m % n_lr] for m in range(members)], dtype=torch.float64)
    active = torch.ones(members, dtype=torch.bool)

    def lr_field() -> torch.Tensor:
        field = torch.zeros_like(net.flat)
        for m in range(members):
            for view in net.member_views(m, field):
                view.fill_(float(lr_now[m]) if active[m] else 0.0)
        return field

    field = lr_field()
    best_val = torch.full((members,), math.inf, dtype=torch.float64)
    best_flat = net.flat.detach().clone()
    waited = torch.zeros(members, dtype=torch.long)
    cuts = torch.zeros(members, dtype=torch.long)
    stop_step = torch.full((members,), budget.steps, dtype=torch.long)
    recorded: dict[int, tuple] = {}
    g = generator(seed, 1)

    def record(step: int) -> None:
        """The state a run capped at ``step`` ends in: best checkpoints, statuses."""
        saved = net.flat.detach().clone()
        with torch.no_grad():
            net.flat.copy_(best_flat)
            r = test(net).amax(dim=1).double()
            net.flat.copy_(saved)
        stops = torch.where(active, torch.full_like(stop_step, step), stop_step)
        recorded[step] = (r, best_val.clone(), stops, ~active.clone())

    for step in range(1, budget.steps + 1):
        if not bool(active.any()):
            break
        t = _draw_times(t_range, budget.batch, g).to(points.dtype)
        x = _draw_empirical(points, t, g)
        with torch.no_grad():
            goal = _denoiser(target, x, t)  # (batch, d)
        per_member = (net.raw(x, t, active=active) - goal).square().sum(-1).mean(-1)  # (G,)
        loss = (per_member * active.to(per_member.dtype)).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        before = net.flat.detach().clone()
        opt.step()
        with torch.no_grad():  # the unit step, scaled per member (0 for stopped members)
            net.flat.copy_(torch.addcmul(before, net.flat - before, field))
        if step % budget.eval_every:
            continue
        r_val = validation(net).amax(dim=1).double()
        better = active & (r_val < best_val * (1 - budget.min_delta))
        for m in torch.nonzero(better).flatten().tolist():
            for dst, src in zip(net.member_views(m, best_flat), net.member_views(m),
                                strict=True):
                dst.copy_(src.detach())
        best_val = torch.where(better, r_val, best_val)
        waited = torch.where(better, 0, waited + active.long())
        tired = active & (waited >= budget.patience)
        cut = tired & (cuts < budget.decays)
        stop = tired & ~cut
        if bool(tired.any()):
            lr_now = torch.where(cut, lr_now * budget.decay_factor, lr_now)
            cuts, waited = cuts + cut.long(), torch.where(tired, 0, waited)
            stop_step = torch.where(stop, step, stop_step)
            active = active & ~stop
            field = lr_field()
        if step in budget.snapshots:
            record(step)
    end = budget.steps
    record(end)
    for s in budget.snapshots:  # every member stopped before s: a run capped at s ends alike
        recorded.setdefault(s, recorded[end])

    def choose(r, val, stops, plateau) -> WidthFits:
        pick = [int(torch.argmin(val[i * n_lr : (i + 1) * n_lr])) + i * n_lr
                for i in range(len(widths))]
        return WidthFits(tuple(float(r[m]) for m in pick), tuple(float(lrs[m % n_lr])
                         for m in pick), tuple(int(stops[m]) for m in pick),
                         tuple(bool(plateau[m]) for m in pick))

    params = net.num_params()
    return WidthSweep(
        tuple(widths), tuple(params[i * n_lr] for i in range(len(widths))), grid,
        choose(*recorded[end]), {s: choose(*recorded[s]) for s in sorted(budget.snapshots)},
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
