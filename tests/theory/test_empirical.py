"""The empirical score of the smoothed training set (theory/empirical.py, §3, App. C).

Held against an independently written reference: the log-density of
P_hat_t = (1/n) sum_i N(alpha_t x_i, sigma_t^2 I) as a torch.logsumexp over the explicit
differences x - alpha_t x_i, differentiated by autograd.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from theory.empirical import EmpiricalScore
from theory.mixtures import GaussianMixture

EPS64 = torch.finfo(torch.float64).eps
FAST = settings(max_examples=30, deadline=None)
METHODS = ("score", "denoiser", "log_density", "weights", "posterior_covariance", "hessian")


# -- the independent reference ------------------------------------------------------------


def ref_log_density(points: torch.Tensor, x: torch.Tensor, t: float) -> torch.Tensor:
    """log (1/n) sum_i N(x; alpha_t x_i, sigma_t^2 I), shape (batch,), written from §3."""
    n, d = points.shape
    a, s2 = math.exp(-t / 2), -math.expm1(-t)
    sq = (x[:, None, :] - a * points[None]).square().sum(-1)  # (batch, n)
    return (
        torch.logsumexp(-sq / (2 * s2), dim=1) - math.log(n) - 0.5 * d * math.log(2 * math.pi * s2)
    )


def ref_score(points: torch.Tensor, x: torch.Tensor, t: float) -> torch.Tensor:
    """Autograd gradient of ref_log_density, shape (batch, d)."""
    x = x.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(ref_log_density(points, x, t).sum(), x)
    return grad


def ref_hessian(points: torch.Tensor, x: torch.Tensor, t: float) -> torch.Tensor:
    """Autograd Hessian of ref_log_density, shape (batch, d, d)."""
    return torch.stack(
        [
            torch.autograd.functional.hessian(lambda z: ref_log_density(points, z[None], t)[0], row)
            for row in x
        ]
    )


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| relative to max |b| (entries of very different size compared as a block)."""
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def coeffs(t: float) -> tuple[float, float]:
    return math.exp(-t / 2), -math.expm1(-t)


# -- identities against the reference -----------------------------------------------------


@FAST
@given(data=st.data())
def test_score_is_gradient_of_log_density(strat, data):
    case = data.draw(strat.cases(n=(1, 40), d=(1, 10)))
    emp = EmpiricalScore(case.points)
    ref = ref_score(case.points, case.x, case.t)
    assert rel_err(emp.score(case.x, case.t), ref) < 1e-6
    assert rel_err(emp(case.x, case.t), ref) < 1e-6
    logp = emp.log_density(case.x, case.t)
    ref_logp = ref_log_density(case.points, case.x, case.t)
    assert torch.all((logp - ref_logp).abs() <= 1e-6 * ref_logp.abs().clamp_min(1.0))


@FAST
@given(data=st.data())
def test_tweedie_denoiser_covariance_and_hessian(strat, data):
    """Tweedie: E[X0|Xt=x] = (x + sigma^2 grad log p)/alpha and
    Cov[X0|Xt=x] = (sigma^4 grad^2 log p + sigma^2 I)/alpha^2, with the derivatives taken by
    autograd of the reference; and hessian = that autograd Hessian."""
    case = data.draw(strat.cases(n=(1, 12), d=(1, 5), batch=(1, 3), t=(1e-2, 5.0)))
    emp = EmpiricalScore(case.points)
    x, t = case.x, case.t
    a, s2 = coeffs(t)
    g = ref_score(case.points, x, t)
    h = ref_hessian(case.points, x, t)
    eye = torch.eye(case.d, dtype=x.dtype)

    # tolerances: float64 rounding amplified by the cancellations in each identity
    den = emp.denoiser(x, t)
    scale = (x.norm() + s2 * g.norm()) / a
    assert (den - (x + s2 * g) / a).norm() <= 1e-9 * scale

    cov = emp.posterior_covariance(x, t)
    scale = (s2**2 * h.norm() + s2 * math.sqrt(case.d)) / a**2
    assert (cov - (s2**2 * h + s2 * eye) / a**2).norm() <= 1e-9 * scale
    assert torch.allclose(cov, cov.transpose(1, 2), rtol=0, atol=1e-12 * float(scale))
    assert torch.linalg.eigvalsh(cov).min() >= -1e-9 * scale

    hess = emp.hessian(x, t)
    assert (hess - h).norm() <= 1e-9 * (h.norm() + math.sqrt(case.d) / s2)


