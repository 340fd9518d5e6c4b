"""The GPU campaign: one command for the minutes a lent GPU gives (one H200, about 9 minutes
of work per session), with step counts calibrated from throughput measured on that machine.

    python -m experiments.gpu_campaign --plan   # probe throughput, print the plan, run nothing
    python -m experiments.gpu_campaign          # probe, plan, run: everything into figures/gpu/
    python -m experiments.gpu_campaign --tiny --device cpu --out /tmp/c   # the CPU test size

1. *Probe*: a few timed training steps and sampler passes of each model the campaign runs
   (``experiments.benchmarks.dit.run_benchmark`` at a small size): seconds per training
   step and per forward pass, on this device, in its precision (bf16 autocast on CUDA).
2. *Plan*: the time of each part from those rates. The benchmark part has a fixed size.
   The DiT study (``experiments.dit_pruning``, profile ``gpu``: CIFAR-10, n = 500,
   DiT-S/4) gets what is left of the budget, less a safety margin; its training and
   fine-tuning steps are scaled down together (keeping their ratio) until the estimate
   fits, and never above the profile's. Sampling cost is kept: fewer samples would widen
   every interval, fewer steps would change what a memorized sample is.
3. *Run*: the DiT-S/2 benchmark at batch 256 (model FLOP/s against the measured bf16 matmul
   peak; target >= 40%), then the calibrated DiT study; ``campaign.json`` records the
   hardware, the probe, the plan and each part's estimated and measured seconds, so the
   next plan can be checked against this one.

Not (yet) in the campaign: the width-vs-n and Gaussian-mixture profiles (their small MLPs
need their own probe), and ``torch.compile`` / attention-kernel variants of the benchmark.

On the GPU machine CIFAR-10 is read from the repository's ignored data/ folder: export a
subset there first and carry it (README, "GPU campaign").
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from experiments import dit_pruning
from experiments.benchmarks.common import environment
from experiments.benchmarks.dit import BenchConfig, run_benchmark
from experiments.common.config import check_device
from experiments.common.runs import REPO_ROOT, apply_overrides, atomic_write_json, execute

__all__ = ["Rates", "Plan", "probe", "dit_study_seconds", "make_plan", "run", "main"]

OUT = REPO_ROOT / "figures" / "gpu"
BUDGET_S = 540.0  # 9 of the 15 device minutes: the rest is start-up, transfers and a rerun
MARGIN = 0.8  # plan to use this share of what is left after the probe
# The parts at full size and at the tiny (CPU test) size: the benchmarked model and its
# batch, the DiT study's profile, and the steps of the probe's timed calls.
SIZES = {
    "full": {"bench_model": "DiT-S/2", "bench_batch": 256, "bench_steps": 10,
             "bench_passes": 10, "bench_repeats": 3, "profile": "gpu", "probe_steps": 3},
    "tiny": {"bench_model": "smoke", "bench_batch": 16, "bench_steps": 2,
             "bench_passes": 2, "bench_repeats": 1, "profile": "smoke", "probe_steps": 2},
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


@dataclass
class Plan:
    """What the campaign will run and how long each part should take (seconds)."""

    size: str
    device: str
    budget_s: float
    probe_s: float
    bench_s: float
    study_overrides: list[str]
    study_s: float

    @property
    def total_s(self) -> float:
        return self.probe_s + self.bench_s + self.study_s

    def describe(self) -> str:
        """The plan as a few lines for the terminal."""
        return "\n".join([
            f"GPU campaign ({self.size} size) on {self.device}: budget {self.budget_s:.0f} s",
            f"  probe (measured)         {self.probe_s:7.1f} s",
            f"  benchmark (estimated)    {self.bench_s:7.1f} s",
            f"  DiT study (estimated)    {self.study_s:7.1f} s  "
            f"(profile {SIZES[self.size]['profile']}, {', '.join(self.study_overrides)})",
            f"  total                    {self.total_s:7.1f} s",
        ])


def make_plan(size: str, device: str, budget_s: float) -> tuple[Plan, dict]:
    """Probe both models, then fit the DiT study into the budget (module docstring).

    Returns the plan and the probe's rates (for campaign.json). ValueError when even the
    benchmark and one tenth of the study's steps do not fit.
    """
    s = SIZES[size]
    profile = dit_pruning.PROFILES[s["profile"]]
    start = time.perf_counter()
    bench_rates = probe(s["bench_model"], s["bench_batch"], s["probe_steps"], device)
    study_rates = probe(s["profile"], profile["batch"], s["probe_steps"], device)
    probe_s = time.perf_counter() - start
    # run_benchmark: one FLOP-counting step and pass, then repeats + 1 timed calls each
    bench_s = (s["bench_repeats"] + 2) * (s["bench_steps"] * bench_rates.step_s
                                           + s["bench_passes"] * bench_rates.pass_s)
    left = MARGIN * (budget_s - probe_s) - bench_s
    if left <= 0:
        raise ValueError(f"budget_s={budget_s:g} is too small: the probe took {probe_s:.1f} s "
                         f"and the benchmark needs {bench_s:.1f} s")
    scale = 1.0
    while True:
        steps = max(1, int(profile["steps"] * scale))
        finetune = max(1, int(profile["finetune_steps"] * scale))
        overrides = [f"steps={steps}", f"finetune_steps={finetune}"]
        study_s = dit_study_seconds(apply_overrides(profile, overrides), study_rates)
        if study_s <= left:
            break
        if scale < 0.1:
            raise ValueError(
                f"budget_s={budget_s:g} is too small: the benchmark ({bench_s:.0f} s) and a "
                f"tenth of the DiT study's steps ({study_s:.0f} s) need more")
        scale *= 0.9
    rates = {"bench": vars(bench_rates), "study": vars(study_rates)}
    return Plan(size, device, budget_s, probe_s, bench_s, overrides, study_s), rates


def run(plan: Plan, rates: dict, out: Path) -> dict:
    """Run the planned parts into ``out``; write and return campaign.json's content."""
    s = SIZES[plan.size]
    record = {"hardware": environment(device=plan.device, device_name=(
                  torch.cuda.get_device_name() if plan.device.startswith("cuda") else "cpu")),
              "plan": {**vars(plan), "total_s": plan.total_s}, "probe_rates": rates,
              "parts": {}}
    start = time.perf_counter()
    bench = run_benchmark(BenchConfig(
        model=s["bench_model"], batch=s["bench_batch"], steps=s["bench_steps"],
        sample_passes=s["bench_passes"], repeats=s["bench_repeats"], device=plan.device,
        **({"peak_size": 1024} if plan.size == "tiny" else {})))
    atomic_write_json(out / "bench_dit.json", bench)
    record["parts"]["benchmark"] = {"estimated_s": plan.bench_s,
                                    "wall_s": time.perf_counter() - start,
                                    "file": "bench_dit.json", "mfu": bench["mfu"]}
    start = time.perf_counter()
    overrides = [*plan.study_overrides, f"device={plan.device!r}"]
    execute(dit_pruning, s["profile"], overrides, out_dir=out, force=True)
    record["parts"]["dit_pruning"] = {"estimated_s": plan.study_s,
                                      "wall_s": time.perf_counter() - start,
                                      "overrides": overrides, "file": "dit_pruning.json"}
    atomic_write_json(out / "campaign.json", record)
    return record


