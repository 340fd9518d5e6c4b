"""Memorization and generalization metrics of the paper's experiments (§6).

A generated x is *memorized* when ||x - x_(1)||^2 <= (1/9) ||x - x_(2)||^2, x_(k) its k-th
nearest training point (Yoon et al. 2023, Gu et al. 2023); the memorization ratio is the
fraction of generated samples that are memorized. The nearest-neighbour search here is
exact and streamed over the training set in chunks (never the full m x n matrix): a
matmul ranks candidates, and the best few are re-measured by explicit differences so
that rounding in ||x||^2 - 2 x.y + ||y||^2 cannot flip the ratio.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from theory._checks import check_matrix
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
_BLOCK = 2**22  # elements of one (queries x chunk) distance block


def two_nearest(
    samples: torch.Tensor, train: torch.Tensor, chunk_size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Squared distances to the nearest and second-nearest training points and the nearest's
    index: (d1 (m,), d2 (m,), idx (m,)) for samples (m, d) and train (n, d), n >= 2."""
    check_matrix(samples, "samples")
    check_matrix(train, "train", cols=samples.shape[1], dtype=samples.dtype)
    n = train.shape[0]
    if n < 2:
        raise ValueError(f"train must hold n >= 2 points for a nearest-neighbour ratio, got {n}")
    k = min(_CANDIDATES, n)
    size = chunk_size or max(k, _BLOCK // max(1, samples.shape[0]))
    sq_train = train.square().sum(1)
    m, dev = samples.shape[0], samples.device
    best_d = torch.full((m, 0), math.inf, dtype=samples.dtype, device=dev)
    best_i = torch.zeros((m, 0), dtype=torch.long, device=dev)
    for lo in range(0, n, size):
        # ||x - y||^2 up to the per-row constant ||x||^2, which does not change the ranking
        part = sq_train[lo : lo + size] - 2 * samples @ train[lo : lo + size].T
        d = torch.cat([best_d, part], dim=1)
        cols = torch.arange(lo, lo + part.shape[1], device=dev).expand_as(part)
        i = torch.cat([best_i, cols], dim=1)
        best_d, pos = d.topk(min(k, d.shape[1]), dim=1, largest=False)
        best_i = i.gather(1, pos)
    exact = (samples[:, None] - train[best_i]).square().sum(-1)  # (m, k), explicit differences
    exact, pos = exact.sort(dim=1)
    return exact[:, 0], exact[:, 1], best_i.gather(1, pos[:, :1])[:, 0]


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
