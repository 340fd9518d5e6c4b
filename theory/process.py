"""The forward (Ornstein-Uhlenbeck, variance-preserving) process of the paper (§3).

    dX_t = -1/2 X_t dt + dB_t,   X_t | X_0 = x  ~  N(alpha_t x, sigma_t^2 I),
    alpha_t = exp(-t/2),   sigma_t^2 = 1 - exp(-t),   alpha_t^2 + sigma_t^2 = 1.

Times are floats or tensors of shape (batch,). sigma_t^2 is computed as
-expm1(-t) so that sigma_t stays accurate down to 1e-8 (t ~ 1e-16) in float64.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import special

from theory._checks import check_int, check_matrix

Time = float | torch.Tensor

__all__ = [
    "Time",
    "alpha",
    "sigma",
    "sigma2",
    "check_time",
    "time_column",
    "forward_sample",
    "log_time_grid",
    "BetaTimeSampler",
    "ddpm_linear_times",
    "DDPMBetaTimeSampler",
    "LogUniformTimeSampler",
    "derive_seed",
    "generator",
]


def check_time(t: Time, *, name: str = "t", allow_zero: bool = False) -> None:
    """Raise ValueError unless every entry of ``t`` is finite and > 0 (>= 0 if allowed)."""
    values = t.detach() if isinstance(t, torch.Tensor) else torch.as_tensor(float(t))
    if not torch.isfinite(values).all():
        raise ValueError(f"{name} must be finite, got {t!r}")
    bad = values < 0 if allow_zero else values <= 0
    if bad.any():
        bound = ">= 0" if allow_zero else "> 0 (the process is only defined on (0, T])"
        raise ValueError(f"{name} must be {bound}, got min {values.min().item():.3g}")


def alpha(t: Time) -> Time:
    """alpha_t = exp(-t/2), the signal coefficient of X_t | X_0 (§3). Same shape as t >= 0."""
    check_time(t, allow_zero=True)
    if isinstance(t, torch.Tensor):
        return torch.exp(-0.5 * t)
    return math.exp(-0.5 * t)


def sigma2(t: Time) -> Time:
    """sigma_t^2 = 1 - exp(-t), the noise variance of X_t | X_0 (§3), via expm1; t >= 0."""
    check_time(t, allow_zero=True)
    if isinstance(t, torch.Tensor):
        return -torch.expm1(-t)
    return -math.expm1(-t)


def sigma(t: Time) -> Time:
    """sigma_t = sqrt(1 - exp(-t)) (§3). Same shape as t."""
    s2 = sigma2(t)
    return s2.sqrt() if isinstance(s2, torch.Tensor) else math.sqrt(s2)


def time_column(t: Time, x: torch.Tensor, *, name: str = "t") -> torch.Tensor:
    """t as a tensor broadcastable against x of shape (batch, d): shape (1, 1) or (batch, 1).

    Checks that a tensor t has shape () or (batch,) matching x's leading dimension.
    """
    tt = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if tt.ndim == 0:
        return tt.reshape(1, 1)
    if tt.ndim != 1 or tt.shape[0] != x.shape[0]:
        raise ValueError(
            f"{name} must be a float or a tensor of shape (batch,) = ({x.shape[0]},), "
            f"got shape {tuple(tt.shape)}"
        )
    return tt[:, None]


def forward_sample(
    x0: torch.Tensor, t: Time, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw X_t = alpha_t x0 + sigma_t eps given X_0 = x0 (§3).

    x0: (batch, d); t: float or (batch,). Returns (x_t, eps), both (batch, d).
    """
    check_matrix(x0, "x0", allow_empty=True)
    check_time(t)
    tc = time_column(t, x0)
    # Draw where the generator lives, so a CPU generator fixes the numbers on any device.
    where = generator.device if generator is not None else x0.device
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=where).to(x0.device)
    return alpha(tc) * x0 + sigma(tc) * eps, eps


def log_time_grid(t_min: float, t_max: float, num: int) -> np.ndarray:
    """num log-spaced times from t_min to t_max inclusive, shape (num,)."""
    check_time(t_min, name="t_min")
    check_time(t_max, name="t_max")
    if not t_max > t_min:
        raise ValueError(f"t_max must exceed t_min={t_min}, got {t_max}")
    check_int(num, "num", 2)
    return np.geomspace(t_min, t_max, num)


