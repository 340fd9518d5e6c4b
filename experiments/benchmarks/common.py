"""Measuring code the benchmarks share: round-robin timing with CPU share, peak memory of one
call in a fresh process, the environment, targets and ratios as reported, JSON output.

Used by the four benchmarks of this package (``experiments.benchmarks.scores``,
``.metrics``, ``.ensemble`` and ``.dit``); each benchmark module documents what it measures
and why, this module only how. Every benchmark ends in ``finish_main``, which prints its
report and writes its JSON (config, environment with provenance, the measured numbers,
ratios, agreement and targets) to its default file in figures/ (``figures/bench_<name>.json``)
unless ``--quick``, ``--no-json`` or ``--json PATH`` says otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import torch

from experiments.common.runs import REPO_ROOT, provenance

__all__ = [
    "FIGURES_DIR",
    "n_cores",
    "load_average",
    "environment",
    "time_methods",
    "matmul_peak",
    "timing_table",
    "peak_readings",
    "measure_call_peak",
    "run_memory_probes",
    "config_args",
    "safe_ratio",
    "target_entry",
    "target_lines",
    "write_json",
    "add_output_args",
    "output_path",
    "finish_main",
]

# Where every benchmark writes its JSON by default (figures/bench_<name>.json, committed).
FIGURES_DIR = REPO_ROOT / "figures"


def n_cores() -> int:
    """Number of CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def load_average() -> float | None:
    """The 1-minute load average of the machine (None where the OS has none): taken before
    a run, it says whether other work was running."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def environment(**extra: object) -> dict:
    """Provenance (versions, commit, hardware; ``experiments.common.runs.provenance``) plus
    the torch threads, machine and processor, updated with ``extra`` (e.g. the load average
    before the run, the device): the "environment" entry of every benchmark's JSON."""
    env = provenance()
    env.update({
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "processor": platform.processor(),
    })
    env.update(extra)
    return env


