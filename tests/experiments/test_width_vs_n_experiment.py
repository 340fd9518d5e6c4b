"""The width-vs-n script: the smoke profile runs in seconds and writes its JSON and figure."""

from __future__ import annotations

import math

import pytest

from experiments import width_vs_n


@pytest.fixture(scope="module")
def smoke(smoke_run):
    return smoke_run(width_vs_n)


def test_smoke_writes_json_and_figure(smoke):
    out, result = smoke
    assert (out / "width_vs_n.png").stat().st_size > 10_000
    assert (out / "width_vs_n.pdf").exists()
    cfg = result["config"]
    panels = result["results"]["panels"]
    assert set(panels) == {"main", "small_t"}
    for key in ("empirical/L=1", "true/L=1"):
        entry = panels["main"][key]
        assert entry["widths"] == width_vs_n.widths_for(cfg, 1)
        assert set(entry["ratio"]) == {str(n) for n in cfg["ns"]}
        for per_seed in entry["ratio"].values():
            assert len(per_seed) == cfg["seeds"]
            assert all(r > 0 and math.isfinite(r) for rs in per_seed for r in rs)


def test_slope_fit_recovers_a_power_law():
    ns = [4, 8, 16, 32]
    fit = width_vs_n.slope_fit(ns, [[3.0 * n**1.5, 3.1 * n**1.5] for n in ns])
    assert fit["slope"] == pytest.approx(1.5, abs=0.01)
    assert fit["ci_low"] <= 1.5 <= fit["ci_high"]
    missing = width_vs_n.slope_fit(ns, [[4.0], [8.0], [16.0], [math.inf]])
    assert missing["not_reached"] == 1 and missing["points"] == 3
    assert width_vs_n.slope_fit([4, 8], [[math.inf], [math.inf]])["slope"] is None
