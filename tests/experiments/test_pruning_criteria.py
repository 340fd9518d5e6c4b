"""Pruning criteria beyond Alg. 2 (generalization gap, oracle), live groups and counted
selection (experiments.common.pruning), checked on networks whose answer is known and
against finite differences of losses computed here."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from experiments.common import pruning as pr
from theory.mixtures import GaussianMixture
from theory.networks import ScoreMLP
from theory.process import BetaTimeSampler, DDPMBetaTimeSampler, LogUniformTimeSampler

F64 = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_net(seed: int, d: int, widths: list[int], dtype=F64) -> ScoreMLP:
    torch.manual_seed(seed)
    net = ScoreMLP(d, widths, emb_dim=4).to(dtype)
    with torch.no_grad():  # non-zero biases everywhere, so no unit is trivially dead
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return net


def gaussian_data(n: int, d: int, seed: int) -> torch.Tensor:
    return 1.5 * torch.randn(n, d, dtype=F64, generator=gen(seed))


def ones_masks(groups: pr.Groups) -> dict[str, torch.Tensor]:
    return {k: torch.ones(s, dtype=F64) for k, s in groups.sizes().items()}


# -- a network built by hand: two units every loss needs, one that only fits x* -------------------

B = 10.0  # offset that keeps the linear units active on every input that occurs
X_STAR = torch.tensor([[0.5, 3.0]], dtype=F64)  # the one training point
X_HELD = torch.tensor([[0.5, -3.0]], dtype=F64)  # a held-out point: same x_0, mirrored x_1
# data law N(0, diag(1, 1e6)): true score ~ (-x_0, ~0) at every t (x_1 is nearly flat)
TRUE = GaussianMixture(torch.zeros(1, 2, dtype=F64), torch.tensor([1.0, 1e6], dtype=F64))


def handmade_net() -> ScoreMLP:
    """s(x, t) = -x_0 e_0 (the true score's x_0 part, from two units active everywhere)
    - relu(x_1 - 2.5) e_1 (unit 2: active only near x* at small t, where it pulls overshooting
    samples back to x*; never active near the held-out point -3)."""
    net = ScoreMLP(2, [3], emb_dim=2, parametrization="score").double()
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        h, out = net.hidden[0], net.out  # hidden input: [x_0, x_1, emb_0, emb_1]
        h.weight[0, 0], h.bias[0] = 1.0, B  # relu(x_0 + B) = x_0 + B
        h.weight[1, 0], h.bias[1] = 1.0, 2 * B  # relu(x_0 + 2B) = x_0 + 2B
        h.weight[2, 1], h.bias[2] = 1.0, -2.5  # relu(x_1 - 2.5)
        out.weight[0, 0] = out.weight[0, 1] = -0.5
        out.bias[0] = 1.5 * B
        out.weight[1, 2] = -1.0
    return net


@pytest.fixture(scope="module")
def handmade_sums():
    net = handmade_net()
    x = torch.tensor([[0.3, -4.0], [-2.0, 1.0], [1.0, 3.2]], dtype=F64)
    expected = torch.stack([-x[:, 0], -torch.relu(x[:, 1] - 2.5)], 1)
    assert torch.allclose(net(x, torch.full((3,), 0.05, dtype=F64)), expected, atol=1e-12)
    groups = pr.HiddenUnits(net)
    sums = pr.mask_gradient_sums(groups, X_STAR, batches=4, batch_size=64, seed=1,
                                 times="small_t", heldout=X_HELD, true_score=TRUE)
    return groups, sums


def test_memorizing_unit_has_the_lowest_generalization_gap(handmade_sums):
    """Catches a flipped sign (heldout - train), a held-out loss not used, or train and
    held-out batches that do not share their (t, eps) draws."""
    groups, sums = handmade_sums
    tr, ho = sums["train"]["hidden.0"], sums["heldout"]["hidden.0"]
    # the linear units: the held-out loss needs them exactly as much as the training loss
    # (same x_0 coordinate, same draws), and both need them a lot
    assert torch.allclose(tr[:2], ho[:2], rtol=1e-12, atol=0) and (tr[:2].abs() > 0.05).all()
    # the memorizing unit: never active on the held-out point; lowers the training loss
    assert ho[2] == 0 and tr[2] < 0
    scores = pr.criterion_scores("generalization_gap", sums)["hidden.0"]
    assert int(scores.argmin()) == 2 and scores[2] < 0
    assert torch.allclose(scores[:2], torch.zeros(2, dtype=F64), atol=1e-9)
    keep = pr.select({"hidden.0": scores}, eta=1 / 3, min_keep=1)
    assert keep["hidden.0"].tolist() == [True, True, False]


def test_oracle_removes_the_unit_that_pulls_away_from_the_true_score(handmade_sums):
    """Catches a flipped oracle sign or an oracle gap measured at the wrong points."""
    _, sums = handmade_sums
    g = sums["oracle"]["hidden.0"]
    assert g[2] > 0  # the unit moves the network away from the true score
    assert g[:2].abs().max() < 1e-6 * g[2]  # the linear units reproduce it exactly
    scores = pr.criterion_scores("oracle", sums)["hidden.0"]
    assert int(scores.argmin()) == 2 and scores[2] == pytest.approx(-1.0, abs=1e-6)
    keep = pr.select({"hidden.0": scores}, eta=1 / 3, min_keep=1)
    assert keep["hidden.0"].tolist() == [True, True, False]


def test_alg2_keeps_the_units_every_loss_needs(handmade_sums):
    """Catches a train_abs that is not the |.| sum of the training-loss gradients."""
    _, sums = handmade_sums
    tr_abs, tr = sums["train_abs"]["hidden.0"], sums["train"]["hidden.0"]
    assert (tr_abs >= tr.abs() - 1e-12).all()
    assert (tr_abs[:2] > tr_abs[2]).all()  # Alg. 2 would remove the memorizing unit as well


def test_removing_the_memorizing_unit_raises_the_training_loss_only():
    """Catches a first-order reading of the sign: removal changes a loss by about -g."""
    net = handmade_net()
    groups = pr.HiddenUnits(net)
    sums = pr.mask_gradient_sums(groups, X_STAR, batches=2, batch_size=64, seed=2,
                                 times="small_t", heldout=X_HELD)
    draws = replay(X_STAR, X_HELD, 2, 64, 2, "small_t")
    keep = ones_masks(groups)
    keep["hidden.0"][2] = 0.0
    full = losses(groups, ones_masks(groups), draws)
    cut = losses(groups, keep, draws)
    assert cut["train"] > full["train"] and cut["heldout"] == full["heldout"]
    # the first-order estimate of that change, -g, has its sign
    assert -float(sums["train"]["hidden.0"][2]) > 0 and sums["heldout"]["hidden.0"][2] == 0


# -- finite differences of losses computed here, on the draws the docstring promises --------------


def sampler_for(times: str, t0: float = 1e-3, T: float = 8.0):
    return {"linear": BetaTimeSampler(0.8, 2.0, t0, T), "paper": DDPMBetaTimeSampler(0.8, 2.0),
            "small_t": LogUniformTimeSampler(t0, 0.1)}[times]


def replay(data, heldout, batches, batch_size, seed, times):
    """The draws of mask_gradient_sums: per batch idx, t, eps, then the held-out idx."""
    g = gen(seed)
    sampler = sampler_for(times)
    out = []
    for _ in range(batches):
        idx = torch.randint(data.shape[0], (batch_size,), generator=g)
        t = sampler.sample(batch_size, g, F64)
        eps = torch.randn((batch_size, data.shape[1]), generator=g, dtype=F64)
        xh = None
        if heldout is not None:
            xh = heldout[torch.randint(heldout.shape[0], (batch_size,), generator=g)]
        out.append((data[idx], t, eps, xh))
    return out


def losses(groups, masks, draws, true_score=None, per_batch=False):
    """Summed (over batches) DSM losses on train and held-out points and the oracle gap,
    written out here: mean ||sigma s(x_t, t) + eps||^2 and mean sigma^2 ||s - s_true||^2."""
    net = groups.model
    out = {"train": [], "heldout": [], "oracle": []}
    with torch.no_grad(), groups.masked(masks):
        for x0, t, eps, xh in draws:
            a, s = torch.exp(-t / 2)[:, None], torch.sqrt(1 - torch.exp(-t))[:, None]
            xt = a * x0 + s * eps
            out["train"].append(float((s * net(xt, t) + eps).square().sum(1).mean()))
            if xh is not None:
                xht = a * xh + s * eps
                out["heldout"].append(float((s * net(xht, t) + eps).square().sum(1).mean()))
            if true_score is not None:
                gap = s * (net(xt, t) - true_score(xt, t))
                out["oracle"].append(float(gap.square().sum(1).mean()))
    return out if per_batch else {k: sum(v) for k, v in out.items()}


def finite_differences(groups, draws, true_score, h=1e-5):
    """(L(xi_h = 1 + h) - L(xi_h = 1 - h)) / 2h for every group and loss, per batch."""
    fd = {kind: {k: torch.zeros(len(draws), s, dtype=F64) for k, s in groups.sizes().items()}
          for kind in ("train", "heldout", "oracle")}
    for k, size in groups.sizes().items():
        for j in range(size):
            up, down = ones_masks(groups), ones_masks(groups)
            up[k][j], down[k][j] = 1 + h, 1 - h
            lu = losses(groups, up, draws, true_score, per_batch=True)
            ld = losses(groups, down, draws, true_score, per_batch=True)
            for kind in fd:
                diff = torch.tensor(lu[kind], dtype=F64) - torch.tensor(ld[kind], dtype=F64)
                fd[kind][k][:, j] = diff / (2 * h)
    return fd


@pytest.fixture(scope="module", params=["linear", "paper", "small_t"])
def fd_case(request):
    net = random_net(7, 3, [5, 4])
    groups = pr.HiddenUnits(net)
    data, held = gaussian_data(20, 3, 1), gaussian_data(15, 3, 2)
    true = GaussianMixture(torch.tensor([[1.0, 0.0, -1.0], [-1.0, 0.5, 0.0]], dtype=F64), 0.5)
    times = request.param
    sums = pr.mask_gradient_sums(groups, data, batches=2, batch_size=16, seed=4, times=times,
                                 heldout=held, true_score=true)
    fd = finite_differences(groups, replay(data, held, 2, 16, 4, times), true)
    return groups, sums, fd


def close(a, b, rtol=1e-6):
    return torch.allclose(a, b, rtol=rtol, atol=rtol * float(b.abs().max()))


@pytest.mark.parametrize("kind", ["train", "heldout", "oracle"])
def test_mask_gradient_sums_are_finite_differences_of_the_losses(fd_case, kind):
    """Catches a wrong loss, wrong draws (order, time law, held-out indices) or wrong xi."""
    groups, sums, fd = fd_case
    for k in groups.sizes():
        assert close(sums[kind][k], fd[kind][k].sum(0)), (kind, k)
        assert fd[kind][k].abs().max() > 0


def test_train_abs_sums_the_absolute_per_batch_gradients(fd_case):
    """Catches |sum| instead of sum |.| over batches (Alg. 2, step 1)."""
    groups, sums, fd = fd_case
    for k in groups.sizes():
        assert close(sums["train_abs"][k], fd["train"][k].abs().sum(0))


def test_criteria_signs_against_finite_differences(fd_case):
    """Pins the conventions: generalization_gap = g_train - g_heldout, oracle = -g_oracle,
    mask_gradient = sum |g_train|, each divided by its layer's norm (higher = keep)."""
    groups, sums, fd = fd_case
    expect = {
        "generalization_gap": {k: fd["train"][k].sum(0) - fd["heldout"][k].sum(0)
                               for k in groups.sizes()},
        "oracle": {k: -fd["oracle"][k].sum(0) for k in groups.sizes()},
        "mask_gradient": {k: fd["train"][k].abs().sum(0) for k in groups.sizes()},
    }
    for method, raw in expect.items():
        scores = pr.criterion_scores(method, sums)
        for k, v in raw.items():
            assert close(scores[k], v / v.norm(), rtol=1e-5), (method, k)
            assert scores[k].norm() == pytest.approx(1.0, rel=1e-12)


def test_mask_gradient_sums_leave_the_model_unchanged():
    """Catches parameters that get gradients, change, or a train/eval mode not restored."""
    net = random_net(3, 2, [6, 3])
    before = copy.deepcopy(net.state_dict())
    net.train()
    pr.mask_gradient_sums(pr.HiddenUnits(net), gaussian_data(10, 2, 0), 2, 8,
                          heldout=gaussian_data(5, 2, 1), true_score=TRUE)
    assert net.training and all(p.grad is None for p in net.parameters())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


# -- live groups and counted selection ------------------------------------------------------------


def test_live_groups_flags_dead_and_silent_units():
    """Catches a dead (never active) or silent (output reaches nothing) unit counted live."""
    net = random_net(1, 3, [8, 6])
    with torch.no_grad():
        net.hidden[0].weight[2].zero_()
        net.hidden[0].bias[2] = -1.0  # dead
        net.hidden[1].weight[4].zero_()
        net.hidden[1].bias[4] = -0.5  # dead in the last layer
        net.out.weight[:, 1].zero_()  # silent
    sums = pr.mask_gradient_sums(pr.HiddenUnits(net), gaussian_data(40, 3, 0), 3, 32)
    live = pr.live_groups(sums)
    assert live["hidden.0"].dtype == torch.bool
    assert (~live["hidden.0"]).nonzero().flatten().tolist() == [2]
    assert (~live["hidden.1"]).nonzero().flatten().tolist() == [1, 4]


@st.composite
def scored_layers(draw):
    sizes = draw(st.lists(st.integers(1, 8), min_size=1, max_size=4))
    seed = draw(st.integers(0, 10_000))
    g = gen(seed)
    scores = {f"l{i}": torch.randn(s, generator=g, dtype=F64) for i, s in enumerate(sizes)}
    live = {k: torch.tensor(draw(st.lists(st.booleans(), min_size=v.numel(),
                                          max_size=v.numel())))
            for k, v in scores.items()}
    return scores, live


def removed(keep):
    return sum(int((~v).sum()) for v in keep.values())


@settings(max_examples=60, deadline=None)
@given(case=scored_layers(), eta=st.floats(0, 0.999))
def test_select_with_live_removes_dead_then_eta_of_the_live(case, eta):
    """Catches eta counted over all groups, dead groups kept, or the wrong live ones removed."""
    scores, live = case
    n_live = sum(int(v.sum()) for v in live.values())
    n_dead = sum(int((~v).sum()) for v in live.values())
    # floor(eta * live groups) in floating point, as documented: eta = 1/3 of 3 removes 1
    want = math.floor(eta * n_live)
    keep = pr.select(scores, eta, min_keep=0, live=live)
    assert removed(keep) == n_dead + want
    for k in scores:
        assert not (keep[k] & ~live[k]).any()  # every dead group is gone
    kept = torch.cat([scores[k][keep[k]] for k in scores])
    gone_live = torch.cat([scores[k][~keep[k] & live[k]] for k in scores])
    if kept.numel() and gone_live.numel():
        assert gone_live.max() <= kept.min()  # the lowest live ones went


@settings(max_examples=60, deadline=None)
@given(case=scored_layers(), eta=st.floats(0, 0.999))
def test_select_with_live_and_min_keep_one(case, eta):
    """Catches a layer emptied, or a count other than dead + floor(eta * live)."""
    scores, live = case
    n_live = sum(int(v.sum()) for v in live.values())
    n_dead = sum(int((~v).sum()) for v in live.values())
    remove = n_dead + math.floor(eta * n_live)
    if remove > sum(v.numel() - 1 for v in scores.values()):
        with pytest.raises(ValueError, match="min_keep"):
            pr.select(scores, eta, min_keep=1, live=live)
        return
    keep = pr.select(scores, eta, min_keep=1, live=live)
    assert removed(keep) == remove
    assert all(int(v.sum()) >= 1 for v in keep.values())
    if all(int(v.sum()) >= 1 for v in live.values()):  # then no dead group has to stay
        assert all(not (keep[k] & ~live[k]).any() for k in scores)


@settings(max_examples=60, deadline=None)
@given(case=scored_layers(), data=st.data())
def test_select_count_removes_exactly_count_live_groups(case, data):
    """Catches count ignored (eta used instead) or counted over dead groups too."""
    scores, live = case
    n_live = sum(int(v.sum()) for v in live.values())
    count = data.draw(st.integers(0, n_live))
    keep = pr.select(scores, 0.9, min_keep=0, live=live, count=count)
    assert sum(int((~keep[k] & live[k]).sum()) for k in scores) == count
    assert all(not (keep[k] & ~live[k]).any() for k in scores)


def test_select_count_refuses_bad_counts():
    """Catches count without live, or a count beyond the live groups, being accepted."""
    scores = {"a": torch.tensor([0.1, 0.2, 0.3]), "b": torch.tensor([0.5, 0.4])}
    live = {"a": torch.tensor([True, False, True]), "b": torch.tensor([True, True])}
    with pytest.raises(ValueError, match="live"):
        pr.select(scores, 0.5, count=1)
    for bad in (-1, 5, 1.0, 2.5):
        with pytest.raises(ValueError, match="count"):
            pr.select(scores, 0.5, live=live, count=bad)
    third = pr.select(scores, 1 / 3, live=live)  # 1 dead + floor((1/3) * 4 live) = 2
    assert removed(third) == 2 and not third["a"][1]
    keep = pr.select(scores, 0.0, live=live, count=4)  # every live group
    assert removed(keep) == 5
    with pytest.raises(ValueError, match="live"):
        pr.select(scores, 0.5, live={"a": live["a"]})


# -- every criterion: masked == pruned, reproducible from the seed --------------------------------


@pytest.fixture(scope="module")
def net_and_data():
    net = random_net(5, 2, [9, 7])
    with torch.no_grad():
        net.hidden[0].weight[3].zero_()
        net.hidden[0].bias[3] = -1.0  # one dead unit
    return net, gaussian_data(24, 2, 3), gaussian_data(24, 2, 4)


def all_scores(groups, data, held, seed):
    return {m: pr.importance(groups, m, data, batches=2, batch_size=32, seed=seed,
                             times="small_t", heldout=held, true_score=TRUE)
            for m in pr.IMPORTANCE_METHODS}


def test_every_criterion_selects_a_prunable_set_masked_equals_pruned(net_and_data):
    """Catches a criterion whose selection cannot be removed physically (masked != pruned)."""
    net, data, held = net_and_data
    groups = pr.HiddenUnits(net)
    live = pr.live_groups(pr.mask_gradient_sums(groups, data, 2, 32))
    assert not live["hidden.0"][3]
    n_live = sum(int(v.sum()) for v in live.values())
    x = torch.randn(9, 2, dtype=F64, generator=gen(0))
    t = torch.logspace(-3, 0.8, 9, dtype=F64)
    for method, scores in all_scores(groups, data, held, 0).items():
        keep = pr.select(scores, 0.4, min_keep=1, live=live)
        assert not keep["hidden.0"][3], method
        assert removed(keep) == 16 - n_live + math.floor(0.4 * n_live), method
        small = pr.prune(groups, keep)
        with groups.masked(pr.masks_from_keep(keep, x)):
            masked = net(x, t)
        assert torch.allclose(small(x, t), masked, rtol=1e-6, atol=1e-6), method


def test_same_seed_same_ranking_for_every_criterion(net_and_data):
    """Catches a criterion that draws from global random state instead of its seed."""
    net, data, held = net_and_data
    groups = pr.HiddenUnits(net)
    a, b = all_scores(groups, data, held, 3), all_scores(groups, data, held, 3)
    torch.manual_seed(123)  # the global state must not matter
    c = all_scores(groups, data, held, 3)
    other = all_scores(groups, data, held, 4)
    for m in pr.IMPORTANCE_METHODS:
        for k in a[m]:
            assert torch.equal(a[m][k], b[m][k]) and torch.equal(a[m][k], c[m][k]), m
        if m != "magnitude":  # magnitude does not depend on the seed
            assert any(not torch.equal(a[m][k], other[m][k]) for k in a[m]), m


# -- errors and the Alg. 2 wrapper -----------------------------------------------------------------


def test_missing_inputs_are_named():
    """Catches a data criterion run without its inputs, or a silent unknown time law."""
    net = random_net(0, 2, [4])
    groups, data = pr.HiddenUnits(net), gaussian_data(8, 2, 0)
    with pytest.raises(ValueError, match="heldout"):
        pr.importance(groups, "generalization_gap", data)
    with pytest.raises(ValueError, match="true_score"):
        pr.importance(groups, "oracle", data)
    with pytest.raises(ValueError, match="times"):
        pr.importance(groups, "mask_gradient", data, times="cosine")
    with pytest.raises(ValueError, match="times"):
        pr.importance_times("uniform")
    sums = pr.mask_gradient_sums(groups, data, 1, 8)
    with pytest.raises(ValueError, match="heldout"):
        pr.criterion_scores("generalization_gap", sums)
    with pytest.raises(ValueError, match="true_score"):
        pr.criterion_scores("oracle", sums)
    with pytest.raises(ValueError, match="method"):
        pr.criterion_scores("magnitude", sums)
    with pytest.raises(ValueError, match="heldout"):
        pr.mask_gradient_sums(groups, data, 1, 8, heldout=torch.zeros(3, 5, dtype=F64))
    with pytest.raises(ValueError, match="batches"):
        pr.mask_gradient_sums(groups, data, 0, 8)


def test_importance_times_laws():
    """Catches a law mapped to the wrong sampler or range."""
    g = gen(0)
    lin = pr.importance_times("linear", 1e-3, 8.0).sample(4000, g, F64)
    paper = pr.importance_times("paper").sample(4000, g, F64)
    small = pr.importance_times("small_t", 1e-3, 8.0, small_t_max=0.2).sample(4000, g, F64)
    assert lin.min() >= 1e-3 and lin.max() <= 8.0 and lin.median() > 1.0
    assert paper.median() < 1.0 and paper.max() > 8.0
    assert small.min() >= 1e-3 and small.max() <= 0.2


def test_mask_gradients_is_train_abs_in_the_model_dtype():
    """Catches the Alg. 2 wrapper reading another kind, or returning float64 scores."""
    net = random_net(6, 3, [5, 5], dtype=torch.float32)
    groups, data = pr.HiddenUnits(net), gaussian_data(16, 3, 0).float()
    for times in pr.TIME_LAWS:
        s = pr.mask_gradients(groups, data, 3, 16, seed=2, times=times)
        sums = pr.mask_gradient_sums(groups, data, 3, 16, seed=2, times=times)
        for k, v in sums["train_abs"].items():
            assert s[k].dtype == torch.float32 and torch.equal(s[k], v.float())
        assert not all(torch.equal(sums["train_abs"][k], sums["train"][k].abs())
                       for k in sums["train"])  # several batches: sum |g| != |sum g|
