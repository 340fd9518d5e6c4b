"""The width-vs-n script: the smoke profile runs in seconds and writes its JSON and figure;
its training sets with copies, slope fits and budget check do what they say."""

from __future__ import annotations

import math

import pytest
import torch

from experiments import width_vs_n
from experiments.common.runs import COMMITTED, read_json


@pytest.fixture(scope="module")
def smoke(smoke_run):
    return smoke_run(width_vs_n)


def test_smoke_writes_json_and_figure(smoke):
    out, result = smoke
    assert (out / "width_vs_n.png").stat().st_size > 10_000
    assert (out / "width_vs_n.pdf").exists()
    cfg = result["config"]
    panels = result["results"]["panels"]
    assert set(panels) == {"main", "interval"}
    for panel, key in (("main", "empirical/L=1"), ("main", "true/L=1"), ("interval", "true/L=1")):
        entry = panels[panel][key]
        assert entry["widths"] == width_vs_n.widths_for(cfg, 1)
        assert set(entry["ratio"]) == {str(n) for n in cfg["ns"]}
        caps = width_vs_n.caps(cfg)
        assert list(entry["ratio_at"]) == [str(c) for c in caps[:-1]]
        for per_seed in [*entry["ratio"].values(), *(r for at in entry["ratio_at"].values()
                                                     for r in at.values())]:
            assert len(per_seed) == cfg["seeds"]
            assert all(r > 0 and math.isfinite(r) for rs in per_seed for r in rs)
        assert list(entry["budget_check"]) == [str(c) for c in caps[1:]]
        for check in entry["budget_check"].values():
            assert 0 <= check["moved"] <= check["compared"] <= len(cfg["ns"]) * cfg["seeds"]
        assert set(entry["slopes_by_eps"]) == {str(e) for e in cfg["eps_grid"]}
    # the interval panel measures r on t_points times spanning t_interval
    grid = panels["interval"]["true/L=1"]["t_grid"]
    assert len(grid) == cfg["t_points"] and grid[0] == pytest.approx(cfg["t_interval"][0])
    assert grid[-1] == pytest.approx(cfg["t_interval"][1])
    assert panels["main"]["true/L=1"]["t_grid"] == [cfg["t_main"]]
    dup = result["results"]["duplicates"]
    assert set(dup["copies"]) == {str(m) for m in cfg["dup_copies"]}
    facts = width_vs_n.facts(result)
    assert facts["true_slopes_flat"] <= facts["true_slopes"]


def test_copies_are_drawn_from_the_distinct_training_set():
    """n points with m copies: the first n - m rows are the main panel's training set of
    n - m points (same seed, so the comparison is paired), every other row repeats one of them."""
    cfg = width_vs_n.PROFILES["quick"]
    n, m = 32, 24
    with_copies = width_vs_n.training_set(cfg, n, m, seed=1)
    distinct = width_vs_n.training_set(cfg, n - m, 0, seed=1)
    assert with_copies.shape == (n, cfg["d"])
    assert torch.equal(with_copies[: n - m], distinct)
    same = (with_copies[n - m :, None] == distinct[None]).all(-1)  # (m, n - m)
    assert torch.equal(same.sum(1), torch.ones(m, dtype=torch.long))
    assert len(torch.unique(distinct, dim=0)) == n - m


def test_slope_fit_recovers_a_power_law():
    ns = [4, 8, 16, 32]
    fit = width_vs_n.slope_fit(ns, [[3.0 * n**1.5, 3.1 * n**1.5] for n in ns])
    assert fit["slope"] == pytest.approx(1.5, abs=0.01)
    assert fit["ci_low"] <= 1.5 <= fit["ci_high"]
    missing = width_vs_n.slope_fit(ns, [[4.0], [8.0], [16.0], [math.inf]])
    assert missing["not_reached"] == 1 and missing["points"] == 3
    assert width_vs_n.slope_fit([4, 8], [[math.inf], [math.inf]])["slope"] is None


def test_slope_fit_from_min_n_leaves_out_a_floor():
    """A floor at small n (W* = 30 at n = 4) bends the all-n fit; from n >= 8 the known
    exponent 1.2 is recovered, with noise that the interval must cover."""
    g = torch.Generator().manual_seed(0)
    ns = [4, 8, 16, 32, 64]
    noise = torch.exp(0.05 * torch.randn((len(ns), 3), generator=g, dtype=torch.float64))
    widths = [[30.0 if n == 4 else 2.0 * n**1.2 * float(e) for e in row]
              for n, row in zip(ns, noise, strict=True)]
    from_8 = width_vs_n.slope_fit(ns, widths, min_n=8)
    assert from_8["points"] == 12 and from_8["ci_low"] <= 1.2 <= from_8["ci_high"]
    assert from_8["ci_high"] - from_8["ci_low"] < 0.2
    assert width_vs_n.slope_fit(ns, widths)["slope"] < 1.1


@pytest.mark.parametrize(("w_cap", "w_half", "expected"), [
    (100.0, 119.0, False), (100.0, 126.0, True), (100.0, 81.0, True), (100.0, math.inf, True),
    (math.inf, 50.0, True), (math.inf, math.inf, None)])
def test_budget_check_flags_a_move_beyond_20_percent(w_cap, w_half, expected):
    assert width_vs_n.moved(w_cap, w_half) is expected


def test_the_committed_cpu_run_reproduces_the_quick_fits_at_1600_steps():
    """The notes say so: the cpu profile's W* read at 1,600 steps (a snapshot of a 6,400-step
    run whose ensemble also holds width 512) equal the quick profile's W* at its 1,600-step
    cap for two hidden layers, for every n of the quick grid and training set (same members,
    same seeds; the cpu grid also has larger n)."""
    quick = read_json(COMMITTED["quick"] / "width_vs_n.json")["results"]["panels"]
    cpu = read_json(COMMITTED["cpu"] / "width_vs_n.json")["results"]["panels"]
    assert width_vs_n.PROFILES["quick"]["steps"] == 1600
    for panel in ("main", "interval"):
        for target in width_vs_n.TARGETS:
            line = f"{target}/L=2"
            at_1600 = cpu[panel][line]["smallest_width_at"]["1600"]
            assert {n: at_1600[n] for n in quick[panel][line]["smallest_width"]} == \
                quick[panel][line]["smallest_width"]
