"""The GPU campaign: one command for the minutes a lent GPU gives (one H200, about 9 minutes
of work per session), with sizes calibrated from throughput measured on that machine.

    python -m experiments.gpu_campaign --plan   # probe throughput, print the plan, run nothing
    python -m experiments.gpu_campaign          # probe, plan, run: everything into figures/gpu/
    python -m experiments.gpu_campaign --parts width_vs_n,gmm_sweeps   # a later session's turn
    python -m experiments.gpu_campaign --tiny --device cpu --out /tmp/c   # the CPU test size

The parts, in the order they run (``--parts`` picks some; the default is all):

- ``benchmark``: DiT-S/2 at batch 256 in bf16 (model FLOP/s against the measured bf16 matmul
  peak; target >= 40%), once per variant: eager with torch's choice of attention kernel,
  the flash kernel forced, and ``torch.compile`` (inductor). Fixed size.
- ``dit_pruning``: the Table 1 study's ``gpu`` profile (CIFAR-10, n = 500, DiT-S/4), its
  training and fine-tuning steps scaled down together (keeping their ratio) until the
  estimate fits, never above the profile's. Sampling cost is kept: fewer samples would widen
  every interval, fewer sampler steps would change what a memorized sample is.
- ``width_vs_n`` and ``gmm_sweeps`` (the Thm 5.1 width study and Fig. 3 on Gaussian
  mixtures), each at the largest of a few fixed *cuts* of its ``gpu`` profile (``LADDERS``,
  largest first) whose estimate fits its share. Their step counts are never scaled: the
  width study reads W* at a plateau, and memorization needs its training length. A study
  no cut of which fits is skipped, and the plan says how long its smallest cut would take.

1. *Probe*: timed calls of every part's largest unit on this device, in its precision
   (bf16 autocast for the DiTs on CUDA): seconds per DiT training step and sampler pass
   (``experiments.benchmarks.dit.run_benchmark`` at a small size); for each MLP study, its
   largest unit (the deepest, widest sweep at the largest n; the widest network at the
   largest n, and its exact references) at two step counts, after a warm-up call, which
   gives fixed seconds plus seconds per step. Every other unit is smaller, so its estimate
   is an upper bound.
2. *Plan*: the benchmark's seconds from the probe's rates (plus a fixed allowance for
   compiling, ``SIZES[...]["compile_s"]``); what is left (less a safety margin) is shared by weight
   (``WEIGHTS``) between the studies; the MLP studies take the largest cut within their
   share, and the DiT study gets everything they leave.
3. *Run*: each part in turn into ``--out``; ``campaign.json`` (rewritten after every part)
   records the hardware, the probe, the plan and each part's estimated and measured seconds,
   so the next plan can be checked against this one. A part that fails is recorded with its
   error and the campaign goes on to the next (a lent GPU's minutes do not come back); the
   command then exits with status 1.

On the GPU machine CIFAR-10 is read from the repository's ignored data/ folder: export a
subset there first and carry it (README, "The GPU campaign").
"""

from __future__ import annotations

import argparse
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import ModuleType

import torch

from experiments import dit_pruning, gmm_sweeps, width_vs_n
from experiments.benchmarks.common import environment
from experiments.benchmarks.dit import BenchConfig, run_benchmark
from experiments.common.config import check_device, validate_experiment_config
from experiments.common.runs import REPO_ROOT, apply_overrides, atomic_write_json, execute

__all__ = ["PARTS", "WEIGHTS", "LADDERS", "Rates", "UnitCost", "Ladder", "Plan", "probe",
           "dit_study_seconds", "bench_seconds", "make_plan", "run", "main"]

