"""One denoising-score-matching training loop for any score model (eq. 3.1).

    L(s) = E_t E_{x_0 ~ data} E_eps  w(t) || s(alpha_t x_0 + sigma_t eps, t) + eps / sigma_t ||^2

with t drawn on [t0, T] (uniform, log-uniform, or the Beta time law of the paper's
pruning importance), and the weighting w(t) = sigma_t^2, which makes every time
contribute O(1) (the usual noise-prediction weighting). The model is any module with
forward(x (batch, ...), t (batch,)) -> score of x's shape: a ScoreMLP, a DiT.

The loop is resumable: a checkpoint (model, EMA, optimizer and the random generator's
state) is written atomically every ``checkpoint_every`` steps and at the end, with a SHA-256
digest of its content that is verified on load (a damaged file is refused, naming it), and
a run started with an existing checkpoint of the same config continues where it stopped,
with the same numbers as an uninterrupted run (CPU). A checkpoint of another config is
not resumed: training starts afresh and overwrites it. A non-finite loss stops training
with an error before it reaches a checkpoint.

Distributed data parallel: started under ``torchrun --nproc_per_node=N`` (NCCL on GPU,
gloo on CPU; ``setup_distributed`` joins the process group), every rank draws the same
global batch from the shared generator and trains on its 1/N slice; DDP averages the
gradients, so the run equals one process on the same global batch (up to the order of
floating-point sums) and the ranks hold identical weights. Only rank 0 writes checkpoints.
On CUDA the forward pass runs under bf16 autocast.
"""

from __future__ import annotations

import atexit
import copy
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from experiments.common.runs import load_checkpoint, resolve_device, save_checkpoint
from theory._checks import check_int, check_real
from theory.process import BetaTimeSampler, LogUniformTimeSampler, alpha, sigma

__all__ = [
    "TrainConfig",
    "learning_rate",
    "sample_times",
    "dsm_loss",
    "jacobian_penalty",
    "train_snapshots",
    "setup_distributed",
    "checkpoint_path",
    "train",
]

