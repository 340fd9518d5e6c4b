"""The empirical score: the score of the smoothed training set (paper §3).

    P_hat_t = (1/n) sum_i N(alpha_t x_i, sigma_t^2 I)
    w_i(x)  = softmax_i( -||x - alpha_t x_i||^2 / (2 sigma_t^2) )
    D(x)    = E_hat[X_0 | X_t = x] = sum_i w_i(x) x_i                (the denoiser)
    grad log p_hat_t(x) = -(x - alpha_t D(x)) / sigma_t^2
    grad^2 log p_hat_t(x) = -I/sigma_t^2 + alpha_t^2/sigma_t^4 Cov_hat[X_0 | X_t = x]   (App. C)

It is the global minimizer of the DSM loss (3.1) and can only reproduce training
points. Everything here streams over the n points in chunks with a running
log-sum-exp, so memory is O(batch x chunk) and no n x batch x d tensor exists.

Logits come from one matmul per chunk, ||x - a y||^2 = ||x||^2 - 2a x.y + a^2||y||^2,
with the ||x||^2 term (common to all i) left out of the softmax. That expansion costs
accuracy when sigma_t is small: its rounding error is about u sqrt(d) ||x|| ||y|| / sigma^2
nats (u the unit roundoff), while the inputs themselves only fix the logits to about
u sqrt(d) ||x|| / sigma. Rows whose error bound exceeds sqrt(u) nats are therefore
*refined*: the points whose logits lie within a safe margin of the maximum (the
candidates) get exact logits, and all weights of that row come from those. The points
left out carry less than u/n of the mass each.

Refinement must not read the points again: the streaming pass already has every logit,
so it records each refined row's best point b and its candidates (pairs within reach of
the running maximum; found again chunk by chunk only if they outgrow a fixed budget). The
exact logits are differences from b, formed in float64,

    ||x - a y_i||^2 - ||x - a y_b||^2 = a^2 ||y_b - y_i||^2 + 2a (x - a y_b).(y_b - y_i),

because the logits themselves are huge for queries far from the data: at
||x - a y_i|| = 1e4 and sigma^2 = 1e-2 they are -5e9 nats, which float32 rounds by up to
256 nats, while the candidates lie a few nats apart. The differences have no such term;
their rounding error, about u sqrt(d) a ||x - a y_b|| ||y_b - y_i|| / sigma^2 nats, is no
more than the inputs' own uncertainty, and float64 makes it negligible for float32 inputs.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from theory._checks import check_int, check_matrix
from theory.process import Time, alpha, check_time, sigma2, time_column

__all__ = ["EmpiricalScore"]

# Elements of one (batch x chunk) logit block; 2^21 floats keeps it in a few MB while
# the matmuls stay large enough to run at full speed.
_LOGIT_BLOCK = 2**21
# Elements of one (chunk x d) slice of the points: 2^22 (16 MiB in float32) lets the slice
# stay in the last-level cache between its two matmuls (logits, then weights @ points), so
# the points are read from memory about once per call instead of twice.
_POINTS_BLOCK = 2**22
# Elements of one (batch x chunk x d) block in the covariance pass and the exact pairs.
_COV_BLOCK = 2**23
# Candidate pairs the streaming pass keeps for refinement: 20 bytes each (two indices and
# a logit), so about as much memory as one logit block. Rows with more candidates than
# that in all (many near-duplicate points) have them found again chunk by chunk.
_PAIR_BUDGET = 2**19
# The exact logits are formed in this dtype: exact differences for float32 inputs.
_WIDE = torch.float64


def _rows(column: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Rows idx of a (1, 1) or (batch, 1) time column."""
    return column if column.shape[0] == 1 else column[idx]


