"""Tools of the memorization-mitigation experiments: the energy distance, the small-t
Jacobian penalty and its training wiring, training snapshots, and the posterior-mean
(denoising) last step of the sampler."""

from __future__ import annotations

import copy
import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from torch import nn

from experiments.common.metrics import energy_distance
from experiments.common.sampling import posterior_mean, sample
from experiments.common.training import TrainConfig, jacobian_penalty, train, train_snapshots
from theory.empirical import EmpiricalScore
from theory.networks import ScoreMLP

F64 = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(shape, seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=gen(seed), dtype=F64)


def ou(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha_t, sigma_t) written out: exp(-t/2), sqrt(1 - exp(-t))."""
    return torch.exp(-t / 2), torch.sqrt(1 - torch.exp(-t))


def small_net(seed: int, d: int, widths=(8, 8), param: str = "denoiser") -> ScoreMLP:
    torch.manual_seed(seed)
    net = ScoreMLP(d, list(widths), emb_dim=4, parametrization=param).double()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return net


# -- energy distance -------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(m=st.integers(1, 12), k=st.integers(1, 12), seed=st.integers(0, 2**31 - 1),
       shift=st.floats(-3, 3))
def test_energy_distance_in_one_dimension_is_scipys_squared(m, k, seed, shift):
    """Catches a missing factor 2, a U- instead of V-statistic, or a square root taken."""
    x, y = randn((m, 1), seed), randn((k, 1), seed + 1) + shift
    ref = stats.energy_distance(x[:, 0].numpy(), y[:, 0].numpy()) ** 2
    assert energy_distance(x, y) == pytest.approx(ref, rel=1e-9, abs=1e-12)


def brute_energy(x: torch.Tensor, y: torch.Tensor) -> float:
    def mean_dist(a, b):
        return sum(math.dist(p.tolist(), q.tolist()) for p in a for q in b) / (len(a) * len(b))

    return 2 * mean_dist(x, y) - mean_dist(x, x) - mean_dist(y, y)


@settings(max_examples=30, deadline=None)
@given(m=st.integers(1, 6), k=st.integers(1, 6), d=st.integers(1, 4),
       seed=st.integers(0, 2**31 - 1), scale=st.floats(0.1, 5.0))
def test_energy_distance_equals_the_pairwise_double_loop(m, k, d, seed, scale):
    """Catches squared distances, a dropped diagonal or a wrong mean in d > 1."""
    x, y = randn((m, d), seed), scale * randn((k, d), seed + 1)
    e = energy_distance(x, y)
    assert e == pytest.approx(brute_energy(x, y), rel=1e-9, abs=1e-12)
    assert e >= -1e-12
    assert energy_distance(y, x) == pytest.approx(e, rel=1e-12, abs=1e-14)
    assert energy_distance(x, x) == pytest.approx(0.0, abs=1e-12)


def test_energy_distance_sees_copying_and_dtype():
    """Catches an energy distance computed in float32 or blind to samples on one point."""
    x = randn((200, 2), 0)
    copied = x[:5].repeat(40, 1)  # samples on five training points
    fresh = randn((200, 2), 1)
    assert energy_distance(copied, x) > 5 * energy_distance(fresh, x)
    assert energy_distance(x.float(), fresh.float()) == pytest.approx(
        energy_distance(x.float().double(), fresh.float().double()), rel=1e-12)


def test_energy_distance_refuses_mismatched_columns():
    """Catches x and y of different dimensions being compared."""
    with pytest.raises(ValueError):
        energy_distance(torch.zeros(3, 2), torch.zeros(3, 3))
    with pytest.raises(ValueError):
        energy_distance(torch.zeros(3), torch.zeros(3))


# -- the Jacobian penalty --------------------------------------------------------------------------


def jacobians(model, x0, t, eps, create_graph=False):
    """(batch, d, d) Jacobians ds/dx at x_t = alpha_t x0 + sigma_t eps, by autograd, row by row,
    and sigma_t^4 (batch,)."""
    a, s = ou(t)
    xt = a[:, None] * x0 + s[:, None] * eps
    js = []
    for i in range(x0.shape[0]):
        def f(x, i=i):
            return model(x[None], t[i : i + 1])[0]

        js.append(torch.autograd.functional.jacobian(f, xt[i], create_graph=create_graph))
    return torch.stack(js), s**4


def sign_patterns(d: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product([-1.0, 1.0], repeat=d)), dtype=F64)


def test_penalty_averaged_over_every_sign_pattern_is_sigma4_frobenius():
    """Catches a wrong power of sigma_t, J v instead of J^T v averaged wrongly, or a wrong x_t:
    the mean over all 2^d Rademacher probes is exactly trace(J J^T) = ||J||_F^2."""
    d, b = 3, 4
    net = small_net(0, d)
    x0, eps = randn((b, d), 1), randn((b, d), 2)
    t = torch.tensor([1e-3, 0.03, 0.3, 2.0], dtype=F64)
    v = sign_patterns(d)  # (8, d)
    p = len(v)
    pen = jacobian_penalty(net, x0.repeat_interleave(p, 0), t.repeat_interleave(p),
                           eps.repeat_interleave(p, 0), v.repeat(b, 1))
    j, s4 = jacobians(net, x0, t, eps)
    exact = (s4 * j.square().sum((1, 2))).mean()
    assert float(pen.detach()) == pytest.approx(float(exact), rel=1e-10)


def test_penalty_gradient_is_that_of_sigma4_frobenius():
    """Catches a penalty built without create_graph (no gradient reaches the weights)."""
    d, b = 2, 3
    net = small_net(1, d, widths=(6,))
    x0, eps = randn((b, d), 3), randn((b, d), 4)
    t = torch.tensor([0.01, 0.1, 1.0], dtype=F64)
    v = sign_patterns(d)
    p = len(v)
    pen = jacobian_penalty(net, x0.repeat_interleave(p, 0), t.repeat_interleave(p),
                           eps.repeat_interleave(p, 0), v.repeat(b, 1))
    params = list(net.parameters())

    def grads(value):  # the output bias does not enter a Jacobian: zero gradient
        gs = torch.autograd.grad(value, params, allow_unused=True)
        return [torch.zeros_like(p) if g is None else g for p, g in zip(params, gs, strict=True)]

    g_pen = grads(pen)
    j, s4 = jacobians(net, x0, t, eps, create_graph=True)
    g_ref = grads((s4 * j.square().sum((1, 2))).mean())
    assert sum(int((g != 0).sum()) for g in g_ref) > 10
    for a, r in zip(g_pen, g_ref, strict=True):
        assert torch.allclose(a, r, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_random_probes_estimate_sigma4_frobenius(probe):
    """Catches a biased Hutchinson estimate (E v v^T = I probes must average to ||J||_F^2)."""
    d, b, k = 3, 2, 4000
    net = small_net(2, d)
    x0, eps = randn((b, d), 5), randn((b, d), 6)
    t = torch.tensor([0.02, 0.5], dtype=F64)
    g = gen(7)
    if probe == "rademacher":
        v = torch.randint(2, (b * k, d), generator=g).double() * 2 - 1
    else:
        v = torch.randn((b * k, d), generator=g, dtype=F64)
    pen = jacobian_penalty(net, x0.repeat_interleave(k, 0), t.repeat_interleave(k),
                           eps.repeat_interleave(k, 0), v)
    j, s4 = jacobians(net, x0, t, eps)
    m = j @ j.transpose(1, 2)  # (b, d, d): ||J^T v||^2 = v^T M v
    exact = (s4 * torch.diagonal(m, dim1=1, dim2=2).sum(1)).mean()
    off = m.square().sum((1, 2)) - torch.diagonal(m, dim1=1, dim2=2).square().sum(1)
    # Var v^T M v: 2 sum_{a != b} M_ab^2 (Rademacher), 2 ||M||_F^2 (Gaussian)
    var = 2 * (off if probe == "rademacher" else m.square().sum((1, 2)))
    se = float(torch.sqrt((s4.square() * var).sum() * k) / (b * k))
    assert abs(float(pen.detach()) - float(exact)) < 4 * se
    assert se < 0.05 * float(exact)  # the check has power


@settings(max_examples=20, deadline=None)
@given(d=st.integers(1, 5), seed=st.integers(0, 2**31 - 1), t=st.floats(1e-4, 5.0))
def test_basis_probes_of_a_linear_score_give_its_frobenius_norm(d, seed, t):
    """Catches a penalty that is not sum_j ||J^T e_j||^2 / d for the basis probes e_j."""
    a_mat = randn((d, d), seed)

    class Linear(nn.Module):
        def forward(self, x, tt):
            return x @ a_mat.T  # s(x, t) = A x: J = A everywhere

    x0, eps = randn((d, d), seed + 1), randn((d, d), seed + 2)
    tt = torch.full((d,), t, dtype=F64)
    pen = jacobian_penalty(Linear(), x0, tt, eps, torch.eye(d, dtype=F64))
    s4 = (1 - math.exp(-t)) ** 2
    assert d * float(pen.detach()) == pytest.approx(s4 * float(a_mat.square().sum()), rel=1e-10)


# -- the penalty in the training loop --------------------------------------------------------------


def test_first_logged_loss_is_dsm_plus_lambda_penalty_on_the_documented_draws():
    """Catches the penalty not added, scaled wrongly, at the wrong times (log-uniform on
    [t0, jacobian_t_max]) or with probes that are not +-1."""
    d, n, batch, lam = 2, 10, 16, 0.7
    net = small_net(3, d)
    data = randn((n, d), 8)
    cfg = TrainConfig(steps=1, batch=batch, seed=5, jacobian_penalty=lam, jacobian_t_max=0.05)
    ref = copy.deepcopy(net)
    _, _, losses = train(net, data, cfg, device="cpu", progress=False)
    g = gen(5)
    idx = torch.randint(n, (batch,), generator=g)
    u = torch.rand(batch, generator=g, dtype=F64)
    t = torch.exp(math.log(cfg.t0) + (math.log(cfg.T) - math.log(cfg.t0)) * u)
    eps = torch.randn((batch, d), generator=g, dtype=F64)
    u2 = torch.rand(batch, generator=g, dtype=F64)
    t_small = torch.exp(math.log(cfg.t0) + (math.log(0.05) - math.log(cfg.t0)) * u2)
    probe = torch.randint(2, (batch, d), generator=g).double() * 2 - 1
    x0 = data[idx]
    a, s = ou(t)
    with torch.no_grad():
        dsm = (s[:, None] * ref(a[:, None] * x0 + s[:, None] * eps, t) + eps).square().sum(1)
    j, s4 = jacobians(ref, x0, t_small, eps)
    pen = s4 * (j.transpose(1, 2) @ probe[:, :, None]).square().sum((1, 2))
    assert losses[0] == pytest.approx(float(dsm.mean() + lam * pen.mean()), rel=1e-10)


def test_training_with_the_penalty_runs_and_changes_the_run():
    """Catches a penalty that is ignored, diverges, or perturbs runs that do not use it."""
    d = 2
    data = randn((32, d), 9)
    base = small_net(4, d)

    def run(**kw):
        cfg = TrainConfig(steps=5, batch=16, lr=1e-2, seed=2, **kw)
        net, _, losses = train(copy.deepcopy(base), data, cfg, device="cpu", progress=False)
        return net.state_dict(), losses

    w_pen, l_pen = run(jacobian_penalty=1.0)
    w0, l0 = run()
    w0b, l0b = run(jacobian_penalty=0.0, jacobian_t_max=1e-4)  # unused t_max: no effect
    assert len(l_pen) == 5 and all(math.isfinite(v) for v in l_pen)
    assert l_pen[0] > l0[0]  # the same first DSM draws plus a positive penalty
    assert any(not torch.equal(w_pen[k], w0[k]) for k in w0)
    assert l0 == l0b and all(torch.equal(w0[k], w0b[k]) for k in w0)


def test_penalty_config_is_validated():
    """Catches a negative penalty or an empty penalty time range being accepted."""
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="jacobian_penalty"):
            TrainConfig(jacobian_penalty=bad)
    for t_max in (1e-3, 1e-4, -1.0):  # t0 = 1e-3
        with pytest.raises(ValueError, match="jacobian_t_max"):
            TrainConfig(jacobian_penalty=1.0, jacobian_t_max=t_max)
        TrainConfig(jacobian_penalty=0.0, jacobian_t_max=t_max)  # unused: no error


# -- snapshots -------------------------------------------------------------------------------------


SNAP_CFG = TrainConfig(steps=6, batch=8, lr=1e-2, lr_schedule="cosine", ema=0.9,
                       checkpoint_every=100, seed=3)


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_snapshots_equal_uninterrupted_runs(tmp_path):
    """Catches a snapshot that restarts the optimizer, the draws or the lr schedule."""
    d = 2
    data = randn((20, d), 10)
    base = small_net(5, d)
    model = copy.deepcopy(base)
    snaps = {}
    for step, m in train_snapshots(model, data, SNAP_CFG, [2, 4, 6], device="cpu"):
        assert m is model
        snaps[step] = state(m)
    assert list(snaps) == [2, 4, 6]
    full, _, _ = train(copy.deepcopy(base), data, SNAP_CFG, checkpoint=None, device="cpu",
                       progress=False)
    assert same(snaps[6], state(full))
    for stop in (2, 4):
        part, _, losses = train(copy.deepcopy(base), data, SNAP_CFG,
                                checkpoint=tmp_path / f"run{stop}.pt", device="cpu",
                                progress=False, stop_after=stop)
        assert len(losses) == stop and same(snaps[stop], state(part))
    assert not same(snaps[2], snaps[4]) and not same(snaps[4], snaps[6])


@pytest.mark.parametrize("stops", [[], [3, 2], [2, 2], [0, 2], [2, 7], [-1]])
def test_bad_stops_are_refused(stops):
    """Catches stops that are empty, not increasing or beyond config.steps being run."""
    data = randn((4, 2), 0)
    with pytest.raises(ValueError, match="stops"):
        list(train_snapshots(small_net(0, 2), data, SNAP_CFG, stops, device="cpu"))


# -- the posterior-mean last step ------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(d=st.integers(1, 4), seed=st.integers(0, 2**31 - 1), t=st.floats(1e-4, 8.0),
       s2=st.floats(0.01, 10.0))
def test_posterior_mean_of_a_gaussian_is_the_closed_form(d, seed, t, s2):
    """Catches a wrong Tweedie formula (sigma_t vs sigma_t^2, missing 1/alpha_t)."""
    mu, x = randn((d,), seed), 2 * randn((5, d), seed + 1)
    a, s = math.exp(-t / 2), math.sqrt(-math.expm1(-t))
    var_t = a * a * s2 + s * s  # X_t ~ N(alpha mu, (alpha^2 s2 + sigma^2) I)

    def score(y, tt):
        assert tt.shape == (y.shape[0],) and torch.all(tt == t)
        return -(y - a * mu) / var_t

    expect = mu + a * s2 / var_t * (x - a * mu)
    assert torch.allclose(posterior_mean(score, x, t), expect, rtol=1e-9, atol=1e-9)


def brute_posterior_mean(points: torch.Tensor, x: torch.Tensor, t: float) -> torch.Tensor:
    """sum_i w_i x_i with w_i proportional to exp(-||x - alpha_t x_i||^2 / (2 sigma_t^2))."""
    a, s2 = math.exp(-t / 2), -math.expm1(-t)
    logits = -(x[:, None] - a * points[None]).square().sum(-1) / (2 * s2)
    return torch.softmax(logits, 1) @ points


@pytest.mark.parametrize("method", ["exponential", "euler_maruyama", "heun_ode"])
def test_denoised_samples_are_the_posterior_mean_of_the_last_state(method):
    """Catches denoise ignored, applied at another time than t0, or with other draws."""
    points = randn((5, 2), 11)
    score = EmpiricalScore(points)
    kw = dict(num=32, d=2, T=8.0, t0=2.0, steps=40, method=method, dtype=F64)
    x = sample(score, generator=gen(1), **kw)
    y = sample(score, generator=gen(1), denoise=True, **kw)
    assert torch.isfinite(y).all()
    assert torch.allclose(y, brute_posterior_mean(points, x, 2.0), rtol=1e-10, atol=1e-12)
    # a convex combination of the points: inside their bounding box, unlike x
    lo, hi = points.min(0).values, points.max(0).values
    assert ((y >= lo - 1e-12) & (y <= hi + 1e-12)).all()
    assert not torch.allclose(x, y, atol=0.1)


def test_denoising_at_a_small_floor_lands_on_training_points():
    """Catches a last step that returns x_t0 (about sigma_t0 = 0.03 off the points)."""
    points = 3 * randn((4, 2), 12)
    score = EmpiricalScore(points)
    kw = dict(num=16, d=2, T=8.0, t0=1e-3, steps=200, dtype=F64)
    x = sample(score, generator=gen(2), **kw)
    y = sample(score, generator=gen(2), denoise=True, **kw)
    dist_x = torch.cdist(x, points).min(1).values
    dist_y = torch.cdist(y, points).min(1).values
    assert dist_x.min() > 1e-4 and float(dist_y.max()) < 1e-9
    np.testing.assert_allclose(y.numpy(), brute_posterior_mean(points, x, 1e-3).numpy(),
                               rtol=0, atol=1e-9)
