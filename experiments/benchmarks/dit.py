"""Benchmark: how fast the DiT of the pruning study trains and samples, and how much of the
hardware it uses.

``experiments.dit_pruning`` trains a DiT by denoising score matching (eq. 3.1, the shared
loop ``experiments.common.training.train``) and samples it with the reverse SDE
(``experiments.common.sampling``). Its cost is training steps plus forward passes, so this
script measures exactly those two, on random data of the model's input shape:

1. *Training throughput* (images/s): full DSM steps as ``train`` runs them: ``dsm_loss``
   on a batch (times log-uniform on [t0, T], as dit_pruning trains), backward, gradient
   clipping at 1.0 and an AdamW step. The batch, its times and its noise are drawn once on
   the device beforehand: drawing data is not model work.
2. *Sampling throughput*: steps of the reverse-SDE sampler (``reverse_sde``, exponential
   integrator) in ``no_grad``; one step is one forward pass of the score on the batch plus
   a few elementwise updates. Reported as forward passes per second, their product with
   the batch (image-evaluations/s), and the implied images/s of a full sampler of
   ``sampler_steps`` steps (image-evaluations/s / sampler_steps).
3. *Model FLOPs*, counted by ``torch.utils.flop_counter.FlopCounterMode`` over one
   training step (forward + backward) and over one forward pass: the usual "model FLOPs"
   of matmuls, convolutions and attention (2 per multiply-add; elementwise work and the
   optimizer are not counted). torch's counter knows the CUDA attention kernels but not
   CPU's fused one (``_scaled_dot_product_flash_attention_for_cpu``), which this script
   adds with torch's own attention formulas, so that CPU and GPU counts agree. The counted
   forward FLOPs are checked against the closed form of ``analytic_forward_flops``.
   Dividing by the measured step time gives the achieved FLOP/s.
4. *Utilization* (CUDA only): the bf16 matmul peak is measured, not taken from a data
   sheet: the median rate of ``peak_size``^3 bf16 matmuls (default 8192) after a warm-up.
   The ratio achieved / peak of training is the model FLOP utilization (MFU); the issue's
   target is MFU >= 40% for DiT-S/2 at batch 256 in bf16. On CPU the peak and MFU are
   reported as "not measured (no GPU)".

Models: the name of a dit_pruning profile ("quick": the 2-block, 8-head DiT on 8x8x1
digits-shaped inputs; "smoke", "gpu", "paper" likewise, on their dataset's shape) or an
official size from ``experiments.common.dit.DIT_MODELS`` ("DiT-S/2", ...) on 32x32x4
inputs, the latent space of the DiT paper (``--channels 3`` for 32x32 RGB pixels, as the
paper profile trains). Precision: "auto" is bf16 autocast on CUDA (as ``train`` does) and
float32 on CPU.

Variants: ``attention`` forces one kernel of ``scaled_dot_product_attention`` through
``torch.nn.attention.sdpa_kernel`` ("flash", "efficient", "cudnn", "math"; "auto" lets
torch choose, as training does; "efficient" and "cudnn" exist on CUDA only), and
``compile`` wraps the model in ``torch.compile`` with that backend ("inductor", the real
one; "eager", dynamo's tracing without code generation, for tests). Compilation happens in
the first call of each workload, timed apart as ``first_call_s`` and never in the timed
calls; FLOPs are counted on the same model run eagerly (FlopCounterMode does not see inside
compiled graphs, and compiling changes no FLOP of the model).

Times are the median of ``--repeats`` timed calls after one untimed warm-up each, training
and sampling taking turns (``experiments.benchmarks.common.time_methods``); on CUDA every
call ends with a synchronize. The CPU share printed next to the CPU times (process CPU time /
(wall time x threads)) shows whether they got their cores (near 1) or shared them (well
below 1: rerun on a quiet machine).

Run ``python -m experiments.benchmarks.dit`` (the quick config, batch 128, a few seconds
on CPU), ``--model DiT-S/2 --batch 256`` on a GPU for the utilization target, or
``--quick`` (a tiny setting for tests). Every number goes to figures/bench_dit.json, or to
``--json PATH``; ``--quick`` writes no file unless ``--json`` is given, ``--no-json`` none.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, replace

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

from experiments.benchmarks.common import (
    FIGURES_DIR,
    add_output_args,
    environment,
    finish_main,
    load_average,
    matmul_peak,
    n_cores,
    time_methods,
)
from experiments.common.data import IMAGE_SHAPES
from experiments.common.dit import DIT_MODELS, DiT, ScoreDiT
from experiments.common.sampling import reverse_sde, sampling_times
from experiments.common.training import TrainConfig, dsm_loss, sample_times
from experiments.dit_pruning import PROFILES, build

__all__ = [
    "BenchConfig",
    "QUICK",
    "MODELS",
    "PRECISIONS",
    "ATTENTION",
    "COMPILE",
    "build_model",
    "Workload",
    "make_workload",
    "count_flops",
    "analytic_forward_flops",
    "matmul_peak",
    "run_benchmark",
    "format_report",
    "main",
]

# The target: training MFU >= 40% for DiT-S/2 at batch 256 (bf16, GPU).
TARGET_MFU = 0.40
TARGET_MODEL, TARGET_BATCH = "DiT-S/2", 256
# The shape (C, H, W) of the DiT paper's latent space (256x256 images through the SD VAE,
# 8x down-sampled, 4 channels); a dit_pruning profile's is its dataset's (data.IMAGE_SHAPES)
# at the profile's image_size.
LATENT_SHAPE = (4, 32, 32)
MODELS = tuple(PROFILES) + tuple(DIT_MODELS)
PRECISIONS = ("auto", "float32", "bf16")
# Names of the attention kernels (torch.nn.attention.SDPBackend members); "auto": torch picks.
ATTENTION = {"auto": None, "flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION",
             "cudnn": "CUDNN_ATTENTION", "math": "MATH"}
CUDA_ONLY_ATTENTION = ("efficient", "cudnn")
COMPILE = ("off", "inductor", "eager")
# An official size is trained as the paper profile trains DiT-S/2 (batch, lr, times).
PRESET_PROFILE = "paper"
QUICK = {"batch": 16, "steps": 2, "sample_passes": 2, "peak_size": 1024}
# This module (for the command line) and where its numbers go by default.
MODULE = "experiments.benchmarks.dit"
DEFAULT_JSON = FIGURES_DIR / "bench_dit.json"


@dataclass(frozen=True)
class BenchConfig:
    """What is timed: model, input shape, batch, steps per timed call, precision, device.

    None fields take the model's defaults: for a dit_pruning profile its batch, its
    dataset's image size and channels and its sampler steps; for an official size batch
    256, 32x32x4 inputs and the paper profile's sampler steps. The stored config holds the
    resolved values.
    """

    model: str = "quick"
    batch: int | None = None
    image_size: int | None = None
    channels: int | None = None
    steps: int = 10  # training steps per timed call
    sample_passes: int = 10  # reverse-SDE steps (forward passes) per timed call
    sampler_steps: int | None = None  # steps of the full sampler, for its implied images/s
    repeats: int = 3
    precision: str = "auto"  # auto: bf16 autocast on CUDA, float32 on CPU
    attention: str = "auto"  # the SDPA kernel forced (ATTENTION); auto: torch picks
    compile: str = "off"  # torch.compile backend (COMPILE); off: eager
    device: str = "auto"
    threads: int = 0  # 0: all cores this process may run on
    peak_size: int = 8192  # n of the n x n x n bf16 matmul timed for the peak (CUDA)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(
                f"model must be a dit_pruning profile {tuple(PROFILES)} or one of "
                f"{sorted(DIT_MODELS)}, got {self.model!r}"
            )
        profile = self.profile
        if self.model in PROFILES:
            c, s, _ = IMAGE_SHAPES[profile["dataset"]]
            s = profile.get("image_size") or s
        else:
            c, s, _ = LATENT_SHAPE
        defaults = {
            "batch": profile["batch"],
            "image_size": s,
            "channels": c,
            "sampler_steps": profile["sampler_steps"],
        }
        for name, value in defaults.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        for name in ("batch", "image_size", "channels", "steps", "sample_passes",
                     "sampler_steps", "repeats", "peak_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.sample_passes > self.sampler_steps:
            raise ValueError(
                f"sample_passes must be <= sampler_steps={self.sampler_steps}, "
                f"got {self.sample_passes}"
            )
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size must be divisible by the patch size {self.patch_size} of "
                f"{self.model}, got {self.image_size}"
            )
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.attention not in ATTENTION:
            raise ValueError(f"attention must be one of {tuple(ATTENTION)}, got "
                             f"{self.attention!r}")
        if self.compile not in COMPILE:
            raise ValueError(f"compile must be one of {COMPILE}, got {self.compile!r}")
        threads = self.threads
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
            raise ValueError(f"threads must be an integer >= 0 (0: all cores), got {threads!r}")
        if self.device != "auto":
            try:
                torch.device(self.device)
            except (RuntimeError, TypeError) as err:
                raise ValueError(
                    f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}"
                ) from err

    @property
    def profile(self) -> dict:
        """The dit_pruning profile that fixes the model and its training recipe."""
        return PROFILES[self.model if self.model in PROFILES else PRESET_PROFILE]

    @property
    def patch_size(self) -> int:
        if self.model in PROFILES:
            return self.profile["patch_size"]
        return int(self.model.rsplit("/", 1)[1])

    def resolve_device(self) -> torch.device:
        """The device to run on ('auto': CUDA when present); ValueError if unavailable."""
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        dev = torch.device(self.device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device={self.device!r} was asked for, but CUDA is not available")
        return dev

    def attention_context(self, device: torch.device) -> AbstractContextManager:
        """A new context (one per ``with``) that forces the chosen attention kernel (a no-op
        for "auto"); ValueError for a CUDA-only kernel on another device."""
        if self.attention in CUDA_ONLY_ATTENTION and device.type != "cuda":
            raise ValueError(f"attention={self.attention!r} has a CUDA kernel only, but the "
                             f"device is {device.type}; use one of 'auto', 'flash', 'math'")
        backend = ATTENTION[self.attention]
        return nullcontext() if backend is None else sdpa_kernel(getattr(SDPBackend, backend))

    def autocast_dtype(self, device: torch.device) -> torch.dtype | None:
        """bf16 (autocast) or None (float32) for this precision on ``device``."""
        if self.precision == "bf16" or (self.precision == "auto" and device.type == "cuda"):
            return torch.bfloat16
        return None


# -- the model and the two workloads ------------------------------------------------------


def build_model(cfg: BenchConfig) -> ScoreDiT:
    """The ScoreDiT of cfg.model, initialized from cfg.seed (float32, on CPU).

    A dit_pruning profile: ``dit_pruning.build`` with its hyperparameters. An official size:
    ``DIT_MODELS[name]`` unconditional, without learned sigma, with the paper profile's
    parametrization.
    """
    if cfg.model in PROFILES:
        return build(cfg.profile, cfg.channels, cfg.image_size, cfg.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return ScoreDiT.from_preset(
            cfg.model, input_size=cfg.image_size, in_channels=cfg.channels,
            parametrization=cfg.profile["parametrization"],
        )


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Workload:
    """The model on its device and the callables that the benchmark times and counts.

    train_step(): one DSM step (forward, backward, clipping, AdamW), returns the loss.
    forward(): one score evaluation of the batch in no_grad, returns (B, C, S, S).
    Both run the model compiled when cfg.compile says so, under cfg's attention kernel.
    train(): cfg.steps train steps; sample(): cfg.sample_passes reverse-SDE steps; both end
    with a CUDA synchronize and return their last output, so the caller can check it.
    """

    model: ScoreDiT
    device: torch.device
    autocast_dtype: torch.dtype | None
    train_step: Callable[[], torch.Tensor]
    forward: Callable[[], torch.Tensor]
    train: Callable[[], torch.Tensor]
    sample: Callable[[], torch.Tensor]
    parameters: int


def make_workload(cfg: BenchConfig) -> Workload:
    """Model, optimizer, a fixed random batch and the sampler's start on cfg's device.

    The training step is the one ``experiments.common.training.train`` runs for the
    profile (TrainConfig from the profile: lr, t0, T, log-uniform times, grad clip 1.0),
    with a batch drawn once: x0 ~ N(0, I) of shape (B, C, S, S), its times and noise.
    """
    dev = cfg.resolve_device()
    amp = cfg.autocast_dtype(dev)
    p = cfg.profile
    tc = TrainConfig(steps=1, batch=cfg.batch, lr=p["lr"], t0=p["t0"], T=p["T"],
                     time_sampling="log_uniform", grad_clip=1.0, seed=cfg.seed)
    cfg.attention_context(dev)  # a kernel this device lacks fails before anything is built
    model = build_model(cfg).to(dev)
    # the compiled module shares the model's parameters: the optimizer and the counts see one
    run = model if cfg.compile == "off" else torch.compile(model, backend=cfg.compile)
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    shape = (cfg.batch, cfg.channels, cfg.image_size, cfg.image_size)
    x0 = torch.randn(shape, generator=gen).to(dev)  # (B, C, S, S)
    t = sample_times(tc, cfg.batch, gen).float().to(dev)  # (B,)
    eps = torch.randn(shape, generator=gen).to(dev)  # (B, C, S, S)
    start = torch.randn(cfg.batch, math.prod(shape[1:]), generator=gen).to(dev)  # (B, d)
    times = sampling_times(p["T"], p["t0"], cfg.sampler_steps)[: cfg.sample_passes + 1]
    sample_gen = torch.Generator(device=dev).manual_seed(cfg.seed + 1)

    def autocast() -> torch.autocast:
        return torch.autocast(dev.type, dtype=amp or torch.bfloat16, enabled=amp is not None)

    def train_step() -> torch.Tensor:
        model.train()
        with autocast(), cfg.attention_context(dev):
            loss = dsm_loss(run, x0, t, eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        opt.step()
        return loss.detach()

    def score(z: torch.Tensor, tt: torch.Tensor) -> torch.Tensor:  # flat (B, d) <-> images
        with autocast(), cfg.attention_context(dev):
            return run(z.view(shape), tt).reshape(z.shape[0], -1).float()

    def forward() -> torch.Tensor:
        model.eval()
        with torch.no_grad():
            return score(start, t).view(shape)

    def train() -> torch.Tensor:
        for _ in range(cfg.steps):
            loss = train_step()
        _synchronize(dev)
        return loss

    def sample() -> torch.Tensor:
        model.eval()
        with torch.no_grad():
            x = reverse_sde(score, start, times, sample_gen)
        _synchronize(dev)
        return x

    n_params = sum(q.numel() for q in model.parameters())
    return Workload(model, dev, amp, train_step, forward, train, sample, n_params)


# -- FLOPs ----------------------------------------------------------------------------------


def _cpu_attention_flops() -> dict:
    """FlopCounterMode entries for CPU's fused attention, which torch does not count.

    Forward and backward of ``aten._scaled_dot_product_flash_attention_for_cpu`` get
    torch's own formulas for the CUDA kernels (``sdpa_flop_count``: 4 B H N^2 d_h
    forward, ``sdpa_backward_flop_count`` backward), so CPU and GPU counts agree.
    """
    aten = torch.ops.aten
    mapping = {}
    fwd = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    bwd = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    if fwd is not None and fwd not in flop_counter.flop_registry:

        def fwd_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
            return flop_counter.sdpa_flop_count(query, key, value)

        mapping[fwd] = fwd_flops
    if bwd is not None and bwd not in flop_counter.flop_registry:

        def bwd_flops(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
            return flop_counter.sdpa_backward_flop_count(grad_out, query, key, value)

        mapping[bwd] = bwd_flops
    return mapping


def count_flops(fn: Callable[[], object]) -> tuple[int, dict[str, int]]:
    """Model FLOPs of one call of fn: (total, per aten op), by FlopCounterMode.

    Counts matmuls, convolutions and attention (2 FLOPs per multiply-add), including CPU's
    fused attention (``_cpu_attention_flops``).
    """
    with FlopCounterMode(display=False, custom_mapping=_cpu_attention_flops()) as counter:
        fn()
    per_op = {str(op): int(n) for op, n in counter.get_flop_counts()["Global"].items()}
    return int(counter.get_total_flops()), per_op


def analytic_forward_flops(dit: DiT, batch: int) -> int:
    """Matmul FLOPs of one forward pass of an unpruned DiT on ``batch`` images, closed form.

    With D = hidden_size, M = the MLP width, N tokens of p x p patches, C in and C_out
    out channels, F = 256 time frequencies, L = depth (2 FLOPs per multiply-add):
    per image 2 (F D + D^2) (time embedder) + L 2 D 6D (adaLN) + 2 D 2D (final adaLN);
    per token 2 p^2 C D (patch embedding) + L 2 (3D^2 + D^2 + 2 D M) (qkv, proj, MLP)
    + 2 D p^2 C_out (final linear); attention L 4 N^2 D per image (scores and values).
    """
    D, L = dit.hidden_size, dit.depth
    p, N = dit.patch_size, dit.x_embedder.num_patches
    M = dit.blocks[0].mlp.hidden_features
    F = dit.t_embedder.frequency_embedding_size
    per_image = 2 * (F * D + D * D) + L * 2 * D * 6 * D + 2 * D * 2 * D + L * 4 * N * N * D
    per_token = (2 * p * p * dit.in_channels * D + L * 2 * (4 * D * D + 2 * D * M)
                 + 2 * D * p * p * dit.out_channels)
    return batch * (per_image + N * per_token)


# -- the bf16 matmul peak -------------------------------------------------------------------


# -- the benchmark ------------------------------------------------------------------------


def _check_finite(x: torch.Tensor, what: str) -> None:
    if not torch.isfinite(x).all():
        raise RuntimeError(f"{what} is not finite: the benchmark timed a broken computation")


def run_benchmark(cfg: BenchConfig) -> dict:
    """Time training and sampling, count FLOPs, measure the peak on CUDA; every number.

    Returns a JSON-ready dict with keys config, environment, model, times_s (lists per
    measure), median_s, cpu_share, flops, throughput, peak and targets.
    """
    threads_before = torch.get_num_threads()
    torch.set_num_threads(cfg.threads or n_cores())
    try:
        return _run(cfg)
    finally:
        torch.set_num_threads(threads_before)


def _run(cfg: BenchConfig) -> dict:
    load_before = load_average()
    w = make_workload(cfg)
    dev, dit = w.device, w.model.dit

    # The first call of each workload, timed apart: compilation (when asked for) happens here.
    first_call_s = {}
    for name, call in (("train_step", w.train_step), ("forward", w.forward)):
        start = time.perf_counter()
        call()
        _synchronize(dev)
        first_call_s[name] = time.perf_counter() - start

    # FLOPs (one extra training step; the model's speed does not depend on its weights),
    # counted on the eager model: the counter does not see inside compiled graphs.
    counted = w if cfg.compile == "off" else make_workload(replace(cfg, compile="off"))
    fwd_flops, fwd_ops = count_flops(counted.forward)
    step_flops, step_ops = count_flops(counted.train_step)
    analytic = analytic_forward_flops(dit, cfg.batch)

    times, share = time_methods({"train": w.train, "sample": w.sample}, cfg.repeats)
    _check_finite(w.train(), "the training loss")
    _check_finite(w.sample(), "the sampler's output")
    median = {k: statistics.median(v) for k, v in times.items()}

    step_s = median["train"] / cfg.steps
    pass_s = median["sample"] / cfg.sample_passes
    throughput = {
        "train_steps_per_s": 1 / step_s,
        "train_images_per_s": cfg.batch / step_s,
        "sample_forward_passes_per_s": 1 / pass_s,
        "sample_image_evaluations_per_s": cfg.batch / pass_s,
        "sampler_images_per_s": cfg.batch / (pass_s * cfg.sampler_steps),
        "train_flop_per_s": step_flops / step_s,
        "sample_flop_per_s": fwd_flops / pass_s,
    }

    if dev.type == "cuda":
        peak_value = matmul_peak(cfg.peak_size, dev, repeats=cfg.repeats)
        peak = {"bf16_matmul_flop_per_s": peak_value, "size": cfg.peak_size,
                "note": f"median of {cfg.repeats} x 10 bf16 {cfg.peak_size}^3 matmuls"}
        mfu = {"train": throughput["train_flop_per_s"] / peak_value,
               "sample": throughput["sample_flop_per_s"] / peak_value}
    else:
        peak = {"bf16_matmul_flop_per_s": None, "size": None, "note": "not measured (no GPU)"}
        mfu = {"train": None, "sample": None}
    applies = (cfg.model == TARGET_MODEL and cfg.batch == TARGET_BATCH
               and w.autocast_dtype == torch.bfloat16)
    target = {
        "value": mfu["train"],
        "bound": TARGET_MFU,
        "applies": applies,
        "met": mfu["train"] is not None and mfu["train"] >= TARGET_MFU,
        "note": (peak["note"] if mfu["train"] is None else
                 "measured" if applies else
                 f"measured, but the target is for {TARGET_MODEL} at batch {TARGET_BATCH} "
                 "in bf16"),
    }
    env = environment(
        device=str(dev),
        device_name=torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        autocast=None if w.autocast_dtype is None else str(w.autocast_dtype),
        load_average_1min_before=load_before,
    )
    return {
        "config": asdict(cfg),
        "environment": env,
        "model": {
            "depth": dit.depth, "hidden_size": dit.hidden_size, "num_heads": dit.num_heads,
            "patch_size": dit.patch_size, "tokens": dit.x_embedder.num_patches,
            "parameters": w.parameters, "parametrization": w.model.parametrization,
        },
        "first_call_s": first_call_s,
        "times_s": times,
        "median_s": median,
        "cpu_share": share,
        "flops": {
            "train_step": step_flops,
            "forward": fwd_flops,
            "forward_analytic": analytic,
            "forward_counted_over_analytic": fwd_flops / analytic,
            "train_step_per_image": step_flops / cfg.batch,
            "train_step_by_op": step_ops,
            "forward_by_op": fwd_ops,
        },
        "throughput": throughput,
        "peak": peak,
        "mfu": mfu,
        "targets": {
            f"train MFU >= {TARGET_MFU:.0%} ({TARGET_MODEL}, batch {TARGET_BATCH}, bf16, GPU)":
                target,
        },
    }


def _si(x: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {unit}"
    return f"{x:.3g} "


def format_report(res: dict) -> str:
    """The results of ``run_benchmark`` as a small plain-text table."""
    cfg, env, m, f = res["config"], res["environment"], res["model"], res["flops"]
    tp, med, ts = res["throughput"], res["median_s"], res["times_s"]
    first = res["first_call_s"]
    cpu = env["device"] == "cpu"
    load = env["load_average_1min_before"]
    lines = [
        f"model={cfg['model']} (DiT depth {m['depth']}, hidden {m['hidden_size']}, "
        f"{m['num_heads']} heads, patch {m['patch_size']}, {m['tokens']} tokens, "
        f"{m['parameters'] / 1e6:.3g} M parameters) on {cfg['channels']}x{cfg['image_size']}x"
        f"{cfg['image_size']} inputs, batch {cfg['batch']}",
        f"device={env['device_name']} "
        f"precision={'bf16 autocast' if env['autocast'] else 'float32'} "
        f"attention={cfg['attention']} compile={cfg['compile']} "
        f"threads={env['threads']} torch={env['torch']} "
        f"load(1 min, before)={'-' if load is None else f'{load:.2f}'}",
        f"median of {cfg['repeats']} timed calls (round robin, after one warm-up each); "
        f"first calls (compilation included): train step {first['train_step']:.2f} s, "
        f"forward {first['forward']:.2f} s",
        "",
        f"{'measure':<44} {'median s':>9} {'min-max s':>15} {'images/s':>10} {'GFLOP/s':>8}"
        + (f" {'CPU share':>9}" if cpu else ""),
    ]
    rows = {
        "train": (f"train: {cfg['steps']} DSM steps (fwd+bwd+AdamW)",
                  tp["train_images_per_s"], tp["train_flop_per_s"]),
        "sample": (f"sample: {cfg['sample_passes']} reverse-SDE steps (no_grad)",
                   tp["sample_image_evaluations_per_s"], tp["sample_flop_per_s"]),
    }
    for key, (name, ips, flops) in rows.items():
        line = (f"{name:<44} {med[key]:>9.4f} {min(ts[key]):>7.4f}-{max(ts[key]):<7.4f} "
                f"{ips:>10.1f} {flops / 1e9:>8.2f}")
        if cpu:
            line += f" {res['cpu_share'][key]:>9.2f}"
        lines.append(line)
    if cpu and min(res["cpu_share"].values()) < 0.75:
        lines.append("WARNING: CPU share < 0.75: other work shared the cores, so these times "
                     "are not reliable; rerun on a quiet machine.")
    lines += [
        "",
        f"training:  {tp['train_steps_per_s']:.2f} steps/s = {tp['train_images_per_s']:.1f} "
        f"images/s; {_si(tp['train_flop_per_s'])}FLOP/s achieved",
        f"sampling:  {tp['sample_forward_passes_per_s']:.2f} forward passes/s x batch "
        f"{cfg['batch']} = {tp['sample_image_evaluations_per_s']:.1f} image-evaluations/s; "
        f"a full sampler of {cfg['sampler_steps']} steps: {tp['sampler_images_per_s']:.2f} "
        "images/s",
        f"FLOPs (FlopCounterMode: matmul, conv, attention): train step {_si(f['train_step'])}"
        f"FLOP ({_si(f['train_step_per_image'])}FLOP/image), forward {_si(f['forward'])}FLOP "
        f"(counted / closed form = {f['forward_counted_over_analytic']:.4f})",
    ]
    peak = res["peak"]
    if peak["bf16_matmul_flop_per_s"] is None:
        lines.append(f"bf16 matmul peak: {peak['note']}; MFU: {peak['note']}")
    else:
        lines.append(
            f"bf16 matmul peak: {_si(peak['bf16_matmul_flop_per_s'])}FLOP/s ({peak['note']}); "
            f"MFU train {res['mfu']['train']:.1%}, sample {res['mfu']['sample']:.1%}"
        )
    lines += ["", "targets:"]
    for name, tgt in res["targets"].items():
        if tgt["value"] is None:
            verdict = tgt["note"]
        else:
            verdict = f"{tgt['value']:.1%}  {'met' if tgt['met'] else 'NOT met'}"
            if not tgt["applies"]:
                verdict += f" ({tgt['note']})"
        lines.append(f"  {name}: {verdict}")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"python -m {MODULE}",
        description="Benchmark DiT training and sampling throughput (images/s), model FLOPs "
        "and, on CUDA, utilization of the measured bf16 matmul peak.",
    )
    d = BenchConfig()
    p.add_argument("--model", default=d.model,
                   help=f"a dit_pruning profile {tuple(PROFILES)} or an official size "
                   "(DiT-S/2, ...); default quick")
    p.add_argument("--batch", type=int, default=None, help="images per step (default: the "
                   "profile's batch; 256 for an official size)")
    p.add_argument("--image-size", "--image_size", dest="image_size", type=int, default=None)
    p.add_argument("--channels", type=int, default=None)
    p.add_argument("--steps", type=int, default=None,
                   help=f"training steps per timed call (default {d.steps})")
    p.add_argument("--sample-passes", "--sample_passes", dest="sample_passes", type=int,
                   default=None, help=f"sampler steps per timed call (default {d.sample_passes})")
    p.add_argument("--sampler-steps", "--sampler_steps", dest="sampler_steps", type=int,
                   default=None, help="steps of a full sampler (default: the profile's)")
    p.add_argument("--repeats", type=int, default=d.repeats, help="timed calls")
    p.add_argument("--precision", choices=PRECISIONS, default=d.precision)
    p.add_argument("--attention", choices=tuple(ATTENTION), default=d.attention,
                   help="force this scaled_dot_product_attention kernel (auto: torch picks)")
    p.add_argument("--compile", choices=COMPILE, default=d.compile,
                   help="torch.compile backend (off: eager; eager: tracing only, for tests)")
    p.add_argument("--device", default=d.device)
    p.add_argument("--threads", type=int, default=d.threads, help="0: all cores")
    p.add_argument("--peak-size", "--peak_size", dest="peak_size", type=int, default=None,
                   help=f"n of the bf16 n^3 matmul for the peak (default {d.peak_size})")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--quick", action="store_true", help=f"tiny setting for tests {QUICK}")
    add_output_args(p, DEFAULT_JSON)
    return p


def main(argv: Sequence[str] | None = None) -> dict:
    """Command-line entry point; prints the report, writes the JSON, returns the result."""
    parser = _parser()
    args = parser.parse_args(argv)
    d = BenchConfig()
    size = QUICK if args.quick else {"batch": None, "steps": d.steps,
                                     "sample_passes": d.sample_passes,
                                     "peak_size": d.peak_size}
    chosen = {k: getattr(args, k) for k in size}
    try:
        cfg = BenchConfig(
            model=args.model,
            image_size=args.image_size,
            channels=args.channels,
            sampler_steps=args.sampler_steps,
            repeats=args.repeats,
            precision=args.precision,
            attention=args.attention,
            compile=args.compile,
            device=args.device,
            threads=args.threads,
            seed=args.seed,
            **{k: size[k] if v is None else v for k, v in chosen.items()},
        )
        cfg.attention_context(cfg.resolve_device())  # a kernel or device this machine lacks
    except ValueError as err:
        parser.error(str(err))
    return finish_main(cfg, args, run_benchmark, format_report, DEFAULT_JSON)


if __name__ == "__main__":
    main()
