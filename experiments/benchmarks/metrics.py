"""Benchmark: the exact memorization search against what it cannot avoid and what it replaces.

``experiments.common.metrics.two_nearest`` finds, for each of m generated samples, the
squared distances to its nearest and second-nearest of n training points and the nearest's
index; the memorization rule of §6 (d1 <= d2 / 9) is decided on them. It streams over the
training set in chunks and over the samples in blocks, ranks candidates by a matmul, keeps
the best 8 per sample with ``topk`` and re-measures those by explicit differences, so that
its working memory does not grow with n. This script asks two questions about that design
and answers them with numbers:

1. *Is streaming cheap?* Any exact search must compute the (m x n) inner products
   ``samples @ train.T``: one matmul of 2·m·n·d flops. Method (a) times exactly this matmul
   and nothing else (it materializes the m x n result); it is a lower bound, not a search.
   Target: ours <= 1.3x (a).
2. *Is it better than the usual way?* Method (b) is the full-matrix search as existing
   repositories write it: ``torch.cdist(samples, train)`` (m x n) and then
   ``topk(2, largest=False)`` on each row. Target: ours at least as fast as (b), with peak
   extra memory within the bound that ``two_nearest`` documents (independent of n: its
   work buffer of about 2^22 elements, the candidates and outputs, 112 bytes per float32
   sample, and a fixed allowance of ``MEMORY_SLACK_MIB`` for small temporaries, the
   allocator and BLAS workspace; see ``memory_bound_mib``). (b) holds the m x n matrix.

Training points are N(0, I) in dimension d. A fraction ``copy_fraction`` of the samples
are near-copies x = y_j + s z of training points (z ~ N(0, I), noise scales s evenly spaced
in [0.05, 1]); their ratio d1/d2 is about s^2 / (2 + s^2), from 0.001 to 0.33, so it
crosses the threshold 1/9 near s = 0.5 and both branches of the rule are exercised. The
other samples are fresh N(0, I) draws (ratio near 1: not memorized).

Times are the median of ``--repeats`` runs after one warm-up each, the methods taking
turns, with torch using all cores (or ``--threads``); the CPU share printed next to them
(process CPU time / (wall time x threads)) shows whether they got the cores (near 1) or
shared them with other work (well below 1: rerun). Peak extra memory is measured for each
method in a fresh subprocess (this module with a hidden ``--memory-probe`` flag), as in
``experiments.benchmarks.scores``: data generated in place, thread pool started, peak reset
to the current RSS, then the growth of the peak over one call (MiB).

So that the benchmark cannot silently compare different computations, ours and (b) are
compared on the timed data: the nearest neighbour's index must agree except where the two
nearest are tied (ratio d1/d2 within the tolerance of 1), the ratios must agree within a
dtype-dependent absolute tolerance, and so must the memorization decisions except for
samples whose ratio lies within that tolerance of 1/9. On a few samples spread over copies
and fresh draws both are also compared with an independent float64 search.

Run ``python -m experiments.benchmarks.metrics`` (full size: m=10,000 samples, n=50,000
points, d=3,072, float32, several minutes on two cores; writes every number to
figures/bench_metrics.json) or ``--quick`` (m=1,000, n=5,000, d=512; writes no file unless
``--json PATH``); ``--no-json`` writes none.
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
    run_memory_probes,
    safe_ratio,
    target_entry,
    target_lines,
    time_methods,
    timing_table,
)
from experiments.common.metrics import (
    _BLOCK,
    _CANDIDATES,
    _QUERY_ROWS,
    MEMORIZATION_THRESHOLD,
    two_nearest,
)

__all__ = [
    "BenchConfig",
    "make_data",
    "search_ours",
    "bare_matmul",
    "search_full_reference",
    "search_float64_check",
    "ratios_of",
    "compare_searches",
    "memory_bound_mib",
    "peak_extra_mib",
    "run_benchmark",
    "format_report",
    "main",
]

# The targets of the issue.
TARGET_BARE_RATIO = 1.3  # ours / (a) at most this
TARGET_REF_TIME_RATIO = 1.0  # ours / (b) at most this
MEMORY_SLACK_MIB = 32.0  # allowance on top of two_nearest's documented working memory
# Largest absolute difference of ratios d1/d2 accepted as "the same computation"; also the
# width of the tie band (index) and of the borderline band around 1/9 (decision).
AGREEMENT_TOL = {torch.float32: 1e-4, torch.float64: 1e-10}
N_CHECK_SAMPLES = 16  # samples for the independent float64 search
_CHECK_CHUNK = 4096
COPY_NOISE = (0.05, 1.0)  # noise scales s of the near-copies, evenly spaced
DTYPES = {"float32": torch.float32, "float64": torch.float64}
METHODS = ("ours", "bare", "reference")
# This module, for its memory probes (python -m MODULE --memory-probe METHOD), and where
# its numbers go by default (the committed results; the file name predates the package).
MODULE = "experiments.benchmarks.metrics"
DEFAULT_JSON = FIGURES_DIR / "bench_metrics.json"


@dataclass(frozen=True)
class BenchConfig:
    """Problem size and protocol: m samples against n training points in dimension d."""

    m: int = 10_000
    n: int = 50_000
    d: int = 3072
    repeats: int = 3
    dtype: str = "float32"
    copy_fraction: float = 0.25
    threads: int = 0  # 0: all cores this process may run on
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("m", "n", "d", "repeats"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.n < 2:
            raise ValueError(f"n must be >= 2 for a nearest-neighbour ratio, got {self.n}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if not (math.isfinite(self.copy_fraction) and 0 <= self.copy_fraction <= 1):
            raise ValueError(f"copy_fraction must be in [0, 1], got {self.copy_fraction}")
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0 (0: all cores), got {self.threads}")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def n_copies(self) -> int:
        return round(self.copy_fraction * self.m)


QUICK = {"m": 1000, "n": 5000, "d": 512}


# -- data and the three computations ------------------------------------------------------


def make_data(cfg: BenchConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training points (n, d) ~ N(0, I), samples (m, d), and the sources of the copies.

    The first ``cfg.n_copies`` samples are x = y_j + s z with j uniform, z ~ N(0, I) and s
    evenly spaced in COPY_NOISE; the rest are fresh N(0, I). Returns (train, samples, j) with
    j (n_copies,). Generated in place: no temporary larger than the copies (n_copies, d).
    """
    gen = torch.Generator().manual_seed(cfg.seed)
    train = torch.randn(cfg.n, cfg.d, generator=gen, dtype=cfg.torch_dtype)
    samples = torch.randn(cfg.m, cfg.d, generator=gen, dtype=cfg.torch_dtype)
    c = cfg.n_copies
    source = torch.randint(cfg.n, (c,), generator=gen)
    scale = torch.linspace(*COPY_NOISE, c, dtype=cfg.torch_dtype)
    samples[:c].mul_(scale[:, None]).add_(train[source])
    return train, samples, source


