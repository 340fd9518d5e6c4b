"""The capacity search of Thm 5.1: fits of a width grid and the smallest width reaching eps."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from theory.capacity import FitBudget, fit_width_sweep, smallest_width
from theory.mixtures import paper_mixture
from theory.networks import ScoreMLP
from theory.process import generator

BUDGET = FitBudget(steps=300, batch=128, lr=1e-2, eval_draws=1024)


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


def test_error_does_not_grow_with_width(setting):
    """On a smoke grid the fitted error falls with width, up to a stated tolerance.

    Tolerance: each wider net may be at most 50% worse than the narrower one (the fixed
    budget does not train every width to convergence), and the widest must beat the
    narrowest by a factor 2."""
    mix, points = setting
    sweep = fit_width_sweep(mix, points, mix, (0.1, 0.5), [2, 8, 32], 1, BUDGET, seed=0)
    r = sweep.ratio
    assert all(r[k + 1] <= 1.5 * r[k] for k in range(len(r) - 1)), r
    assert r[-1] <= 0.5 * r[0], r
    assert sweep.num_params == tuple(ScoreMLP(2, w).num_params for w in (2, 8, 32))


def test_a_network_target_of_width_w_is_found_at_width_at_most_w(setting):
    """When the target is itself a ScoreMLP of width 4, some width <= 4 implements it."""
    mix, points = setting
    torch.manual_seed(0)
    target = ScoreMLP(2, 4, 1)
    for p in target.parameters():
        p.requires_grad_(False)
    widths = [1, 2, 4, 8, 16]
    budget = FitBudget(steps=600, batch=128, lr=1e-2, eval_draws=1024)
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
    with pytest.raises(ValueError, match="lr"):
        FitBudget(lr=0.0)
    with pytest.raises(ValueError, match="t_range"):
        fit_width_sweep(mix, points, mix, (0.5, 0.1), [2], 1, BUDGET)
    with pytest.raises(ValueError, match="t_range"):
        fit_width_sweep(mix, points, mix, (0.0, 0.1), [2], 1, BUDGET)