@FAST
@given(data=st.data())
def test_weights_are_a_distribution_and_match_reference(strat, data):
    case = data.draw(strat.cases(n=(1, 40)))
    w = EmpiricalScore(case.points).weights(case.x, case.t)
    assert w.shape == (case.x.shape[0], case.n)
    assert torch.all(w >= 0)
    # logits here stay below ~1e5 in size; the sum-to-one contract at huge logits is
    # pinned by test_weights_sum_to_one_at_small_sigma
    torch.testing.assert_close(w.sum(1), torch.ones_like(w[:, 0]), rtol=0, atol=1e-10)
    a, s2 = coeffs(case.t)
    sq = (case.x[:, None] - a * case.points[None]).square().sum(-1)
    ref = torch.softmax(-sq / (2 * s2), dim=1)
    assert (w - ref).abs().max() <= 1e-9


@FAST
@given(data=st.data())
def test_per_row_times_equal_scalar_times(strat, data):
    case = data.draw(strat.cases(batch=(2, 5)))
    emp = EmpiricalScore(case.points)
    ts = torch.tensor([case.t * 2.0**k for k in range(case.x.shape[0])], dtype=torch.float64)
    batched = emp.score(case.x, ts)
    for row, t in enumerate(ts.tolist()):
        torch.testing.assert_close(
            batched[row], emp.score(case.x[row : row + 1], t)[0], rtol=1e-10, atol=0
        )
    hb = emp.hessian(case.x, ts)
    for row, t in enumerate(ts.tolist()):
        h1 = emp.hessian(case.x[row : row + 1], t)[0]
        assert max_rel(hb[row], h1) <= 1e-10


# -- invariances ---------------------------------------------------------------------------


@FAST
@given(data=st.data())
def test_permutation_invariance(strat, data):
    case = data.draw(strat.cases(n=(2, 30)))
    perm = torch.randperm(case.n, generator=strat.torch_gen(case.seed + 7))
    emp, emp_p = EmpiricalScore(case.points), EmpiricalScore(case.points[perm])
    x, t = case.x, case.t
    assert max_rel(emp_p.score(x, t), emp.score(x, t)) <= 1e-10
    assert max_rel(emp_p.denoiser(x, t), emp.denoiser(x, t)) <= 1e-10
    assert max_rel(emp_p.log_density(x, t), emp.log_density(x, t)) <= 1e-12
    assert (emp_p.weights(x, t) - emp.weights(x, t)[:, perm]).abs().max() <= 1e-12
    assert max_rel(emp_p.hessian(x, t), emp.hessian(x, t)) <= 1e-10


@FAST
@given(data=st.data())
def test_copies_weigh_like_a_weighted_empirical_score(strat, data):
    """Duplicates (§5: they lower the effective n): the empirical score of a training set in
    which distinct point y_i appears c_i times is the score of the weighted mixture
    sum_i (c_i / n) N(alpha_t y_i, sigma_t^2 I), i.e. log c_i added to the softmax logits
    (written here from that definition over the distinct points only)."""
    case = data.draw(strat.cases(n=(1, 12), d=(1, 6)))
    counts = torch.tensor(data.draw(st.lists(st.integers(1, 5), min_size=case.n,
                                             max_size=case.n), label="counts"))
    order = torch.randperm(int(counts.sum()), generator=strat.torch_gen(case.seed + 1))
    with_copies = case.points.repeat_interleave(counts, dim=0)[order]
    a, s2 = coeffs(case.t)
    sq = (case.x[:, None] - a * case.points[None]).square().sum(-1)  # (batch, distinct)
    w = torch.softmax(counts.to(sq.dtype).log() - sq / (2 * s2), dim=1)
    emp = EmpiricalScore(with_copies)
    den = emp.denoiser(case.x, case.t)
    assert (den - w @ case.points).abs().max() <= 1e-9 * case.points.abs().max().clamp_min(1)
    assert rel_err(emp.score(case.x, case.t), -(case.x - a * w @ case.points) / s2) < 1e-6