def main(argv: Sequence[str] | None = None) -> dict | None:
    """Command line: --plan, --tiny, --device, --budget-s, --out."""
    p = argparse.ArgumentParser(prog="python -m experiments.gpu_campaign",
                                description=__doc__.split("\n")[0])
    p.add_argument("--plan", action="store_true", help="probe and print the plan, run nothing")
    p.add_argument("--tiny", action="store_true", help="the tiny size (tests, CPU)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda[:k]")
    p.add_argument("--budget-s", type=float, default=BUDGET_S,
                   help=f"seconds for probe and parts together (default {BUDGET_S:g})")
    p.add_argument("--out", type=Path, default=OUT, help="output folder (default figures/gpu/)")
    args = p.parse_args(argv)
    try:
        check_device(args.device, "--device")
        if not args.budget_s > 0:
            raise ValueError(f"--budget-s must be > 0, got {args.budget_s}")
    except ValueError as err:
        p.error(str(err))
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        plan, rates = make_plan("tiny" if args.tiny else "full", device, args.budget_s)
    except ValueError as err:  # the budget cannot hold the campaign
        p.error(str(err))
    print(plan.describe())
    if args.plan:
        return None
    record = run(plan, rates, args.out)
    for name, part in record["parts"].items():
        print(f"{name}: {part['wall_s']:.1f} s (estimated {part['estimated_s']:.1f} s)")
    return record


if __name__ == "__main__":
    main()
