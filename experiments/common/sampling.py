"""Samplers of the paper's reverse process for any score function (§3).

The forward process dX = -X/2 dt + dB has the reverse-time SDE and probability-flow ODE

    dX = [X/2 + grad log p_t(X)] dt + dB   (run from t = T down to t0)
    dX/dt = -X/2 - (1/2) grad log p_t(X)   (the same marginals, deterministic)

``reverse_sde`` uses the exponential integrator (exact for the linear part X/2, the score
frozen over a step) or Euler-Maruyama; ``probability_flow`` uses Heun's method. The
score is any callable s(x (batch, d), t (batch,)) -> (batch, d): a network, an
``EmpiricalScore`` (whose samples are training points: pure memorization) or a
``GaussianMixture`` (the true score). Sampling starts from N(0, I), the stationary law.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from tqdm import tqdm

from theory._checks import check_int
from theory.process import alpha, log_time_grid, sigma2

__all__ = [
    "METHODS", "sampling_times", "reverse_sde", "probability_flow", "posterior_mean", "sample",
]

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
METHODS = ("exponential", "euler_maruyama", "heun_ode")


def sampling_times(T: float, t0: float, steps: int) -> np.ndarray:
    """steps + 1 times from T down to t0, log-spaced (dense near t0), shape (steps + 1,)."""
    check_int(steps, "steps", 1)
    try:
        return log_time_grid(t0, T, steps + 1)[::-1].copy()
    except ValueError as err:  # name the sampler's arguments, not the grid's
        raise ValueError(str(err).replace("t_min", "t0").replace("t_max", "T")) from None


def _column(t: float, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)


def _score_at(score: ScoreFn, x: torch.Tensor, t: float) -> torch.Tensor:
    """score(x, t) (batch, d), refused where it is not finite: a diverged network must
    stop the sampler at the time it fails, not pass NaN on as samples."""
    s = score(x, _column(t, x))
    if not (torch.isfinite(s.amax()) and torch.isfinite(s.amin())):
        raise FloatingPointError(f"the score is not finite at t = {t:.4g} (NaN or inf): the "
                                 "network diverged or was trained with too large a step")
    return s


def reverse_sde(
    score: ScoreFn,
    x: torch.Tensor,
    times: np.ndarray,
    generator: torch.Generator | None = None,
    method: str = "exponential",
    progress: bool = False,
) -> torch.Tensor:
    """Integrate the reverse SDE from times[0] to times[-1] starting at x (batch, d).

    exponential: x <- e^{h/2} x + 2 (e^{h/2} - 1) s(x, t) + sqrt(e^h - 1) z;
    euler_maruyama: x <- x + h (x/2 + s(x, t)) + sqrt(h) z; h = t - t' > 0.
    """
    if method not in ("exponential", "euler_maruyama"):
        raise ValueError(f"method must be 'exponential' or 'euler_maruyama', got {method!r}")
    where = generator.device if generator is not None else x.device
    steps = range(len(times) - 1)
    for k in tqdm(steps, desc="reverse SDE", leave=False, disable=not progress):
        t, t_next = float(times[k]), float(times[k + 1])
        h = t - t_next
        s = _score_at(score, x, t)
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=where).to(x.device)
        if method == "exponential":
            x = math.exp(h / 2) * x + 2 * math.expm1(h / 2) * s + math.sqrt(math.expm1(h)) * z
        else:
            x = x + h * (x / 2 + s) + math.sqrt(h) * z
    return x


def probability_flow(
    score: ScoreFn, x: torch.Tensor, times: np.ndarray, progress: bool = False
) -> torch.Tensor:
    """Integrate the probability-flow ODE dx/dt = -x/2 - s(x, t)/2 from times[0] to times[-1]
    with Heun's method (second order); x (batch, d)."""

    def velocity(y: torch.Tensor, t: float) -> torch.Tensor:
        return -0.5 * y - 0.5 * _score_at(score, y, t)

    steps = range(len(times) - 1)
    for k in tqdm(steps, desc="probability flow", leave=False, disable=not progress):
        t, t_next = float(times[k]), float(times[k + 1])
        dt = t_next - t  # negative: backwards in time
        v = velocity(x, t)
        x_pred = x + dt * v
        x = x + 0.5 * dt * (v + velocity(x_pred, t_next))
    return x


def posterior_mean(score: ScoreFn, x: torch.Tensor, t: float) -> torch.Tensor:
    """Tweedie's formula E[X_0 | X_t = x] = (x + sigma_t^2 s(x, t)) / alpha_t, x (batch, d):
    the last step of a sampler stopped at a noise floor t (issue "mitigation")."""
    return (x + sigma2(t) * _score_at(score, x, t)) / alpha(t)


def sample(
    score: ScoreFn,
    num: int,
    d: int,
    T: float = 8.0,
    t0: float = 1e-3,
    steps: int = 400,
    method: str = "exponential",
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    progress: bool = False,
    denoise: bool = False,
) -> torch.Tensor:
    """num samples (num, d): x_T ~ N(0, I), then the chosen sampler down to t0 (§3).

    method: "exponential" or "euler_maruyama" (reverse SDE), "heun_ode" (probability flow).
    denoise: end with the posterior-mean step at t0 (``posterior_mean``) instead of
    returning x_t0 (for a sampler stopped at a noise floor t0).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    check_int(num, "num", 1)
    check_int(d, "d", 1)
    times = sampling_times(T, t0, steps)
    where = generator.device if generator is not None else device
    x = torch.randn((num, d), generator=generator, dtype=dtype, device=where).to(device)
    with torch.no_grad():
        if method == "heun_ode":
            x = probability_flow(score, x, times, progress)
        else:
            x = reverse_sde(score, x, times, generator, method, progress)
        if denoise:
            x = posterior_mean(score, x, float(times[-1]))
    if not torch.isfinite(x).all():  # finite scores, but a step overflowed
        raise FloatingPointError(f"the {method} sampler produced non-finite samples "
                                 f"({steps} steps from T={T} to t0={t0})")
    return x