@FAST
@given(data=st.data())
def test_chunk_size_changes_nothing(strat, data):
    case = data.draw(strat.cases(n=(1, 25), d=(1, 5)))
    x, t = case.x, case.t
    whole = EmpiricalScore(case.points)
    for chunk in (1, 3):
        part = EmpiricalScore(case.points, chunk_size=chunk)
        for name in METHODS:
            got, want = getattr(part, name)(x, t), getattr(whole, name)(x, t)
            assert got.shape == want.shape
            assert max_rel(got, want) <= 1e-10, name


# -- limits ---------------------------------------------------------------------------------


@FAST
@given(data=st.data())
def test_single_point_is_gaussian(strat, data):
    """n = 1: grad log p_hat_t(x) = -(x - alpha_t x_1)/sigma_t^2, D = x_1, Cov = 0."""
    case = data.draw(strat.cases(n=(1, 1)))
    emp = EmpiricalScore(case.points)
    x, t, x1 = case.x, case.t, case.points
    a, s2 = coeffs(t)
    assert rel_err(emp.score(x, t), -(x - a * x1) / s2) <= 1e-12
    torch.testing.assert_close(emp.denoiser(x, t), x1.expand_as(x), rtol=1e-14, atol=0)
    assert torch.equal(emp.weights(x, t), torch.ones(x.shape[0], 1, dtype=x.dtype))
    assert torch.all(emp.posterior_covariance(x, t) == 0)
    eye = torch.eye(case.d, dtype=x.dtype)
    torch.testing.assert_close(emp.hessian(x, t), (-eye / s2).expand(x.shape[0], -1, -1))
    normal = torch.distributions.Normal(a * x1[0], math.sqrt(s2))
    ref = normal.log_prob(x).sum(1)
    assert torch.all((emp.log_density(x, t) - ref).abs() <= 1e-9 * ref.abs().clamp_min(1.0))


@FAST
@given(data=st.data())
def test_single_point_equals_degenerate_mixture(strat, data):
    """EmpiricalScore({x1}) is GaussianMixture(means=x1[None], cov=0) at every t > 0."""
    case = data.draw(strat.cases(n=(1, 1), t=(1e-4, 20.0)))
    emp = EmpiricalScore(case.points)
    mix = GaussianMixture(case.points, cov=0.0)
    x, t = case.x, case.t
    assert max_rel(emp.score(x, t), mix.score(x, t)) <= 1e-12
    # log_density expands ||x - a y||^2; EmpiricalScore refines rows only when the rounding
    # bound of that expansion exceeds sqrt(u) ~ 1.5e-8 nats, so that is its absolute accuracy.
    assert (emp.log_density(x, t) - mix.log_prob(x, t)).abs().max() <= 1.5e-8
    assert max_rel(emp.denoiser(x, t), mix.posterior_mean(x, t)) <= 1e-12
    assert max_rel(emp.hessian(x, t), mix.hessian(x, t)) <= 1e-12
    torch.testing.assert_close(
        emp.posterior_covariance(x, t), mix.posterior_covariance(x, t), rtol=0, atol=1e-14
    )


@FAST
@given(data=st.data())
def test_large_t_score_is_minus_x(strat, data):
    """t = 60: P_hat_t is N(0, I) up to alpha_t = e^{-30}.

    |score + x| <= alpha max|x_i| / sigma^2 + |x| alpha^2 / sigma^2, plus rounding."""
    case = data.draw(strat.cases(n=(1, 30)))
    t = 60.0
    emp = EmpiricalScore(case.points)
    x = case.x
    a, s2 = coeffs(t)
    err = (emp.score(x, t) + x).norm(dim=1)
    bound = a * case.points.norm(dim=1).max() / s2 + x.norm(dim=1) * (a**2 / s2 + 4 * EPS64)
    assert torch.all(err <= bound * (1 + 1e-9))
    w = emp.weights(x, t)
    torch.testing.assert_close(w, torch.full_like(w, 1.0 / case.n), rtol=1e-9, atol=0)
    scale = case.points.abs().max()
    assert (emp.denoiser(x, t) - case.points.mean(0)).abs().max() <= 1e-9 * scale


