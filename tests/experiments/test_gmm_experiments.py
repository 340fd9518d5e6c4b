"""The Gaussian-mixture scripts (Figs. 2, 3a, 3b and the pruning bridge): smoke profiles
run in seconds and write their JSON and figures; the numbers are well formed."""

from __future__ import annotations

import pytest

from experiments import gmm_2d, gmm_pruning, gmm_sweeps


def ratios_ok(report: dict) -> bool:
    lo, hi = report["ci"]
    return 0 <= lo <= report["memorization_ratio"] <= hi <= 1


def test_gmm_sweeps_smoke(smoke_run):
    out, result = smoke_run(gmm_sweeps)
    for fig in ("fig3a", "fig3b"):
        assert (out / f"gmm_sweeps_{fig}.png").stat().st_size > 10_000
        assert (out / f"gmm_sweeps_{fig}.pdf").exists()
    r, cfg = result["results"], result["config"]
    keys = {(x["d"], x["n"], x["width"], x["weight_decay"]) for x in r["networks"]}
    assert keys == set(gmm_sweeps.jobs(cfg))
    assert all(ratios_ok(x) for x in r["networks"] + r["references"])
    checks = r["reference_checks"][str(cfg["d_main"])]
    assert checks["empirical_ratio_min"] >= 0.9  # short smoke sampler; >= 0.99 at quick size


def test_gmm_sweeps_jobs_cover_every_panel_once():
    cfg = gmm_sweeps.PROFILES["quick"]
    grid = gmm_sweeps.jobs(cfg)
    assert len(grid) == len(set(grid))
    assert (cfg["d_main"], cfg["ns"][0], cfg["widths"][-1], 0.0) in grid
    assert all((d, n, cfg["d_width"], 0.0) in grid for d in cfg["ds"] for n in cfg["d_ns"])


def test_gmm_2d_smoke(smoke_run):
    out, result = smoke_run(gmm_2d)
    assert (out / "gmm_2d.png").stat().st_size > 10_000
    r, cfg = result["results"], result["config"]
    assert set(r["panels"]) == {"true", "empirical"} | {f"width={w}" for w in cfg["widths"]}
    for panel in r["panels"].values():
        first = panel[0]
        assert len(first["samples"]) == len(first["memorized"]) == cfg["scatter"]
        assert ratios_ok(first)
    # the exact empirical score reproduces training points
    assert r["panels"]["empirical"][0]["memorization_ratio"] >= 0.9


def test_gmm_pruning_smoke(smoke_run):
    out, result = smoke_run(gmm_pruning)
    assert (out / "gmm_pruning.png").stat().st_size > 10_000
    r, cfg = result["results"], result["config"]
    base = [x for x in r["runs"] if x["eta"] == 0]
    assert len(base) == cfg["seeds"] and base[0]["method"] == "none"
    pruned = [x for x in r["runs"] if x["eta"] > 0]
    assert {x["method"] for x in pruned} == set(cfg["methods"])
    for x in pruned:
        assert x["num_params"] < base[0]["num_params"]
        assert sum(x["hidden_widths"]) == pytest.approx(
            cfg["depth"] * cfg["width"] - int(x["eta"] * cfg["depth"] * cfg["width"]))
        assert ratios_ok(x["before_finetune"]) and ratios_ok(x["after_finetune"])
