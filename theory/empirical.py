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
*refined*: the points whose logits lie within a safe margin of the maximum (found again
chunk by chunk, skipping chunks whose maximum is out of reach) get exact logits from
explicit differences x - a y_i, and all weights of that row come from those. The points
left out carry less than u/n of the mass each. Refinement only touches chunks that hold a
candidate, so it is cheap where it matters (small t, concentrated weights).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from theory._checks import check_matrix
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


def _rows(column: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Rows idx of a (1, 1) or (batch, 1) time column."""
    return column if column.shape[0] == 1 else column[idx]


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
    exact_max: torch.Tensor | None = None  # (batch,) refined rows: w_i = exp(l_i - max) / sum
    exact_sum: torch.Tensor | None = None  # (batch,)

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
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer, got {chunk_size}")
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
        # exp() is ~10x slower where it underflows; flooring the shifted logits at
        # 0.9 log(tiny) keeps it on its fast path and changes each weight by less than
        # exp(floor) (7e-35 in float32) relative to the largest, far below rounding.
        floor = 0.9 * math.log(torch.finfo(x.dtype).tiny)
        for start in range(0, self.n, size):
            logits = self._logits(x, a, s2, start, start + size)  # fresh: reused in place
            # The shift cancels in log-sum-exp, so it needs no gradient (as in torch.logsumexp).
            chunk_max.append(logits.detach().amax(dim=1, keepdim=True))
            new_max = torch.maximum(run_max, chunk_max[-1])
            rescale = torch.exp(run_max - new_max)  # 0 on the first chunk
            p = logits.sub_(new_max).clamp_(min=floor).exp_()
            run_sum = run_sum * rescale + p.sum(dim=1, keepdim=True)
            acc = torch.addmm(acc * rescale, p, self.points[start : start + size])
            run_max = new_max
        x_norm2 = x.square().sum(dim=1, keepdim=True)
        err = self._dot_err * (a * x_norm2.sqrt() + a.square() * self.max_norm) * self.max_norm / s2
        post = _Posterior(
            log_norm=(run_max + run_sum.log() - x_norm2 / (2 * s2)).squeeze(1),
            mean=acc / run_sum,
            run_max=run_max,
            run_sum=run_sum,
            refined=(err > self._refine_tol).squeeze(1),
            threshold=run_max - self._margin - 2 * err,
            chunk_max=torch.cat(chunk_max, dim=1),
        )
        if post.refined.any():
            self._refine(x, a, s2, post)
        return post

    def _exact(
        self, x: torch.Tensor, a: torch.Tensor, s2: torch.Tensor, post: _Posterior
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Exact logits -||x_b - a y_i||^2/(2 s2) of the candidate pairs (b, i) of refined rows.

        Yields (rows, cols, logits), each (pairs,), chunk by chunk; only chunks whose maximum
        reaches a row's threshold are searched, and differences are formed in small blocks.
        """
        size = self._chunk_size(x.shape[0])
        pair_block = max(1, _COV_BLOCK // self.d)
        for j, start in enumerate(range(0, self.n, size)):
            rows = torch.nonzero(post.refined & (post.chunk_max[:, j] >= post.threshold[:, 0]))
            rows = rows.squeeze(1)
            if rows.numel() == 0:
                continue
            logits = self._logits(x[rows], _rows(a, rows), _rows(s2, rows), start, start + size)
            r, c = torch.nonzero(logits >= post.threshold[rows], as_tuple=True)
            r, c = rows[r], c + start
            for lo in range(0, r.numel(), pair_block):
                rb, cb = r[lo : lo + pair_block], c[lo : lo + pair_block]
                diff = x[rb] - _rows(a, rb) * self.points[cb]  # (pairs, d)
                yield rb, cb, -diff.square().sum(dim=1) / (2 * _rows(s2, rb)[:, 0])

    def _refine(self, x: torch.Tensor, a: torch.Tensor, s2: torch.Tensor, post: _Posterior) -> None:
        """Replace log_norm and mean of the refined rows by their exact-logit values.

        index_add adds a row's pairs one by one, so in float32 a weight below u/2 of the
        running sum would be lost (up to n u / 2 of the mass in all); the sums are therefore
        accumulated in float64, which keeps every pair the margin admits.
        """
        batch, wide = x.shape[0], torch.float64
        run_max = torch.full((batch,), -math.inf, dtype=x.dtype, device=x.device)
        run_sum = torch.zeros(batch, dtype=wide, device=x.device)
        acc = torch.zeros((batch, self.d), dtype=wide, device=x.device)
        for r, c, logits in self._exact(x, a, s2, post):
            new_max = run_max.scatter_reduce(0, r, logits, reduce="amax")
            # Rows without a pair so far keep -inf; their (empty) sums need no rescaling.
            rescale = torch.where(new_max > -math.inf, torch.exp(run_max - new_max), 1.0).to(wide)
            p = torch.exp(logits - new_max[r]).to(wide)
            run_sum = (run_sum * rescale).index_add(0, r, p)
            acc = (acc * rescale[:, None]).index_add(0, r, p[:, None] * self.points[c].to(wide))
            run_max = new_max
        done = post.refined
        post.log_norm[done] = (run_max + run_sum.log().to(x.dtype))[done]
        post.mean[done] = (acc / run_sum[:, None]).to(x.dtype)[done]
        post.exact_max, post.exact_sum = run_max, run_sum.to(x.dtype)

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
        for r, c, logits in self._exact(x, a, s2, post):
            w[r, c] = post.exact_weights(r, logits)
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
        for rows, cols, logits in self._exact(x, a, s2, post):
            for lo in range(0, rows.numel(), outer_block):
                r, c = rows[lo : lo + outer_block], cols[lo : lo + outer_block]
                centred = self.points[c] - mean[r]  # (pairs, d)
                w = post.exact_weights(r, logits[lo : lo + outer_block])
                cov.index_add_(0, r, (w[:, None] * centred)[:, :, None] * centred[:, None, :])
        return cov

    def hessian(self, x: torch.Tensor, t: Time) -> torch.Tensor:
        """grad^2 log p_hat_t(x) = -I/sigma^2 + alpha^2/sigma^4 Cov_hat, (batch, d, d) (App. C)."""
        a, s2 = self._prepare(x, t)
        cov = self.posterior_covariance(x, t)
        eye = torch.eye(self.d, dtype=x.dtype, device=x.device)
        a, s2 = a[..., None], s2[..., None]  # (1 or batch, 1, 1)
        return (a.square() / s2.square()) * cov - eye / s2