@FAST
@given(data=st.data())
def test_small_t_score_is_nearest_point_pull(strat, data):
    """Queries x = alpha_t (x_j + r u) with r = delta/10 (delta = min pairwise distance) and
    sigma_t^2 <= delta^2/1000: every other weight is below exp(-400), so the score is the
    pull -(x - alpha_t x_nn)/sigma_t^2 of the nearest smoothed point."""
    case = data.draw(strat.cases(n=(2, 20), d=(1, 6), batch=(1, 1)))
    pts = case.points
    dist = torch.cdist(pts, pts) + torch.diag(torch.full((case.n,), math.inf, dtype=pts.dtype))
    delta = float(dist.min())
    t = data.draw(strat.log_uniform(1e-14, max(1e-14, min(delta**2 / 1000, 1e-2))))
    a, s2 = coeffs(t)
    g = strat.torch_gen(case.seed + 3)
    j = torch.randint(case.n, (4,), generator=g)
    u = torch.randn((4, case.d), generator=g, dtype=pts.dtype)
    u = u / u.norm(dim=1, keepdim=True)
    x = a * (pts[j] + 0.1 * delta * u)
    nn = (x[:, None] - a * pts[None]).square().sum(-1).argmin(1)
    assert torch.equal(nn, j)
    emp = EmpiricalScore(pts)
    pull = -(x - a * pts[nn]) / s2
    assert rel_err(emp.score(x, t), pull) <= 1e-8
    torch.testing.assert_close(emp.weights(x, t), torch.eye(case.n, dtype=pts.dtype)[nn])
    torch.testing.assert_close(emp.denoiser(x, t), pts[nn], rtol=1e-14, atol=0)


# -- numerical robustness --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "sigma_t"), [(torch.float64, 1e-8), (torch.float32, 1e-4)], ids=["f64", "f32"]
)
@pytest.mark.parametrize("d", [2, 3072])
def test_finite_at_tiny_sigma_high_dim_and_far_queries(dtype, sigma_t, d):
    t = -math.log1p(-(sigma_t**2))  # sigma_t exactly as given: t = 1e-16 (f64), 1e-8 (f32)
    g = torch.Generator().manual_seed(d)
    points = torch.randn((5, d), generator=g, dtype=torch.float64)
    a = math.exp(-t / 2)
    eps = torch.randn((2, d), generator=g, dtype=torch.float64)
    u = torch.randn((1, d), generator=g, dtype=torch.float64)
    near = a * points[:2] + sigma_t * eps
    far = a * points[:2] + 1e3 * u / u.norm()
    x = torch.cat([near, far, 1e3 * torch.ones(1, d, dtype=torch.float64)]).to(dtype)
    emp = EmpiricalScore(points.to(dtype))
    for name in ("score", "denoiser", "weights", "log_density"):
        out = getattr(emp, name)(x, t)
        assert torch.isfinite(out).all(), name
    w = emp.weights(x, t)
    atol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(w.sum(1), torch.ones(5, dtype=dtype), rtol=0, atol=atol)
    assert torch.equal(w[:2].argmax(1), torch.arange(2))
    if dtype == torch.float64:
        # near a point the score is -eps/sigma_t, to the precision x carries
        assert rel_err(emp.score(x[:2], t), -eps / sigma_t) <= 1e-5
    if d == 2:
        assert torch.isfinite(emp.hessian(x, t)).all()


@pytest.mark.parametrize(
    ("dtype", "sigma_t", "d"),
    [
        (torch.float64, 1e-8, 10),
        (torch.float64, 1e-6, 3072),
        (torch.float32, 1e-3, 32),
        (torch.float32, 1e-2, 3072),
    ],
)
def test_weights_sum_to_one_at_small_sigma(dtype, sigma_t, d):
    """Rows of weights() sum to 1 and give the denoiser, whatever the size of the logits.

    Queries at midpoints of pairs, where two weights share the mass: the logits there are
    ~ ||x_i||^2 / sigma_t^2 in size, and an implementation that folds log(sum) into the
    running max (exp(l - (max + log sum))) loses it to rounding."""
    t = -math.log1p(-(sigma_t**2))
    g = torch.Generator().manual_seed(d)
    points = (2 * torch.rand((4, d), generator=g, dtype=torch.float64) - 1).to(dtype)
    a = math.exp(-t / 2)
    x = a * (points[[0, 1, 2]] + points[[1, 2, 3]]) / 2
    emp = EmpiricalScore(points)
    w = emp.weights(x, t)
    tol = 64 * torch.finfo(dtype).eps
    torch.testing.assert_close(w.sum(1), torch.ones(3, dtype=dtype), rtol=0, atol=tol)
    den = emp.denoiser(x, t)
    assert (w @ points - den).abs().max() <= tol * points.abs().max()


