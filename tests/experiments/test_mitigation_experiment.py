"""The mitigation study (experiments/mitigation.py): the smoke profile runs end to end and
writes its JSON, Pareto figure and tables; the paired numbers the notes quote are what the
per-seed reports give when recomputed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from experiments import mitigation


def test_mitigation_smoke_writes_json_figure_and_tables(smoke_run):
    """Catches a study that skips a method, a control or a fine-tuning length, or draws
    nothing: every planned (method, phase) is in the JSON and the figure is not empty."""
    out, result = smoke_run(mitigation)
    assert (out / "mitigation.png").stat().st_size > 10_000
    table = (out / "mitigation_table.md").read_text()
    assert "Best setting of each method" in table and "damage-matched" in table
    cfg, r = result["config"], result["results"]
    got = {(x["method"], x["eta"]) for x in r["runs"]}
    for c in cfg["criteria"]:
        for eta in cfg["etas"]:
            assert (c, eta) in got
    for method in ("original", "iterative_gap", "lipschitz", "lipschitz_pruned", "floor",
                   "floor_pruned", "scratch", "weight_decay", "early"):
        assert method in {m for m, _ in got}
    for x in r["runs"]:
        phases = ["final"] if x["method"] in mitigation.CONTROLS else [
            "ft0", *[f"ft{s}" for s in cfg["finetune_steps"]]]
        for phase in phases:
            rep = x[phase]
            assert 0 <= rep["memorization_ratio"] <= 1 and rep["energy"] >= 0
            assert 0 <= rep["precision"] <= 1 and 0 <= rep["recall"] <= 1
    # every criterion has a damage-matched random run at its matched ratio, on every seed
    for r_eta in r["matched"].values():
        assert len(mitigation.reports(result, "random", r_eta, "ft0")) == cfg["seeds"]


def test_mitigation_summary_is_paired_by_seed(smoke_run):
    """Catches an unpaired reduction or quality loss (pooled means, or the wrong seed's
    original): recomputed per seed by hand from the raw reports."""
    _, result = smoke_run(mitigation)
    key = ("random", result["config"]["etas"][0], "ft0")
    summ = mitigation.summary(result, *key)
    orig = {x["seed"]: x for x in mitigation.reports(result, "original", 0.0, "ft0")}
    reps = mitigation.reports(result, *key)
    red = [1 - x["memorization_ratio"] / orig[x["seed"]]["memorization_ratio"] for x in reps]
    worse = result["results"]["prior_energy"]
    q = [(x["energy"] - orig[x["seed"]]["energy"]) / (worse[x["seed"]]
                                                      - orig[x["seed"]]["energy"]) for x in reps]
    assert summ["reduction"] == pytest.approx(np.mean(red))
    assert summ["quality_loss"] == pytest.approx(np.mean(q))
    assert summ["in_band"] == float(np.mean(q) <= result["config"]["quality_tolerance"])
    facts = mitigation.facts(result)
    assert facts[f"reduction/random/{key[1]:g}/ft0"] == pytest.approx(np.mean(red))
    blocks = mitigation.blocks(result)
    assert blocks["best"].count("\n") >= len(mitigation.methods(result))


def test_damage_matching_picks_the_nearest_random_ratio():
    """Catches matching on the wrong quantity or seed: the grid ratio whose mean damage is
    nearest to the criterion's wins, and a criterion that lowers the loss gets the smallest."""
    cfg = {"criteria": ["oracle", "random"], "etas": [0.2, 0.4], "random_etas": [0.1, 0.3, 0.5]}
    bases = [{"damage": {"random/0.1": 1.0, "random/0.3": 4.0, "random/0.5": 9.0,
                         "oracle/0.2": 3.4 + s, "oracle/0.4": -2.0}} for s in (-0.5, 0.5)]
    assert mitigation.damage_matched(cfg, bases) == {("oracle", 0.2): 0.3, ("oracle", 0.4): 0.1}


def test_moment_matched_gaussian_has_the_mixture_moments():
    """Catches a reference Gaussian with the wrong covariance (e.g. Sigma alone, without
    the spread of the means): its sample moments match the mixture's own sample moments."""
    from theory.mixtures import paper_mixture
    from theory.process import generator

    mix = paper_mixture(3, 4, 2.0, seed=1)
    g = mitigation.moment_matched_gaussian(mix, 200_000, seed=0)
    x = mix.sample(200_000, generator(7))
    assert g.mean(0).numpy() == pytest.approx(x.mean(0).numpy(), abs=0.05)
    assert np.cov(g.T.numpy()) == pytest.approx(np.cov(x.T.numpy()), abs=0.1)


def test_bad_config_is_refused_before_any_work():
    """Catches a study that would crash late or silently skip: relations between keys."""
    from experiments.common.config import validate_config

    cfg = dict(mitigation.PROFILES["smoke"], early_every=7)
    with pytest.raises(ValueError, match="early_every"):
        validate_config(cfg, mitigation.CONFIG_RULES, mitigation.check_config)
    cfg = dict(mitigation.PROFILES["smoke"], etas=[0.999])
    with pytest.raises(ValueError, match="etas"):
        validate_config(cfg, mitigation.CONFIG_RULES, mitigation.check_config)