def time_methods(
    fns: dict[str, Callable[[], object]], repeats: int
) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Wall-clock seconds of ``repeats`` calls of each fn, after one untimed warm-up each.

    The methods take turns (round robin), so that a slow spell of the machine (another
    job, a clock change) falls on all of them rather than on one. Also returns, per method,
    the CPU share: process CPU time / (wall time x torch threads), summed over the timed
    calls; well below 1 means the timings did not get the cores to themselves.
    """
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    cpu = dict.fromkeys(fns, 0.0)
    for _ in range(repeats):
        for name, fn in fns.items():
            cpu_start, start = time.process_time(), time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
            cpu[name] += time.process_time() - cpu_start
    threads = torch.get_num_threads()
    share = {name: cpu[name] / (threads * sum(times[name])) for name in fns}
    return times, share


def matmul_peak(size: int, device: torch.device, repeats: int = 3, iters: int = 10,
                dtype: torch.dtype = torch.bfloat16) -> float:
    """Measured matmul rate in FLOP/s: median over repeats of ``iters`` size^3 matmuls.

    One untimed warm-up call first; each timed call ends with a CUDA synchronize. The DiT
    benchmark measures the bf16 peak on CUDA (a CPU bf16 matmul is no peak), the ensemble
    benchmark the float32 peak of the CPU.
    """
    if size < 1 or repeats < 1 or iters < 1:
        raise ValueError(f"size, repeats and iters must be >= 1, got {size}, {repeats}, {iters}")
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, generator=gen, device=device, dtype=dtype)
    b = torch.randn(size, size, generator=gen, device=device, dtype=dtype)
    c = torch.empty(size, size, device=device, dtype=dtype)

    def call() -> None:
        for _ in range(iters):
            torch.mm(a, b, out=c)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    times, _ = time_methods({"mm": call}, repeats)
    return 2 * size**3 * iters / statistics.median(times["mm"])

def timing_table(
    labels: dict[str, str], times: dict[str, list[float]], gflop: float,
    cpu_share: dict[str, float], memory_mib: dict[str, float],
) -> list[str]:
    """Lines of the table every benchmark prints: per method (in the order of ``labels``)
    the median, min-max seconds, GFLOP/s for ``gflop`` per call, CPU share and peak extra
    memory; then a warning when a CPU share below 0.75 says the timings shared the cores."""
    lines = [f"{'method':<36} {'median s':>9} {'min-max s':>15} {'GFLOP/s':>8} "
             f"{'CPU share':>9} {'peak extra MiB':>15}"]
    for m, label in labels.items():
        med = statistics.median(times[m])
        mib = f"{memory_mib[m]:.1f}" if m in memory_mib else "-"
        lines.append(
            f"{label:<36} {med:>9.3f} {min(times[m]):>7.3f}-{max(times[m]):<7.3f} "
            f"{gflop / med:>8.1f} {cpu_share[m]:>9.2f} {mib:>15}"
        )
    busy = [m for m in labels if cpu_share[m] < 0.75]
    if busy:
        lines.append(
            f"WARNING: CPU share < 0.75 for {', '.join(busy)}: other work shared the cores, "
            "so these times (and ratios) are not reliable; rerun on a quiet machine."
        )
    return lines


def _maxrss_mib() -> float:
    """Peak resident set size of this process so far, in MiB (ru_maxrss is KiB on Linux)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def _hwm_mib() -> float | None:
    """VmHWM (peak RSS of this address space) from /proc/self/status in MiB, None off Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Reset this process's peak RSS to its current RSS (Linux: /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def peak_readings() -> tuple[float, float | None]:
    """(ru_maxrss, VmHWM) of this process in MiB; VmHWM is None off Linux."""
    return _maxrss_mib(), _hwm_mib()


def measure_call_peak(
    call: Callable[[], object],
    setup: tuple[tuple[float, float | None], tuple[float, float | None]] | None = None,
    not_reset_note: str = "an earlier peak may hide the call's",
) -> dict[str, float | str | None]:
    """Peak RSS growth in MiB caused by one ``call()`` in this process, for a memory probe.

    Call it once the data exist and the thread pool runs. On Linux the peak is first reset
    to the current RSS, so that neither earlier temporaries nor the parent's peak (which
    ru_maxrss inherits across exec) hide the call's own peak. ru_maxrss is the measure;
    should it still read above this address space's own peak (VmHWM), VmHWM is used.
    ``setup``: optional (before, after) ``peak_readings()`` around a one-time setup, reported
    as setup_extra_mib with the same counter. Returns counter, before_mib, after_mib,
    extra_mib and setup_extra_mib (None without setup).
    """
    reset = _reset_peak()
    before = peak_readings()
    call()
    after = peak_readings()
    inherited = before[1] is not None and before[0] > before[1] + 1.0
    i, counter = (1, "VmHWM") if inherited else (0, "ru_maxrss")
    if not reset:
        counter += f" (peak not reset: {not_reset_note})"
    return {
        "counter": counter,
        "before_mib": before[i],
        "after_mib": after[i],
        "extra_mib": after[i] - before[i],
        "setup_extra_mib": None if setup is None else setup[1][i] - setup[0][i],
    }


def run_memory_probes(module: str, methods: Sequence[str], args: Sequence[str]) -> dict[str, dict]:
    """Run ``python -m MODULE --memory-probe METHOD ARGS...`` once per method, all at once.

    Each probe is a fresh process that measures only itself and prints one JSON dict as its
    last line of output; returns those dicts by method. The repository root is put on
    PYTHONPATH, and glibc's mmap threshold is fixed at 64 KiB (see below). Raises
    RuntimeError with the end of its stderr if a probe fails.
    """
    env = dict(os.environ)
    root = str(REPO_ROOT)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    # glibc: serve every block >= 64 KiB by its own mmap and unmap it on free, so resident
    # memory follows live memory (otherwise freed blocks stay resident and are reused, and
    # a call's peak depends on what was freed before the baseline).
    env["MALLOC_MMAP_THRESHOLD_"] = str(64 * 1024)
    procs = {}
    for method in methods:
        cmd = [sys.executable, "-m", module, "--memory-probe", method]
        procs[method] = subprocess.Popen(
            cmd + list(args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
    results = {}
    for method, proc in procs.items():
        stdout, stderr = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"memory probe for {method!r} failed:\n{stderr[-2000:]}")
        results[method] = json.loads(stdout.strip().splitlines()[-1])
    return results


def config_args(cfg: object) -> list[str]:
    """A config dataclass as command-line options ``--field=value``, one per field."""
    return [f"--{k}={v}" for k, v in asdict(cfg).items()]


def safe_ratio(num: float | None, den: float | None) -> float | None:
    """num / den (num clipped at 0), or None when either is missing or den <= 0."""
    if num is None or den is None or den <= 0:
        return None
    return max(num, 0.0) / den


def target_entry(value: float | None, bound: float) -> dict:
    """A target as reported: its value, its bound, and whether value <= bound (met)."""
    return {"value": value, "bound": bound, "met": value is not None and value <= bound}


def target_lines(targets: dict[str, dict]) -> list[str]:
    """The report's lines for ``target_entry`` targets: name, value, bound, met or not."""
    lines = []
    for name, tgt in targets.items():
        value = "-" if tgt["value"] is None else f"{tgt['value']:.3f}"
        lines.append(f"  {name:<40} {value:>9} (bound {tgt['bound']:.3g})  "
                     f"{'met' if tgt['met'] else 'NOT met'}")
    return lines