@settings(max_examples=12, deadline=None)
@given(data=st.data())
def test_small_sigma_accuracy_near_data(strat, data):
    """float64 near the data at sigma_t in [1e-8, 1e-4]: weights and log_density as accurate
    as the inputs allow.

    Two training points sigma_t apart (a near-duplicate) and a query within sigma_t of
    them, so that both weights matter. The reference uses explicit differences x - alpha x_i;
    perturbing x by its rounding (eps |x| per coordinate) moves a logit by about
    eps sqrt(d) max|x_i| / sigma_t, which sets the tolerance on the weights."""
    d = data.draw(st.sampled_from([2, 64, 3072]))
    sigma_t = data.draw(strat.log_uniform(1e-8, 1e-4))
    seed = data.draw(strat.seeds)
    t = -math.log1p(-(sigma_t**2))
    a = math.exp(-t / 2)
    g = strat.torch_gen(seed)
    y0 = torch.randn((1, d), generator=g, dtype=torch.float64)
    y1 = y0 + sigma_t * torch.randn((1, d), generator=g, dtype=torch.float64) / math.sqrt(d)
    y2 = torch.randn((1, d), generator=g, dtype=torch.float64)
    points = torch.cat([y0, y1, y2])
    x = a * y0 + sigma_t * torch.randn((2, d), generator=g, dtype=torch.float64) / math.sqrt(d)
    emp = EmpiricalScore(points)
    sq = (x[:, None] - a * points[None]).square().sum(-1)
    w_ref = torch.softmax(-sq / (2 * sigma_t**2), dim=1)
    assert w_ref[:, :2].min() > 1e-3  # both near-duplicates carry weight
    logit_err = 16 * EPS64 * math.sqrt(d) * float(points.abs().max()) / sigma_t
    assert (emp.weights(x, t) - w_ref).abs().max() <= 1e-9 + logit_err
    ref = ref_log_density(points, x, t)
    assert torch.all((emp.log_density(x, t) - ref).abs() <= 1e-6 * ref.abs().clamp_min(1.0))


# -- bad input --------------------------------------------------------------------------------


@pytest.fixture
def emp2() -> EmpiricalScore:
    return EmpiricalScore(torch.randn(4, 3, dtype=torch.float64))


