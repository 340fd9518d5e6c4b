"""Benchmark: one batched width sweep (MLPEnsemble) against a loop over separate networks.

The width-vs-n study (Thm 5.1) trains a grid of widths on the same data. ``MLPEnsemble``
lays all members side by side in shared tensors so that a sweep is one model; this
script trains it for ``--steps`` AdamW steps and, for comparison, each width as its own
``ScoreMLP`` for the same steps on the same batches, and prints the time ratio
(sequential / batched; the issue's target is >= 5). The task is a regression of the
network output onto a fixed target, as in a capacity fit; batch, widths and depth
are options. No assertion is made on the timing: it is printed.

Run: python -m experiments.bench_ensemble [--widths 8,16,32,64,128 --repeat-widths 3
     --depth 1 --steps 200 --batch 256 --d 8]
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


def time_batched(widths: list[int], depth: int, data, d: int) -> float:
    """Seconds for len(data) AdamW steps of one MLPEnsemble holding all widths."""
    ens = MLPEnsemble(d, widths, depth=depth, parametrization="score")
    opt = torch.optim.AdamW(ens.parameters(), lr=1e-3)
    start = time.perf_counter()
    for x, t, y in data:
        loss = (ens.raw(x, t) - y).square().mean(dim=(1, 2)).sum()  # members add up
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - start


def time_sequential(widths: list[int], depth: int, data, d: int) -> float:
    """Seconds for the same steps with each width trained as its own ScoreMLP."""
    start = time.perf_counter()
    for w in widths:
        net = ScoreMLP(d, w, depth, parametrization="score")
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
        for x, t, y in data:
            loss = (net.raw(x, t) - y).square().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m experiments.bench_ensemble")
    parser.add_argument("--widths", default="8,16,32,64,128,256,512")
    parser.add_argument("--repeat-widths", type=int, default=1,
                        help="each width this many times (e.g. seeds)")
    parser.add_argument("--depth", type=int, default=1)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--d", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    widths = [int(w) for w in args.widths.split(",")] * args.repeat_widths
    data = _batches(args.d, args.batch, args.steps, args.seed)
    time_batched(widths, args.depth, data[:5], args.d)  # warm-up
    batched = time_batched(widths, args.depth, data, args.d)
    sequential = time_sequential(widths, args.depth, data, args.d)
    ratio = sequential / batched
    print(f"{len(widths)} members, widths {sorted(set(widths))}, depth {args.depth}, "
          f"{args.steps} steps, batch {args.batch}, threads {torch.get_num_threads()}")
    print(f"batched {batched:.3f} s   sequential {sequential:.3f} s   ratio {ratio:.2f} "
          f"(target >= 5: {'met' if ratio >= 5 else 'not met'})")
    return {"batched_s": batched, "sequential_s": sequential, "ratio": ratio}


if __name__ == "__main__":
    main()
