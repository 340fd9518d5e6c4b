"""Score networks on the paper's Gaussian mixtures: train, sample, measure (§6.1).

The recipe shared by Figs. 2-3 and the pruning bridge, so that every study trains,
samples and scores its networks the same way:

    points = training_set(mixture, n, seed)             # (n, d), the data set D
    net = train_score_net(points, spec, train_config)   # a ScoreMLP fitted by DSM
    report = measure(net, points, mixture, sampler)     # memorization ratio, log-likelihood

and ``reference`` runs the same measurement with the exact empirical score (samples
reproduce training points: memorization ratio ~1) and the exact true score (fresh
samples: the chance level of the 1/9 rule and the true log-likelihood).

Trained networks are cached as training checkpoints keyed by everything that fixes them,
so the studies share networks, and an interrupted training resumes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from experiments.common.metrics import mean_log_likelihood, nearest_ratio
from experiments.common.runs import REPO_ROOT, resolve_device
from experiments.common.sampling import METHODS, sample
from experiments.common.stats import (
    format_interval,
    interval_stderr,
    paired_difference,
    pooled_interval,
    proportion_interval,
)
from experiments.common.training import TrainConfig, checkpoint_path, train
from theory._checks import check_int, check_real
from theory.empirical import EmpiricalScore
from theory.mixtures import GaussianMixture
from theory.networks import PARAMETRIZATIONS, ScoreMLP
from theory.process import generator

__all__ = [
    "CACHE_DIR",
    "NetSpec",
    "SamplerSpec",
    "train_config",
    "sampler_spec",
    "training_set",
    "build_net",
    "train_score_net",
    "measure",
    "reference",
    "aggregate",
    "paired_effect",
    "cell",
    "effect_cell",
    "data_log_likelihood",
]

CACHE_DIR = REPO_ROOT / "runs" / "checkpoints"
_TRAIN_STREAM, _SAMPLE_STREAM, _REFERENCE_STREAM = 1, 2, 3  # derive_seed keys: apart draws


@dataclass(frozen=True)
class NetSpec:
    """A ScoreMLP: hidden widths (one int per hidden layer), embedding size, parametrization.

    The default parametrization is "denoiser", as for ScoreMLP and every study here; "eps"
    and "score" must learn the score's -x part at large t themselves and sample badly when
    under-trained (theory/networks.py's docstring). The
    parametrization is in the network's repr, hence in its checkpoint key: specs differing
    only in it never share a cached network.
    """

    widths: tuple[int, ...]
    emb_dim: int = 16
    parametrization: str = "denoiser"

    def __post_init__(self) -> None:
        if not isinstance(self.widths, tuple) or not self.widths:
            raise ValueError(f"widths must be a non-empty tuple of ints >= 1, got {self.widths!r}")
        for i, w in enumerate(self.widths):
            check_int(w, f"widths[{i}]", 1)
        check_int(self.emb_dim, "emb_dim", 2)
        if self.emb_dim % 2:
            raise ValueError(f"emb_dim must be even (sin and cos pairs), got {self.emb_dim}")
        if self.parametrization not in PARAMETRIZATIONS:
            raise ValueError(f"parametrization must be one of {PARAMETRIZATIONS}, "
                             f"got {self.parametrization!r}")

    @classmethod
    def uniform(cls, width: int, depth: int, **kwargs) -> NetSpec:
        """depth hidden layers of ``width`` units."""
        return cls((int(width),) * int(depth), **kwargs)


@dataclass(frozen=True)
class SamplerSpec:
    """How samples are drawn: reverse SDE (or probability flow) from T down to t0 (§3)."""

    num: int = 1000
    T: float = 8.0
    t0: float = 1e-3
    steps: int = 400
    method: str = "exponential"
    denoise: bool = False  # end with the posterior-mean step at t0 (a noise floor)

    def __post_init__(self) -> None:
        check_int(self.num, "num", 2)  # the memorization ratio and the intervals need >= 2
        check_int(self.steps, "steps", 1)
        check_real(self.t0, "t0", "> 0", lambda v: v > 0)
        check_real(self.T, "T", f"> t0 = {self.t0}", lambda v: v > self.t0)
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")


def train_config(config: dict, seed: int, weight_decay: float | None = None,
                 steps: int | None = None) -> TrainConfig:
    """The TrainConfig of an experiment config (keys steps, batch, lr, weight_decay, t0, T):
    DSM with t log-uniform on [t0, T], gradient clipping at 1 (§6.1 recipe)."""
    return TrainConfig(
        steps=config["steps"] if steps is None else steps, batch=config["batch"],
        lr=config["lr"], weight_decay=config["weight_decay"] if weight_decay is None
        else weight_decay, t0=config["t0"], T=config["T"], time_sampling="log_uniform",
        grad_clip=1.0, seed=seed,
    )


def sampler_spec(config: dict) -> SamplerSpec:
    """The SamplerSpec of an experiment config (keys samples, T, t0, sampler_steps)."""
    return SamplerSpec(num=config["samples"], T=config["T"], t0=config["t0"],
                       steps=config["sampler_steps"])


def training_set(mixture: GaussianMixture, n: int, seed: int) -> torch.Tensor:
    """The training set D: n draws (n, d) from the mixture, float64, from (seed, n)."""
    if n < 2:
        raise ValueError(f"n must be >= 2 (the 1/9 rule needs two neighbours), got {n}")
    return mixture.sample(n, generator(seed, _TRAIN_STREAM, n))


def build_net(d: int, spec: NetSpec, seed: int) -> ScoreMLP:
    """A freshly initialized ScoreMLP of ``spec`` (float32), weights from ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ScoreMLP(d, list(spec.widths), emb_dim=spec.emb_dim,
                        parametrization=spec.parametrization)


def train_score_net(
    points: torch.Tensor, spec: NetSpec, config: TrainConfig, device: str = "auto",
    cache: Path | None = CACHE_DIR, progress: bool = False, init: nn.Module | None = None,
) -> nn.Module:
    """Fit a ScoreMLP to D = points (n, d) by DSM (eq. 3.1) with ``config``; returns the EMA
    model when config.ema is set, else the trained model, in eval mode (float32).

    init: start from this model instead of a fresh one (fine-tuning a pruned network);
    cache: folder of training checkpoints (None: no caching).
    """
    net = (build_net(points.shape[1], spec, config.seed) if init is None else init).float()
    data = points.float()
    checkpoint = None if cache is None else checkpoint_path(cache, net, data, config)
    model, ema, _ = train(net, data, config, checkpoint, device, progress)
    return (ema if ema is not None else model).eval()


def measure(
    score, points: torch.Tensor, mixture: GaussianMixture, sampler: SamplerSpec, seed: int,
    device: str = "auto", keep_samples: int = 0, threshold: float = 1 / 9,
    dtype: torch.dtype = torch.float32,
) -> dict:
    """Sample from ``score`` and score the samples against D = points (n, d) (§6).

    Returns memorization_ratio with its 95% Wilson interval over the samples, the mean
    log-likelihood under the true mixture with its standard error, and the first
    ``keep_samples`` samples (with their per-sample memorized flags) for scatter plots.
    """
    dev = resolve_device(device)
    g = generator(seed, _SAMPLE_STREAM)
    x = sample(score, sampler.num, points.shape[1], sampler.T, sampler.t0, sampler.steps,
               sampler.method, generator=g, dtype=dtype, device=dev, denoise=sampler.denoise)
    x = x.double().cpu()
    if not torch.isfinite(x).all():
        raise FloatingPointError("the sampler produced non-finite samples: the score diverged")
    memorized = nearest_ratio(x, points.double().cpu()) <= threshold
    hits = int(memorized.sum())
    ll = mean_log_likelihood(x, mixture)
    ci = proportion_interval(hits, sampler.num)
    out = {"memorization_ratio": hits / sampler.num, "ci": [ci.low, ci.high],
           "log_likelihood": ll.value, "log_likelihood_se": ll.stderr}
    if keep_samples:
        out["samples"] = x[:keep_samples].tolist()
        out["memorized"] = memorized[:keep_samples].tolist()
    return out


def reference(
    kind: str, points: torch.Tensor, mixture: GaussianMixture, sampler: SamplerSpec, seed: int,
    device: str = "auto", keep_samples: int = 0,
) -> dict:
    """``measure`` with an exact score: kind "empirical" (EmpiricalScore of D: memorizes)
    or "true" (the mixture's score: generalizes), in float64."""
    if kind not in ("empirical", "true"):
        raise ValueError(f"kind must be 'empirical' or 'true', got {kind!r}")
    dev = resolve_device(device)
    exact = EmpiricalScore(points.double().to(dev)) if kind == "empirical" else mixture.to(dev)

    return measure(exact.score, points, mixture, sampler, seed, device, keep_samples,
                   dtype=torch.float64)


def aggregate(reports: list[dict]) -> dict:
    """Memorization ratio and log-likelihood of one setting over its training seeds, with
    95% intervals for plots and tables (``stats.pooled_interval``: over seeds, never
    narrower than the sampling noise; with one seed, the sampling interval alone).

    reports: ``measure`` outputs, one per seed. Returns ratio, ratio_low, ratio_high, ll,
    ll_low, ll_high, seeds and the interval's method. The ratio's interval is cut to [0, 1],
    where a proportion lives (a t-interval over 3 seeds can reach past either end).
    """
    if not reports:
        raise ValueError("reports must not be empty")
    ratio = pooled_interval([r["memorization_ratio"] for r in reports],
                            [interval_stderr(*r["ci"]) for r in reports])
    ll = pooled_interval([r["log_likelihood"] for r in reports],
                         [r["log_likelihood_se"] for r in reports])
    return {"ratio": ratio.value, "ratio_low": max(0.0, ratio.low),
            "ratio_high": min(1.0, ratio.high), "ll": ll.value, "ll_low": ll.low,
            "ll_high": ll.high, "seeds": len(reports), "method": ratio.method}


def paired_effect(a: list[dict], b: list[dict], field: str = "memorization_ratio") -> dict:
    """The effect a - b on ``field`` over training seeds, paired by each record's "seed"
    (same training set and initialization): mean, 95% t-interval, per-seed differences and
    how many are positive (``stats.paired_difference``)."""
    by_seed = {r["seed"]: r[field] for r in b}
    seeds = sorted(r["seed"] for r in a)
    if sorted(by_seed) != seeds:
        raise ValueError(f"paired_effect: a and b must have the same seeds, got {seeds} "
                         f"and {sorted(by_seed)}")
    first = {r["seed"]: r[field] for r in a}
    return paired_difference([first[s] for s in seeds], [by_seed[s] for s in seeds]).to_dict()


def cell(reports: list[dict], field: str = "ratio", fmt: str = ".2f") -> str:
    """A table cell 'mean [low, high]' of ``aggregate(reports)``; field "ratio" or "ll"."""
    a = aggregate(reports)
    return format_interval(a[field], a[f"{field}_low"], a[f"{field}_high"], fmt)


def effect_cell(effect: dict, fmt: str = "+.2f") -> str:
    """A table cell for a ``paired_effect``: 'mean [low, high], k/S seeds > 0'."""
    return (f"{format_interval(effect['value'], effect['low'], effect['high'], fmt)}, "
            f"{effect['positive']}/{effect['n']} seeds > 0")


def data_log_likelihood(mixture: GaussianMixture, num: int, seed: int) -> dict:
    """E log p(X), X ~ the mixture (minus its entropy), from num fresh draws: the level a
    generalizing sampler's log-likelihood should reach. {"value", "stderr", "num"}."""
    draws = mixture.sample(num, generator(seed, _REFERENCE_STREAM))
    return mean_log_likelihood(draws, mixture).to_dict()
