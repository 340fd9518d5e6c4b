"""The empirical score: the score of the smoothed training set (paper §3).

    P_hat_t = (1/n) sum_i N(alpha_t x_i, sigma_t^2 I)
    w_i(x)  = softmax_i( -||x - alpha_t x_i||^2 / (2 sigma_t^2) )
    D(x)    = E_hat[X_0 | X_t = x] = sum_i w_i(x) x_i                (the denoiser)
    grad log p_hat_t(x) = -(x - alpha_t D(x)) / sigma_t^2
    grad^2 log p_hat_t(x) = -I/sigma_t^2 + alpha_t^2/sigma_t^4 Cov_hat[X_0 | X_t = x]   (App. C)

It is the global minimizer of the DSM loss (3.1) and can only reproduce training
points. Everything here streams over the n points in chunks with a running
log-sum-exp, so memory is O(batch x chunk) and no n x batch x d tensor exists;
the logits come from one matmul per chunk (||x - a y||^2 = ||x||^2 - 2a x.y + a^2||y||^2,
with the ||x||^2 term, common to all i, left out of the softmax).
"""

from __future__ import annotations

import math

import torch

from theory._checks import check_matrix
from theory.process import Time, alpha, check_time, sigma2, time_column

__all__ = ["EmpiricalScore"]

# Elements of one (batch x chunk) logit block; 2^21 floats keeps it in a few MB while
# the matmuls stay large enough to run at full speed.
_LOGIT_BLOCK = 2**21
# Elements of one (batch x chunk x d) block in the covariance pass.
_COV_BLOCK = 2**23


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
        self.sq_norms = points.square().sum(dim=1)  # (n,)

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

    def _chunks(self, batch: int, block: int, per_row: int = 1):
        size = self.chunk_size or max(64, block // max(1, batch * per_row))
        for start in range(0, self.n, size):
            yield start, min(start + size, self.n)

    def _logits(
        self, x: torch.Tensor, a: torch.Tensor, s2: torch.Tensor, start: int, stop: int
    ) -> torch.Tensor:
        """-(||x - a y_i||^2 - ||x||^2) / (2 s2) for points y_i in [start, stop): (batch, chunk)."""
        y = self.points[start:stop]
        bias = (-0.5 * a.square() / s2) * self.sq_norms[start:stop]  # (1 or batch, chunk)
        return torch.addmm(bias, x * (a / s2), y.T)

    def _log_norm_and_mean(
        self, x: torch.Tensor, a: torch.Tensor, s2: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Reduced log-normalizer (batch,) and denoiser sum_i w_i x_i (batch, d) in one pass."""
        batch = x.shape[0]
        run_max = torch.full((batch, 1), -math.inf, dtype=x.dtype, device=x.device)
        run_sum = torch.zeros((batch, 1), dtype=x.dtype, device=x.device)
        acc = torch.zeros((batch, self.d), dtype=x.dtype, device=x.device)
        for start, stop in self._chunks(batch, _LOGIT_BLOCK):
            logits = self._logits(x, a, s2, start, stop)
            new_max = torch.maximum(run_max, logits.amax(dim=1, keepdim=True))
            rescale = torch.exp(run_max - new_max)  # 0 on the first chunk
            p = torch.exp(logits - new_max)
            run_sum = run_sum * rescale + p.sum(dim=1, keepdim=True)
            acc = torch.addmm(acc * rescale, p, self.points[start:stop])
            run_max = new_max
        return (run_max + run_sum.log()).squeeze(1), acc / run_sum

    # -- public quantities ----------------------------------------------------------------

    def log_density(self, x: torch.Tensor, t: Time) -> torch.Tensor:
        """log p_hat_t(x) of the smoothed empirical distribution, shape (batch,) (§3)."""
        a, s2 = self._prepare(x, t)
        reduced, _ = self._log_norm_and_mean(x, a, s2)
        s2 = s2.squeeze(1)
        return (
            reduced
            - x.square().sum(dim=1) / (2 * s2)
            - math.log(self.n)
            - 0.5 * self.d * torch.log(2 * math.pi * s2)
        )

    def weights(self, x: torch.Tensor, t: Time) -> torch.Tensor:
        """Posterior weights w_i(x) = P_hat(X_0 = x_i | X_t = x), (batch, n); rows sum to 1."""
        a, s2 = self._prepare(x, t)
        reduced, _ = self._log_norm_and_mean(x, a, s2)
        blocks = [
            torch.exp(self._logits(x, a, s2, lo, hi) - reduced[:, None])
            for lo, hi in self._chunks(x.shape[0], _LOGIT_BLOCK)
        ]
        return torch.cat(blocks, dim=1)

    def denoiser(self, x: torch.Tensor, t: Time) -> torch.Tensor:
        """E_hat[X_0 | X_t = x] = sum_i w_i(x) x_i, shape (batch, d) (Tweedie, §3)."""
        a, s2 = self._prepare(x, t)
        return self._log_norm_and_mean(x, a, s2)[1]

    def score(self, x: torch.Tensor, t: Time) -> torch.Tensor:
        """grad log p_hat_t(x) = -(x - alpha_t D(x)) / sigma_t^2, shape (batch, d) (§3)."""
        a, s2 = self._prepare(x, t)
        mean = self._log_norm_and_mean(x, a, s2)[1]
        return (a * mean - x) / s2

    __call__ = score

    def posterior_covariance(self, x: torch.Tensor, t: Time) -> torch.Tensor:
        """Cov_hat[X_0 | X_t = x] = sum_i w_i (x_i - D)(x_i - D)^T, shape (batch, d, d) (App. C).

        Two passes: the first fixes the normalizer and the mean, the second sums the
        centred outer products chunk by chunk (memory O(batch x chunk x d)).
        """
        a, s2 = self._prepare(x, t)
        reduced, mean = self._log_norm_and_mean(x, a, s2)
        cov = torch.zeros((x.shape[0], self.d, self.d), dtype=x.dtype, device=x.device)
        for lo, hi in self._chunks(x.shape[0], _COV_BLOCK, per_row=self.d):
            w = torch.exp(self._logits(x, a, s2, lo, hi) - reduced[:, None])  # (batch, chunk)
            centred = self.points[lo:hi][None] - mean[:, None]  # (batch, chunk, d)
            cov += torch.bmm(centred.transpose(1, 2), centred * w[..., None])
        return cov

    def hessian(self, x: torch.Tensor, t: Time) -> torch.Tensor:
        """grad^2 log p_hat_t(x) = -I/sigma^2 + alpha^2/sigma^4 Cov_hat, (batch, d, d) (App. C)."""
        a, s2 = self._prepare(x, t)
        cov = self.posterior_covariance(x, t)
        eye = torch.eye(self.d, dtype=x.dtype, device=x.device)
        a, s2 = a[..., None], s2[..., None]  # (1 or batch, 1, 1)
        return (a.square() / s2.square()) * cov - eye / s2