TIME_SAMPLING = ("uniform", "log_uniform", "beta")
LR_SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that fixes a training run (and so its checkpoint)."""

    steps: int = 4000
    batch: int = 256
    lr: float = 1e-3
    lr_schedule: str = "constant"  # or "cosine": lr * (1 + cos(pi * step / steps)) / 2
    weight_decay: float = 0.0
    t0: float = 1e-3
    T: float = 8.0
    time_sampling: str = "log_uniform"
    beta_a: float = 0.8
    beta_b: float = 2.0
    ema: float | None = None  # EMA decay, e.g. 0.999; None keeps no EMA
    grad_clip: float | None = 1.0
    checkpoint_every: int = 500
    seed: int = 0
    # Small-t Lipschitz penalty (issue "mitigation"; Lemma C.1): adds jacobian_penalty *
    # E sigma_t^4 ||ds/dx||_F^2 at t log-uniform on [t0, jacobian_t_max], see jacobian_penalty.
    jacobian_penalty: float = 0.0
    jacobian_t_max: float = 0.1

    def __post_init__(self) -> None:
        for name in ("steps", "batch", "checkpoint_every"):
            check_int(getattr(self, name), name, 1)
        check_int(self.seed, "seed", 0)
        for name in ("lr", "t0", "T", "beta_a", "beta_b"):
            check_real(getattr(self, name), name, "> 0", lambda v: v > 0)
        check_real(self.weight_decay, "weight_decay", ">= 0", lambda v: v >= 0)
        check_real(self.jacobian_penalty, "jacobian_penalty", ">= 0", lambda v: v >= 0)
        if self.jacobian_penalty > 0:
            check_real(self.jacobian_t_max, "jacobian_t_max", f"> t0 = {self.t0}",
                       lambda v: v > self.t0)
        if not self.t0 < self.T:
            raise ValueError(f"need 0 < t0 < T, got t0={self.t0}, T={self.T}")
        if self.time_sampling not in TIME_SAMPLING:
            raise ValueError(
                f"time_sampling must be one of {TIME_SAMPLING}, got {self.time_sampling!r}"
            )
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(
                f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}"
            )
        if self.ema is not None:
            check_real(self.ema, "ema", "in (0, 1) or None", lambda v: 0 < v < 1)
        if self.grad_clip is not None:  # a clip <= 0 would flip or zero every step
            check_real(self.grad_clip, "grad_clip", "> 0 or None", lambda v: v > 0)


def learning_rate(config: TrainConfig, step: int) -> float:
    """The learning rate of step ``step`` (0-based) under config.lr_schedule."""
    if config.lr_schedule == "cosine":
        return config.lr * 0.5 * (1 + math.cos(math.pi * step / config.steps))
    return config.lr


def sample_times(config: TrainConfig, n: int, generator: torch.Generator) -> torch.Tensor:
    """n training times on [t0, T] by config.time_sampling, float64, shape (n,)."""
    if config.time_sampling == "beta":
        sampler = BetaTimeSampler(config.beta_a, config.beta_b, config.t0, config.T)
        return sampler.sample(n, generator, torch.float64)
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    if config.time_sampling == "uniform":
        return config.t0 + (config.T - config.t0) * u
    lo, hi = math.log(config.t0), math.log(config.T)
    return torch.exp(lo + (hi - lo) * u)


def dsm_loss(
    model: nn.Module, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor
) -> torch.Tensor:
    """Mean over the batch of sigma_t^2 ||s(x_t, t) + eps/sigma_t||^2 (eq. 3.1, weighted).

    x0, eps: (batch, ...); t: (batch,). Equals the mean of ||sigma_t s + eps||^2.
    """
    shape = (-1,) + (1,) * (x0.ndim - 1)
    a, s = alpha(t).view(shape), sigma(t).view(shape)
    residual = s * model(a * x0 + s * eps, t) + eps
    return residual.square().flatten(1).sum(1).mean()


def jacobian_penalty(
    model: nn.Module, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, v: torch.Tensor
) -> torch.Tensor:
    """Hutchinson estimate of E sigma_t^4 ||d s(x_t, t)/d x_t||_F^2 at x_t = alpha_t x0 +
    sigma_t eps (x_t ~ P_hat_t), one probe v per row: E_v ||J^T v||^2 = ||J||_F^2 for v with
    E v v^T = I (Rademacher or Gaussian). x0, eps, v: (batch, ...); t: (batch,).

    Why sigma_t^4: sigma_t^2 s = alpha_t D - x for the posterior mean D, so the quantity is
    ||alpha_t dD/dx - I||_F^2: about d for a denoiser that snaps to training points (the
    empirical score, whose Lipschitz constant grows like sigma_t^-4, Lemma C.1) and about
    d sigma_t^4 for the true score of data with O(1) covariance (dD/dx ~ I / alpha_t).
    """
    shape = (-1,) + (1,) * (x0.ndim - 1)
    a, s = alpha(t).view(shape), sigma(t).view(shape)
    x = (a * x0 + s * eps).detach().requires_grad_(True)
    (jtv,) = torch.autograd.grad((model(x, t) * v).sum(), x, create_graph=True)
    return (s.square().square() * jtv.square()).flatten(1).sum(1).mean()


def checkpoint_path(folder: Path, model: nn.Module, data: torch.Tensor,
                    config: TrainConfig) -> Path:
    """folder/<key>.pt with key a hash of everything that fixes a training run: the config,
    the model's architecture and starting weights, and the data. Runs that would give the
    same numbers share a checkpoint (a finished one is reused, an interrupted one resumed)."""
    h = hashlib.sha256(json.dumps(asdict(config), sort_keys=True).encode())
    h.update(repr(model).encode())
    for tensor in (*model.state_dict().values(), data):
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.detach().cpu().double().contiguous().numpy().tobytes())
    return Path(folder) / f"{h.hexdigest()[:24]}.pt"


def setup_distributed() -> tuple[int, int, torch.device | None]:
    """Join the process group when started by torchrun (WORLD_SIZE > 1): NCCL on GPU, gloo
    on CPU. Returns (rank, world size, this rank's device or None when not distributed)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, None
    cuda = torch.cuda.is_available()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
        # Leave the group before the interpreter tears it down: a gloo group destroyed at
        # exit with its threads still joinable aborts the rank ("terminate called without an
        # active exception"), seen as a rare SIGABRT of the two-rank test on a loaded CI.
        atexit.register(_leave_process_group)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local)
    return dist.get_rank(), dist.get_world_size(), torch.device(f"cuda:{local}" if cuda else "cpu")


