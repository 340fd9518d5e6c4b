"""Speed and memory benchmarks: each times the suite's way of computing something against
what it cannot avoid and/or what it replaces, checks first that they compute the same
thing, and reports ratios against the issue's targets (no assertion on the timing).

- ``scores``:   the streaming empirical score (theory.empirical) vs two bare matmuls and a
  full-matrix cdist+softmax reference; time, peak memory, agreement.
- ``metrics``:  the streaming memorization search (experiments.common.metrics.two_nearest)
  vs a bare matmul and a full-matrix cdist+topk reference; time, peak memory, agreement.
- ``ensemble``: one batched width sweep (theory.networks.MLPEnsemble) vs a loop over
  separate ScoreMLPs from the same weights; time, agreement of the losses.
- ``dit``:      DiT training and sampling throughput, model FLOPs and, on CUDA, utilization
  of the measured bf16 matmul peak.

Run one with ``python -m experiments.benchmarks.<name>`` (e.g. ``.scores``) or all four with
``make bench`` (on a quiet machine: the CPU share next to each time says whether the
timings got their cores). Each writes every number (config, environment with versions and
commit, times, ratios, agreement, targets) to ``figures/bench_<name>.json``; ``--quick``
runs a small size and writes no file unless ``--json PATH``, ``--no-json`` writes none.
``common`` is the measuring code they share.
"""
