"""The Gaussian-mixture scripts (Figs. 2, 3a, 3b and the pruning bridge): smoke profiles
run in seconds and write their JSON and figures; the numbers are well formed."""

from __future__ import annotations

import pytest

from experiments import gmm_2d, gmm_pruning, gmm_sweeps
from theory.networks import ScoreMLP


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


def test_gmm_sweeps_effects_and_parameter_counts_recomputed(smoke_run):
    """The paired effects the notes quote equal per-seed differences taken by hand, and
    num_params equals the parameter count of the network built with that width."""
    import numpy as np

    from theory.networks import ScoreMLP

    _, result = smoke_run(gmm_sweeps)
    cfg, nets = result["config"], result["results"]["networks"]
    d, n, wd = cfg["d_main"], cfg["wd_ns"][0], cfg["weight_decays"][-1]

    def ratios(**match):
        rows = sorted(gmm_sweeps.select(nets, d=d, n=n, **match), key=lambda x: x["seed"])
        return np.array([x["memorization_ratio"] for x in rows])

    e = gmm_sweeps.effects(result)[f"wd={wd:g}-0/n={n}/ratio"]
    by_hand = ratios(width=cfg["wd_width"], weight_decay=wd) - ratios(width=cfg["wd_width"],
                                                                        weight_decay=0.0)
    assert e["diffs"] == pytest.approx(by_hand) and e["n"] == cfg["seeds"]
    for x in nets[:4]:
        net = ScoreMLP(x["d"], x["width"], cfg["depth"], cfg["emb_dim"])
        assert x["num_params"] == sum(p.numel() for p in net.parameters())


def test_transition_n_interpolates_in_log_n():
    """Falls from 0.8 at n = 16 to 0.2 at n = 64: crosses 0.5 halfway in log n, at 32."""
    assert gmm_sweeps.transition_n([16, 64, 256], [0.8, 0.2, 0.0]) == pytest.approx(32.0)
    assert gmm_sweeps.transition_n([16, 64], [0.4, 0.1]) is None  # starts below the level


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


def test_gmm_2d_memorized_flags_recomputed_by_brute_force(smoke_run):
    """The red points of Fig. 2: the 1/9 rule redone with plain squared distances to the
    training points stored in the JSON."""
    import torch

    _, result = smoke_run(gmm_2d)
    r = result["results"]
    points = torch.tensor(r["training_points"], dtype=torch.float64)
    for name, panel in r["panels"].items():
        x = torch.tensor(panel[0]["samples"], dtype=torch.float64)
        d2 = ((x[:, None, :] - points[None]) ** 2).sum(-1).sort(dim=1).values
        assert (d2[:, 0] <= d2[:, 1] / 9).tolist() == panel[0]["memorized"], name


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
        rebuilt = ScoreMLP(cfg["d"], x["hidden_widths"], emb_dim=cfg["emb_dim"])
        assert x["num_params"] == sum(p.numel() for p in rebuilt.parameters())
    control = gmm_pruning.reports(result, 0.0, cfg["methods"][0], "after_finetune")
    eta = cfg["etas"][-1]
    pruned = gmm_pruning.reports(result, eta, "random", "after_finetune")
    facts = gmm_pruning.facts(result)
    diff = [p["memorization_ratio"] - c["memorization_ratio"]
            for p, c in zip(pruned, control, strict=True)]
    assert facts[f"effect/eta={eta:g}/random-control/ratio/value"] == pytest.approx(
        sum(diff) / len(diff))
