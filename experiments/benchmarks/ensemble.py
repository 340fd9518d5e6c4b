"""Benchmark: one batched width sweep (MLPEnsemble) against a loop over separate networks.

The width-vs-n study (Thm 5.1) trains a grid of widths on the same data. ``MLPEnsemble``
runs all members as a few batched matmuls over one flat parameter; this script trains it
for ``steps`` AdamW steps and, for comparison, each member as its own ``ScoreMLP`` (a loop
over the members) for the same steps on the same batches, and reports the time ratio
sequential / batched (the issue's target is >= 5). The task is a regression of the network
output onto a fixed target, as in a capacity fit; batch, widths, depth and the AdamW
implementation (the same in both arms) are options. No assertion is made on the timing:
it is reported.

So that the benchmark cannot silently compare different computations, both arms start
from the same weights: the members of ``MLPEnsemble(d, widths, depth, seed=seed)`` (the
batched arm loads them with ``MLPEnsemble.from_members``, the loop trains copies). Member
g's loss in the batched arm is then the loss of the separate network g up to float
rounding: equal at the first step (same weights, same batch), and close after the last one
(same gradients, and AdamW is elementwise). In float32 the rounding differences of the
batched matmuls grow over the steps, fast enough with width-1024 hidden-to-hidden layers
(depth 2: 2e-3 after 200 steps) that a float32 tolerance cannot tell them from a real
difference. So the verdict comes from an untimed float64 replay of both arms on the same
batches, where rounding stays near 1e-15: the largest relative difference of a member's
loss, at the first and at the last step, must stay below ``AGREEMENT_TOL``. The timed
float32 arms' differences are reported beside it as their rounding drift.

Times are the median of ``repeats`` whole training runs after one untimed warm-up each
(building the model and optimizer, a few ms, included), the two arms taking turns
(``experiments.benchmarks.common.time_methods``), with torch using all cores (or
``threads``); the CPU share printed next to them shows whether they got the cores. GFLOP/s
counts the model FLOPs of the members' own parameters, about 6 x batch x parameters per
step (forward and backward), the same in both arms (the batched arm's padding is not
counted).

The default is the realistic sweep: widths 4..1024 (geometric) x 2 seeds, d = 8,
batch 256. Measured on 2 CPU cores (AVX-512, torch 2.13, quiet machine), per step:
depth 1 about 12-16 ms sequential vs 3-5 ms batched (ratio 3-4); depth 2 is
compute-bound by the width-1024 members (2 x 256 x 1024^2 x 6 flops per step in both
arms), ratio ~1. Sweeps of small widths (8..128 x 3, depth 1) are bound by per-call
overhead: ratio ~6.

What any layout could reach: the batched arm cannot train faster than its model FLOPs at
the machine's float32 matmul peak (measured: the median rate of ``PEAK_SIZE``^3 float32
matmuls on the same threads), so sequential time / (FLOPs / peak) bounds the ratio from
above. Where that bound is below the target, no layout meets the target on this machine:
the loop over separate networks is already close to the peak (the wide members' matmuls are
large enough). Both arms' shares of the peak are reported too.

Run ``python -m experiments.benchmarks.ensemble`` [--widths 4,8,...,1024 --repeat-widths 2
--depth 1 --steps 200 --batch 256 --d 8 --adamw default] (writes every number to
figures/bench_ensemble.json), or ``--quick`` (a tiny sweep for tests; writes no file
unless ``--json PATH``); ``--no-json`` writes none.
"""

from __future__ import annotations

import argparse
import copy
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from experiments.benchmarks.common import (
    FIGURES_DIR,
    add_output_args,
    environment,
    finish_main,
    load_average,
    matmul_peak,
    n_cores,
    target_entry,
    target_lines,
    time_methods,
    timing_table,
)
from theory.networks import MLPEnsemble, ScoreMLP, mlp_param_count

__all__ = [
    "BenchConfig",
    "QUICK",
    "ADAMW",
    "make_batches",
    "initial_members",
    "train_batched",
    "train_sequential",
    "max_relative_difference",
    "run_benchmark",
    "format_report",
    "main",
]