def write_json(path: Path, obj: dict) -> None:
    """Write obj as JSON atomically (temp file in the same folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as f:
        json.dump(obj, f, indent=2)
        tmp = Path(f.name)
    tmp.replace(path)


def add_output_args(p: argparse.ArgumentParser, default_json: Path) -> None:
    """The output options every benchmark has: ``--json PATH`` (default ``default_json``,
    its file in figures/, except under ``--quick``) and ``--no-json``."""
    rel = default_json.relative_to(REPO_ROOT) if default_json.is_relative_to(REPO_ROOT) else (
        default_json)
    p.add_argument("--json", type=Path, default=None,
                   help=f"write the numbers here (default {rel}; with --quick: nowhere)")
    p.add_argument("--no-json", action="store_true", help="write no JSON file")


def output_path(args: argparse.Namespace, default_json: Path) -> Path | None:
    """Where the numbers go: None under ``--no-json``, else ``--json`` if given, else
    ``default_json``, except that a ``--quick`` run (a small size, for tests and a first
    look) writes nothing by default, so that it never replaces the committed full-size
    results."""
    if args.no_json:
        return None
    if args.json is not None:
        return args.json
    return None if getattr(args, "quick", False) else default_json


def finish_main(
    cfg: object, args: argparse.Namespace, run: Callable[[object], dict],
    report: Callable[[dict], str], default_json: Path,
    probe: Callable[[object, str], dict] | None = None,
) -> dict | None:
    """The end of a benchmark's command line, the same for every benchmark: as a memory
    probe (hidden ``--memory-probe METHOD``, benchmarks with a ``probe`` only) print
    probe(cfg, METHOD) as JSON and stop; otherwise run(cfg), print report(result), write
    the JSON to ``output_path(args, default_json)``, and raise SystemExit(1) after printing
    if the result's agreement check says its methods computed different things."""
    if probe is not None and args.memory_probe is not None:
        print(json.dumps(probe(cfg, args.memory_probe)))
        return None
    res = run(cfg)
    print(report(res))
    path = output_path(args, default_json)
    if path is not None:
        write_json(path, res)
        print(f"\nwrote {path}")
    if "agreement" in res and not res["agreement"]["agree"]:
        raise SystemExit(1)
    return res
