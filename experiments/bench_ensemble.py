"""Benchmark: one batched width sweep (MLPEnsemble) against a loop over separate networks.

The width-vs-n study (Thm 5.1) trains a grid of widths on the same data. ``MLPEnsemble``
runs all members as a few batched matmuls over one flat parameter; this script trains it
for ``--steps`` AdamW steps and, for comparison, each width as its own ``ScoreMLP`` for
the same steps on the same batches, and prints the time ratio (sequential / batched; the
issue's target is >= 5). The task is a regression of the network output onto a fixed
target, as in a capacity fit; batch, widths, depth and the AdamW implementation (the
same in both arms) are options. No assertion is made on the timing: it is printed.

The default is the realistic sweep: widths 4..1024 (geometric) x 2 seeds, d = 8,
batch 256. Measured on 2 CPU cores (AVX-512, torch 2.13, quiet machine), per step:
depth 1 about 12-16 ms sequential vs 3-5 ms batched (ratio 3-4); depth 2 is
compute-bound by the width-1024 members (2 x 256 x 1024^2 x 6 flops per step in both
arms), ratio ~1. Sweeps of small widths (8..128 x 3, depth 1) are bound by per-call
overhead: ratio ~6.

Run: python -m experiments.bench_ensemble [--widths 4,8,...,1024 --repeat-widths 2
     --depth 1 --steps 200 --batch 256 --d 8 --adamw default]
"""

from __future__ import annotations

import argparse
import time

import torch

from theory.networks import MLPEnsemble, ScoreMLP


def _batches(d: int, batch: int, steps: int, seed: int) -> list[tuple[torch.Tensor, ...]]:
    """The same (x, t, target) batches for both methods: x (batch, d), t (batch,), target."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        x = torch.randn(batch, d, generator=g)
        t = torch.exp(torch.empty(batch).uniform_(-7, 1, generator=g))
        out.append((x, t, torch.tanh(x)))
    return out


ADAMW = {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def time_batched(widths: list[int], depth: int, data, d: int, adamw: str = "default") -> float:
    """Seconds for len(data) AdamW steps of one MLPEnsemble holding all widths."""
    ens = MLPEnsemble(d, widths, depth=depth, parametrization="score")
    opt = torch.optim.AdamW(ens.parameters(), lr=1e-3, **ADAMW[adamw])
    start = time.perf_counter()
    for x, t, y in data:
        loss = (ens.raw(x, t) - y).square().mean(dim=(1, 2)).sum()  # members add up
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - start


def time_sequential(
    widths: list[int], depth: int, data, d: int, adamw: str = "default"
) -> float:
    """Seconds for the same steps with each width trained as its own ScoreMLP."""
    start = time.perf_counter()
    for w in widths:
        net = ScoreMLP(d, w, depth, parametrization="score")
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3, **ADAMW[adamw])
        for x, t, y in data:
            loss = (net.raw(x, t) - y).square().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m experiments.bench_ensemble")
    parser.add_argument("--widths", default="4,8,16,32,64,128,256,512,1024")
    parser.add_argument("--repeat-widths", type=int, default=2,
                        help="each width this many times (e.g. seeds)")
    parser.add_argument("--depth", type=int, default=1)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--d", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--adamw", choices=sorted(ADAMW), default="default",
                        help="AdamW implementation, the same in both arms")
    args = parser.parse_args(argv)
    widths = [int(w) for w in args.widths.split(",")] * args.repeat_widths
    data = _batches(args.d, args.batch, args.steps, args.seed)
    time_batched(widths, args.depth, data[:5], args.d, args.adamw)  # warm-up
    batched = time_batched(widths, args.depth, data, args.d, args.adamw)
    sequential = time_sequential(widths, args.depth, data, args.d, args.adamw)
    ratio = sequential / batched
    print(f"{len(widths)} members, widths {sorted(set(widths))}, depth {args.depth}, "
          f"{args.steps} steps, batch {args.batch}, AdamW {args.adamw}, "
          f"threads {torch.get_num_threads()}")
    print(f"batched {batched:.3f} s   sequential {sequential:.3f} s   ratio {ratio:.2f} "
          f"(target >= 5: {'met' if ratio >= 5 else 'not met'})")
    return {"batched_s": batched, "sequential_s": sequential, "ratio": ratio}


if __name__ == "__main__":
    main()
