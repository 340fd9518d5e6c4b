"""The capacity search of Thm 5.1: fits of a width grid and the smallest width reaching eps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from theory.capacity import FitBudget, fit_width_sweep, smallest_width
from theory.mixtures import paper_mixture
from theory.networks import ScoreMLP
from theory.process import generator

BUDGET = FitBudget(steps=300, batch=128, lrs=(1e-2,), eval_draws=1024)


@pytest.fixture(scope="module")
def setting():
    mix = paper_mixture(2, K=2, seed=1, dtype=torch.float32)
    points = mix.sample(6, generator(0, 6))
    return mix, points


def test_fit_is_deterministic_for_a_seed(setting):
    mix, points = setting
    a = fit_width_sweep(mix, points, mix, (0.2, 0.2), [2, 8], 1, BUDGET, seed=3)
    b = fit_width_sweep(mix, points, mix, (0.2, 0.2), [2, 8], 1, BUDGET, seed=3)
    assert a == b
    c = fit_width_sweep(mix, points, mix, (0.2, 0.2), [2, 8], 1, BUDGET, seed=4)
    assert c.ratio != a.ratio


def test_error_falls_with_width_paired_by_seed(setting):
    """Widening 2 -> 8 -> 32 lowers the fitted error, as an effect over 6 training seeds
    paired by seed (DESIGN.md): for each step the mean over seeds of log(r_narrow / r_wide)
    has a one-sided 99% Student-t lower bound above 0. The fixed budget makes one seed's
    comparison noisy (so no per-seed tolerance is claimed); the seed-to-seed spread is
    what the t-bound accounts for. The widest also beats the narrowest by 10x on average."""
    mix, points = setting
    widths = [2, 8, 32]
    logs = []
    for seed in range(6):
        sweep = fit_width_sweep(mix, points, mix, (0.1, 0.5), widths, 1, BUDGET, seed=seed)
        assert sweep.num_params == tuple(ScoreMLP(2, w).num_params for w in widths)
        logs.append(np.log(sweep.ratio))
    gain = np.array(logs)[:, :-1] - np.array(logs)[:, 1:]  # (seeds, steps)
    mean = gain.mean(0)
    se = gain.std(0, ddof=1) / math.sqrt(gain.shape[0])
    bound = mean - stats.t.ppf(0.99, gain.shape[0] - 1) * se
    assert np.all(bound > 0), (mean, se)
    assert gain.sum(1).mean() > math.log(10), gain


def test_a_network_target_of_width_w_is_found_at_width_at_most_w(setting):
    """When the target is itself a ScoreMLP of width 4, some width <= 4 implements it."""
    mix, points = setting
    torch.manual_seed(0)
    target = ScoreMLP(2, 4, 1)
    for p in target.parameters():
        p.requires_grad_(False)
    widths = [1, 2, 4, 8, 16]
    budget = FitBudget(steps=600, batch=128, lrs=(1e-2,), eval_draws=1024)
    sweep = fit_width_sweep(target, points, mix, (0.2, 0.2), widths, 1, budget, seed=0)
    eps = 0.01
    assert sweep.ratio[2] <= eps, sweep.ratio
    assert smallest_width(widths, sweep.ratio, eps) <= 4


def test_smallest_width_interpolates_in_log_log():
    assert smallest_width([1, 2, 4], [1.0, 0.5, 0.1], 0.25) == pytest.approx(
        2 * 2 ** (math.log(0.25 / 0.5) / math.log(0.1 / 0.5))
    )
    assert smallest_width([1, 2, 4], [0.1, 0.05, 0.01], 0.25) == 1.0
    assert smallest_width([1, 2, 4], [1.0, 0.9, 0.8], 0.25) == math.inf
    with pytest.raises(ValueError, match="increase"):
        smallest_width([2, 1], [1.0, 0.1], 0.5)
    with pytest.raises(ValueError, match="equal length"):
        smallest_width([1, 2], [1.0], 0.5)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(1e-3, 1e3), min_size=1, max_size=8), st.floats(1e-2, 10))
def test_smallest_width_lies_on_the_crossing(ratios, eps):
    widths = [2**k for k in range(len(ratios))]
    w = smallest_width(widths, ratios, eps)
    below = [k for k, r in enumerate(ratios) if r <= eps]
    if not below:
        assert w == math.inf
    else:
        k = below[0]
        assert (widths[k - 1] if k else widths[0]) <= w * (1 + 1e-12)
        assert w <= widths[k] * (1 + 1e-12)


def test_bad_budget_and_time_range(setting):
    mix, points = setting
    with pytest.raises(ValueError, match="steps"):
        FitBudget(steps=0)
    with pytest.raises(ValueError, match="lrs"):
        FitBudget(lrs=(0.0,))
    with pytest.raises(ValueError, match="lrs"):
        FitBudget(lrs=(1e-3, 1e-3))
    with pytest.raises(ValueError, match="eval_every"):
        FitBudget(steps=250, eval_every=100)
    with pytest.raises(ValueError, match="snapshots"):
        FitBudget(steps=300, eval_every=100, snapshots=(300,))
    with pytest.raises(ValueError, match="t_range"):
        fit_width_sweep(mix, points, mix, (0.5, 0.1), [2], 1, BUDGET)
    with pytest.raises(ValueError, match="t_range"):
        fit_width_sweep(mix, points, mix, (0.0, 0.1), [2], 1, BUDGET)


def test_plateau_rule_stops_where_constructed(setting):
    """A gain of 99% per evaluation is never seen again after the first one: with patience 1
    and no learning-rate cut every member stops on the plateau at the second evaluation.
    With no gain required and a patience longer than the run, every member hits the cap."""
    mix, points = setting
    never = FitBudget(steps=500, batch=32, lrs=(1e-2, 1e-3), eval_draws=128, eval_every=50,
                      patience=1, decays=0, min_delta=0.99)
    fits = fit_width_sweep(mix, points, mix, (0.2, 0.2), [2, 8], 1, never, seed=0).final
    assert fits.stop_step == (100, 100) and fits.on_plateau == (True, True)
    endless = FitBudget(steps=200, batch=32, lrs=(1e-2,), eval_draws=128, eval_every=50,
                        patience=100, min_delta=0.0)
    fits = fit_width_sweep(mix, points, mix, (0.2, 0.2), [2, 8], 1, endless, seed=0).final
    assert fits.stop_step == (200, 200) and fits.on_plateau == (False, False)


def test_each_member_trains_at_its_own_learning_rate(setting):
    """Two learning rates per width, 1e-9 (the member barely moves) and 1e-2: validation
    must pick 1e-2 for every width, and its error must be far below that of a sweep at
    1e-9 alone. Catches a learning-rate field that maps members to the wrong rate (a width
    trained only at 1e-9 stays at its initial error) or a choice read off the wrong member."""
    mix, points = setting
    kw = dict(steps=300, batch=64, eval_draws=256, patience=100)
    both = fit_width_sweep(mix, points, mix, (0.2, 0.2), [2, 8], 1,
                           FitBudget(lrs=(1e-9, 1e-2), **kw), seed=0).final
    still = fit_width_sweep(mix, points, mix, (0.2, 0.2), [2, 8], 1,
                            FitBudget(lrs=(1e-9,), **kw), seed=0).final
    assert both.lr == (1e-2, 1e-2)
    assert all(a < 0.5 * b for a, b in zip(both.ratio, still.ratio, strict=True))


def test_a_snapshot_is_the_run_capped_there(setting):
    """The schedule never looks at the cap, so the snapshot at step s of a run capped at 2 s
    is exactly the run capped at s (the budget check's premise)."""
    mix, points = setting
    kw = dict(batch=32, lrs=(1e-2, 3e-3), eval_draws=128, eval_every=50, patience=1)
    short = fit_width_sweep(mix, points, mix, (0.1, 0.3), [2, 8], 1,
                            FitBudget(steps=200, **kw), seed=1)
    long = fit_width_sweep(mix, points, mix, (0.1, 0.3), [2, 8], 1,
                           FitBudget(steps=400, snapshots=(200,), **kw), seed=1)
    assert long.snapshots[200] == short.final
    assert long.t_grid == short.t_grid and len(short.t_grid) == 5


@settings(max_examples=20, deadline=None)
@given(st.floats(1e-4, 1e-1), st.floats(0.0, 0.5), st.integers(0, 2**16))
def test_adamw_step_is_linear_in_lr(lr, wd, seed):
    """The per-member learning rate of fit_width_sweep scales a unit-lr AdamW step; this
    equals torch's own AdamW at that lr (weight decay included) for several steps."""
    torch.manual_seed(seed)
    w0, grads = torch.randn(5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    ref, unit = w0.clone().requires_grad_(), w0.clone().requires_grad_()
    opt_ref = torch.optim.AdamW([ref], lr=lr, weight_decay=wd)
    opt_unit = torch.optim.AdamW([unit], lr=1.0, weight_decay=wd)
    for g in grads:
        ref.grad, unit.grad = g.clone(), g.clone()
        opt_ref.step()
        before = unit.detach().clone()
        opt_unit.step()
        with torch.no_grad():
            unit.copy_(before + lr * (unit - before))
    torch.testing.assert_close(unit.detach(), ref.detach(), rtol=1e-12, atol=1e-14)
