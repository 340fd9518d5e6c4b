"""Benchmark: the streaming empirical score against what it cannot avoid and what it replaces.

``theory.empirical.EmpiricalScore.score`` evaluates the score of the smoothed training set
(paper §3) for a batch of queries by streaming over the n training points in chunks with a
running log-sum-exp, so that it never holds a (batch x n) matrix. This script asks two
questions about that design and answers them with numbers:

1. *Is streaming cheap?* Any exact evaluation must compute the (batch x n) logits
   ``queries @ points.T`` and the weighted sum ``weights @ points``: two matmuls of
   2·batch·n·d flops each. Method (a) times exactly these two matmuls (random weights,
   precomputed) and nothing else; it is a lower bound, not a score. Target: ours <= 1.3x (a).
2. *Is it better than the usual way?* Method (b) is the full-matrix reference as existing
   repositories write it: ``torch.cdist(x, alpha * points) ** 2``, a softmax over all n at
   once, then ``weights @ points``. It materializes alpha·points (n x d) and the (batch x n)
   distance and weight matrices. Target: ours at least as fast as (b) with <= 25% of its
   peak extra memory.

Queries are samples of X_t from the smoothed training set, x = alpha_t y_j + sigma_t z,
the inputs a sampler feeds the score. Times are the median of ``--repeats`` runs after one
warm-up each, the methods taking turns, with torch using all cores; the CPU share printed
next to them (process CPU time / (wall time x threads)) shows whether they got the cores
(near 1) or shared them with other work (well below 1: rerun).

Peak extra memory is measured for each method in a fresh subprocess (this module with a
hidden ``--memory-probe`` flag): the data are generated in place (``torch.randn``, no
temporaries), the thread pool is started with a tiny matmul, then
``getrusage(RUSAGE_SELF).ru_maxrss`` is read before and after one call of the method; the
difference (MiB) is the method's working memory on top of the data. Three details keep
that number honest: on Linux the peak is reset to the current RSS just before the
baseline (/proc/self/clear_refs), because ru_maxrss inherits the parent's peak across exec
and would otherwise also keep the peak of EmpiricalScore's one-time construction (its
squared norms; reported separately as setup); and glibc's mmap threshold is fixed at
64 KiB in the probe, so that freed blocks leave the resident set instead of being reused
unseen.

So that the benchmark cannot silently compare different computations, the scores of ours
and (b) are compared with each other and, on a few queries, with an independent float64
evaluation; the largest relative row-wise difference is printed and must stay below a
dtype-dependent tolerance. This is done at the benchmarked t and at t = log d, because at
t = 1 and d in the thousands the posterior weights are one-hot to float precision (the
check there only tests the argmax) while at t = log d they spread over many points.

Run ``python -m experiments.benchmarks.scores`` (full size: n=50,000, d=3,072, batch 256,
float32, about a minute on two cores; writes every number to figures/bench_scores.json) or
``--quick`` (n=5,000, d=512; writes no file unless ``--json PATH``); ``--no-json`` writes none.
"""

from __future__ import annotations

import argparse
import functools
import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from experiments.benchmarks.common import (
    FIGURES_DIR,
    add_output_args,
    config_args,
    environment,
    finish_main,
    load_average,
    measure_call_peak,
    n_cores,
    peak_readings,
    run_memory_probes,
    safe_ratio,
    target_entry,
    target_lines,
    time_methods,
    timing_table,
)
from theory.empirical import EmpiricalScore
from theory.process import alpha, sigma

__all__ = [
    "BenchConfig",
    "make_queries",
    "make_data",
    "spread_time",
    "score_ours",
    "bare_matmuls",
    "score_full_reference",
    "score_float64_check",
    "max_relative_difference",
    "peak_extra_mib",
    "run_benchmark",
    "format_report",
    "main",
]