OUT = REPO_ROOT / "figures" / "gpu"
BUDGET_S = 540.0  # 9 of the 15 device minutes: the rest is start-up, transfers and a rerun
MARGIN = 0.8  # plan to use this share of what is left after the probe
PARTS = ("benchmark", "dit_pruning", "width_vs_n", "gmm_sweeps")  # in the order they run
# How the studies share what the probe and the benchmark leave (normalized over the chosen
# studies); the MLP studies' unused share goes to the DiT study.
WEIGHTS = {"dit_pruning": 2.0, "width_vs_n": 1.0, "gmm_sweeps": 1.0}
# The parts at full size and at the tiny (CPU test) size: the benchmarked model, its batch
# and variants, the seconds allowed for compiling it, the profiles of the studies, and the
# steps of the probe's timed calls. The tiny size compiles with dynamo's "eager" backend
# (tracing, no code generation): inductor takes about a minute on 2 CPU cores.
SIZES = {
    "full": {"bench_model": "DiT-S/2", "bench_batch": 256, "bench_steps": 10,
             "bench_passes": 10, "bench_repeats": 3, "profile": "gpu", "probe_steps": 3,
             "variants": {"eager": {}, "flash": {"attention": "flash"},
                          "compiled": {"compile": "inductor"}},
             "compile_s": 90.0},
    "tiny": {"bench_model": "smoke", "bench_batch": 16, "bench_steps": 2,
             "bench_passes": 2, "bench_repeats": 1, "profile": "smoke", "probe_steps": 2,
             "variants": {"eager": {}, "flash": {"attention": "flash"},
                          "compiled": {"compile": "eager"}},
             "compile_s": 10.0},
}


@dataclass(frozen=True)
class Rates:
    """Measured seconds per training step (at the model's batch) and per sampler forward
    pass (at the same batch) of one model on this device."""

    step_s: float
    pass_s: float
    batch: int

    @classmethod
    def of(cls, result: dict) -> Rates:
        """From a run_benchmark result."""
        t = result["throughput"]
        return cls(1 / t["train_steps_per_s"], 1 / t["sample_forward_passes_per_s"],
                   result["config"]["batch"])


def probe(model: str, batch: int, steps: int, device: str) -> Rates:
    """Time ``steps`` training steps and sampler passes of ``model`` (a dit_pruning profile
    or an official DiT size) at ``batch`` on ``device`` (one timed call after a warm-up)."""
    cfg = BenchConfig(model=model, batch=batch, steps=steps, sample_passes=steps, repeats=1,
                      device=device, peak_size=1024)
    return Rates.of(run_benchmark(cfg))


def bench_seconds(size: str, rates: Rates) -> float:
    """Estimated seconds of the benchmark part at ``rates`` (the eager model's): every
    variant calls each workload repeats + 2 times (warm-up, timed calls, finiteness check),
    plus one step and pass for its first call and one for the FLOP count, counted as one
    more call (run_benchmark); the compiled variant also compiles (the size's compile_s)."""
    s = SIZES[size]
    one = (s["bench_repeats"] + 3) * (s["bench_steps"] * rates.step_s
                                       + s["bench_passes"] * rates.pass_s)
    compiled = sum(bool(v.get("compile")) for v in s["variants"].values())
    return len(s["variants"]) * one + compiled * s["compile_s"]