@dataclass
class _Candidates:
    """Refined rows' best point and candidate pairs, gathered by the streaming pass (internal).

    The pass hands over each chunk's logits before it overwrites them. A pair (b, i) is kept
    while l_i >= m_b - reach_b, with m_b the running maximum of row b; m_b only grows, so this
    is a superset of the final candidates, pruned at the end (and whenever it outgrows
    _PAIR_BUDGET; if even the pruned set does not fit, keeping stops: ``stored`` is False).
    Only rows whose running maximum is within reach of the chunk's are looked at, a few per
    chunk once the maxima settle, so the cost is small next to the chunk's matmuls.
    """

    refined: torch.Tensor  # (batch,) bool
    reach: torch.Tensor  # (batch, 1) margin + twice the error bound of the expanded logits
    best: torch.Tensor  # (batch,) int64: the point of the largest expanded logit so far
    rows: list[torch.Tensor]
    cols: list[torch.Tensor]
    values: list[torch.Tensor]  # the expanded logits of the pairs
    count: int = 0
    stored: bool = True

    def add(
        self,
        logits: torch.Tensor,
        start: int,
        chunk_max: torch.Tensor,
        run_max: torch.Tensor,
        new_max: torch.Tensor,
    ) -> None:
        """Take in one chunk: logits (batch, chunk) of points [start, ...), chunk_max and the
        running maxima before and after it, each (batch, 1)."""
        floor = new_max - self.reach  # (batch, 1)
        sel = self.refined & (chunk_max >= floor)[:, 0]
        if not sel.any():
            return
        block = logits.detach()
        if sel.all():  # typical of the first chunk: no copy
            r, c = torch.nonzero(block >= floor, as_tuple=True)
        else:
            idx = torch.nonzero(sel).squeeze(1)
            r, c = torch.nonzero(block.index_select(0, idx) >= floor[idx], as_tuple=True)
            r = idx[r]
        values = block[r, c]
        # A row's maximum is among its pairs (chunk_max >= floor), and amax returned one of
        # the logits, so equality finds it: no argmax over the block.
        lead = (chunk_max > run_max)[r, 0] & (values == chunk_max[r, 0])
        self.best[r[lead]] = c[lead] + start
        if not self.stored:
            return
        self.rows.append(r)
        self.cols.append(c + start)
        self.values.append(values)
        self.count += r.numel()
        if self.count > _PAIR_BUDGET:
            self.prune(floor)
            if self.count > _PAIR_BUDGET:
                self.stored, self.rows, self.cols, self.values = False, [], [], []

    def prune(self, threshold: torch.Tensor) -> None:
        """Drop the pairs whose logit is below their row's threshold (batch, 1)."""
        rows, cols, values = (torch.cat(v) for v in (self.rows, self.cols, self.values))
        keep = values >= threshold[rows, 0]
        self.rows, self.cols, self.values = [rows[keep]], [cols[keep]], [values[keep]]
        self.count = int(keep.sum())