MODULE = "experiments.benchmarks.ensemble"
DEFAULT_JSON = FIGURES_DIR / "bench_ensemble.json"
# The target: sequential / batched time at least this.
TARGET_RATIO = 5.0
# Largest relative difference of a member's loss between the arms (first and last step)
# accepted as "the same computation", in the float64 replay (rounding only).
AGREEMENT_TOL = 1e-9
LR = 1e-3
EMB_DIM = 16  # the LogTimeEmbedding size of ScoreMLP and MLPEnsemble (their default)
ADAMW = {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}
QUICK = {"widths": (4, 8, 16), "repeat_widths": 2, "steps": 8, "batch": 32}
PEAK_SIZE = 1024  # n of the float32 n x n x n matmuls whose rate is the CPU's peak


@dataclass(frozen=True)
class BenchConfig:
    """The sweep (each of ``widths`` ``repeat_widths`` times, depth, dimension d), the
    training (steps, batch, AdamW implementation) and the protocol (repeats, threads)."""

    widths: tuple[int, ...] = (4, 8, 16, 32, 64, 128, 256, 512, 1024)
    repeat_widths: int = 2
    depth: int = 1
    steps: int = 200
    batch: int = 256
    d: int = 8
    repeats: int = 3
    adamw: str = "default"
    threads: int = 0  # 0: all cores this process may run on
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        if not self.widths or min(self.widths) < 1:
            raise ValueError(f"widths must be positive integers, got {self.widths}")
        for name in ("repeat_widths", "depth", "steps", "batch", "d", "repeats"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.adamw not in ADAMW:
            raise ValueError(f"adamw must be one of {sorted(ADAMW)}, got {self.adamw!r}")
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0 (0: all cores), got {self.threads}")

    @property
    def members(self) -> list[int]:
        """The width of each member: ``widths`` repeated ``repeat_widths`` times."""
        return list(self.widths) * self.repeat_widths


def make_batches(cfg: BenchConfig) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The same ``steps`` batches for both arms: x (batch, d) ~ N(0, I), t (batch,)
    log-uniform on [e^-7, e], target tanh(x) (batch, d)."""
    g = torch.Generator().manual_seed(cfg.seed)
    out = []
    for _ in range(cfg.steps):
        x = torch.randn(cfg.batch, cfg.d, generator=g)
        t = torch.exp(torch.empty(cfg.batch).uniform_(-7, 1, generator=g))
        out.append((x, t, torch.tanh(x)))
    return out


def initial_members(cfg: BenchConfig) -> list[ScoreMLP]:
    """The starting weights of both arms: the members of
    ``MLPEnsemble(d, cfg.members, depth, parametrization="score", seed=cfg.seed)``."""
    with torch.random.fork_rng(devices=[]):  # MLPEnsemble seeds the global generator
        ens = MLPEnsemble(cfg.d, cfg.members, cfg.depth, EMB_DIM, "score", seed=cfg.seed)
    return [ens.member(g) for g in range(ens.G)]


def train_batched(members: Sequence[ScoreMLP], data, adamw: str = "default") -> torch.Tensor:
    """AdamW steps on all members at once as one MLPEnsemble (the sum of their losses).

    Returns each member's loss (mean squared error) at every step, shape (steps, G).
    """
    ens = MLPEnsemble.from_members(members)
    opt = torch.optim.AdamW(ens.parameters(), lr=LR, **ADAMW[adamw])
    losses = []
    for x, t, y in data:
        member_loss = (ens.raw(x, t) - y).square().mean(dim=(1, 2))  # (G,)
        opt.zero_grad(set_to_none=True)
        member_loss.sum().backward()  # members share no weight: each gets its own gradient
        opt.step()
        losses.append(member_loss.detach())
    return torch.stack(losses)


def train_sequential(
    members: Sequence[ScoreMLP], data, adamw: str = "default"
) -> torch.Tensor:
    """The same steps with a copy of each member trained as its own ScoreMLP, one after the
    other. Returns each member's loss at every step, shape (steps, G)."""
    per_member = []
    for member in members:
        net = copy.deepcopy(member)
        opt = torch.optim.AdamW(net.parameters(), lr=LR, **ADAMW[adamw])
        losses = []
        for x, t, y in data:
            loss = (net.raw(x, t) - y).square().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.detach())
        per_member.append(torch.stack(losses))
    return torch.stack(per_member, dim=1)