def dit_study_seconds(config: dict, rates: Rates) -> float:
    """Estimated seconds of ``dit_pruning.compute`` for ``config`` at ``rates``: every
    training, fine-tuning and importance step, and every sampler pass (samples in batches
    of the probe's batch); data loading and features are left to the safety margin."""
    sweep = len([e for e in sorted({config["eta"], *config["etas"]}) if e > 0])
    steps, passes = 0, 0
    for seed in range(config["seeds"]):
        etas = sweep if seed < config["sweep_seeds"] else 1
        models = 2 + 2 * etas  # original, fine-tuned control, importance and random per eta
        steps += config["steps"] + config["finetune_steps"] * (models - 1)
        steps += 2 * config["importance_batches"]
        batches = -(-config["samples"] // rates.batch)
        passes += models * batches * config["sampler_steps"]
    return steps * rates.step_s * config["batch"] / rates.batch + passes * rates.pass_s


# -- the MLP studies: the largest cut that fits ---------------------------------------------------


@dataclass(frozen=True)
class UnitCost:
    """Seconds of one unit of an MLP study at most: fixed_s + step_s x its training steps
    (from its largest unit timed at two step counts), plus extra_s for each unit of another
    kind (gmm_sweeps: the exact references of one (d, n) and seed; none for width_vs_n)."""

    fixed_s: float
    step_s: float
    extra_s: float = 0.0

    @classmethod
    def from_two(cls, steps: tuple[int, int], seconds: tuple[float, float],
                 extra_s: float = 0.0) -> UnitCost:
        """The line through two timings; a noisy pair (the longer run no slower) falls back
        to the longer run's seconds per step with no fixed part, an upper bound."""
        (s1, s2), (t1, t2) = steps, seconds
        step_s = (t2 - t1) / (s2 - s1)
        if step_s <= 0:
            return cls(0.0, t2 / s2, extra_s)
        return cls(max(t1 - step_s * s1, 0.0), step_s, extra_s)


def _timed(call: Callable[[], object], device: str) -> float:
    start = time.perf_counter()
    call()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def _width_probe(config: dict, device: str, steps: tuple[int, int]) -> UnitCost:
    """Time the width study's largest sweep: the deepest net, the largest n, the empirical
    target on the time interval (r on t_points times), at two caps (no budget check)."""
    depth = max(*config["depths"], *config["interval_depths"], config["dup_depth"])

    def call(cap: int) -> Callable[[], dict]:
        cfg = {**config, "steps": cap, "doublings": 0, "device": device}
        return lambda: width_vs_n.sweep(cfg, max(config["ns"]), 0, "empirical", depth,
                                        tuple(config["t_interval"]), 0)

    _timed(call(steps[0]), device)  # warm-up: first CUDA calls, allocator, kernels
    return UnitCost.from_two(steps, (_timed(call(steps[0]), device),
                                     _timed(call(steps[1]), device)))


def _width_seconds(config: dict, cost: UnitCost) -> float:
    sweeps = len(width_vs_n.sweep_lines(config)) * config["seeds"]
    return sweeps * (cost.fixed_s + cost.step_s * config["steps"])


def _mixture_probe(config: dict, device: str, steps: tuple[int, int]) -> UnitCost:
    """Time Fig. 3's largest network (the widest, at the largest n of the main dimension,
    trained, sampled and measured, never cached) at two step counts, and its references."""
    d, n = config["d_main"], max(config["ns"])

    def call(cap: int) -> Callable[[], dict]:
        cfg = {**config, "steps": cap, "cache": False, "device": device}
        return lambda: gmm_sweeps.run_network(cfg, d, n, max(config["widths"]),
                                              config["weight_decay"], 0)

    _timed(call(steps[0]), device)
    first, second = _timed(call(steps[0]), device), _timed(call(steps[1]), device)
    refs = _timed(lambda: gmm_sweeps.run_references({**config, "device": device}, d, n, 0),
                  device)
    return UnitCost.from_two(steps, (first, second), refs)


def _mixture_seconds(config: dict, cost: UnitCost) -> float:
    seeds = config["seeds"]
    return (len(gmm_sweeps.jobs(config)) * seeds * (cost.fixed_s + cost.step_s * config["steps"])
            + len(gmm_sweeps.reference_pairs(config)) * seeds * cost.extra_s)


@dataclass(frozen=True)
class Ladder:
    """An MLP study run at the largest of its cuts that fits: per size, the profile and its
    cuts (label -> overrides, largest first); how to probe a config's largest unit and
    estimate a config's seconds from that; the step counts of the probe."""

    module: ModuleType
    profiles: dict[str, str]
    cuts: dict[str, dict[str, tuple[str, ...]]]
    probe: Callable[[dict, str, tuple[int, int]], UnitCost]
    seconds: Callable[[dict, UnitCost], float]
    probe_steps: dict[str, tuple[int, int]]

    def config(self, size: str, overrides: Sequence[str]) -> dict:
        """The profile of ``size`` with ``overrides``, validated."""
        config = apply_overrides(self.module.PROFILES[self.profiles[size]], overrides)
        validate_experiment_config(self.module, config)
        return config


_WIDTH_NS = "ns=[4, 8, 16, 32, 64, 128, 256]"
LADDERS = {
    "width_vs_n": Ladder(
        width_vs_n, {"full": "gpu", "tiny": "smoke"},
        {"full": {"n 4-1024, depths 2-3": (),
                  "n 4-256, depths 2-3": (_WIDTH_NS,),
                  "n 4-256, depth 2": (_WIDTH_NS, "depths=[2]"),
                  "n 4-64, depth 2, widths to 512": ("ns=[4, 8, 16, 32, 64]", "depths=[2]",
                                                     "max_width_deep=512")},
         "tiny": {"smoke": (), "smoke, one training set": ("seeds=1",)}},
        _width_probe, _width_seconds, {"full": (200, 400), "tiny": (100, 200)}),
    "gmm_sweeps": Ladder(
        gmm_sweeps, {"full": "gpu", "tiny": "smoke"},
        {"full": {"n 16-1024, widths 64-2048": (),
                  "n 16-1024, widths 64-512": ("widths=[64, 128, 256, 512]",),
                  "n 16-256, widths 64-512 (the quick grid)": (
                      "ns=[16, 32, 64, 128, 256]", "widths=[64, 128, 256, 512]")},
         "tiny": {"smoke": (), "smoke, one training set": ("seeds=1",)}},
        _mixture_probe, _mixture_seconds, {"full": (100, 300), "tiny": (20, 60)}),
}


def choose_cut(ladder: Ladder, size: str, share_s: float, cost: UnitCost) -> dict:
    """The largest cut of ``ladder`` whose estimate at ``cost`` fits ``share_s``: a dict
    with its label (None when no cut fits), overrides, estimated seconds, the share, and
    every cut's estimate (for the record)."""
    estimates = {label: ladder.seconds(ladder.config(size, ov), cost)
                 for label, ov in ladder.cuts[size].items()}
    for label, overrides in ladder.cuts[size].items():
        if estimates[label] <= share_s:
            return {"cut": label, "overrides": list(overrides), "estimated_s": estimates[label],
                    "share_s": share_s, "estimates_s": estimates}
    return {"cut": None, "overrides": [], "estimated_s": 0.0, "share_s": share_s,
            "estimates_s": estimates}


# -- the plan -------------------------------------------------------------------------------------


@dataclass
class Plan:
    """What the campaign will run and how long each part should take (seconds)."""

    size: str
    device: str
    budget_s: float
    parts: tuple[str, ...]
    probe_s: float
    bench_s: float
    study_overrides: list[str]
    study_s: float
    ladders: dict[str, dict] = field(default_factory=dict)

    @property
    def total_s(self) -> float:
        return (self.probe_s + self.bench_s + self.study_s
                + sum(p["estimated_s"] for p in self.ladders.values()))

    def describe(self) -> str:
        """The plan as a few lines for the terminal."""
        s = SIZES[self.size]
        lines = [f"GPU campaign ({self.size} size) on {self.device}: budget {self.budget_s:.0f} s",
                 f"  probe (measured)         {self.probe_s:7.1f} s"]
        if "benchmark" in self.parts:
            lines.append(f"  benchmark (estimated)    {self.bench_s:7.1f} s  ({s['bench_model']}"
                         f", batch {s['bench_batch']}; {', '.join(s['variants'])})")
        if "dit_pruning" in self.parts:
            lines.append(f"  DiT study (estimated)    {self.study_s:7.1f} s  (profile "
                         f"{s['profile']}, {', '.join(self.study_overrides)})")
        for name, p in self.ladders.items():
            if p["cut"] is None:
                smallest = min(p["estimates_s"].values())
                lines.append(f"  {name:<24} skipped: no cut fits its {p['share_s']:.0f} s "
                             f"(the smallest needs {smallest:.0f} s)")
            else:
                lines.append(f"  {name + ' (estimated)':<24} {p['estimated_s']:7.1f} s  "
                             f"(profile {LADDERS[name].profiles[self.size]}, {p['cut']})")
        lines.append(f"  total                    {self.total_s:7.1f} s")
        return "\n".join(lines)


def make_plan(size: str, device: str, budget_s: float,
              parts: Sequence[str] = PARTS) -> tuple[Plan, dict]:
    """Probe the chosen parts, then fit them into the budget (module docstring).

    Returns the plan and the probe's results (for campaign.json). ValueError when the probe
    and the benchmark use up the budget, or the DiT study does not fit at a tenth of its
    steps.
    """
    s = SIZES[size]
    profile = dit_pruning.PROFILES[s["profile"]]
    studies = [p for p in parts if p in WEIGHTS]
    start = time.perf_counter()
    rates: dict = {}
    if "benchmark" in parts:
        rates["bench"] = probe(s["bench_model"], s["bench_batch"], s["probe_steps"], device)
    if "dit_pruning" in parts:
        rates["study"] = probe(s["profile"], profile["batch"], s["probe_steps"], device)
    for name in studies:
        if name in LADDERS:
            ladder = LADDERS[name]
            largest = ladder.config(size, next(iter(ladder.cuts[size].values())))
            rates[name] = ladder.probe(largest, device, ladder.probe_steps[size])
    probe_s = time.perf_counter() - start
    bench_s = bench_seconds(size, rates["bench"]) if "benchmark" in parts else 0.0
    left = MARGIN * (budget_s - probe_s) - bench_s
    if left <= 0:
        raise ValueError(f"budget_s={budget_s:g} is too small: the probe took {probe_s:.1f} s "
                         f"and the benchmark needs {bench_s:.1f} s")
    total_weight = sum(WEIGHTS[p] for p in studies)
    ladders = {name: choose_cut(LADDERS[name], size, left * WEIGHTS[name] / total_weight,
                                rates[name])
               for name in studies if name in LADDERS}
    left -= sum(p["estimated_s"] for p in ladders.values())
    overrides, study_s = [], 0.0
    if "dit_pruning" in parts:
        scale = 1.0
        while True:
            steps = max(1, int(profile["steps"] * scale))
            finetune = max(1, int(profile["finetune_steps"] * scale))
            overrides = [f"steps={steps}", f"finetune_steps={finetune}"]
            study_s = dit_study_seconds(apply_overrides(profile, overrides), rates["study"])
            if study_s <= left:
                break
            if scale < 0.1:
                raise ValueError(
                    f"budget_s={budget_s:g} is too small: the benchmark ({bench_s:.0f} s) and "
                    f"a tenth of the DiT study's steps ({study_s:.0f} s) need more")
            scale *= 0.9
    record = {k: vars(v) for k, v in rates.items()}
    return Plan(size, device, budget_s, tuple(parts), probe_s, bench_s, overrides, study_s,
                ladders), record


# -- the run --------------------------------------------------------------------------------------


def _benchmark(plan: Plan, out: Path) -> dict:
    """Every variant of the benchmark, each into bench_dit[_<variant>].json; a variant that
    fails (a kernel this GPU lacks, a compiler error) is recorded and the others still run."""
    s = SIZES[plan.size]
    variants = {}
    for name, options in s["variants"].items():
        file = "bench_dit.json" if name == "eager" else f"bench_dit_{name}.json"
        try:
            res = run_benchmark(BenchConfig(
                model=s["bench_model"], batch=s["bench_batch"], steps=s["bench_steps"],
                sample_passes=s["bench_passes"], repeats=s["bench_repeats"], device=plan.device,
                **({"peak_size": 1024} if plan.size == "tiny" else {}), **options))
        except Exception as err:  # noqa: BLE001 (recorded; the other variants still run)
            variants[name] = {"error": f"{type(err).__name__}: {err}"}
            continue
        atomic_write_json(out / file, res)
        variants[name] = {"file": file, "mfu": res["mfu"], "first_call_s": res["first_call_s"],
                          "train_images_per_s": res["throughput"]["train_images_per_s"]}
    failed = [n for n, v in variants.items() if "error" in v]
    if len(failed) == len(variants):
        raise RuntimeError(f"every benchmark variant failed: {variants}")
    return {"estimated_s": plan.bench_s, "variants": variants}


def run(plan: Plan, rates: dict, out: Path) -> dict:
    """Run the planned parts into ``out``; write and return campaign.json's content (also
    written after every part). A failing part is recorded with its error ("error", and the
    traceback) and the next part runs."""
    s = SIZES[plan.size]
    record = {"hardware": environment(device=plan.device, device_name=(
                  torch.cuda.get_device_name() if plan.device.startswith("cuda") else "cpu")),
              "plan": {**vars(plan), "parts": list(plan.parts), "total_s": plan.total_s},
              "probe_rates": rates, "parts": {}}
    device = [f"device={plan.device!r}"]

    def study(module: ModuleType, profile: str, overrides: list[str], info: dict) -> dict:
        execute(module, profile, [*overrides, *device], out_dir=out, force=True)
        return {**info, "overrides": [*overrides, *device], "file": f"{module.NAME}.json"}

    jobs: list[tuple[str, Callable[[], dict]]] = []
    if "benchmark" in plan.parts:
        jobs.append(("benchmark", partial(_benchmark, plan, out)))
    if "dit_pruning" in plan.parts:
        jobs.append(("dit_pruning", partial(study, dit_pruning, s["profile"],
                                            plan.study_overrides,
                                            {"estimated_s": plan.study_s})))
    for name, p in plan.ladders.items():
        if p["cut"] is None:
            jobs.append((name, partial(dict, p, skipped="no cut fits its share")))
            continue
        ladder = LADDERS[name]
        jobs.append((name, partial(study, ladder.module, ladder.profiles[plan.size],
                                   p["overrides"], {"estimated_s": p["estimated_s"],
                                                    "cut": p["cut"]})))
    for name, job in jobs:
        start = time.perf_counter()
        try:
            part = job()
        except Exception as err:  # noqa: BLE001 (recorded; the next part still runs)
            part = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
        record["parts"][name] = {**part, "wall_s": time.perf_counter() - start}
        atomic_write_json(out / "campaign.json", record)
    return record


def main(argv: Sequence[str] | None = None) -> dict | None:
    """Command line: --plan, --tiny, --device, --budget-s, --parts, --out. Exits with status
    1 after the run when a part failed (campaign.json says which and why)."""
    p = argparse.ArgumentParser(prog="python -m experiments.gpu_campaign",
                                description=__doc__.split("\n")[0])
    p.add_argument("--plan", action="store_true", help="probe and print the plan, run nothing")
    p.add_argument("--tiny", action="store_true", help="the tiny size (tests, CPU)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda[:k]")
    p.add_argument("--budget-s", type=float, default=BUDGET_S,
                   help=f"seconds for probe and parts together (default {BUDGET_S:g})")
    p.add_argument("--parts", default=",".join(PARTS),
                   help=f"comma-separated parts to run, of {', '.join(PARTS)} (default: all)")
    p.add_argument("--out", type=Path, default=OUT, help="output folder (default figures/gpu/)")
    args = p.parse_args(argv)
    parts = tuple(x.strip() for x in args.parts.split(",") if x.strip())
    try:
        check_device(args.device, "--device")
        if not args.budget_s > 0:
            raise ValueError(f"--budget-s must be > 0, got {args.budget_s}")
        unknown = [x for x in parts if x not in PARTS]
        if unknown or not parts or len(set(parts)) < len(parts):
            raise ValueError(f"--parts must name distinct parts of {', '.join(PARTS)}, got "
                             f"{args.parts!r}")
    except ValueError as err:
        p.error(str(err))
    parts = tuple(x for x in PARTS if x in parts)  # they run in PARTS' order
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        plan, rates = make_plan("tiny" if args.tiny else "full", device, args.budget_s, parts)
    except ValueError as err:  # the budget cannot hold the campaign
        p.error(str(err))
    print(plan.describe())
    if args.plan:
        return None
    record = run(plan, rates, args.out)
    for name, part in record["parts"].items():
        if "skipped" in part:
            print(f"{name}: skipped ({part['skipped']})")
        elif "error" in part:
            print(f"{name}: FAILED after {part['wall_s']:.1f} s: {part['error']}")
        else:
            print(f"{name}: {part['wall_s']:.1f} s (estimated {part['estimated_s']:.1f} s)")
        for variant, v in part.get("variants", {}).items():
            mfu = v.get("mfu", {}).get("train")
            print(f"  {variant}: " + (f"FAILED: {v['error']}" if "error" in v else
                                      f"{v['train_images_per_s']:.0f} images/s, train MFU "
                                      + ("not measured (no GPU)" if mfu is None
                                         else f"{mfu:.1%}")))
    if any("error" in part for part in record["parts"].values()):
        raise SystemExit(1)
    return record


if __name__ == "__main__":
    main()
