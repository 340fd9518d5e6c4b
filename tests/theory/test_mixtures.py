"""Gaussian mixtures and their OU marginals P_t (theory/mixtures.py, §4, App. C).

Held against torch.distributions (an independent implementation of the density) and
autograd (for the score and Hessian), and against Tweedie's identities for the posterior.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from theory.mixtures import GaussianMixture, paper_mixture
from theory.process import forward_sample

FAST = settings(max_examples=30, deadline=None)
STAT = settings(max_examples=6, deadline=None, derandomize=True)
Z = 5.0  # standard errors allowed per compared quantity in the statistical checks


@st.composite
def mixtures(draw, strat, K=(1, 4), d=(1, 5), kinds=None, t=(1e-3, 10.0), allow_t0=True):
    """(mixture, queries (batch, d), t, cov argument) with non-uniform weights."""
    K_ = draw(st.integers(*K))
    d_ = draw(st.integers(*d))
    kind = draw(kinds if kinds is not None else strat.cov_kinds)
    seed = draw(strat.seeds)
    times = strat.log_uniform(*t)
    t_ = draw(st.one_of(st.just(0.0), times) if allow_t0 else times)
    means = 2.0 * strat.randn((K_, d_), seed)
    weights = torch.exp(1.5 * strat.randn((K_,), seed + 1))
    cov = strat.covariances(d_, seed + 2, kind)
    mix = GaussianMixture(means, cov=cov, weights=weights)
    batch = draw(st.integers(1, 4))
    x = means[torch.arange(batch) % K_] + 1.5 * strat.randn((batch, d_), seed + 3)
    return mix, x, t_, cov


def full_cov(mix: GaussianMixture, cov) -> torch.Tensor:
    """Sigma as a (d, d) matrix built from the constructor argument, not from the mixture."""
    d = mix.d
    if isinstance(cov, float):
        return cov * torch.eye(d, dtype=torch.float64)
    if cov.ndim == 1:
        return torch.diag(cov)
    return cov


def ref_log_prob(mix: GaussianMixture, cov, x: torch.Tensor, t: float) -> torch.Tensor:
    """log sum_k w_k N(x; alpha mu_k, alpha^2 Sigma + sigma^2 I) via torch.distributions."""
    a, s2 = math.exp(-t / 2), -math.expm1(-t)
    c = a**2 * full_cov(mix, cov) + s2 * torch.eye(mix.d, dtype=torch.float64)
    comp = torch.distributions.MultivariateNormal(a * mix.means, covariance_matrix=c)
    lp = comp.log_prob(x[:, None, :])  # (batch, K)
    return torch.logsumexp(lp + mix.weights.log(), dim=1)


def grad_and_hessian(mix: GaussianMixture, x: torch.Tensor, t: float):
    """Autograd gradient (batch, d) and Hessian (batch, d, d) of mix.log_prob."""
    xg = x.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(mix.log_prob(xg, t).sum(), xg)
    h = torch.stack(
        [torch.autograd.functional.hessian(lambda z: mix.log_prob(z[None], t)[0], r) for r in x]
    )
    return g, h


def max_rel(a: torch.Tensor, b: torch.Tensor, floor: float = 1e-300) -> float:
    """max |a - b| relative to max(max |b|, floor)."""
    return float((a - b).abs().max() / b.abs().max().clamp_min(floor))


# -- density, score, Hessian -----------------------------------------------------------------


@FAST
@given(data=st.data())
def test_log_prob_matches_torch_distributions(strat, data):
    mix, x, t, cov = data.draw(mixtures(strat))
    ref = ref_log_prob(mix, cov, x, t)
    got = mix.log_prob(x, t)
    assert got.shape == (x.shape[0],)
    assert torch.all((got - ref).abs() <= 1e-10 * ref.abs().clamp_min(1.0))


@FAST
@given(data=st.data())
def test_score_and_hessian_are_autograd_derivatives(strat, data):
    mix, x, t, _ = data.draw(mixtures(strat))
    g, h = grad_and_hessian(mix, x, t)
    assert float((mix.score(x, t) - g).norm() / g.norm()) < 1e-8
    assert float((mix(x, t) - g).norm() / g.norm()) < 1e-8
    hess = mix.hessian(x, t)
    assert hess.shape == (x.shape[0], mix.d, mix.d)
    assert max_rel(hess, h) < 1e-8
    torch.testing.assert_close(hess, hess.transpose(1, 2), rtol=0, atol=1e-10 * h.abs().max())


@FAST
@given(data=st.data())
def test_posterior_moments_satisfy_tweedie(strat, data):
    """E[X0|Xt=x] = (x + sigma^2 grad log p_t)/alpha and
    Cov[X0|Xt=x] = (sigma^4 grad^2 log p_t + sigma^2 I)/alpha^2, derivatives by autograd."""
    mix, x, t, _ = data.draw(mixtures(strat, t=(1e-2, 5.0), allow_t0=False))
    a, s2 = math.exp(-t / 2), -math.expm1(-t)
    g, h = grad_and_hessian(mix, x, t)
    mean = mix.posterior_mean(x, t)
    scale = (x.norm() + s2 * g.norm()) / a
    assert (mean - (x + s2 * g) / a).norm() <= 1e-9 * scale
    cov = mix.posterior_covariance(x, t)
    eye = torch.eye(mix.d, dtype=torch.float64)
    scale = (s2**2 * h.norm() + s2 * math.sqrt(mix.d)) / a**2
    assert (cov - (s2**2 * h + s2 * eye) / a**2).norm() <= 1e-9 * scale
    assert torch.linalg.eigvalsh(cov).min() >= -1e-9 * scale


@FAST
@given(data=st.data())
def test_responsibilities(strat, data):
    mix, x, t, cov = data.draw(mixtures(strat))
    r = mix.responsibilities(x, t)
    torch.testing.assert_close(r.sum(1), torch.ones(x.shape[0], dtype=torch.float64))
    a, s2 = math.exp(-t / 2), -math.expm1(-t)
    c = a**2 * full_cov(mix, cov) + s2 * torch.eye(mix.d, dtype=torch.float64)
    comp = torch.distributions.MultivariateNormal(a * mix.means, covariance_matrix=c)
    ref = torch.softmax(comp.log_prob(x[:, None, :]) + mix.weights.log(), dim=1)
    assert (r - ref).abs().max() <= 1e-10


@FAST
@given(data=st.data())
def test_single_gaussian_closed_form(strat, data):
    """K = 1: score = -C_t^{-1}(x - alpha mu), hessian = -C_t^{-1},
    with C_t = alpha^2 Sigma + sigma^2 I."""
    mix, x, t, cov = data.draw(mixtures(strat, K=(1, 1)))
    a, s2 = math.exp(-t / 2), -math.expm1(-t)
    c = a**2 * full_cov(mix, cov) + s2 * torch.eye(mix.d, dtype=torch.float64)
    score = -torch.linalg.solve(c, (x - a * mix.means).T).T
    assert max_rel(mix.score(x, t), score) <= 1e-10
    assert max_rel(mix.hessian(x, t), -torch.linalg.inv(c).expand(x.shape[0], -1, -1)) <= 1e-10


# -- invariances ------------------------------------------------------------------------------


@FAST
@given(data=st.data())
def test_weight_normalization_and_zero_weight_components(strat, data):
    """Weights are normalized (scaling them changes nothing); a zero-weight component is absent."""
    mix, x, t, cov = data.draw(mixtures(strat, K=(1, 3)))
    scaled = GaussianMixture(mix.means, cov=cov, weights=7.5 * mix.weights)
    torch.testing.assert_close(scaled.weights.sum(), torch.tensor(1.0, dtype=torch.float64))
    assert max_rel(scaled.score(x, t), mix.score(x, t)) <= 1e-12
    extra = torch.cat([mix.means, 3.0 * torch.ones(1, mix.d, dtype=torch.float64)])
    padded_w = torch.cat([mix.weights, torch.zeros(1, dtype=torch.float64)])
    padded = GaussianMixture(extra, cov=cov, weights=padded_w)
    # posterior_covariance vanishes at t = 0 (X_0 = X_t): compare it on the scale of Sigma
    floor = {"posterior_covariance": float(full_cov(mix, cov).abs().max())}
    for name in ("score", "hessian", "posterior_mean", "posterior_covariance"):
        got, want = getattr(padded, name)(x, t), getattr(mix, name)(x, t)
        assert torch.isfinite(got).all(), name
        assert max_rel(got, want, floor.get(name, 1e-300)) <= 1e-12, name
    assert max_rel(padded.log_prob(x, t), mix.log_prob(x, t)) <= 1e-12


@FAST
@given(data=st.data())
def test_per_row_times_equal_scalar_times(strat, data):
    mix, x, t, _ = data.draw(mixtures(strat, allow_t0=False))
    ts = torch.tensor([t * 3.0**k for k in range(x.shape[0])], dtype=torch.float64)
    for name in ("score", "log_prob", "hessian", "posterior_mean", "posterior_covariance"):
        batched = getattr(mix, name)(x, ts)
        for row, tr in enumerate(ts.tolist()):
            single = getattr(mix, name)(x[row : row + 1], tr)[0]
            assert max_rel(batched[row], single) <= 1e-12, name


def test_t0_log_prob_is_data_density():
    means = torch.tensor([[0.0, 1.0], [2.0, -1.0]], dtype=torch.float64)
    cov = torch.tensor([[1.0, 0.3], [0.3, 0.5]], dtype=torch.float64)
    mix = GaussianMixture(means, cov=cov, weights=torch.tensor([0.25, 0.75], dtype=torch.float64))
    x = torch.tensor([[0.3, 0.2], [1.0, 1.0], [-2.0, 4.0]], dtype=torch.float64)
    comp = torch.distributions.MultivariateNormal(means, covariance_matrix=cov)
    log_w = torch.tensor([0.25, 0.75], dtype=torch.float64).log()
    ref = torch.logsumexp(comp.log_prob(x[:, None]) + log_w, dim=1)
    torch.testing.assert_close(mix.log_prob(x), ref, rtol=1e-12, atol=0)
    torch.testing.assert_close(mix.cov_matrix(), cov)
    assert mix.trace_cov == pytest.approx(1.5)


# -- sampling ---------------------------------------------------------------------------------


@STAT
@given(data=st.data())
def test_sample_moments_and_labels(strat, data):
    mix, _, _, cov = data.draw(mixtures(strat, d=(1, 3)))
    seed = data.draw(strat.seeds)
    num = 20_000
    x, labels = mix.sample(num, strat.torch_gen(seed), return_labels=True)
    assert x.shape == (num, mix.d) and labels.shape == (num,)
    assert torch.equal(x, mix.sample(num, strat.torch_gen(seed)))
    freq = torch.bincount(labels, minlength=mix.K).double() / num
    w = mix.weights
    assert torch.all((freq - w).abs() <= Z * (w * (1 - w) / num).sqrt() + 1e-12)
    sigma = full_cov(mix, cov)
    mean = w @ mix.means
    centred = mix.means - mean
    var = torch.diagonal(sigma) + (w[:, None] * centred.square()).sum(0)
    assert torch.all((x.mean(0) - mean).abs() <= Z * (var / num).sqrt())
    # within one component, X - mu_k has covariance Sigma
    k = int(torch.argmax(freq))
    resid = x[labels == k] - mix.means[k]
    m = resid.shape[0]
    emp = resid.T @ resid / m
    diag = torch.diagonal(sigma)
    se = ((diag[:, None] * diag[None] + sigma.square()) / m).sqrt()  # SE of each entry
    assert torch.all((emp - sigma).abs() <= Z * se)


@STAT
@given(data=st.data())
def test_stein_identity_links_sampling_and_score(strat, data):
    """E_{X ~ P_t}[score(X) X^T] = -I: draws of X_0 pushed through forward_sample, scored by
    the mixture at time t (Stein's identity; ties the marginal's score to its sampler)."""
    mix, _, t, _ = data.draw(mixtures(strat, d=(1, 3), t=(1e-2, 3.0), allow_t0=False))
    seed = data.draw(strat.seeds)
    num = 40_000
    x0 = mix.sample(num, strat.torch_gen(seed))
    xt, _ = forward_sample(x0, t, strat.torch_gen(seed + 1))
    prod = mix.score(xt, t)[:, :, None] * xt[:, None, :]  # (num, d, d)
    mean = prod.mean(0)
    se = prod.std(0) / math.sqrt(num)
    assert torch.all((mean + torch.eye(mix.d, dtype=torch.float64)).abs() <= Z * se)


def test_paper_mixture():
    mix = paper_mixture(32, seed=3)
    assert (mix.K, mix.d, mix.dtype) == (8, 32, torch.float64)
    assert torch.equal(mix.means, paper_mixture(32, seed=3).means)
    assert not torch.equal(mix.means, paper_mixture(32, seed=4).means)
    torch.testing.assert_close(mix.weights, torch.full((8,), 1 / 8, dtype=torch.float64))
    assert mix.trace_cov == pytest.approx(32.0)
    # means ~ N(0, 4 I): the sample variance of the 256 coordinates is 4 within its SE
    v = paper_mixture(32, K=64, seed=0).means.flatten()
    assert abs(float(v.var()) - 4.0) <= Z * 4.0 * math.sqrt(2 / (v.numel() - 1))
    assert abs(float(v.mean())) <= Z * 2.0 / math.sqrt(v.numel())
    assert paper_mixture(4, dtype=torch.float32).dtype == torch.float32
    with pytest.raises(ValueError, match="d and K"):
        paper_mixture(0)


# -- bad input --------------------------------------------------------------------------------


def test_rejects_bad_construction():
    means = torch.zeros(2, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="means"):
        GaussianMixture(torch.tensor([[0.0, math.nan]], dtype=torch.float64))
    with pytest.raises(ValueError, match="means"):
        GaussianMixture(torch.zeros(0, 3, dtype=torch.float64))
    with pytest.raises(TypeError, match="means"):
        GaussianMixture([[0.0, 1.0]])
    with pytest.raises(ValueError, match="cov"):
        GaussianMixture(means, cov=torch.eye(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="cov"):
        GaussianMixture(means, cov=torch.ones(3, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="cov"):
        GaussianMixture(means, cov=torch.tensor([[1.0, 0.5, 0], [0, 1, 0], [0, 0, 1]]).double())
    with pytest.raises(ValueError, match="cov"):
        GaussianMixture(means, cov=-torch.eye(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="cov"):
        GaussianMixture(means, cov=-1.0)
    with pytest.raises(ValueError, match="weights"):
        GaussianMixture(means, weights=torch.tensor([0.5, -0.1], dtype=torch.float64))
    with pytest.raises(ValueError, match="weights"):
        GaussianMixture(means, weights=torch.tensor([0.5, 0.2, 0.3], dtype=torch.float64))
    with pytest.raises(ValueError, match="weights"):
        GaussianMixture(means, weights=torch.zeros(2, dtype=torch.float64))


@pytest.mark.parametrize(
    "cov", [torch.ones(4), torch.ones(2), torch.ones(3, 3, 3)], ids=["d+1", "d-1", "3-D"]
)
def test_rejects_wrong_cov_shape(cov):
    """A cov of the wrong shape is a ValueError naming cov, like the (d, d) case."""
    with pytest.raises(ValueError, match="cov"):
        GaussianMixture(torch.zeros(2, 3, dtype=torch.float64), cov=cov.double())


@pytest.mark.parametrize("method", ["score", "log_prob", "hessian", "posterior_mean"])
def test_rejects_bad_queries_and_times(method):
    mix = GaussianMixture(torch.zeros(2, 3, dtype=torch.float64))
    f = getattr(mix, method)
    x = torch.zeros(2, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="x"):
        f(torch.zeros(2, 4, dtype=torch.float64), 0.1)
    with pytest.raises(TypeError, match="x"):
        f(x.float(), 0.1)
    with pytest.raises(ValueError, match="t must"):
        f(x, -0.1)
    with pytest.raises(ValueError, match="t must"):
        f(x, torch.full((3,), 0.1, dtype=torch.float64))
    degenerate = GaussianMixture(torch.zeros(1, 3, dtype=torch.float64), cov=0.0)
    with pytest.raises(ValueError, match="cov"):
        getattr(degenerate, method)(x, 0.0)