def test_rejects_bad_points():
    with pytest.raises(ValueError, match="points"):
        EmpiricalScore(torch.empty(0, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="points"):
        EmpiricalScore(torch.tensor([[0.0, math.nan]], dtype=torch.float64))
    with pytest.raises(ValueError, match="points"):
        EmpiricalScore(torch.tensor([[0.0, math.inf]], dtype=torch.float64))
    with pytest.raises(ValueError, match="points"):
        EmpiricalScore(torch.zeros(3, dtype=torch.float64))
    with pytest.raises(TypeError, match="points"):
        EmpiricalScore([[0.0, 1.0]])
    with pytest.raises(TypeError, match="points"):
        EmpiricalScore(torch.zeros(3, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="chunk_size"):
        EmpiricalScore(torch.zeros(3, 2), chunk_size=0)


@pytest.mark.parametrize("method", ["score", "denoiser", "weights", "log_density", "hessian"])
def test_rejects_bad_queries_and_times(emp2, method):
    f = getattr(emp2, method)
    x = torch.randn(2, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="x"):
        f(torch.randn(2, 4, dtype=torch.float64), 0.1)
    with pytest.raises(ValueError, match="x"):
        f(torch.tensor([[0.0, math.nan, 0.0]], dtype=torch.float64), 0.1)
    with pytest.raises(TypeError, match="x"):
        f(x.float(), 0.1)
    for bad_t in (0.0, -0.5, math.nan, torch.tensor([0.1, 0.0], dtype=torch.float64)):
        with pytest.raises(ValueError, match="t must"):
            f(x, bad_t)
    with pytest.raises(ValueError, match="t must"):
        f(x, torch.full((3,), 0.1, dtype=torch.float64))
    with pytest.raises(ValueError, match="t must"):
        f(x, torch.full((2, 1), 0.1, dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("chunk_size", [1, 3, None])
def test_refined_rows_match_explicit_differences(dtype, chunk_size):
    """At small sigma the expanded logits are refined with exact differences x - alpha x_i.

    Many queries, each near a different point, so that with small chunks most chunks hold
    a candidate for some rows and none for others; every row must still match the
    reference computed from explicit differences (and be finite)."""
    g = torch.Generator().manual_seed(5)
    points = (3 * torch.randn((40, 16), generator=g, dtype=torch.float64)).to(dtype)
    t = 1e-6 if dtype == torch.float64 else 1e-3
    a, s = math.exp(-t / 2), math.sqrt(-math.expm1(-t))
    idx = torch.randint(40, (24,), generator=g)
    x = a * points[idx] + s * torch.randn((24, 16), generator=g, dtype=torch.float64).to(dtype)
    emp = EmpiricalScore(points, chunk_size=chunk_size)
    x64, p64 = x.double(), points.double()
    sq = (x64[:, None] - a * p64[None]).square().sum(-1)
    w_ref = torch.softmax(-sq / (2 * s**2), dim=1)
    tol = 1e-12 if dtype == torch.float64 else 1e-4
    assert (emp.weights(x, t).double() - w_ref).abs().max() <= tol
    assert (emp.denoiser(x, t).double() - w_ref @ p64).abs().max() <= tol * p64.abs().max()
    assert torch.isfinite(emp.score(x, t)).all()


def test_refinement_keeps_the_mass_of_many_far_points():
    """Refined rows drop only points below max - (log n - log u) nats, each < u/n of the mass,
    so together < u. Here (float32, a refined row) one point sits at the query and m = 10^5
    duplicates sit 20 nats below it: each is below u = 6e-8 but together they hold
    m e^-20 = 2e-4 of the mass. Against float64 softmax over explicit differences, the
    weight of the near point is 1 - 2e-4 to ~1e-6 (a margin of -log u alone, 16.6 nats, would
    drop the cluster and give 1)."""
    m, s2 = 100_000, 1e-3
    t = -math.log1p(-s2)  # sigma_t^2 = 1e-3
    a = math.exp(-t / 2)
    offset = 3.0  # ||x|| ||y|| / sigma^2 large enough that the row is refined
    gap = math.sqrt(40 * s2) / a  # -(a gap)^2 / (2 sigma^2) = -20
    points = torch.cat([torch.tensor([[offset]]), torch.full((m, 1), offset + gap)])  # float32
    x = (a * points[:1]).clone()
    emp = EmpiricalScore(points)
    a2, s2_code = emp._prepare(x, t)
    assert bool(emp._posterior(x, a2, s2_code).refined[0])  # the refined path is exercised
    x64, p64 = x.double(), points.double()
    logits = -(x64 - a * p64.T).square() / (2 * s2)  # (1, n)
    w_ref = torch.softmax(logits, dim=1)
    assert 1.5e-4 < 1 - float(w_ref[0, 0]) < 2.5e-4
    w = emp.weights(x, t).double()
    assert abs(float(w[0, 0] - w_ref[0, 0])) <= 1e-6
    assert abs(float(w[0, 1:].sum() - w_ref[0, 1:].sum())) <= 1e-6
    shift = float(emp.denoiser(x, t)[0, 0]) - offset  # the cluster pulls D by 2e-4 gap
    assert shift == pytest.approx(float(w_ref[0, 1:].sum()) * gap, rel=0.05)


# -- float32 against float64 far from the data ---------------------------------------------


def far_tie_case(
    n: int, d: int, t: float, far: float, gap: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 points (n, d) ~ N(0, I) and queries (3, d) about far x the points' scale away.

    Row 0 is a near tie: the point y_j with the largest projection on a random unit v
    (v_0 = 0) gets a twin y_j + e_0, and x = alpha_t (y_j + twin)/2 + far v, moved along e_0
    so that the twin's logit is ``gap`` nats below y_j's. The far offset is orthogonal to
    y_j - twin, so the two logits stay ``gap`` apart after rounding to float32, and both
    carry weight. Rows 1 and 2 are alpha_t y_i + far u for random points and directions.
    """
    g = torch.Generator().manual_seed(seed)
    a, s2 = coeffs(t)
    points = torch.randn((n, d), generator=g, dtype=torch.float64)
    v = torch.randn(d, generator=g, dtype=torch.float64)
    v[0] = 0.0
    v = v / v.norm().clamp_min(1e-300) if d > 1 else v
    j = int((points @ v).argmax())
    twin = (j + 1) % n
    points[twin] = points[j]
    points[twin, 0] += 1.0
    points = points.float().double()  # the float32 values, exactly
    scale = float(points.square().sum(1).mean().sqrt())
    tie = a * (points[j] + points[twin]) / 2 + far * scale * v
    # l_j - l_twin = a (y_j - twin).(x - alpha mid) / s2 = -a (x_0 - a mid_0) / s2
    apart = float(points[twin, 0] - points[j, 0])  # = 1 up to float32 rounding
    tie[0] = a * (points[j, 0] + points[twin, 0]) / 2 - gap * s2 / (a * apart)
    u = torch.randn((2, d), generator=g, dtype=torch.float64)
    idx = torch.randint(n, (2,), generator=g)
    rand = a * points[idx] + far * scale * u / u.norm(dim=1, keepdim=True)
    return points.float(), torch.cat([tie[None], rand]).float()


def assert_float32_matches_float64(points: torch.Tensor, x: torch.Tensor, t: float) -> None:
    """Every quantity of EmpiricalScore(points) in float32 equals the float64 computation on
    the same (float32) values to 1e-4: weights absolutely (they sum to 1); the denoiser and
    the posterior covariance relative to the largest point norm R = max_i ||x_i|| and R^2
    (their natural scale: D is a convex combination of the points, and it may be near 0);
    score and log_density row-wise relative to their float64 values."""
    e32, e64 = EmpiricalScore(points), EmpiricalScore(points.double())
    x64 = x.double()
    big = float(points.double().norm(dim=1).max())
    got = {name: getattr(e32, name)(x, t).double() for name in METHODS if name != "hessian"}
    want = {name: getattr(e64, name)(x64, t) for name in METHODS if name != "hessian"}
    assert (got["weights"] - want["weights"]).abs().max() <= 1e-4
    assert (got["denoiser"] - want["denoiser"]).norm(dim=1).max() <= 1e-4 * big
    cov_err = (got["posterior_covariance"] - want["posterior_covariance"]).flatten(1).norm(dim=1)
    assert cov_err.max() <= 1e-4 * big**2
    score_err = (got["score"] - want["score"]).norm(dim=1) / want["score"].norm(dim=1)
    assert score_err.max() <= 1e-4
    logp_err = (got["log_density"] - want["log_density"]).abs() / want["log_density"].abs()
    assert logp_err.max() <= 1e-4


def test_float32_far_query_near_tie_regression():
    """The fuzzing find: a float32 query 1e3 x the points' scale away, with two points
    0.5 nats apart. Refinement used to recompute their logits -||x - alpha x_i||^2/(2 sigma^2)
    (~5e8 nats here, rounded to ~30 nats in float32) and got the weights 12% wrong."""
    points, x = far_tie_case(n=50, d=16, t=1e-3, far=1e3, gap=0.5, seed=0)
    w64 = EmpiricalScore(points.double()).weights(x.double(), 1e-3)[0]
    assert float(w64.topk(2).values[1]) > 0.3  # the tie is real: both weights matter
    assert_float32_matches_float64(points, x, 1e-3)


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_float32_far_queries_match_float64(strat, data):
    """float32 agrees with float64 (on the same values) to 1e-4 for queries 1e2..1e4 x the
    points' scale away, near ties included (see far_tie_case), at t in [1e-3, 5]."""
    n = data.draw(st.integers(2, 200))
    d = data.draw(st.integers(2, 64))
    t = data.draw(strat.log_uniform(1e-3, 5.0))
    far = data.draw(strat.log_uniform(1e2, 1e4))
    gap = data.draw(st.floats(-4.0, 4.0))
    points, x = far_tie_case(n, d, t, far, gap, data.draw(strat.seeds))
    assert_float32_matches_float64(points, x, t)