class BetaTimeSampler:
    """Times t = t0 + (T - t0) u with u ~ Beta(a, b) on normalized time [0, 1].

    The paper's pruning importance (§6.2, App. D.1) draws t from Beta(0.8, 2), which
    puts most mass at small t. Sampling is by the inverse CDF so that a torch
    Generator fixes the draw.
    """

    def __init__(self, a: float, b: float, t0: float, T: float) -> None:
        for name, value in (("a", a), ("b", b)):
            if not value > 0:
                raise ValueError(f"Beta parameter {name} must be > 0, got {value}")
        check_time(t0, name="t0")
        if not T > t0:
            raise ValueError(f"T must exceed t0={t0}, got {T}")
        self.a, self.b, self.t0, self.T = float(a), float(b), float(t0), float(T)

    def sample(
        self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """n times in [t0, T], shape (n,)."""
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        q = torch.from_numpy(special.betaincinv(self.a, self.b, u.numpy()))
        return (self.t0 + (self.T - self.t0) * q).to(dtype)

    def __repr__(self) -> str:
        return f"BetaTimeSampler(a={self.a}, b={self.b}, t0={self.t0}, T={self.T})"


def ddpm_linear_times(steps: int = 1000, beta_start: float = 1e-4,
                      beta_end: float = 0.02) -> np.ndarray:
    """The OU time of each step k = 1..steps of a DDPM linear beta schedule, shape (steps,).

    DDPM (and the DiT codebase) noises x_k = sqrt(abar_k) x_0 + sqrt(1 - abar_k) eps with
    abar_k = prod_{i <= k} (1 - beta_i), beta linear from beta_start to beta_end. Our OU
    process has alpha_t^2 = e^{-t}, so the same noise level is t(k) = -log abar_k
    = sum_{i <= k} -log(1 - beta_i) (summed with log1p: exact for beta ~ 1e-4).
    """
    check_int(steps, "steps", 1)
    if not 0 < beta_start <= beta_end < 1:
        raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}")
    betas = np.linspace(beta_start, beta_end, steps, dtype=np.float64)
    return np.cumsum(-np.log1p(-betas))


class DDPMBetaTimeSampler:
    """The paper's importance times read as in its codebase: u ~ Beta(a, b) on the
    *normalized DDPM step index*, k = ceil(u * steps) (at least 1), t = t_OU(k) of
    ``ddpm_linear_times`` (App. D.1 with DiT's linear schedule, 1,000 steps).

    With Beta(0.8, 2) the median step is k = 231, t = 0.55 (``median``; a linear map of the
    same Beta law onto [t0, T] = [1e-3, 8] puts it at 1.85). Times run from t(1) = 1e-4 to
    t(1000) = 10.1; the 0.9% of draws above T = 8 (k > 889) and the 3% below t0 = 1e-3
    (k <= 6) are kept, not clipped (the DSM loss is defined at every t): the sampler knows
    no t0 or T of ours, only the DDPM schedule.
    """

    def __init__(self, a: float = 0.8, b: float = 2.0, steps: int = 1000,
                 beta_start: float = 1e-4, beta_end: float = 0.02) -> None:
        for name, value in (("a", a), ("b", b)):
            if not value > 0:
                raise ValueError(f"Beta parameter {name} must be > 0, got {value}")
        self.a, self.b = float(a), float(b)
        self.times = ddpm_linear_times(steps, beta_start, beta_end)

    def step_index(self, u: np.ndarray) -> np.ndarray:
        """k = max(1, ceil(u * steps)) for normalized step indices u in [0, 1]."""
        return np.clip(np.ceil(u * len(self.times)), 1, len(self.times)).astype(np.int64)

    def sample(
        self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """n OU times, shape (n,), by the inverse CDF of the Beta law (a Generator fixes them)."""
        u = torch.rand(n, generator=generator, dtype=torch.float64).numpy()
        k = self.step_index(special.betaincinv(self.a, self.b, u))
        return torch.from_numpy(self.times[k - 1]).to(dtype)

    def median(self) -> float:
        """The median OU time: t_OU of the median step ceil(steps * median of Beta(a, b))."""
        u = special.betaincinv(self.a, self.b, 0.5)
        return float(self.times[self.step_index(np.array([u]))[0] - 1])

    def __repr__(self) -> str:
        return f"DDPMBetaTimeSampler(a={self.a}, b={self.b}, steps={len(self.times)})"


class LogUniformTimeSampler:
    """Times log-uniform on [t0, t1]: equal mass per decade of small t, where the empirical
    and the true score differ most (Thm 4.3's window, Lemma C.1's sigma_t^-4)."""

    def __init__(self, t0: float, t1: float) -> None:
        check_time(t0, name="t0")
        if not t1 > t0:
            raise ValueError(f"t1 must exceed t0={t0}, got {t1}")
        self.t0, self.t1 = float(t0), float(t1)

    def sample(
        self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """n times in [t0, t1], shape (n,)."""
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        lo, hi = math.log(self.t0), math.log(self.t1)
        return torch.exp(lo + (hi - lo) * u).to(dtype)

    def __repr__(self) -> str:
        return f"LogUniformTimeSampler(t0={self.t0}, t1={self.t1})"


def derive_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed for the stream named by (seed, *keys), independent across keys.

    Lets a resumable experiment redo one unit of work (one dataset, one time) with the
    same numbers without replaying the ones before it.
    """
    state = np.random.SeedSequence(int(seed), spawn_key=tuple(int(k) for k in keys))
    return int(state.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def generator(seed: int, *keys: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A torch.Generator seeded with derive_seed(seed, *keys)."""
    return torch.Generator(device=device).manual_seed(derive_seed(seed, *keys))