def search_ours(samples: torch.Tensor, train: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The streaming exact search: (d1 (m,), d2 (m,), idx (m,)), squared distances."""
    return two_nearest(samples, train)


def bare_matmul(samples: torch.Tensor, train: torch.Tensor) -> torch.Tensor:
    """Method (a): samples @ train.T (m, n), nothing else."""
    return torch.mm(samples, train.T)


def search_full_reference(samples: torch.Tensor, train: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Method (b): cdist (m, n), then the two smallest per row: (values (m, 2), idx (m, 2)).

    Values are distances (not squared), as cdist returns them.
    """
    return tuple(torch.cdist(samples, train).topk(2, dim=1, largest=False))


def search_float64_check(samples: torch.Tensor, train: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Independent float64 search for a few samples (k, d): (d1 (k,), d2 (k,), idx (k,)).

    All k x n squared distances ||x||^2 - 2 x.y + ||y||^2 in float64, chunked over n (the
    rounding, ~1e-16 ||x||^2, is negligible here), then the two smallest per row. Memory
    O(k x n + chunk x d); used only to validate ours and (b).
    """
    x = samples.double()
    dist2 = torch.empty(x.shape[0], train.shape[0], dtype=torch.float64)
    for lo in range(0, train.shape[0], _CHECK_CHUNK):
        y = train[lo : lo + _CHECK_CHUNK].double()  # (chunk, d)
        dist2[:, lo : lo + y.shape[0]] = (
            x.square().sum(1, keepdim=True) - 2 * x @ y.T + y.square().sum(1)
        )
    values, idx = dist2.clamp_min_(0).topk(2, dim=1, largest=False)
    return values[:, 0], values[:, 1], idx[:, 0]


def ratios_of(d1: torch.Tensor, d2: torch.Tensor) -> torch.Tensor:
    """Ratio d1 / d2 of squared distances (m,) in float64, 0 where d2 = 0 (as nearest_ratio)."""
    d1, d2 = d1.double(), d2.double()
    return torch.where(d2 > 0, d1 / d2.clamp_min(torch.finfo(d2.dtype).tiny), 0.0)


def compare_searches(
    ours: tuple[torch.Tensor, ...], ref: tuple[torch.Tensor, ...], tol: float
) -> dict:
    """Agreement of ours (d1, d2, idx) and (b) (distances (m, 2), idx (m, 2)), tolerance tol.

    Returns counts and maxima: index mismatches (all, and outside ties: reference ratio
    within tol of 1), the largest absolute ratio difference, memorization decisions of each
    and their mismatches (all, and outside the band of width tol around 1/9).
    """
    r_ours = ratios_of(ours[0], ours[1])
    r_ref = ratios_of(ref[0][:, 0].double().square(), ref[0][:, 1].double().square())
    tied = r_ref >= 1 - tol
    index_mismatch = ours[2] != ref[1][:, 0]
    mem_ours = r_ours <= MEMORIZATION_THRESHOLD
    mem_ref = r_ref <= MEMORIZATION_THRESHOLD
    borderline = (r_ref - MEMORIZATION_THRESHOLD).abs() <= tol
    decision_mismatch = mem_ours != mem_ref
    return {
        "index_mismatches": int(index_mismatch.sum()),
        "index_mismatches_untied": int((index_mismatch & ~tied).sum()),
        "max_ratio_difference": (r_ours - r_ref).abs().max().item(),
        "memorized_ours": int(mem_ours.sum()),
        "memorized_reference": int(mem_ref.sum()),
        "decision_mismatches": int(decision_mismatch.sum()),
        "decision_mismatches_not_borderline": int((decision_mismatch & ~borderline).sum()),
    }


# -- memory -------------------------------------------------------------------------------


def memory_bound_mib(cfg: BenchConfig) -> float:
    """Peak extra memory two_nearest may use at cfg's size, MiB (see its docstring).

    Its work buffer (the larger of a (rows x (8 + chunk)) distance block, about 2^22
    elements, and 8 x d re-measured differences), the candidates (m x 8 values and int64
    indices) and the outputs (two values and one int64 index per sample), plus
    MEMORY_SLACK_MIB for small temporaries, the allocator and BLAS workspace. It does not
    depend on n.
    """
    item = torch.empty(0, dtype=cfg.torch_dtype).element_size()
    k, rows = _CANDIDATES, min(cfg.m, _QUERY_ROWS)
    work = max(_BLOCK + rows * k, k * cfg.d) * item
    per_sample = k * (item + 8) + 2 * item + 8
    return (work + cfg.m * per_sample) / 2**20 + MEMORY_SLACK_MIB


def _memory_probe(cfg: BenchConfig, method: str) -> dict[str, float | str | None]:
    """In this (fresh) process: peak RSS growth in MiB caused by one call of ``method``.

    See ``experiments.benchmarks.common.measure_call_peak``; the baseline is taken after the
    data exist and the thread pool runs.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    torch.set_num_threads(cfg.threads or n_cores())
    train, samples, _ = make_data(cfg)
    fn = {"ours": search_ours, "bare": bare_matmul, "reference": search_full_reference}[method]
    small = torch.ones(64, 64, dtype=cfg.torch_dtype)
    torch.mm(small, small)  # start the thread pool and BLAS before the baseline
    return measure_call_peak(lambda: fn(samples, train))


def peak_extra_mib(cfg: BenchConfig, methods: Sequence[str]) -> dict[str, dict]:
    """Peak extra memory (MiB) of one call of each method on top of the data, fresh processes.

    Runs ``python -m experiments.benchmarks.metrics --memory-probe METHOD`` with cfg's size, one
    process per method, all at once (see ``experiments.benchmarks.common.run_memory_probes``).
    Returns, per method, a dict with extra_mib, the counter used and the raw readings.
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
    train, samples, source = make_data(cfg)

    # Agreement first: a benchmark of two different computations is worthless.
    tol = AGREEMENT_TOL[cfg.torch_dtype]
    ours, ref = search_ours(samples, train), search_full_reference(samples, train)
    agreement: dict = {"tolerance": tol, **compare_searches(ours, ref, tol)}
    agreement["copies"] = cfg.n_copies
    agreement["copies_nearest_is_source"] = int((ours[2][: cfg.n_copies] == source).sum())
    check = torch.linspace(0, cfg.m - 1, min(N_CHECK_SAMPLES, cfg.m)).round().long()
    e1, e2, e_idx = search_float64_check(samples[check], train)
    exact = ratios_of(e1, e2)
    r_ours = ratios_of(ours[0][check], ours[1][check])
    r_ref = ratios_of(ref[0][check, 0].double().square(), ref[0][check, 1].double().square())
    agreement["float64_samples"] = len(check)
    agreement["ours_vs_float64"] = (r_ours - exact).abs().max().item()
    agreement["reference_vs_float64"] = (r_ref - exact).abs().max().item()
    agreement["index_mismatches_float64_untied"] = int(
        (((ours[2][check] != e_idx) | (ref[1][check, 0] != e_idx)) & (exact < 1 - tol)).sum()
    )
    agreement["agree"] = (
        agreement["index_mismatches_untied"] == 0
        and agreement["decision_mismatches_not_borderline"] == 0
        and agreement["index_mismatches_float64_untied"] == 0
        and max(
            agreement["max_ratio_difference"],
            agreement["ours_vs_float64"],
            agreement["reference_vs_float64"],
        )
        <= tol
    )
    del ours, ref

    fns = {
        "ours": lambda: search_ours(samples, train),
        "bare": lambda: bare_matmul(samples, train),
        "reference": lambda: search_full_reference(samples, train),
    }
    times, share = time_methods(fns, cfg.repeats)
    return agreement, times, share


def run_benchmark(cfg: BenchConfig, *, memory: bool = True) -> dict:
    """Time ours, (a) and (b); check agreement; measure peak memory; return every number.

    Returns a JSON-ready dict with keys config, environment, flops_per_matmul, times_s
    (lists per method), cpu_share, median_s, ratios, memory_mib, memory_bound_mib,
    memory_probes, agreement and targets (each with value, bound and met).
    """
    torch.set_num_threads(cfg.threads or n_cores())
    load_before = load_average()
    # Memory first, while this process is still small.
    probes = peak_extra_mib(cfg, METHODS) if memory else {}
    mem = {m: p["extra_mib"] for m, p in probes.items()}
    agreement, times, cpu_share = _agreement_and_times(cfg)  # frees its data on return
    median = {m: statistics.median(ts) for m, ts in times.items()}
    ratios = {
        "ours_over_bare": median["ours"] / median["bare"],
        "ours_over_reference": median["ours"] / median["reference"],
        "memory_ours_over_reference": safe_ratio(mem.get("ours"), mem.get("reference")),
    }
    bound = memory_bound_mib(cfg)
    targets = {
        "ours <= 1.3 x bare matmul": target_entry(ratios["ours_over_bare"], TARGET_BARE_RATIO),
        "ours <= 1.0 x reference time": target_entry(
            ratios["ours_over_reference"], TARGET_REF_TIME_RATIO
        ),
        "ours peak memory (MiB) <= its bound": target_entry(mem.get("ours"), bound),
    }
    return {
        "config": asdict(cfg),
        "environment": environment(load_average_1min_before=load_before),
        "flops_per_matmul": 2 * cfg.m * cfg.n * cfg.d,
        "times_s": times,
        "cpu_share": cpu_share,
        "median_s": median,
        "ratios": ratios,
        "memory_mib": mem,
        "memory_bound_mib": bound,
        "memory_probes": probes,
        "agreement": agreement,
        "targets": targets,
    }


def format_report(res: dict) -> str:
    """The results of ``run_benchmark`` as a small plain-text table."""
    cfg, ts, mem = res["config"], res["times_s"], res["memory_mib"]
    names = {
        "ours": "ours (two_nearest, streaming)",
        "bare": "(a) bare matmul",
        "reference": "(b) full-matrix cdist+topk",
    }
    gflop = res["flops_per_matmul"] / 1e9
    load = res["environment"]["load_average_1min_before"] or float("nan")
    lines = [
        f"m={cfg['m']} n={cfg['n']} d={cfg['d']} dtype={cfg['dtype']} "
        f"copies={cfg['copy_fraction']:g} seed={cfg['seed']} "
        f"threads={res['environment']['threads']} torch={res['environment']['torch']} "
        f"load(1 min, before)={load:.2f}",
        f"median of {cfg['repeats']} (round robin, after one warm-up each); "
        f"{gflop:.1f} GFLOP in the matmul",
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
        f"(ours' documented memory bound at this size: {res['memory_bound_mib']:.1f} MiB; "
        f"peak memory counter: {res['memory_probes'].get('ours', {}).get('counter', '-')})",
        "",
        f"agreement of ours and (b) on all {cfg['m']} samples, tolerance {a['tolerance']:g}:",
        f"  nearest index differs: {a['index_mismatches']} "
        f"(outside ties: {a['index_mismatches_untied']})",
        f"  max |ratio ours - ratio (b)|: {a['max_ratio_difference']:.2e}",
        f"  memorized (ratio <= 1/9): ours {a['memorized_ours']}, (b) "
        f"{a['memorized_reference']}; decisions differ: {a['decision_mismatches']} "
        f"(outside the band around 1/9: {a['decision_mismatches_not_borderline']})",
        f"  near-copies: {a['copies']}, nearest is their source: "
        f"{a['copies_nearest_is_source']}",
        f"  float64 search on {a['float64_samples']} samples: max ratio difference ours "
        f"{a['ours_vs_float64']:.2e}, (b) {a['reference_vs_float64']:.2e}; index differs "
        f"outside ties: {a['index_mismatches_float64_untied']}",
        "  -> searches agree"
        if a["agree"]
        else "  -> SEARCHES DISAGREE: the timings compare different computations",
        "",
        "targets:",
    ]
    return "\n".join(lines + target_lines(res["targets"]))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"python -m {MODULE}",
        description="Benchmark the exact streaming memorization search (two_nearest) against "
        "a bare matmul and a full-matrix cdist+topk reference (time, peak memory, agreement).",
    )
    defaults = BenchConfig()
    p.add_argument("--m", type=int, default=None, help=f"samples (default {defaults.m})")
    p.add_argument("--n", type=int, default=None, help=f"training points (default {defaults.n})")
    p.add_argument("--d", type=int, default=None, help=f"dimension (default {defaults.d})")
    p.add_argument("--repeats", type=int, default=defaults.repeats, help="timed runs")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=defaults.dtype)
    p.add_argument(
        "--copy_fraction",
        "--copy-fraction",
        type=float,
        default=defaults.copy_fraction,
        help="fraction of samples that are near-copies of training points",
    )
    p.add_argument("--threads", type=int, default=defaults.threads, help="0: all cores")
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--quick", action="store_true", help=f"small config {QUICK}")
    p.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    add_output_args(p, DEFAULT_JSON)
    p.add_argument("--memory-probe", choices=METHODS, default=None, help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None) -> dict | None:
    """Command-line entry point; returns the result dict (None for a memory probe).

    Raises SystemExit(1) after printing the table if the searches disagree.
    """
    args = _parser().parse_args(argv)
    defaults = BenchConfig()
    size = QUICK if args.quick else {k: getattr(defaults, k) for k in ("m", "n", "d")}
    cfg = BenchConfig(
        m=args.m if args.m is not None else size["m"],
        n=args.n if args.n is not None else size["n"],
        d=args.d if args.d is not None else size["d"],
        repeats=args.repeats,
        dtype=args.dtype,
        copy_fraction=args.copy_fraction,
        threads=args.threads,
        seed=args.seed,
    )
    run = functools.partial(run_benchmark, memory=not args.no_memory)
    return finish_main(cfg, args, run, format_report, DEFAULT_JSON, probe=_memory_probe)


if __name__ == "__main__":
    main()