def _leave_process_group() -> None:
    """Destroy the default process group if this process is still in one (atexit)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _world() -> tuple[int, int]:
    """(rank, world size) of the current process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def train(
    model: nn.Module,
    data: torch.Tensor,
    config: TrainConfig,
    checkpoint: Path | None = None,
    device: str | torch.device = "auto",
    progress: bool = True,
    stop_after: int | None = None,
) -> tuple[nn.Module, nn.Module | None, list[float]]:
    """Train ``model`` on ``data`` (N, ...) by DSM; return (model, EMA model or None, losses).

    checkpoint: a file to resume from and write to (atomically; rank 0 writes). stop_after:
    end after that many total steps as if interrupted (for tests and time-sliced runs); the
    checkpoint is written first. Batches, times and noise come from one generator seeded
    by config.seed. In a process group (see ``setup_distributed``) each rank trains on its
    slice of the global batch of config.batch examples, which the world size must divide.
    """
    if data.ndim < 2 or data.shape[0] < 1 or not torch.isfinite(data).all():
        raise ValueError(f"data must be a finite tensor of shape (N, ...), got {tuple(data.shape)}")
    rank, world = _world()
    if config.batch % world:
        raise ValueError(f"batch={config.batch} must be divisible by the world size {world}")
    dev = resolve_device(device) if isinstance(device, str) else device
    model, data = model.to(dev), data.to(dev)
    ema = copy.deepcopy(model).requires_grad_(False) if config.ema is not None else None
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)  # on CPU: same draws on any device
    step, losses = 0, []
    if checkpoint is not None and Path(checkpoint).exists():
        state = load_checkpoint(Path(checkpoint), map_location=dev)  # refuses a damaged file
        if state["config"] == asdict(config):  # another config starts afresh (and overwrites)
            model.load_state_dict(state["model"])
            if ema is not None:
                ema.load_state_dict(state["ema"])
            opt.load_state_dict(state["opt"])
            generator.set_state(state["generator"])
            step, losses = state["step"], state["losses"]

    # DDP broadcasts rank 0's weights at construction; resumed ranks agree anyway.
    net = DistributedDataParallel(model) if world > 1 else model
    lo, hi = rank * config.batch // world, (rank + 1) * config.batch // world
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda")

    def save() -> None:
        if checkpoint is None or rank != 0:
            return
        save_checkpoint(Path(checkpoint), {
            "config": asdict(config), "model": model.state_dict(),
            "ema": None if ema is None else ema.state_dict(), "opt": opt.state_dict(),
            "generator": generator.get_state(), "step": step, "losses": losses})

    end = config.steps if stop_after is None else min(config.steps, stop_after)
    bar = tqdm(total=config.steps, initial=step, desc="DSM training",
               disable=not progress or rank != 0)
    while step < end:
        idx = torch.randint(data.shape[0], (config.batch,), generator=generator)
        t = sample_times(config, config.batch, generator).to(dev, data.dtype)
        eps = torch.randn((config.batch, *data.shape[1:]), generator=generator, dtype=data.dtype)
        with autocast:  # every rank draws the global batch and trains on its slice
            loss = dsm_loss(net, data[idx[lo:hi].to(dev)], t[lo:hi], eps[lo:hi].to(dev))
        if config.jacobian_penalty > 0:  # extra draws only then: other runs keep their stream
            small = LogUniformTimeSampler(config.t0, config.jacobian_t_max)
            t_small = small.sample(config.batch, generator, torch.float64).to(dev, data.dtype)
            probe = torch.randint(2, eps.shape, generator=generator).to(dev, data.dtype) * 2 - 1
            loss = loss + config.jacobian_penalty * jacobian_penalty(
                net, data[idx[lo:hi].to(dev)], t_small[lo:hi], eps[lo:hi].to(dev), probe[lo:hi])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for group in opt.param_groups:  # a function of the step: nothing extra to checkpoint
            group["lr"] = learning_rate(config, step)
        if config.grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        opt.step()
        if ema is not None:
            with torch.no_grad():
                for pe, p in zip(ema.parameters(), model.parameters(), strict=True):
                    pe.lerp_(p, 1 - config.ema)
        step += 1
        if world > 1:  # log the global batch's loss, the same number on every rank
            loss = loss.detach().clone()
            dist.all_reduce(loss)
            loss /= world
        losses.append(float(loss.detach()))
        if not math.isfinite(losses[-1]):  # stop before a NaN reaches the weights or a file
            raise FloatingPointError(
                f"DSM loss is {losses[-1]} at step {step} (lr={config.lr}, grad_clip="
                f"{config.grad_clip}): training diverged; lower lr or clip the gradients")
        if step % config.checkpoint_every == 0:
            save()
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.4g}")
    bar.close()
    save()
    return model, ema, losses


def train_snapshots(
    model: nn.Module, data: torch.Tensor, config: TrainConfig, stops: list[int],
    device: str | torch.device = "auto",
) -> Iterator[tuple[int, nn.Module]]:
    """Train ``model`` in place by ``train`` and yield (step, model) after each step count in
    ``stops`` (increasing, <= config.steps): one run, paused and resumed through a private
    checkpoint, so each snapshot equals the model an uninterrupted run has at that step
    (same optimizer state, same draws). Copy a yielded model to keep it. Bad stops raise
    ValueError at the call, before any training."""
    if list(stops) != sorted(set(stops)) or not stops or stops[0] < 1 or stops[-1] > config.steps:
        raise ValueError(f"stops must increase within [1, steps={config.steps}], got {stops}")
    return _snapshots(model, data, config, list(stops), device)


def _snapshots(model: nn.Module, data: torch.Tensor, config: TrainConfig, stops: list[int],
               device: str | torch.device) -> Iterator[tuple[int, nn.Module]]:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "run.pt"
        for stop in stops:
            model, _, _ = train(model, data, config, path, device, False, stop_after=stop)
            yield stop, model