# The targets of the issue.
TARGET_BARE_RATIO = 1.3  # ours / (a) at most this
TARGET_REF_TIME_RATIO = 1.0  # ours / (b) at most this
TARGET_REF_MEMORY_RATIO = 0.25  # peak extra memory ours / (b) at most this
# Largest relative row-wise score difference accepted as "the same computation".
AGREEMENT_TOL = {torch.float32: 1e-3, torch.float64: 1e-9}
# Queries used for the independent float64 check (it converts points chunk by chunk).
N_CHECK_QUERIES = 8
_CHECK_CHUNK = 4096
DTYPES = {"float32": torch.float32, "float64": torch.float64}
METHODS = ("ours", "bare", "reference")
# This module, for its memory probes (python -m MODULE --memory-probe METHOD), and where
# its numbers go by default (the committed results; the file name predates the package).
MODULE = "experiments.benchmarks.scores"
DEFAULT_JSON = FIGURES_DIR / "bench_scores.json"


@dataclass(frozen=True)
class BenchConfig:
    """Problem size and protocol: n points in dimension d, a batch of queries at time t."""

    n: int = 50_000
    d: int = 3072
    batch: int = 256
    repeats: int = 3
    dtype: str = "float32"
    t: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("n", "d", "batch", "repeats"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if not (math.isfinite(self.t) and self.t > 0):
            raise ValueError(f"t must be a finite float > 0, got {self.t}")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


QUICK = {"n": 5000, "d": 512}


# -- data and the three computations ------------------------------------------------------


def make_queries(points: torch.Tensor, batch: int, t: float, gen: torch.Generator) -> torch.Tensor:
    """Queries (batch, d) ~ X_t of the smoothed set: x = alpha_t y_j + sigma_t z (§3).

    j is uniform over the n points and z ~ N(0, I); only O(batch x d) temporaries.
    """
    idx = torch.randint(points.shape[0], (batch,), generator=gen)
    noise = torch.randn(batch, points.shape[1], generator=gen, dtype=points.dtype)
    return noise.mul_(sigma(t)).add_(points[idx], alpha=alpha(t))


def make_data(cfg: BenchConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Training points (n, d) ~ N(0, I) and queries (batch, d) ~ X_t at t = cfg.t.

    Points are generated in place by ``torch.randn`` (no temporary of their size), so the
    resident memory after this call is the data plus O(batch x d).
    """
    gen = torch.Generator().manual_seed(cfg.seed)
    points = torch.randn(cfg.n, cfg.d, generator=gen, dtype=cfg.torch_dtype)
    return points, make_queries(points, cfg.batch, cfg.t, gen)


def spread_time(d: int) -> float:
    """t = log d, where alpha_t^2 d = 1: the posterior over N(0, I) points spreads over many.

    At the benchmark's t = 1 and d in the thousands the posterior weights are one-hot to
    float precision, so agreement there only tests the argmax; at this t it tests the softmax.
    """
    return max(1.0, math.log(d))


def score_ours(est: EmpiricalScore, x: torch.Tensor, t: float) -> torch.Tensor:
    """The streaming score grad log p_hat_t(x) of ``theory.empirical``, shape (batch, d)."""
    return est.score(x, t)


def bare_matmuls(points: torch.Tensor, x: torch.Tensor, weights: torch.Tensor) -> None:
    """Method (a): x @ points.T (batch, n) and weights @ points (batch, d), nothing else."""
    torch.mm(x, points.T)
    torch.mm(weights, points)


def score_full_reference(points: torch.Tensor, x: torch.Tensor, t: float) -> torch.Tensor:
    """Method (b): the full-matrix score as commonly written, shape (batch, d) (§3).

    cdist(x, alpha_t points)^2 -> softmax over all n -> weights @ points -> score.
    Holds alpha_t points (n, d) and the (batch, n) distance and weight matrices.
    """
    a, s2 = alpha(t), sigma(t) ** 2
    dist2 = torch.cdist(x, a * points).square()  # (batch, n)
    weights = torch.softmax(-dist2 / (2 * s2), dim=1)  # (batch, n)
    mean = weights @ points  # (batch, d), the denoiser E_hat[X_0 | X_t = x]
    return (a * mean - x) / s2


def score_float64_check(
    points: torch.Tensor, x: torch.Tensor, t: float
) -> tuple[torch.Tensor, float]:
    """Independent float64 score for a few queries x (k, d), chunked over n.

    Returns the score (k, d) and the median effective number of points 1 / sum_i w_i^2
    of the posterior weights (1 = one-hot, n = uniform).

    Computes all k x n log-weights -||x - alpha y_i||^2 / (2 sigma^2) in float64 (the
    norm expansion loses ~1e-16 x ||x||^2, negligible here), normalizes them with a softmax
    over all n, then sums w_i y_i. Memory O(k x n + chunk x d); used only to validate ours
    and (b).
    """
    a, s2 = alpha(t), sigma(t) ** 2
    xd = x.double()
    x_sq = xd.square().sum(dim=1, keepdim=True)  # (k, 1)
    logits = torch.empty(x.shape[0], points.shape[0], dtype=torch.float64)
    mean = torch.zeros_like(xd)
    for lo in range(0, points.shape[0], _CHECK_CHUNK):
        y = points[lo : lo + _CHECK_CHUNK].double()  # (chunk, d)
        dist2 = x_sq - 2 * a * (xd @ y.T) + a**2 * y.square().sum(dim=1)  # (k, chunk)
        logits[:, lo : lo + y.shape[0]] = -dist2 / (2 * s2)
    weights = torch.softmax(logits, dim=1)  # (k, n)
    for lo in range(0, points.shape[0], _CHECK_CHUNK):
        y = points[lo : lo + _CHECK_CHUNK].double()
        mean += weights[:, lo : lo + y.shape[0]] @ y
    effective = weights.square().sum(dim=1).reciprocal().median().item()
    return (a * mean - xd) / s2, effective


def max_relative_difference(s: torch.Tensor, ref: torch.Tensor) -> float:
    """max over rows of ||s - ref|| / ||ref|| (both (batch, d)), computed in float64."""
    s, ref = s.double(), ref.double()
    return ((s - ref).norm(dim=1) / ref.norm(dim=1)).max().item()


# -- timing and memory --------------------------------------------------------------------


def _memory_probe(cfg: BenchConfig, method: str) -> dict[str, float | str | None]:
    """In this (fresh) process: peak RSS growth in MiB caused by one call of ``method``.

    The baseline is taken after the data (and, for ours, the EmpiricalScore object) exist
    and the thread pool runs; on Linux the peak is then reset to the current RSS, so that
    neither the temporaries of EmpiricalScore's construction nor the parent's peak (which
    ru_maxrss inherits across exec) hide the call's own peak. ru_maxrss is the measure;
    should it still read above this address space's own peak (VmHWM), VmHWM is used.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    torch.set_num_threads(n_cores())
    points, x = make_data(cfg)
    if method == "bare":
        weights = torch.rand(cfg.batch, cfg.n, dtype=cfg.torch_dtype)
        call = lambda: bare_matmuls(points, x, weights)  # noqa: E731
    elif method == "reference":
        call = lambda: score_full_reference(points, x, cfg.t)  # noqa: E731
    small = torch.ones(64, 64, dtype=cfg.torch_dtype)
    torch.mm(small, small)  # start the thread pool and BLAS before the baseline
    setup = None
    if method == "ours":
        before_setup = peak_readings()
        est = EmpiricalScore(points)  # one-time setup: squared norms of the points
        setup = before_setup, peak_readings()
        call = lambda: score_ours(est, x, cfg.t)  # noqa: E731
    return measure_call_peak(call, setup, "ours may be hidden under its setup peak")


def peak_extra_mib(cfg: BenchConfig, methods: Sequence[str]) -> dict[str, dict]:
    """Peak extra memory (MiB) of one call of each method on top of the data, fresh processes.

    Runs ``python -m experiments.benchmarks.scores --memory-probe METHOD`` with cfg's size, one
    process per method, all at once (each measures only itself), so that neither the
    allocator's cache nor earlier peaks of this process hide the result; glibc's mmap
    threshold is fixed at 64 KiB there, so freed blocks leave the resident set. Returns, per
    method, a dict with extra_mib (the call), setup_extra_mib (ours only: the one-time peak
    of building EmpiricalScore, None otherwise), the counter used and the raw readings.
    """
    for method in methods:
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return run_memory_probes(MODULE, methods, config_args(cfg))


# -- the benchmark ------------------------------------------------------------------------


def _agreement_and_times(
    cfg: BenchConfig,
) -> tuple[dict, dict[str, list[float]], dict[str, float]]:
    """In this process: the agreement check, then the timings of the three methods."""
    points, x = make_data(cfg)
    est = EmpiricalScore(points)  # holds the points and their squared norms (one pass)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    weights = torch.rand(cfg.batch, cfg.n, generator=gen, dtype=cfg.torch_dtype)

    # Agreement first: a benchmark of two different computations is worthless. Checked at
    # the benchmarked t and at a t where the posterior is spread (see spread_time).
    tol = AGREEMENT_TOL[cfg.torch_dtype]
    k = min(N_CHECK_QUERIES, cfg.batch)
    t_spread = spread_time(cfg.d)
    queries = {cfg.t: x, t_spread: make_queries(points, cfg.batch, t_spread, gen)}
    agreement: dict = {"tolerance": tol, "float64_queries": k, "checks": []}
    for t, xq in queries.items():
        ours, ref = score_ours(est, xq, t), score_full_reference(points, xq, t)
        exact, effective = score_float64_check(points, xq[:k], t)
        agreement["checks"].append(
            {
                "t": t,
                "effective_points": effective,
                "ours_vs_reference": max_relative_difference(ours, ref),
                "ours_vs_float64": max_relative_difference(ours[:k], exact),
                "reference_vs_float64": max_relative_difference(ref[:k], exact),
            }
        )
    agreement["max_difference"] = max(
        c[key]
        for c in agreement["checks"]
        for key in ("ours_vs_reference", "ours_vs_float64", "reference_vs_float64")
    )
    agreement["agree"] = agreement["max_difference"] <= tol
    del ours, ref, exact, queries

    fns = {
        "ours": lambda: score_ours(est, x, cfg.t),
        "bare": lambda: bare_matmuls(points, x, weights),
        "reference": lambda: score_full_reference(points, x, cfg.t),
    }
    times, share = time_methods(fns, cfg.repeats)
    return agreement, times, share


def run_benchmark(cfg: BenchConfig, *, memory: bool = True) -> dict:
    """Time ours, (a) and (b); check agreement; measure peak memory; return every number.

    Returns a JSON-ready dict with keys config, environment, flops_per_matmul, times_s
    (lists per method), cpu_share, median_s, ratios, memory_mib, memory_probes, agreement
    and targets (each with value, bound and met).
    """
    torch.set_num_threads(n_cores())
    load_before = load_average()
    # Memory first, while this process is still small (see _memory_probe).
    probes = peak_extra_mib(cfg, METHODS) if memory else {}
    mem = {m: p["extra_mib"] for m, p in probes.items()}
    agreement, times, cpu_share = _agreement_and_times(cfg)  # frees its data on return
    median = {m: statistics.median(ts) for m, ts in times.items()}
    ratios = {
        "ours_over_bare": median["ours"] / median["bare"],
        "ours_over_reference": median["ours"] / median["reference"],
        "memory_ours_over_reference": safe_ratio(mem.get("ours"), mem.get("reference")),
    }
    targets = {
        "ours <= 1.3 x bare matmuls": target_entry(ratios["ours_over_bare"], TARGET_BARE_RATIO),
        "ours <= 1.0 x reference time": target_entry(
            ratios["ours_over_reference"], TARGET_REF_TIME_RATIO
        ),
        "ours <= 25% of reference peak memory": target_entry(
            ratios["memory_ours_over_reference"], TARGET_REF_MEMORY_RATIO
        ),
    }
    return {
        "config": asdict(cfg),
        "environment": environment(load_average_1min_before=load_before),
        "flops_per_matmul": 2 * cfg.batch * cfg.n * cfg.d,
        "times_s": times,
        "cpu_share": cpu_share,
        "median_s": median,
        "ratios": ratios,
        "memory_mib": mem,
        "memory_probes": probes,
        "agreement": agreement,
        "targets": targets,
    }


def format_report(res: dict) -> str:
    """The results of ``run_benchmark`` as a small plain-text table."""
    cfg, ts, mem = res["config"], res["times_s"], res["memory_mib"]
    names = {
        "ours": "ours (streaming, theory.empirical)",
        "bare": "(a) two bare matmuls",
        "reference": "(b) full-matrix cdist+softmax",
    }
    gflop = 2 * res["flops_per_matmul"] / 1e9
    load = res["environment"]["load_average_1min_before"] or float("nan")
    lines = [
        f"n={cfg['n']} d={cfg['d']} batch={cfg['batch']} dtype={cfg['dtype']} t={cfg['t']} "
        f"seed={cfg['seed']} threads={res['environment']['threads']} "
        f"torch={res['environment']['torch']} "
        f"load(1 min, before)={load:.2f}",
        f"median of {cfg['repeats']} (round robin, after one warm-up each); "
        f"{gflop:.1f} GFLOP in the two matmuls",
        "",
    ]
    lines += timing_table(names, ts, gflop, res["cpu_share"], mem)
    r, a = res["ratios"], res["agreement"]
    mem_ratio = r["memory_ours_over_reference"]
    lines += [
        "",
        f"ours / (a) time   = {r['ours_over_bare']:.3f}",
        f"ours / (b) time   = {r['ours_over_reference']:.3f}",
        "ours / (b) memory = " + ("-" if mem_ratio is None else f"{mem_ratio:.4f}"),
    ]
    probes = res.get("memory_probes", {})
    if "ours" in probes:
        lines.append(
            f"(peak memory counter: {probes['ours']['counter']}; one-time EmpiricalScore "
            f"setup, not in the per-call number: {probes['ours']['setup_extra_mib']:.1f} MiB)"
        )
    lines += [
        "",
        f"agreement: max row-wise relative difference of the scores "
        f"(float64 on the first {a['float64_queries']} queries), tolerance {a['tolerance']:g}",
        f"  {'t':>6} {'eff. points':>11} {'ours vs (b)':>12} {'ours vs f64':>12} "
        f"{'(b) vs f64':>12}",
    ]
    for c in a["checks"]:
        lines.append(
            f"  {c['t']:>6.3f} {c['effective_points']:>11.1f} {c['ours_vs_reference']:>12.2e} "
            f"{c['ours_vs_float64']:>12.2e} {c['reference_vs_float64']:>12.2e}"
        )
    lines += [
        "  -> scores agree"
        if a["agree"]
        else "  -> SCORES DISAGREE: the timings compare different computations",
        "",
        "targets:",
    ]
    return "\n".join(lines + target_lines(res["targets"]))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"python -m {MODULE}",
        description="Benchmark the streaming empirical score against two bare matmuls and "
        "a full-matrix cdist+softmax reference (time, peak memory, agreement).",
    )
    defaults = BenchConfig()
    p.add_argument("--n", type=int, default=None, help=f"training points (default {defaults.n})")
    p.add_argument("--d", type=int, default=None, help=f"dimension (default {defaults.d})")
    p.add_argument("--batch", type=int, default=defaults.batch, help="queries per call")
    p.add_argument("--repeats", type=int, default=defaults.repeats, help="timed runs")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=defaults.dtype)
    p.add_argument("--t", type=float, default=defaults.t, help="diffusion time t > 0")
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--quick", action="store_true", help=f"small config {QUICK}")
    p.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    add_output_args(p, DEFAULT_JSON)
    p.add_argument("--memory-probe", choices=METHODS, default=None, help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None) -> dict | None:
    """Command-line entry point; returns the result dict (None for a memory probe).

    Raises SystemExit(1) after printing the table if the scores disagree.
    """
    args = _parser().parse_args(argv)
    defaults = BenchConfig()
    size = QUICK if args.quick else {"n": defaults.n, "d": defaults.d}
    cfg = BenchConfig(
        n=args.n if args.n is not None else size["n"],
        d=args.d if args.d is not None else size["d"],
        batch=args.batch,
        repeats=args.repeats,
        dtype=args.dtype,
        t=args.t,
        seed=args.seed,
    )
    run = functools.partial(run_benchmark, memory=not args.no_memory)
    return finish_main(cfg, args, run, format_report, DEFAULT_JSON, probe=_memory_probe)


if __name__ == "__main__":
    main()
