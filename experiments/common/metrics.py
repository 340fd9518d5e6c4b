"""Memorization and generalization metrics of the paper's experiments (§6).

A generated x is *memorized* when ||x - x_(1)||^2 <= (1/9) ||x - x_(2)||^2, x_(k) its k-th
nearest training point (Yoon et al. 2023, Gu et al. 2023); the memorization ratio is the
fraction of generated samples that are memorized. The nearest-neighbour search here is
exact and streamed over the training set in chunks and over the samples in blocks (never
the full m x n matrix; working memory independent of n): a matmul ranks candidates, and
the best few are re-measured by explicit differences so that rounding in
||x||^2 - 2 x.y + ||y||^2 cannot flip the ratio.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from theory._checks import check_int, check_matrix
from theory.loss_gap import Estimate
from theory.mixtures import GaussianMixture

__all__ = [
    "MEMORIZATION_THRESHOLD",
    "two_nearest",
    "nearest_ratio",
    "memorization_ratio",
    "extreme_memorization_n",
    "mean_log_likelihood",
]

MEMORIZATION_THRESHOLD = 1 / 9
_CANDIDATES = 8  # ranked by matmul, then re-measured exactly
_BLOCK = 2**22  # elements of one (queries x chunk) distance block, and of one re-measure block
_QUERY_ROWS = 2048  # queries per distance block; the chunk of training points fills the rest


def two_nearest(
    samples: torch.Tensor, train: torch.Tensor, chunk_size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Squared distances to the nearest and second-nearest training points and the nearest's
    index: (d1 (m,), d2 (m,), idx (m,)) for samples (m, d) and train (n, d), n >= 2.

    Exact: the k = 8 best candidates of each sample are ranked by ||y||^2 - 2 x.y (one
    ``addmm`` per block of rows = min(m, 2,048) samples x ``chunk_size`` training points,
    the running best k kept in the block's first columns so that one ``topk`` merges them),
    then re-measured by explicit differences (ties between equally near points are broken
    arbitrarily). ``chunk_size`` defaults to 2^22 / rows rounded down to a multiple of 64
    (2,048 for m >= 2,048): a block row length that is a multiple of 8 floats and not a power
    of two keeps BLAS at full speed. d1 and d2 carry gradients when an input requires them
    (the search itself selects and has none).

    Working memory beyond inputs and outputs is bounded independently of n: one buffer of
    max(rows x (8 + chunk_size), 8 x d) elements (about 2^22, 16 MiB in float32, by default)
    reused for the distance blocks and the re-measured differences (blocks of
    max(1, 2^22 / (8 d)) samples), plus the candidates (m x 8 values and int64 indices, 96
    bytes per float32 sample) and O(rows x 8 + chunk_size) small temporaries. Never the
    (m x n) matrix, nor (m x 8 x d).
    """
    check_matrix(samples, "samples")
    check_matrix(train, "train", cols=samples.shape[1], dtype=samples.dtype)
    if chunk_size is not None:
        check_int(chunk_size, "chunk_size", 1)
    n = train.shape[0]
    if n < 2:
        raise ValueError(f"train must hold n >= 2 points for a nearest-neighbour ratio, got {n}")
    (m, d), dtype, dev = samples.shape, samples.dtype, samples.device
    k = min(_CANDIDATES, n)
    rows = min(m, _QUERY_ROWS)
    size = min(n, chunk_size or max(64, _BLOCK // rows // 64 * 64))
    step = min(m, max(1, _BLOCK // (k * d)))  # samples per re-measure block
    work = torch.empty(max(rows * (k + size), step * k * d), dtype=dtype, device=dev)
    with torch.no_grad():  # ranking only selects (and writes into work, which needs no_grad)
        best_i = _candidates(samples, train, k, rows, size, work)
    # Re-measure the candidates by explicit differences; d1, d2 keep gradients if asked for.
    differentiable = torch.is_grad_enabled() and (samples.requires_grad or train.requires_grad)
    d1 = torch.empty(m, dtype=dtype, device=dev)
    d2 = torch.empty_like(d1)
    idx = torch.empty(m, dtype=torch.long, device=dev)
    for q in range(0, m, step):
        cand, x = best_i[q : q + step], samples[q : q + step, None]  # (s, k), (s, 1, d)
        s = cand.shape[0]
        if differentiable:
            exact = (train[cand] - x).square().sum(-1)  # (s, k), allocates (s, k, d)
        else:
            diff = work[: s * k * d].view(s * k, d)
            torch.index_select(train, 0, cand.flatten(), out=diff)
            exact = diff.view(s, k, d).sub_(x).square_().sum(-1)  # (s, k)
        exact, pos = exact.sort(dim=1)
        d1[q : q + s], d2[q : q + s] = exact[:, 0], exact[:, 1]
        idx[q : q + s] = cand.gather(1, pos[:, :1])[:, 0]
    return d1, d2, idx


def _candidates(
    samples: torch.Tensor, train: torch.Tensor, k: int, rows: int, size: int, work: torch.Tensor
) -> torch.Tensor:
    """Indices (m, k) of the k training points of least ||y||^2 - 2 x.y for each sample x.

    Blocks of ``rows`` samples x ``size`` training points; ``work`` holds >= rows x (k + size)
    elements, viewed as (rows, k + size): the running best k of each sample in its first
    columns, one addmm into the rest, then one topk merges both.
    """
    (m, _), n = samples.shape, train.shape[0]
    grid = work[: rows * (k + size)].view(rows, k + size)
    best_d = torch.empty((m, k), dtype=samples.dtype, device=samples.device)
    best_i = torch.empty((m, k), dtype=torch.long, device=samples.device)
    kept = 0  # candidates per sample so far: min(k, points seen)
    for lo in range(0, n, size):
        chunk = train[lo : lo + size]  # (c, d)
        c = chunk.shape[0]
        sq = torch.linalg.vector_norm(chunk, dim=1).square_()  # (c,) ||y||^2
        for q in range(0, m, rows):
            x = samples[q : q + rows]  # (r, d)
            r = x.shape[0]
            block = grid[:r, k - kept : k + c]  # (r, kept + c)
            block[:, :kept] = best_d[q : q + r, :kept]
            # ||x - y||^2 up to the per-row constant ||x||^2, which does not change the ranking
            torch.addmm(sq, x, chunk.T, alpha=-2, out=block[:, kept:])
            top_d, pos = block.topk(min(k, kept + c), dim=1, largest=False)  # (r, k')
            top_i = pos + (lo - kept)
            if kept:
                old = best_i[q : q + r].gather(1, pos.clamp_max(kept - 1))
                top_i = torch.where(pos < kept, old, top_i)
            best_d[q : q + r, : top_d.shape[1]] = top_d
            best_i[q : q + r, : top_i.shape[1]] = top_i
        kept = min(k, kept + c)
    return best_i


def nearest_ratio(samples: torch.Tensor, train: torch.Tensor) -> torch.Tensor:
    """Per-sample ratio ||x - x_(1)||^2 / ||x - x_(2)||^2 in [0, 1], shape (m,).

    d2 = 0 means the sample sits on a duplicated training point: ratio 0 (memorized)."""
    d1, d2, _ = two_nearest(samples, train)
    return torch.where(d2 > 0, d1 / d2.clamp_min(torch.finfo(d2.dtype).tiny), 0.0)


def memorization_ratio(
    samples: torch.Tensor, train: torch.Tensor, threshold: float = MEMORIZATION_THRESHOLD
) -> float:
    """Fraction of samples with d1^2 <= threshold * d2^2 (paper §6: threshold 1/9)."""
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    return float((nearest_ratio(samples, train) <= threshold).double().mean())


def extreme_memorization_n(
    ns: Sequence[int], ratios: Sequence[float], level: float = 0.9
) -> int | None:
    """EMM: the largest training-set size n whose memorization ratio is >= level (Gu et al.)."""
    if len(ns) != len(ratios):
        raise ValueError(f"ns and ratios must have equal length, got {len(ns)}, {len(ratios)}")
    hits = [n for n, r in zip(ns, ratios, strict=True) if r >= level]
    return max(hits) if hits else None


def mean_log_likelihood(samples: torch.Tensor, mixture: GaussianMixture) -> Estimate:
    """Mean log p_data(x) of samples (m, d) under the true mixture, with its standard error."""
    check_matrix(samples, "samples", cols=mixture.d)
    return Estimate.from_draws(mixture.log_prob(samples.to(mixture.dtype), 0.0))
