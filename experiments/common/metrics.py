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
    "distance_ratio",
    "memorization_ratio",
    "extreme_memorization_n",
    "mean_log_likelihood",
    "energy_distance",
]

MEMORIZATION_THRESHOLD = 1 / 9
_CANDIDATES = 8  # ranked by matmul, then re-measured exactly
_BLOCK = 2**22  # elements of one (queries x chunk) distance block, and of one re-measure block
_QUERY_ROWS = 2048  # queries per distance block; the chunk of training points fills the rest
_SAFETY = 2.0  # factor on the worst-case rounding bound of the ranking (see two_nearest)
_F64_EPS = 2.0**-53  # unit roundoff of float64


def two_nearest(
    samples: torch.Tensor, train: torch.Tensor, chunk_size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Squared distances to the nearest and second-nearest training points and the nearest's
    index: (d1 (m,), d2 (m,), idx (m,)) for samples (m, d) and train (n, d), n >= 2. d1 and
    d2 are float64 whatever the input dtype, so that the ratio d1 / d2 of §6 is exact too.

    Exact for any input dtype, in three steps:

    1. *Rank* (fast): the k = 8 best candidates of each sample by ||y||^2 - 2 x.y in the
       input dtype (one ``addmm`` per block of rows = min(m, 2,048) samples x ``chunk_size``
       training points, the running best k kept in the block's first columns so that one
       ``topk`` merges them).
    2. *Re-measure*: the candidates' squared distances in float64 from explicit differences
       x - y (exact for float32 inputs), sorted there: this decides d1, d2 and which
       candidate is nearest.
    3. *Certify*: the rounding of step 1 is at most E = 2 (d + 2) u (max ||y||^2 + 2 ||x||
       max ||y||), u the unit roundoff of the ranking matmul (2^-24 in float32, 2^-11 under
       TF32). A point outside the k candidates ranked no better than the k-th, so it cannot
       be nearer than the second candidate when the k-th ranked value minus E is still
       >= d2 - ||x||^2 (or d2 = 0). Rows without this certificate (more than k training
       points within rounding of each other, e.g. near-duplicate float32 images on the
       0..255 scale) are searched again with the ranking in float64, and rows still
       uncertain after that (exact ties among more than k points) by brute-force float64
       differences against every training point.

    Ties between equally near points are broken arbitrarily. ``chunk_size`` defaults to
    2^22 / rows rounded down to a multiple of 64 (2,048 for m >= 2,048): a block row length
    that is a multiple of 8 floats and not a power of two keeps BLAS at full speed. d1 and d2
    carry gradients when an input requires them (the search itself selects and has none;
    d1 and d2 are then recomputed from (m, d) float64 differences).

    Working memory beyond inputs and outputs is bounded independently of n: one byte buffer
    of max(rows x (8 + chunk_size) elements, (16 + itemsize) x d bytes) (about 2^22
    elements, 16 MiB in float32, by default) reused for the distance blocks and the float64
    re-measure (blocks of max(1, buffer / ((16 + itemsize) d)) samples), plus the candidates
    (m x 8 values and int64 indices, 96 bytes per float32 sample) and O(rows x 8 +
    chunk_size + m) small temporaries. Never the (m x n) matrix, nor (m x 8 x d). The
    searches of step 3 run only on the uncertain rows, with buffers of the same size.
    """
    check_matrix(samples, "samples")
    check_matrix(train, "train", cols=samples.shape[1], dtype=samples.dtype)
    if chunk_size is not None:
        check_int(chunk_size, "chunk_size", 1)
    n = train.shape[0]
    if n < 2:
        raise ValueError(f"train must hold n >= 2 points for a nearest-neighbour ratio, got {n}")
    with torch.no_grad():  # the search only selects (and writes into buffers)
        d1, d2, idx, idx2 = _exact_search(samples, train, chunk_size)
    if torch.is_grad_enabled() and (samples.requires_grad or train.requires_grad):
        x = samples.double()  # (m, d)
        d1 = (train[idx].double() - x).square().sum(1)  # (m,) with gradients
        d2 = (train[idx2].double() - x).square().sum(1)
    return d1, d2, idx


def _exact_search(
    samples: torch.Tensor, train: torch.Tensor, chunk_size: int | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Steps 1-3 of two_nearest: (d1, d2) float64 (m,), indices of the nearest and the
    second nearest (m,) int64."""
    d1, d2, i1, i2, sure = _ranked_search(samples, train, chunk_size)
    todo = torch.nonzero(~sure).flatten()  # (u,) rows without a certificate
    if todo.numel() == 0:
        return d1, d2, i1, i2
    x = samples[todo].double()  # (u, d)
    if samples.dtype == torch.float64:  # ranking again in float64 would change nothing
        e1, e2, j1, j2 = _brute_force(x, train)
    else:
        e1, e2, j1, j2, sure2 = _ranked_search(x, train, chunk_size)
        last = torch.nonzero(~sure2).flatten()
        if last.numel():
            e1[last], e2[last], j1[last], j2[last] = _brute_force(x[last], train)
    d1[todo], d2[todo], i1[todo], i2[todo] = e1, e2, j1, j2
    return d1, d2, i1, i2


def _unit_roundoff(dtype: torch.dtype, device: torch.device) -> float:
    """Unit roundoff of a matmul in ``dtype`` on ``device`` (TF32/bf16 modes included)."""
    if dtype == torch.float32:
        if device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32:
            return 2.0**-11
        precision = torch.get_float32_matmul_precision()
        return {"highest": 2.0**-24, "high": 2.0**-11}.get(precision, 2.0**-8)
    return torch.finfo(dtype).eps / 2


def _ranked_search(
    samples: torch.Tensor, train: torch.Tensor, chunk_size: int | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Steps 1-2 ranked in samples.dtype (train is converted chunk by chunk when its dtype
    differs), and the certificate of step 3: (d1, d2) float64 (m,), the two nearest
    candidates' indices (m,) int64, and sure (m,) bool, True where they are certainly the
    two nearest of all n."""
    (m, d), n = samples.shape, train.shape[0]
    dtype, dev, item = samples.dtype, samples.device, samples.element_size()
    k = min(_CANDIDATES, n)
    rows = min(m, _QUERY_ROWS)
    convert = train.dtype != dtype  # then the converted chunk (size, d) lives in the buffer
    per_row = rows + d if convert else rows
    size = min(n, chunk_size or max(64, (_BLOCK - rows * k) // per_row // 64 * 64))
    grid_bytes = rows * (k + size) * item + (size * d * item if convert else 0)
    work = torch.empty(max(grid_bytes, (16 + train.element_size()) * d), dtype=torch.uint8,
                       device=dev)
    best_d, best_i, ymax2 = _candidates(samples, train, k, rows, size, work)
    exact, xx = _remeasure(samples, train, best_i, work)  # (m, k), (m,) float64
    del work
    exact, pos = exact.sort(dim=1, stable=True)
    nearest = best_i.gather(1, pos[:, :2])  # (m, 2)
    d1, d2 = exact[:, 0].contiguous(), exact[:, 1].contiguous()
    if k == n:  # every point was a candidate
        return d1, d2, nearest[:, 0], nearest[:, 1], torch.ones(m, dtype=torch.bool, device=dev)
    u = _unit_roundoff(dtype, dev)
    y2 = ymax2.double().clamp_min(0)
    slack = _SAFETY * (d + 2) * (u * (y2 + 2 * xx.sqrt() * y2.sqrt()) + _F64_EPS * (d2 + xx))
    sure = best_d[:, k - 1].double() - slack >= d2 - xx
    if (d + 2) * u >= 0.25:  # the rounding bound itself is meaningless (e.g. bf16, large d)
        sure.zero_()
    return d1, d2, nearest[:, 0], nearest[:, 1], sure | (d2 == 0)


def _candidates(
    samples: torch.Tensor, train: torch.Tensor, k: int, rows: int, size: int, work: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The k training points of least ||y||^2 - 2 x.y for each sample x, ranked in
    samples.dtype: their values (m, k) and indices (m, k) int64, and max ||y||^2 (0-d).

    Blocks of ``rows`` samples x ``size`` training points; ``work`` (bytes) holds >= rows x
    (k + size) elements, viewed as (rows, k + size): the running best k of each sample in its
    first columns, one addmm into the rest, then one topk merges both; when train has
    another dtype, a chunk (size, d) converted to samples.dtype follows them.
    """
    (m, d), n = samples.shape, train.shape[0]
    dtype, item = samples.dtype, samples.element_size()
    grid_bytes = rows * (k + size) * item
    grid = work[:grid_bytes].view(dtype).view(rows, k + size)
    staging = None
    if train.dtype != dtype:
        staging = work[grid_bytes : grid_bytes + size * d * item].view(dtype).view(size, d)
    best_d = torch.empty((m, k), dtype=dtype, device=samples.device)
    best_i = torch.empty((m, k), dtype=torch.long, device=samples.device)
    ymax2 = torch.zeros((), dtype=dtype, device=samples.device)
    kept = 0  # candidates per sample so far: min(k, points seen)
    for lo in range(0, n, size):
        chunk = train[lo : lo + size]  # (c, d)
        c = chunk.shape[0]
        if staging is not None:
            chunk = staging[:c].copy_(chunk)
        sq = torch.linalg.vector_norm(chunk, dim=1).square_()  # (c,) ||y||^2
        ymax2 = torch.maximum(ymax2, sq.max())
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
    return best_d, best_i, ymax2


def _remeasure(
    samples: torch.Tensor, train: torch.Tensor, cand: torch.Tensor, work: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared distances (m, k) float64 of samples (m, d) to train[cand] (cand (m, k)) and
    ||x||^2 (m,) float64, from explicit float64 differences, in blocks of s samples that fit
    the byte buffer ``work``: x (s, d) and x - y (s, d) in float64, y (s, d) in train.dtype."""
    (m, d), k = samples.shape, cand.shape[1]
    item = train.element_size()
    step = max(1, work.numel() // ((16 + item) * d))
    exact = torch.empty((m, k), dtype=torch.float64, device=samples.device)
    xx = torch.empty(m, dtype=torch.float64, device=samples.device)
    for q in range(0, m, step):
        s = min(step, m - q)
        x = work[: 8 * s * d].view(torch.float64).view(s, d)
        diff = work[8 * s * d : 16 * s * d].view(torch.float64).view(s, d)
        y = work[16 * s * d : (16 + item) * s * d].view(train.dtype).view(s, d)
        x.copy_(samples[q : q + s])
        xx[q : q + s] = diff.copy_(x).square_().sum(1)
        for j in range(k):
            torch.index_select(train, 0, cand[q : q + s, j], out=y)
            exact[q : q + s, j] = diff.copy_(y).sub_(x).square_().sum(1)
    return exact, xx


def _brute_force(
    x: torch.Tensor, train: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(d1, d2) float64 (u,) and the two nearest indices (u,) of x (u, d) float64 among all
    of train (n, d), from explicit float64 differences, one sample at a time against chunks
    of about 2^21 / d training points (no ranking, so no rounding to certify)."""
    (u, d), n = x.shape, train.shape[0]
    size = max(2, _BLOCK // 2 // d)
    buf = torch.empty((min(size, n), d), dtype=torch.float64, device=x.device)
    vals = torch.empty((u, 2), dtype=torch.float64, device=x.device)
    idx = torch.empty((u, 2), dtype=torch.long, device=x.device)
    for r in range(u):
        best_v = torch.full((2,), torch.inf, dtype=torch.float64, device=x.device)
        best_j = torch.zeros(2, dtype=torch.long, device=x.device)
        for lo in range(0, n, size):
            chunk = train[lo : lo + size]
            dist = buf[: chunk.shape[0]].copy_(chunk).sub_(x[r]).square_().sum(1)  # (c,)
            top_v, top = torch.cat([best_v, dist]).topk(2, largest=False)
            best_j = torch.cat([best_j, torch.arange(lo, lo + chunk.shape[0], device=x.device)])
            best_v, best_j = top_v, best_j[top]
        vals[r], idx[r] = best_v, best_j
    return vals[:, 0], vals[:, 1], idx[:, 0], idx[:, 1]


def distance_ratio(d1: torch.Tensor, d2: torch.Tensor) -> torch.Tensor:
    """d1 / d2 (m,) of the squared distances to the nearest and second-nearest training
    points (two_nearest's), in [0, 1]. d2 = 0 means the sample sits on a duplicated
    training point: ratio 0 (memorized)."""
    return torch.where(d2 > 0, d1 / d2.clamp_min(torch.finfo(d2.dtype).tiny), 0.0)


def nearest_ratio(samples: torch.Tensor, train: torch.Tensor) -> torch.Tensor:
    """Per-sample ratio ||x - x_(1)||^2 / ||x - x_(2)||^2 in [0, 1], shape (m,)
    (``distance_ratio`` of ``two_nearest``)."""
    d1, d2, _ = two_nearest(samples, train)
    return distance_ratio(d1, d2)


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


def energy_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """Squared energy distance 2 E||X - Y|| - E||X - X'|| - E||Y - Y'|| between the empirical
    laws of x (m, d) and y (k, d) (Székely & Rizzo; V-statistic: means over all pairs, the
    zero diagonal included, so >= 0; scipy.stats.energy_distance is its square root in 1-D).

    Sees both copying (samples on a few points) and collapse (samples off the data), unlike
    the log-likelihood, which rewards collapse onto modes. Float64, exact pairwise distances
    (memory O((m + k)^2): meant for the few thousand samples of a study, not for 10^5).
    """
    check_matrix(x, "x")
    check_matrix(y, "y", cols=x.shape[1])
    x, y = x.double(), y.double().to(x.device)
    return float(2 * torch.cdist(x, y).mean() - torch.cdist(x, x).mean() - torch.cdist(y, y).mean())
