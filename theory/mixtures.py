"""Gaussian mixtures with a shared covariance, at every time of the OU process (§4).

    P_data = sum_k w_k N(mu_k, Sigma)
    P_t    = sum_k w_k N(alpha_t mu_k, C_t),   C_t = alpha_t^2 Sigma + sigma_t^2 I

The paper's mixture model (§4, §6.1) is K = 8 components N(mu_k, I_d) with
mu_k ~ N(0, 4 I_d): ``paper_mixture``. A single Gaussian is K = 1.

All work happens in the eigenbasis of Sigma = U diag(lam) U^T, where C_t is diagonal:
z = U^T x, C_t = U diag(v_t) U^T with v_t = alpha_t^2 lam + sigma_t^2. A scalar or
diagonal Sigma needs no rotation. K is small, so the (batch, K, d) differences are
formed directly (the chunked streaming of EmpiricalScore is for n up to 10^5).
"""

from __future__ import annotations

import math

import torch

from theory._checks import check_matrix
from theory.process import Time, alpha, check_time, sigma2, time_column

__all__ = ["GaussianMixture", "paper_mixture"]


class GaussianMixture:
    """Mixture sum_k w_k N(mu_k, Sigma) and its marginals P_t (§4).

    means: (K, d). cov: a float (Sigma = cov I), a tensor (d,) (diagonal) or (d, d)
    (symmetric positive semi-definite). weights: (K,) non-negative, normalized here;
    None means uniform. Queries x: (batch, d) in the mixture's dtype; t: float or
    (batch,), t >= 0 (t = 0 is the data distribution and needs Sigma > 0).
    The object is callable: mixture(x, t) = score.
    """

    def __init__(
        self,
        means: torch.Tensor,
        cov: float | torch.Tensor = 1.0,
        weights: torch.Tensor | None = None,
    ) -> None:
        self.means = check_matrix(means, "means")
        K, d = means.shape
        dtype, device = means.dtype, means.device
        self.rotation: torch.Tensor | None = None  # U, or None when Sigma is diagonal
        if isinstance(cov, torch.Tensor) and cov.ndim == 2:
            if cov.shape != (d, d):
                raise ValueError(f"cov must have shape (d, d) = ({d}, {d}), got {tuple(cov.shape)}")
            if not torch.isfinite(cov).all() or not torch.allclose(cov, cov.T, atol=1e-6):
                raise ValueError("cov must be a finite symmetric matrix")
            lam, self.rotation = torch.linalg.eigh(cov.to(dtype=dtype, device=device))
            self._cov_matrix = cov.to(dtype=dtype, device=device)
        else:
            lam = torch.as_tensor(cov, dtype=dtype, device=device)
            if lam.ndim > 1 or (lam.ndim == 1 and lam.shape != (d,)):
                raise ValueError(
                    f"cov must be a float, a tensor of shape (d,) or (d, d) with d = {d}, "
                    f"got shape {tuple(lam.shape)}"
                )
            lam = lam.expand(d).clone()
            self._cov_matrix = None
        if not torch.isfinite(lam).all() or (lam < -1e-9 * max(1.0, lam.abs().max().item())).any():
            lowest = lam.min().item()
            raise ValueError(f"cov must be positive semi-definite, min eigenvalue {lowest:.3g}")
        self.cov_eigvals = lam.clamp_min(0.0)  # (d,)
        if weights is None:
            weights = torch.full((K,), 1.0 / K, dtype=dtype, device=device)
        weights = torch.as_tensor(weights, dtype=dtype, device=device)
        if weights.shape != (K,) or not torch.isfinite(weights).all() or (weights < 0).any():
            raise ValueError(f"weights must be {K} finite non-negative numbers, got {weights}")
        if weights.sum() <= 0:
            raise ValueError("weights must not all be zero")
        self.weights = weights / weights.sum()
        self._means_eig = self._to_eig(self.means)  # (K, d), U^T mu_k

    # -- basic facts ----------------------------------------------------------------------

    @property
    def K(self) -> int:
        return self.means.shape[0]

    @property
    def d(self) -> int:
        return self.means.shape[1]

    @property
    def dtype(self) -> torch.dtype:
        return self.means.dtype

    @property
    def trace_cov(self) -> float:
        """tr(Sigma), the data-variance term of Thm 4.3."""
        return float(self.cov_eigvals.sum())

    def cov_matrix(self) -> torch.Tensor:
        """Sigma as a (d, d) matrix."""
        if self._cov_matrix is not None:
            return self._cov_matrix
        return torch.diag(self.cov_eigvals)

    def __repr__(self) -> str:
        return f"GaussianMixture(K={self.K}, d={self.d}, tr(Sigma)={self.trace_cov:.3g})"

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> GaussianMixture:
        """The same mixture with its tensors on ``device`` in ``dtype`` (a new object)."""
        cov = self._cov_matrix if self._cov_matrix is not None else self.cov_eigvals
        return GaussianMixture(
            self.means.to(device, dtype), cov.to(device, dtype), self.weights.to(device, dtype)
        )

    def _to_eig(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.rotation is None else x @ self.rotation

    def _from_eig(self, z: torch.Tensor) -> torch.Tensor:
        return z if self.rotation is None else z @ self.rotation.T

    def _from_eig_matrix(self, m: torch.Tensor) -> torch.Tensor:
        """U m U^T for m of shape (batch, d, d)."""
        if self.rotation is None:
            return m
        return self.rotation @ m @ self.rotation.T

    # -- sampling -------------------------------------------------------------------------

    def sample(
        self, n: int, generator: torch.Generator | None = None, return_labels: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """n iid draws from P_data, shape (n, d) (and component labels (n,) if asked)."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        labels = torch.multinomial(self.weights.cpu(), n, replacement=True, generator=generator)
        xi = torch.randn((n, self.d), generator=generator, dtype=self.dtype)
        xi = xi.to(self.means.device)
        labels = labels.to(self.means.device)
        x = self.means[labels] + self._from_eig(xi * self.cov_eigvals.sqrt())
        return (x, labels) if return_labels else x

    # -- the marginal P_t -----------------------------------------------------------------

    def _terms(self, x: torch.Tensor, t: Time):
        """Eigen-coordinates z (batch, d), alpha (.,1), v_t (., d), log-responsibilities (batch, K)
        and the log-normalizer (batch,) of log p_t, all shared by the public methods."""
        check_matrix(x, "x", cols=self.d, dtype=self.dtype, device=self.means.device)
        check_time(t, allow_zero=True)
        tc = time_column(t, x)
        a, s2 = alpha(tc), sigma2(tc)
        v = a.square() * self.cov_eigvals + s2  # (1 or batch, d)
        if (v <= 0).any():
            raise ValueError("t = 0 needs a positive definite cov (the density is singular)")
        z = self._to_eig(x)
        diff = z[:, None, :] - a[:, None] * self._means_eig[None]  # (batch, K, d)
        logits = torch.log(self.weights) - 0.5 * (diff.square() / v[:, None]).sum(-1)
        log_norm = torch.logsumexp(logits, dim=1)
        return z, a, v, logits - log_norm[:, None], log_norm

    def log_prob(self, x: torch.Tensor, t: Time = 0.0) -> torch.Tensor:
        """log p_t(x), shape (batch,); t = 0 gives the data density (§4)."""
        _, _, v, _, log_norm = self._terms(x, t)
        return log_norm - 0.5 * torch.log(2 * math.pi * v).sum(-1)

    def responsibilities(self, x: torch.Tensor, t: Time) -> torch.Tensor:
        """P(component k | X_t = x), shape (batch, K)."""
        return self._terms(x, t)[3].exp()

    def score(self, x: torch.Tensor, t: Time) -> torch.Tensor:
        """grad log p_t(x) = -C_t^{-1}(x - alpha_t sum_k r_k mu_k), shape (batch, d) (§4)."""
        z, a, v, log_r, _ = self._terms(x, t)
        mean_eig = log_r.exp() @ self._means_eig  # (batch, d)
        return self._from_eig((a * mean_eig - z) / v)

    __call__ = score

    def hessian(self, x: torch.Tensor, t: Time) -> torch.Tensor:
        """grad^2 log p_t(x) = -C^{-1} + alpha^2 C^{-1} Cov_r(mu) C^{-1}, (batch, d, d) (App. C)."""
        z, a, v, log_r, _ = self._terms(x, t)
        r = log_r.exp()
        centred = self._means_eig[None] - (r @ self._means_eig)[:, None]  # (batch, K, d)
        cov_mu = torch.einsum("bk,bki,bkj->bij", r, centred, centred)
        inv_v = (1.0 / v).expand(x.shape[0], -1)  # (batch, d)
        h = (a.square()[..., None] * inv_v[:, :, None] * inv_v[:, None, :]) * cov_mu
        h = h - torch.diag_embed(inv_v)
        return self._from_eig_matrix(h)

    def posterior_mean(self, x: torch.Tensor, t: Time) -> torch.Tensor:
        """E[X_0 | X_t = x] by per-component Gaussian conditioning, shape (batch, d) (§3)."""
        z, a, v, log_r, _ = self._terms(x, t)
        gain = a * self.cov_eigvals / v  # (., d): Sigma alpha C_t^{-1} in the eigenbasis
        comp = self._means_eig[None] + gain[:, None] * (z[:, None] - a[:, None] * self._means_eig)
        return self._from_eig((log_r.exp()[..., None] * comp).sum(1))

    def posterior_covariance(self, x: torch.Tensor, t: Time) -> torch.Tensor:
        """Cov[X_0 | X_t = x] = sum_k r_k P + Cov_r(posterior means), shape (batch, d, d).

        P = Sigma sigma_t^2 C_t^{-1} is each component's posterior covariance (App. C).
        """
        z, a, v, log_r, _ = self._terms(x, t)
        r = log_r.exp()
        gain = a * self.cov_eigvals / v
        comp = self._means_eig[None] + gain[:, None] * (z[:, None] - a[:, None] * self._means_eig)
        centred = comp - (r[..., None] * comp).sum(1, keepdim=True)  # (batch, K, d)
        cov = torch.einsum("bk,bki,bkj->bij", r, centred, centred)
        s2 = v - a.square() * self.cov_eigvals  # sigma_t^2, shaped like v
        p = (self.cov_eigvals * s2 / v).expand(x.shape[0], -1)
        return self._from_eig_matrix(cov + torch.diag_embed(p))


def paper_mixture(
    d: int,
    K: int = 8,
    mean_std: float = 2.0,
    cov: float | torch.Tensor = 1.0,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> GaussianMixture:
    """The paper's mixture (§6.1): K components N(mu_k, Sigma), mu_k ~ N(0, mean_std^2 I_d).

    Defaults: K = 8, means ~ N(0, 4 I_d), Sigma = I. Same seed, same means.
    """
    if d < 1 or K < 1:
        raise ValueError(f"d and K must be >= 1, got d={d}, K={K}")
    g = torch.Generator().manual_seed(seed)
    means = mean_std * torch.randn((K, d), generator=g, dtype=torch.float64)
    return GaussianMixture(means.to(dtype), cov=cov)