@dataclass
class _Posterior:
    """The posterior weights over the n points for a batch of queries (internal).

    Dense rows: w_i = exp(l_i - run_max) / run_sum with l_i the expanded logits of
    ``_logits``. Refined rows (``refined``): weights from exact logits, see ``_exact``.
    """

    log_norm: torch.Tensor  # (batch,) log sum_i exp(-||x - a y_i||^2 / (2 s2))
    mean: torch.Tensor  # (batch, d) sum_i w_i y_i
    run_max: torch.Tensor  # (batch, 1) max of the expanded logits
    run_sum: torch.Tensor  # (batch, 1)
    refined: torch.Tensor  # (batch,) bool
    threshold: torch.Tensor  # (batch, 1) expanded logits below it are dropped in refined rows
    chunk_max: torch.Tensor  # (batch, chunks) max expanded logit of each chunk
    best: torch.Tensor  # (batch,) int64 refined rows: the point b of the largest logit
    pairs: tuple[torch.Tensor, torch.Tensor] | None  # candidates (rows, cols); None: rescan
    exact_max: torch.Tensor | None = None  # (batch,) wide: w_i = exp(l_i - l_b - max) / sum
    exact_sum: torch.Tensor | None = None  # (batch,) wide

    def exact_weights(self, rows: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Weights of exact-logit pairs; max and sum kept apart so rows sum to 1 exactly."""
        return torch.exp(logits - self.exact_max[rows]) / self.exact_sum[rows]


class EmpiricalScore:
    """Score, denoiser and Hessian of P_hat_t for training points of shape (n, d) (§3, App. C).

    Queries x have shape (batch, d) with the dtype and device of the points; t is a
    float or a tensor of shape (batch,), t > 0. The object is callable: s(x, t) = score.
    ``chunk_size`` fixes how many points are processed at once (default: adaptive);
    results do not depend on it beyond floating-point rounding.
    """

    def __init__(self, points: torch.Tensor, chunk_size: int | None = None) -> None:
        self.points = check_matrix(points, "points")
        if chunk_size is not None:
            check_int(chunk_size, "chunk_size", 1)
        self.chunk_size = chunk_size
        self.sq_norms = torch.einsum("ij,ij->i", points, points)  # (n,), no n x d temporary
        self.max_norm = float(self.sq_norms.max().sqrt())
        u = torch.finfo(points.dtype).eps / 2
        # Rounding error of a length-d dot product, relative to ||x|| ||y||: the sqrt(d) u
        # growth of Higham & Mary (2019), with a safety factor.
        self._dot_err = 4.0 * (math.sqrt(self.d) + 1.0) * u
        self._refine_tol = math.sqrt(u)
        # Points whose logit is this far below the maximum hold less than u/n of the mass.
        self._margin = math.log(self.n) - math.log(u)

    @property
    def n(self) -> int:
        return self.points.shape[0]

    @property
    def d(self) -> int:
        return self.points.shape[1]

    def __repr__(self) -> str:
        return f"EmpiricalScore(n={self.n}, d={self.d}, dtype={self.points.dtype})"

    # -- the streaming softmax ------------------------------------------------------------

    def _prepare(self, x: torch.Tensor, t: Time) -> tuple[torch.Tensor, torch.Tensor]:
        """Validate inputs; return alpha_t and sigma_t^2 as (1, 1) or (batch, 1) columns."""
        check_matrix(x, "x", cols=self.d, dtype=self.points.dtype, device=self.points.device)
        check_time(t)
        tc = time_column(t, x)
        return alpha(tc), sigma2(tc)

    def _chunk_size(self, batch: int) -> int:
        auto = min(_LOGIT_BLOCK // max(1, batch), _POINTS_BLOCK // self.d)
        return self.chunk_size or max(64, auto)

    def _logits(
        self, x: torch.Tensor, a: torch.Tensor, s2: torch.Tensor, start: int, stop: int
    ) -> torch.Tensor:
        """-(||x - a y_i||^2 - ||x||^2) / (2 s2) for points y_i in [start, stop): (batch, chunk)."""
        y = self.points[start:stop]
        bias = (-0.5 * a.square() / s2) * self.sq_norms[start:stop]  # (1 or batch, chunk)
        return torch.addmm(bias, x * (a / s2), y.T)

    def _posterior(self, x: torch.Tensor, a: torch.Tensor, s2: torch.Tensor) -> _Posterior:
        """One streaming pass over the points, then exact logits for rows that need them."""
        batch, size = x.shape[0], self._chunk_size(x.shape[0])
        run_max = torch.full((batch, 1), -math.inf, dtype=x.dtype, device=x.device)
        run_sum = torch.zeros((batch, 1), dtype=x.dtype, device=x.device)
        acc = torch.zeros((batch, self.d), dtype=x.dtype, device=x.device)
        chunk_max = []
        x_norm2 = x.square().sum(dim=1, keepdim=True)
        err = self._dot_err * (a * x_norm2.sqrt() + a.square() * self.max_norm) * self.max_norm / s2
        refined = (err > self._refine_tol).squeeze(1)
        reach = self._margin + 2 * err
        cand = None
        if refined.any():
            best = torch.zeros(batch, dtype=torch.int64, device=x.device)
            cand = _Candidates(refined, reach, best, rows=[], cols=[], values=[])
        # exp() is ~10x slower where it underflows; flooring the shifted logits at
        # 0.9 log(tiny) keeps it on its fast path and changes each weight by less than
        # exp(floor) (7e-35 in float32) relative to the largest, far below rounding.
        floor = 0.9 * math.log(torch.finfo(x.dtype).tiny)
        for start in range(0, self.n, size):
            logits = self._logits(x, a, s2, start, start + size)  # fresh: reused in place
            # The shift cancels in log-sum-exp, so it needs no gradient (as in torch.logsumexp).
            chunk_max.append(logits.detach().amax(dim=1, keepdim=True))
            new_max = torch.maximum(run_max, chunk_max[-1])
            if cand is not None:  # before the logits are overwritten below
                cand.add(logits, start, chunk_max[-1], run_max, new_max)
            rescale = torch.exp(run_max - new_max)  # 0 on the first chunk
            p = logits.sub_(new_max).clamp_(min=floor).exp_()
            run_sum = run_sum * rescale + p.sum(dim=1, keepdim=True)
            acc = torch.addmm(acc * rescale, p, self.points[start : start + size])
            run_max = new_max
        post = _Posterior(
            log_norm=(run_max + run_sum.log() - x_norm2 / (2 * s2)).squeeze(1),
            mean=acc / run_sum,
            run_max=run_max,
            run_sum=run_sum,
            refined=refined,
            threshold=run_max - reach,
            chunk_max=torch.cat(chunk_max, dim=1),
            best=torch.zeros(batch, dtype=torch.int64, device=x.device),
            pairs=None,
        )
        if cand is not None:
            if cand.stored:
                cand.prune(post.threshold)
                post.pairs = (cand.rows[0], cand.cols[0])
            post.best = cand.best
            self._refine(x, a, s2, post)
        return post

    def _rescan(
        self, x: torch.Tensor, a: torch.Tensor, s2: torch.Tensor, post: _Posterior
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Candidate pairs (rows, cols) of refined rows, found again chunk by chunk.

        Used only when the streaming pass could not keep them (``post.pairs`` is None);
        only chunks whose maximum reaches a row's threshold are searched.
        """
        size = self._chunk_size(x.shape[0])
        for j, start in enumerate(range(0, self.n, size)):
            rows = torch.nonzero(post.refined & (post.chunk_max[:, j] >= post.threshold[:, 0]))
            rows = rows.squeeze(1)
            if rows.numel() == 0:
                continue
            logits = self._logits(x[rows], _rows(a, rows), _rows(s2, rows), start, start + size)
            r, c = torch.nonzero(logits >= post.threshold[rows], as_tuple=True)
            yield rows[r], c + start

    def _exact(
        self, x: torch.Tensor, a: torch.Tensor, s2: torch.Tensor, post: _Posterior
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Exact logits of the candidate pairs (r, i) of refined rows other than the best
        point b = post.best[r], relative to it, in float64:

            l_i - l_b = -(a^2 ||y_i - y_b||^2 - 2a (x_r - a y_b).(y_i - y_b)) / (2 s2),

        free of the huge ||x_r - a y_b||^2 (l_b - l_b = 0 needs no computing: most refined
        rows have no other candidate). Yields (rows, cols, logits, steps): rows, cols and
        logits of shape (pairs,), steps = y_i - y_b of shape (pairs, d), in blocks that bound
        these (pairs, d) temporaries.
        """
        found = [post.pairs] if post.pairs is not None else self._rescan(x, a, s2, post)
        block = max(1, _LOGIT_BLOCK // self.d)
        for rows, cols in found:
            other = cols != post.best[rows]
            rows, cols = rows[other], cols[other]
            for lo in range(0, rows.numel(), block):
                r, c = rows[lo : lo + block], cols[lo : lo + block]
                ar, s2r = _rows(a, r).to(_WIDE), _rows(s2, r)[:, 0].to(_WIDE)
                anchor = self.points[post.best[r]].to(_WIDE)  # y_b, (pairs, d)
                step = self.points[c].to(_WIDE) - anchor
                offset = x[r].to(_WIDE) - ar * anchor  # x - a y_b
                sq = torch.einsum("pd,pd->p", step, step)
                cross = torch.einsum("pd,pd->p", offset, step)
                ar = ar[:, 0]
                yield r, c, -ar * (ar * sq - 2 * cross) / (2 * s2r), step

    def _refine(self, x: torch.Tensor, a: torch.Tensor, s2: torch.Tensor, post: _Posterior) -> None:
        """Replace log_norm and mean of the refined rows by their exact-logit values:

            log_norm = l_b + log sum_i exp(l_i - l_b),   mean = y_b + sum_i w_i (y_i - y_b),

        with l_b = -||x - a y_b||^2 / (2 s2) computed directly (large, but only its relative
        accuracy matters) and the mean's small correction rounded on its own, so that rows
        with one candidate get y_b exactly. index_add adds a row's pairs one by one, so in
        float32 a weight below u/2 of the running sum would be lost (up to n u / 2 of the mass
        in all); the sums are therefore accumulated in float64, which keeps every pair the
        margin admits.
        """
        batch, dev = x.shape[0], x.device
        # Sums start with the best point: logit l_b - l_b = 0, so max 0 and sum exp(0) = 1.
        run_max = torch.zeros(batch, dtype=_WIDE, device=dev)
        run_sum = torch.ones(batch, dtype=_WIDE, device=dev)
        shift = None  # (batch, d) wide: sum_i p_i (y_i - y_b), once a row has other candidates
        for r, _, logits, step in self._exact(x, a, s2, post):
            if shift is None:
                shift = torch.zeros((batch, self.d), dtype=_WIDE, device=dev)
            new_max = run_max.scatter_reduce(0, r, logits, reduce="amax")
            rescale = torch.exp(run_max - new_max)
            p = torch.exp(logits - new_max[r])
            run_sum = (run_sum * rescale).index_add(0, r, p)
            shift = (shift * rescale[:, None]).index_add(0, r, p[:, None] * step)
            run_max = new_max
        # (batch x d) temporaries are costly here (fresh pages), hence the in-place updates.
        rows = torch.nonzero(post.refined).squeeze(1)
        anchor = self.points[post.best[rows]]  # y_b, (refined, d)
        offset = anchor.to(_WIDE, copy=True).mul_(-_rows(a, rows).to(_WIDE)).add_(x[rows])
        best_logit = -torch.einsum("kd,kd->k", offset, offset) / (2 * _rows(s2, rows)[:, 0])
        post.log_norm[rows] = (best_logit + run_max[rows] + run_sum[rows].log()).to(x.dtype)
        if shift is not None:
            anchor += (shift[rows] / run_sum[rows, None]).to(x.dtype)
        post.mean[rows] = anchor
        post.exact_max, post.exact_sum = run_max, run_sum

    def _exact_weights(
        self, x: torch.Tensor, a: torch.Tensor, s2: torch.Tensor, post: _Posterior
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Weights (rows, cols, w), each (pairs,), of all candidates of refined rows, their
        best points first; w in x's dtype. Needs the exact sums of ``_refine``."""
        if post.exact_max is None:  # no row refined
            return
        rows = torch.nonzero(post.refined).squeeze(1)
        zero = torch.zeros(rows.numel(), dtype=_WIDE, device=x.device)
        yield rows, post.best[rows], post.exact_weights(rows, zero).to(x.dtype)
        for r, c, logits, _ in self._exact(x, a, s2, post):
            yield r, c, post.exact_weights(r, logits).to(x.dtype)

    # -- public quantities ----------------------------------------------------------------

    def log_density(self, x: torch.Tensor, t: Time) -> torch.Tensor:
        """log p_hat_t(x) of the smoothed empirical distribution, shape (batch,) (§3)."""
        a, s2 = self._prepare(x, t)
        log_norm = self._posterior(x, a, s2).log_norm
        return log_norm - math.log(self.n) - 0.5 * self.d * torch.log(2 * math.pi * s2.squeeze(1))

    def _weight_blocks(
        self, x: torch.Tensor, a: torch.Tensor, s2: torch.Tensor, post: _Posterior, size: int
    ) -> Iterator[tuple[int, int, torch.Tensor]]:
        """Dense weights (batch, chunk) chunk by chunk, with refined rows set to 0."""
        keep = (~post.refined)[:, None].to(x.dtype)
        for start in range(0, self.n, size):
            w = torch.exp(self._logits(x, a, s2, start, start + size) - post.run_max) / post.run_sum
            yield start, min(start + size, self.n), w * keep

    def weights(self, x: torch.Tensor, t: Time) -> torch.Tensor:
        """Posterior weights w_i(x) = P_hat(X_0 = x_i | X_t = x), (batch, n); rows sum to 1."""
        a, s2 = self._prepare(x, t)
        post = self._posterior(x, a, s2)
        size = self._chunk_size(x.shape[0])
        w = torch.cat([blk for _, _, blk in self._weight_blocks(x, a, s2, post, size)], dim=1)
        for r, c, wr in self._exact_weights(x, a, s2, post):
            w[r, c] = wr
        return w

    def denoiser(self, x: torch.Tensor, t: Time) -> torch.Tensor:
        """E_hat[X_0 | X_t = x] = sum_i w_i(x) x_i, shape (batch, d) (Tweedie, §3)."""
        a, s2 = self._prepare(x, t)
        return self._posterior(x, a, s2).mean

    def score(self, x: torch.Tensor, t: Time) -> torch.Tensor:
        """grad log p_hat_t(x) = -(x - alpha_t D(x)) / sigma_t^2, shape (batch, d) (§3)."""
        a, s2 = self._prepare(x, t)
        return (a * self._posterior(x, a, s2).mean - x) / s2

    __call__ = score

    def posterior_covariance(self, x: torch.Tensor, t: Time) -> torch.Tensor:
        """Cov_hat[X_0 | X_t = x] = sum_i w_i (x_i - D)(x_i - D)^T, shape (batch, d, d) (App. C).

        A second pass sums the centred outer products chunk by chunk, so memory stays
        O(batch x chunk x d).
        """
        a, s2 = self._prepare(x, t)
        post = self._posterior(x, a, s2)
        mean = post.mean
        cov = torch.zeros((x.shape[0], self.d, self.d), dtype=x.dtype, device=x.device)
        size = self.chunk_size or max(64, _COV_BLOCK // max(1, x.shape[0] * self.d))
        for lo, hi, w in self._weight_blocks(x, a, s2, post, size):
            centred = self.points[lo:hi][None] - mean[:, None]  # (batch, chunk, d)
            cov += torch.bmm(centred.transpose(1, 2), centred * w[..., None])
        outer_block = max(1, _COV_BLOCK // (self.d * self.d))
        for rows, cols, weights in self._exact_weights(x, a, s2, post):
            for lo in range(0, rows.numel(), outer_block):
                r, c = rows[lo : lo + outer_block], cols[lo : lo + outer_block]
                centred = self.points[c] - mean[r]  # (pairs, d)
                w = weights[lo : lo + outer_block]
                cov.index_add_(0, r, (w[:, None] * centred)[:, :, None] * centred[:, None, :])
        return cov

    def hessian(self, x: torch.Tensor, t: Time) -> torch.Tensor:
        """grad^2 log p_hat_t(x) = -I/sigma^2 + alpha^2/sigma^4 Cov_hat, (batch, d, d) (App. C)."""
        a, s2 = self._prepare(x, t)
        cov = self.posterior_covariance(x, t)
        eye = torch.eye(self.d, dtype=x.dtype, device=x.device)
        a, s2 = a[..., None], s2[..., None]  # (1 or batch, 1, 1)
        return (a.square() / s2.square()) * cov - eye / s2
