"""The shared pruning module on MLP hidden units: masks, importance, selection, removal."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from experiments.common import pruning as pr
from experiments.common.training import TrainConfig, train
from theory.networks import ScoreMLP


def random_net(seed: int, d: int, widths: list[int], dtype=torch.float64) -> ScoreMLP:
    torch.manual_seed(seed)
    net = ScoreMLP(d, widths, emb_dim=4).to(dtype)
    with torch.no_grad():  # non-zero biases everywhere, so no unit is trivially dead
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return net


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), d=st.integers(1, 5),
       widths=st.lists(st.integers(1, 9), min_size=1, max_size=3), data=st.data())
def test_masked_model_equals_pruned_model(seed, d, widths, data):
    net = random_net(seed, d, widths)
    groups = pr.HiddenUnits(net)
    keep = {}
    for k, w in groups.sizes().items():
        bits = data.draw(st.lists(st.booleans(), min_size=w, max_size=w))
        bits[data.draw(st.integers(0, w - 1))] = True  # min_keep = 1
        keep[k] = torch.tensor(bits)
    small = pr.prune(groups, keep)
    assert small.hidden_widths == tuple(int(v.sum()) for v in keep.values())
    x = torch.randn(7, d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    t = torch.logspace(-3, 0.5, 7, dtype=torch.float64)
    with groups.masked(pr.masks_from_keep(keep, x)):
        masked = net(x, t)
    assert torch.allclose(small(x, t), masked, rtol=1e-6, atol=1e-6)
    # the hooks are gone after the block: all-ones keep = the unpruned network
    full = {k: torch.ones(w, dtype=torch.bool) for k, w in groups.sizes().items()}
    assert torch.equal(pr.prune(groups, full)(x, t), net(x, t))


def data_for(d: int, n: int = 64, seed: int = 0) -> torch.Tensor:
    return 2 * torch.randn(n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def test_dead_unit_and_silent_unit_get_the_lowest_importance():
    net = random_net(1, 3, [8, 6])
    with torch.no_grad():
        net.hidden[0].weight[2].zero_()
        net.hidden[0].bias[2] = -1.0  # dead: pre-activation -1 for every input
        net.out.weight[:, 4].zero_()  # silent: its output reaches nothing
    groups = pr.HiddenUnits(net)
    scores = pr.importance(groups, "mask_gradient", data_for(3), batches=4, batch_size=32)
    assert scores["hidden.0"][2] == 0 and scores["hidden.1"][4] == 0
    assert (torch.cat(list(scores.values())) > 0).sum() == 8 + 6 - 2
    keep = pr.select(scores, 2 / 14, min_keep=1)
    assert not keep["hidden.0"][2] and not keep["hidden.1"][4]
    # the magnitude baseline sees the silent unit too
    assert pr.HiddenUnits(net).magnitude()["hidden.1"][4] == 0


def test_mask_gradient_is_invariant_to_relu_rescaling_and_permutation():
    # w_in -> c w_in, w_out -> w_out / c leaves the function, hence the loss and S, unchanged;
    # permuting a layer's units permutes S.
    net = random_net(2, 3, [5, 4])
    other = random_net(2, 3, [5, 4])
    perm = torch.tensor([3, 0, 4, 1, 2])
    with torch.no_grad():
        other.hidden[0].weight.copy_(3.0 * net.hidden[0].weight[perm])
        other.hidden[0].bias.copy_(3.0 * net.hidden[0].bias[perm])
        other.hidden[1].weight.copy_(net.hidden[1].weight[:, perm] / 3.0)
    x0 = data_for(3)
    a = pr.mask_gradients(pr.HiddenUnits(net), x0, batches=3, batch_size=16, seed=5)
    b = pr.mask_gradients(pr.HiddenUnits(other), x0, batches=3, batch_size=16, seed=5)
    assert torch.allclose(b["hidden.0"], a["hidden.0"][perm], rtol=1e-9)
    assert torch.allclose(b["hidden.1"], a["hidden.1"], rtol=1e-9)
    ma, mb = pr.HiddenUnits(net).magnitude(), pr.HiddenUnits(other).magnitude()
    assert torch.allclose(mb["hidden.0"], ma["hidden.0"][perm], rtol=1e-9)


def test_mask_gradient_equals_the_outgoing_weight_identity():
    # Scaling unit h's output by xi is scaling column h of the next weight, so for one batch
    # dL/dxi_h = sum_j W_next[j, h] dL/dW_next[j, h]; S sums |.| over batches.
    net = random_net(3, 2, [6])
    x0 = data_for(2, n=1)  # one training point: every batch draws it
    s = pr.mask_gradients(pr.HiddenUnits(net), x0, batches=1, batch_size=8, seed=9)
    g = torch.Generator().manual_seed(9)
    torch.randint(1, (8,), generator=g)
    from theory.process import BetaTimeSampler

    t = BetaTimeSampler(0.8, 2.0, 1e-3, 8.0).sample(8, g, torch.float64)
    eps = torch.randn((8, 2), generator=g, dtype=torch.float64)
    from experiments.common.training import dsm_loss

    loss = dsm_loss(net, x0.expand(8, 2), t, eps)
    (grad,) = torch.autograd.grad(loss, [net.out.weight])
    assert torch.allclose(s["hidden.0"], (net.out.weight * grad).sum(0).abs(), rtol=1e-9)
    assert all(p.grad is None for p in net.parameters())


@settings(max_examples=50, deadline=None)
@given(sizes=st.lists(st.integers(1, 12), min_size=1, max_size=4), seed=st.integers(0, 999),
       eta=st.floats(0, 0.999), min_keep=st.integers(0, 2))
def test_select_removes_the_globally_lowest(sizes, seed, eta, min_keep):
    g = torch.Generator().manual_seed(seed)
    scores = {f"l{i}": torch.rand(s, generator=g, dtype=torch.float64) for i, s in enumerate(sizes)}
    total, remove = sum(sizes), math.floor(eta * sum(sizes))
    if remove > sum(max(0, s - min_keep) for s in sizes):
        with pytest.raises(ValueError, match="min_keep"):
            pr.select(scores, eta, min_keep)
        return
    keep = pr.select(scores, eta, min_keep)
    assert sum(int((~v).sum()) for v in keep.values()) == remove
    for k, v in keep.items():
        assert int(v.sum()) >= min(min_keep, sizes[int(k[1:])])
    if min_keep == 0 and remove and remove < total:
        kept = torch.cat([scores[k][v] for k, v in keep.items()])
        gone = torch.cat([scores[k][~v] for k, v in keep.items()])
        assert gone.max() <= kept.min()


def test_normalize_per_layer_gives_unit_norms():
    s = pr.normalize_per_layer({"a": torch.tensor([3.0, 4.0]), "b": torch.zeros(3)})
    assert torch.allclose(s["a"], torch.tensor([0.6, 0.8])) and torch.equal(s["b"], torch.zeros(3))


def test_bad_input_names_the_argument():
    net = random_net(0, 2, [4, 4])
    groups = pr.HiddenUnits(net)
    scores = pr.importance(groups, "random", seed=1)
    for eta in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match="eta"):
            pr.select(scores, eta)
    with pytest.raises(ValueError, match="method"):
        pr.importance(groups, "taylor")
    with pytest.raises(ValueError, match="data"):
        pr.importance(groups, "mask_gradient")
    with pytest.raises(ValueError, match="keep"):
        pr.prune(groups, {"hidden.0": torch.ones(4, dtype=torch.bool)})
    with pytest.raises(ValueError, match="min_keep"):
        pr.prune(groups, {"hidden.0": torch.zeros(4, dtype=torch.bool),
                          "hidden.1": torch.ones(4, dtype=torch.bool)})
    with pytest.raises(TypeError, match="ScoreMLP"):
        pr.HiddenUnits(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="scores"):
        pr.normalize_per_layer({"a": torch.tensor([1.0, float("nan")])})


def test_pruned_model_fine_tunes_with_the_shared_loop():
    net = random_net(4, 2, [16, 16], dtype=torch.float32)
    x0 = data_for(2).float()
    groups = pr.HiddenUnits(net)
    keep = pr.select(pr.importance(groups, "mask_gradient", x0, batches=2, batch_size=32), 0.5, 1)
    small = pr.prune(groups, keep)
    assert small.num_params < net.num_params
    _, _, losses = train(small, x0, TrainConfig(steps=20, batch=32, seed=0), progress=False)
    assert len(losses) == 20 and all(math.isfinite(v) for v in losses)


# -- DiT heads and MLP channels ------------------------------------------------------------------


def random_dit(seed: int, heads: int = 4, depth: int = 2):
    """A tiny ScoreDiT (8x8, 1 channel) with random weights everywhere (float64): at
    adaLN-Zero initialization every block is the identity and nothing could be compared."""
    from experiments.common.dit import DiT, ScoreDiT

    torch.manual_seed(seed)
    dit = DiT(input_size=8, patch_size=2, in_channels=1, hidden_size=32, depth=depth,
              num_heads=heads, mlp_ratio=2.0, num_classes=0, learn_sigma=False)
    with torch.no_grad():
        for p in dit.parameters():
            p.normal_(0, 0.3)
    return ScoreDiT(dit, "eps").double()


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 1, 8, 8, dtype=torch.float64,
                       generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", ["heads", "channels"])
@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 1000), data=st.data())
def test_dit_masked_equals_pruned(kind, seed, data):
    model = random_dit(seed)
    groups = pr.AttentionHeads(model) if kind == "heads" else pr.MlpChannels(model)
    keep = {name: torch.tensor(data.draw(st.lists(st.booleans(), min_size=s, max_size=s)))
            for name, s in groups.sizes().items()}
    x, t = images(3, seed), torch.tensor([1e-3, 0.1, 2.0], dtype=torch.float64)
    with groups.masked(pr.masks_from_keep(keep, x)):
        masked = model(x, t)
    small = pr.prune(groups, keep)
    assert torch.allclose(small(x, t), masked, rtol=1e-5, atol=1e-8)
    assert sum(p.numel() for p in small.parameters()) <= sum(p.numel() for p in model.parameters())
    assert torch.equal(model(x, t), model(x, t))  # the original is untouched, hooks are gone
    assert all(getattr(m, groups.mask_attr) is None for m in groups.layers.values())


def test_dit_all_heads_of_a_layer_removed_and_silent_head_scores_zero():
    # Policy: a DiT layer may lose all its heads (min_keep = 0); the block's attention
    # branch then outputs only its projection bias, as when all its heads are masked.
    model = random_dit(5)
    groups = pr.AttentionHeads(model)
    assert groups.min_keep == 0
    first = next(iter(groups.layers.values()))
    with torch.no_grad():  # head 1 of the first layer reaches nothing: zero output projection
        first.proj.weight[:, first.head_dim : 2 * first.head_dim].zero_()
    scores = pr.mask_gradients(groups, images(16), batches=2, batch_size=8)
    names = list(groups.layers)
    assert scores[names[0]][1] == 0 and (scores[names[0]][[0, 2, 3]] > 0).all()
    keep = {names[0]: torch.zeros(4, dtype=torch.bool), names[1]: torch.ones(4, dtype=torch.bool)}
    small = pr.prune(groups, keep)
    x, t = images(2, 1), torch.tensor([0.01, 1.0], dtype=torch.float64)
    with groups.masked(pr.masks_from_keep(keep, x)):
        assert torch.allclose(small(x, t), model(x, t), rtol=1e-5, atol=1e-8)
    assert pr.AttentionHeads(small).sizes() == {names[0]: 0, names[1]: 4}
    # selection at the paper's eta = 20% over 8 heads removes floor(1.6) = 1: the silent one
    drop = pr.select(pr.normalize_per_layer(scores), 0.2, groups.min_keep)
    assert (~drop[names[0]]).nonzero().flatten().tolist() == [1] and drop[names[1]].all()


def test_dit_pruned_model_fine_tunes():
    model = random_dit(2).float()
    groups = pr.AttentionHeads(model)
    x0 = images(16).float()
    keep = pr.select(pr.importance(groups, "magnitude"), 0.5, groups.min_keep)
    small = pr.prune(groups, keep)
    _, _, losses = train(small, x0, TrainConfig(steps=3, batch=8, seed=0), progress=False)
    assert all(math.isfinite(v) for v in losses)
    with pytest.raises(ValueError, match="Attention"):
        pr.AttentionHeads(ScoreMLP(2, 4))


def test_importance_draws_times_from_the_papers_beta_law(monkeypatch):
    """Alg. 2 draws t ~ Beta(0.8, 2) mapped onto [t0, T] = [1e-3, 8] (App. D.1): the times
    importance(..., "mask_gradient") feeds the DSM loss with its defaults pass a
    Kolmogorov-Smirnov test against that law (1,024 times), and fail it against Beta(2, 0.8)."""
    from scipy import stats

    seen = []
    real_loss = pr.dsm_loss

    def spy(model, x0, t, eps):
        seen.append(t.detach().clone())
        return real_loss(model, x0, t, eps)

    monkeypatch.setattr(pr, "dsm_loss", spy)
    net = random_net(6, 2, [4])
    pr.importance(pr.HiddenUnits(net), "mask_gradient", data_for(2), batches=8, batch_size=128)
    t = torch.cat(seen).numpy()
    assert t.shape == (1024,) and t.min() >= 1e-3 and t.max() <= 8.0
    u = (t - 1e-3) / (8.0 - 1e-3)
    assert stats.kstest(u, stats.beta(0.8, 2.0).cdf).pvalue > 1e-4
    assert stats.kstest(u, stats.beta(2.0, 0.8).cdf).pvalue < 1e-10


def test_head_and_channel_magnitudes_from_their_weights():
    """The magnitude baseline of a head is ||its q, k, v rows of qkv (with biases)|| times
    ||its columns of proj||, gathered here by explicit index loops from the documented
    layout (rows part * H d_h + h d_h + j); a channel's is ||fc1 row, bias|| * ||fc2 column||.
    A head whose output projection is zero scores 0."""
    model = random_dit(7, heads=4)
    heads = pr.AttentionHeads(model)
    first = next(iter(heads.layers.values()))
    with torch.no_grad():
        first.proj.weight[:, 2 * first.head_dim : 3 * first.head_dim] = 0.0  # head 2 is silent
    scores = heads.magnitude()
    for name, m in heads.layers.items():
        H, dh = m.num_heads, m.head_dim
        qw, qb, pw = m.qkv.weight.detach(), m.qkv.bias.detach(), m.proj.weight.detach()
        for h in range(H):
            rows = [part * H * dh + h * dh + j for part in range(3) for j in range(dh)]
            w_in = math.sqrt(sum(float(qw[r].square().sum() + qb[r] ** 2) for r in rows))
            cols = [h * dh + j for j in range(dh)]
            w_out = math.sqrt(sum(float(pw[:, c].square().sum()) for c in cols))
            assert float(scores[name][h]) == pytest.approx(w_in * w_out, rel=1e-12)
    assert scores[next(iter(heads.layers))][2] == 0
    channels = pr.MlpChannels(model)
    magnitude = channels.magnitude()
    for name, m in channels.layers.items():
        w1, b1, w2 = m.fc1.weight.detach(), m.fc1.bias.detach(), m.fc2.weight.detach()
        for c in range(m.hidden_features):
            w_in = math.sqrt(float(w1[c].square().sum() + b1[c] ** 2))
            w_out = float(w2[:, c].norm())
            assert float(magnitude[name][c]) == pytest.approx(w_in * w_out, rel=1e-12)
