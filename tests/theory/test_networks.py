"""The network class F(W, L, N) (§5): ScoreMLP, its parameter count, and the width ensemble."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from theory.networks import (
    PARAMETRIZATIONS,
    LogTimeEmbedding,
    MLPEnsemble,
    ScoreMLP,
    mlp_param_count,
    width_groups,
)
from theory.process import alpha, sigma2

widths_st = st.lists(st.integers(1, 40), min_size=1, max_size=6)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 6), st.integers(1, 50), st.integers(1, 4), st.sampled_from([2, 4, 16]))
def test_param_count_formula(d, width, depth, emb):
    net = ScoreMLP(d, width, depth, emb)
    assert net.num_params == mlp_param_count(d + emb, width, depth, d)
    if depth == 1:
        assert net.num_params == (d + emb + 1) * width + (width + 1) * d


@given(st.integers(1, 5), st.lists(st.integers(1, 30), min_size=1, max_size=4))
def test_per_layer_widths(d, widths):
    net = ScoreMLP(d, widths, emb_dim=4)
    assert net.hidden_widths == tuple(widths) and net.depth == len(widths)
    assert net.width == max(widths)
    dims = [d + 4, *widths, d]
    assert net.num_params == sum((a + 1) * b for a, b in zip(dims, dims[1:], strict=False))
    if len(set(widths)) == 1:
        assert net.num_params == ScoreMLP(d, widths[0], len(widths), 4).num_params
    with pytest.raises(ValueError, match="depth"):
        ScoreMLP(d, widths, depth=len(widths) + 1)


def test_time_conditioning_changes_outputs():
    torch.manual_seed(0)
    net = ScoreMLP(3, 32, 2, parametrization="score").double()
    x = torch.randn(5, 3, dtype=torch.float64)
    a, b = net(x, 0.01), net(x, 1.0)
    assert (a - b).abs().max() > 1e-3
    per_row = net(x, torch.tensor([0.01] * 5, dtype=torch.float64))
    torch.testing.assert_close(per_row, a)


def test_embedding_is_fixed_and_bounded():
    emb = LogTimeEmbedding(8)
    assert not list(emb.parameters())
    f = emb(torch.tensor([1e-4, 1.0, 10.0]))
    assert f.shape == (3, 8) and f.abs().max() <= 1
    with pytest.raises(ValueError, match="dim"):
        LogTimeEmbedding(3)


@pytest.mark.parametrize("parametrization", PARAMETRIZATIONS)
def test_parametrizations_read_the_output_as_a_score(parametrization):
    torch.manual_seed(1)
    net = ScoreMLP(4, 16, 1, parametrization=parametrization).double()
    x = torch.randn(6, 4, dtype=torch.float64)
    t = torch.rand(6, dtype=torch.float64) + 0.05
    out, s = net.raw(x, t), net(x, t)
    a, s2 = alpha(t)[:, None], sigma2(t)[:, None]
    expected = {"score": out, "denoiser": -(x - a * out) / s2, "eps": -out / s2.sqrt()}
    torch.testing.assert_close(s, expected[parametrization])


@settings(max_examples=15, deadline=None)
@given(widths_st, st.integers(1, 3), st.sampled_from(PARAMETRIZATIONS), st.integers(0, 9))
def test_ensemble_members_equal_separate_networks(widths, depth, parametrization, seed):
    """Outputs and gradients of each member equal those of a separately built ScoreMLP."""
    torch.manual_seed(seed)
    members = [ScoreMLP(3, w, depth, 4, parametrization).double() for w in widths]
    ens = MLPEnsemble.from_members(members)
    x = torch.randn(7, 3, dtype=torch.float64)
    t = torch.rand(7, dtype=torch.float64) + 0.01
    out = ens(x, t)  # (G, batch, d)
    assert out.shape == (len(widths), 7, 3)
    weights = torch.randn(len(widths), 7, 3, dtype=torch.float64)
    (out * weights).sum().backward()
    for g, m in enumerate(members):
        torch.testing.assert_close(out[g], m(x, t))
        (m(x, t) * weights[g]).sum().backward()
        twin = ens.member(g)  # the ensemble's weights and their gradients, read back per member
        torch.testing.assert_close(twin(x, t), m(x, t))
    # gradients: the ensemble's gradient, read back per member, equals each member's
    for g, m in enumerate(members):
        theirs = [p.grad for p in _member_params(m)]
        for mine, ref in zip(ens.member_views(g, ens.flat.grad), theirs, strict=True):
            torch.testing.assert_close(mine, ref)


def _member_params(m):
    """A ScoreMLP's tensors in the ensemble's per-member order."""
    return [p for layer in m.hidden for p in (layer.weight, layer.bias)] + [
        m.out.weight, m.out.bias
    ]


def _padding(ens, tensor):
    """The entries of ``tensor`` (shaped like ens.flat) that belong to no member."""
    owned = torch.zeros_like(ens.flat, requires_grad=False)
    for g in range(ens.G):
        for view in ens.member_views(g, owned):
            view.fill_(1)
    return tensor[owned == 0]


def test_no_gradient_leaks_between_members():
    torch.manual_seed(3)
    ens = MLPEnsemble(4, [8, 8, 16, 3], depth=3, seed=1).double()
    assert any(len(b) > 1 and len({ens.widths[g] for g in b}) > 1 for b in ens.buckets)
    x = torch.randn(9, 4, dtype=torch.float64)
    ens(x, 0.3)[1].square().sum().backward()  # a loss on member 1 only
    assert ens.member_views(1, ens.flat.grad)[0].abs().max() > 0
    for g in (0, 2, 3):
        for grad in ens.member_views(g, ens.flat.grad):
            assert grad.abs().max() == 0
    assert _padding(ens, ens.flat.grad).abs().max() == 0  # nothing reaches the padding


def test_padding_stays_zero_under_training():
    """Padded units (members narrower than their bucket) keep exactly zero weights."""
    torch.manual_seed(4)
    ens = MLPEnsemble(2, [4, 6, 8], depth=2, seed=2)
    assert _padding(ens, ens.flat).numel() > 0
    opt = torch.optim.AdamW(ens.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(5):
        x = torch.randn(16, 2)
        loss = ens(x, torch.rand(16) + 0.01).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert _padding(ens, ens.flat.detach()).abs().max() == 0
    x = torch.randn(8, 2)
    for g in range(ens.G):  # and members still equal separate networks after training
        torch.testing.assert_close(ens(x, 0.2)[g], ens.member(g)(x, 0.2))


def test_ensemble_seeded_construction_and_counts():
    a = MLPEnsemble(3, [4, 9], depth=2, seed=5)
    b = MLPEnsemble(3, [4, 9], depth=2, seed=5)
    x = torch.randn(4, 3)
    torch.testing.assert_close(a(x, 0.5), b(x, 0.5))
    assert a.num_params() == [ScoreMLP(3, w, 2).num_params for w in (4, 9)]


@settings(max_examples=40, deadline=None)
@given(widths_st, st.integers(1, 3))
def test_width_groups_partition_members(widths, depth):
    groups = width_groups(widths, depth, max_units=64)
    assert sorted(g for group in groups for g in group) == list(range(len(widths)))
    for group in groups:
        assert len(group) == 1 or len(group) * max(widths[g] for g in group) <= 64
    assert [max(widths[g] for g in group) for group in groups] == sorted(
        (max(widths[g] for g in group) for group in groups), reverse=True
    )


def test_width_groups_put_equal_widths_together():
    widths = [4, 8, 16, 32, 64, 128, 256, 512, 1024] * 2
    for depth in (1, 2):
        for group in width_groups(widths, depth):
            big = [g for g in group if widths[g] >= 256]
            assert len({widths[g] for g in big}) <= 1  # no padding of wide members


def test_bad_input():
    with pytest.raises(ValueError, match="parametrization"):
        ScoreMLP(2, 4, parametrization="velocity")
    with pytest.raises(ValueError, match="width"):
        ScoreMLP(2, 0)
    with pytest.raises(ValueError, match="widths"):
        MLPEnsemble(2, [])
    ens = MLPEnsemble(2, [3])
    with pytest.raises(ValueError, match="x must have"):
        ens(torch.randn(4, 3), 0.5)
    with pytest.raises(ValueError, match="t"):
        ScoreMLP(2, 3)(torch.randn(4, 2), 0.0)
    with pytest.raises(ValueError, match="members"):
        MLPEnsemble.from_members([ScoreMLP(2, 3, 1), ScoreMLP(2, 3, 2)])
    assert math.isfinite(float(ens(torch.randn(4, 2), 1e-6).detach().abs().max()))


@settings(max_examples=15, deadline=None)
@given(st.lists(st.sampled_from([1, 3, 8, 64, 600]), min_size=2, max_size=5), st.data())
def test_inactive_buckets_are_skipped_and_active_members_unchanged(widths, data):
    """raw(active=...) leaves every member of a bucket with an active member as it was,
    gives members of all-inactive buckets only their output bias, and sends no gradient
    to those members' weights (a member that stopped training costs nothing)."""
    ens = MLPEnsemble(3, widths, 2, seed=1)
    active = torch.tensor(data.draw(st.lists(st.booleans(), min_size=len(widths),
                                             max_size=len(widths))))
    x, t = torch.randn(7, 3), torch.rand(7) + 0.1
    full = ens.raw(x, t)
    part = ens.raw(x, t, active=active)
    part.square().sum().backward()
    for bucket in ens.buckets:
        for g in bucket:
            if active[bucket].any():
                torch.testing.assert_close(part[g], full[g], rtol=0, atol=0)
            else:
                bias = ens.member_views(g)[-1].detach()
                torch.testing.assert_close(part[g], bias.expand(7, 3), rtol=0, atol=0)
                for grad in ens.member_views(g, ens.flat.grad)[:-1]:
                    assert grad.abs().max() == 0