def max_relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / |b| over the entries (losses are positive), in float64."""
    a, b = a.double(), b.double()
    return ((a - b).abs() / b.abs()).max().item()


def run_benchmark(cfg: BenchConfig) -> dict:
    """Time both arms, compare their losses; return every number.

    Returns a JSON-ready dict with keys config, environment, members, gflop_per_call,
    times_s (lists per arm), cpu_share, median_s, ratios, losses (first and last step, per
    member and arm), agreement and targets (each with value, bound and met).
    """
    threads_before = torch.get_num_threads()
    torch.set_num_threads(cfg.threads or n_cores())
    try:
        return _run(cfg)
    finally:
        torch.set_num_threads(threads_before)


def _run(cfg: BenchConfig) -> dict:
    load_before = load_average()
    data = make_batches(cfg)
    members = initial_members(cfg)
    losses: dict[str, torch.Tensor] = {}

    def batched() -> None:
        losses["batched"] = train_batched(members, data, cfg.adamw)

    def sequential() -> None:
        losses["sequential"] = train_sequential(members, data, cfg.adamw)

    times, share = time_methods({"batched": batched, "sequential": sequential}, cfg.repeats)
    median = {m: statistics.median(ts) for m, ts in times.items()}
    ratio = median["sequential"] / median["batched"]

    b, s = losses["batched"], losses["sequential"]
    members64 = [copy.deepcopy(m).double() for m in members]
    data64 = [(x.double(), t.double(), y.double()) for x, t, y in data]
    b64 = train_batched(members64, data64, cfg.adamw)
    s64 = train_sequential(members64, data64, cfg.adamw)
    agreement = {
        "tolerance": AGREEMENT_TOL,
        "dtype": "float64",
        "first_step": max_relative_difference(b64[0], s64[0]),
        "last_step": max_relative_difference(b64[-1], s64[-1]),
        "float32_first_step": max_relative_difference(b[0], s[0]),
        "float32_last_step": max_relative_difference(b[-1], s[-1]),
    }
    agreement["max_difference"] = max(agreement["first_step"], agreement["last_step"])
    agreement["agree"] = agreement["max_difference"] <= AGREEMENT_TOL

    params = [mlp_param_count(cfg.d + EMB_DIM, w, cfg.depth, cfg.d) for w in cfg.members]
    flop = 6 * cfg.batch * sum(params) * cfg.steps
    peak = matmul_peak(PEAK_SIZE, torch.device("cpu"), repeats=cfg.repeats, dtype=torch.float32)
    return {
        "config": asdict(cfg),
        "environment": environment(load_average_1min_before=load_before),
        "members": {"widths": cfg.members, "parameters": params},
        "gflop_per_call": flop / 1e9,
        "times_s": times,
        "cpu_share": share,
        "median_s": median,
        "ratios": {"sequential_over_batched": ratio, "batched_over_sequential": 1 / ratio},
        "peak": {"float32_matmul_flop_per_s": peak, "size": PEAK_SIZE,
                 "share": {arm: flop / (median[arm] * peak) for arm in median},
                 # the ratio if the batched arm ran its model FLOPs at the peak
                 "ratio_bound": median["sequential"] * peak / flop},
        "losses": {
            f"{arm}_{step}": losses[arm][i].tolist()
            for arm in ("batched", "sequential")
            for step, i in (("first", 0), ("last", -1))
        },
        "agreement": agreement,
        "targets": {
            f"batched <= 1/{TARGET_RATIO:g} x sequential time": target_entry(
                1 / ratio, 1 / TARGET_RATIO
            ),
        },
    }


def format_report(res: dict) -> str:
    """The results of ``run_benchmark`` as a small plain-text table."""
    cfg, env, pk = res["config"], res["environment"], res["peak"]
    widths = sorted(set(cfg["widths"]))
    load = env["load_average_1min_before"] or float("nan")
    lines = [
        f"{len(res['members']['widths'])} members, widths {widths} x {cfg['repeat_widths']}, "
        f"depth {cfg['depth']}, d={cfg['d']}, {cfg['steps']} steps, batch {cfg['batch']}, "
        f"AdamW {cfg['adamw']}, seed={cfg['seed']} threads={env['threads']} "
        f"torch={env['torch']} load(1 min, before)={load:.2f}",
        f"median of {cfg['repeats']} training runs (round robin, after one warm-up each); "
        f"{res['gflop_per_call']:.1f} GFLOP per run",
        "",
    ]
    labels = {"batched": "batched (MLPEnsemble)", "sequential": "loop over ScoreMLPs"}
    lines += timing_table(labels, res["times_s"], res["gflop_per_call"], res["cpu_share"], {})
    a = res["agreement"]
    lines += [
        "",
        f"sequential / batched time = ratio {res['ratios']['sequential_over_batched']:.2f}",
        f"float32 matmul peak {pk['float32_matmul_flop_per_s'] / 1e9:.1f} GFLOP/s "
        f"({pk['size']}^3): batched at {pk['share']['batched']:.0%} of it, sequential at "
        f"{pk['share']['sequential']:.0%}; no layout beats ratio {pk['ratio_bound']:.2f} here "
        "(the batched arm's FLOPs at the peak)",
        "",
        f"agreement (float64 replay): max relative difference of a member's loss, tolerance "
        f"{a['tolerance']:g}: first step {a['first_step']:.2e}, last step {a['last_step']:.2e}"
        f" (float32 rounding drift of the timed arms: {a['float32_first_step']:.2e}, "
        f"{a['float32_last_step']:.2e})",
        "  -> losses agree"
        if a["agree"]
        else "  -> LOSSES DISAGREE: the timings compare different computations",
        "",
        "targets:",
    ]
    return "\n".join(lines + target_lines(res["targets"]))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"python -m {MODULE}",
        description="Benchmark one batched width sweep (MLPEnsemble) against a loop over "
        "separate ScoreMLPs (time, agreement of the losses).",
    )
    d = BenchConfig()
    p.add_argument("--widths", default=None,
                   help=f"comma-separated (default {','.join(map(str, d.widths))})")
    p.add_argument("--repeat-widths", "--repeat_widths", dest="repeat_widths", type=int,
                   default=None, help=f"each width this many times, e.g. seeds "
                   f"(default {d.repeat_widths})")
    p.add_argument("--depth", type=int, default=d.depth)
    p.add_argument("--steps", type=int, default=None, help=f"AdamW steps (default {d.steps})")
    p.add_argument("--batch", type=int, default=None, help=f"default {d.batch}")
    p.add_argument("--d", type=int, default=d.d)
    p.add_argument("--repeats", type=int, default=d.repeats, help="timed runs")
    p.add_argument("--adamw", choices=sorted(ADAMW), default=d.adamw,
                   help="AdamW implementation, the same in both arms")
    p.add_argument("--threads", type=int, default=d.threads, help="0: all cores")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--quick", action="store_true", help=f"tiny sweep for tests {QUICK}")
    add_output_args(p, DEFAULT_JSON)
    return p


def main(argv: Sequence[str] | None = None) -> dict:
    """Command-line entry point; prints the report, writes the JSON, returns the result.

    Raises SystemExit(1) after printing the report if the two arms' losses disagree.
    """
    args = _parser().parse_args(argv)
    d = BenchConfig()
    size = QUICK if args.quick else {k: getattr(d, k) for k in QUICK}
    chosen = {
        "widths": None if args.widths is None else [int(w) for w in args.widths.split(",")],
        "repeat_widths": args.repeat_widths,
        "steps": args.steps,
        "batch": args.batch,
    }
    cfg = BenchConfig(
        depth=args.depth,
        d=args.d,
        repeats=args.repeats,
        adamw=args.adamw,
        threads=args.threads,
        seed=args.seed,
        **{k: size[k] if v is None else v for k, v in chosen.items()},
    )
    return finish_main(cfg, args, run_benchmark, format_report, DEFAULT_JSON)


if __name__ == "__main__":
    main()
