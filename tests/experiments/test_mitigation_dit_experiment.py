"""The DiT half of the mitigation study (experiments/mitigation_dit.py): the smoke profile
runs end to end and writes JSON and figure; its paired numbers are recomputed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from experiments import mitigation_dit


def test_mitigation_dit_smoke_writes_json_and_figure(smoke_run):
    """Catches a study that skips a criterion, eta or phase, or draws nothing."""
    out, result = smoke_run(mitigation_dit)
    assert (out / "mitigation_dit.png").stat().st_size > 10_000
    cfg, runs = result["config"], result["results"]["runs"]
    got = {(r["method"], r["eta"], r["seed"]) for r in runs}
    for s in range(cfg["seeds"]):
        assert ("original", 0.0, s) in got
        for c in cfg["criteria"]:
            for eta in cfg["etas"]:
                assert (c, eta, s) in got
    for r in runs:
        for phase in mitigation_dit.PHASES:
            rep = r[phase]
            assert 0 <= rep["memorization_ratio"] <= 1 and rep["fd"] >= 0
            assert rep["feature_space"].startswith("SmallCNN")


def test_mitigation_dit_summary_is_paired_by_seed(smoke_run):
    """Catches an unpaired reduction or quality loss: recomputed per seed from the raw
    reports, and the criterion-minus-random effect paired by seed."""
    _, result = smoke_run(mitigation_dit)
    cfg = result["config"]
    key = (cfg["criteria"][0], cfg["etas"][0], "ft")
    summ = mitigation_dit.summary(result, *key)
    orig = {x["seed"]: x for x in mitigation_dit.reports(result, "original", 0.0, "ft0")}
    reps = mitigation_dit.reports(result, *key)
    prior = result["results"]["prior_fd"]
    red = [1 - x["memorization_ratio"] / orig[x["seed"]]["memorization_ratio"] for x in reps]
    q = [(x["fd"] - orig[x["seed"]]["fd"]) / (prior[x["seed"]] - orig[x["seed"]]["fd"])
         for x in reps]
    assert summ["reduction"] == pytest.approx(np.mean(red))
    assert summ["quality_loss"] == pytest.approx(np.mean(q))
    rand = mitigation_dit.reports(result, "random", key[1], "ft")
    diffs = [a["memorization_ratio"] - b["memorization_ratio"] for a, b in zip(reps, rand,
                                                                               strict=True)]
    assert mitigation_dit.vs_random(result, *key)["value"] == pytest.approx(np.mean(diffs))
    assert "generalization gap" in mitigation_dit.blocks(result)["grid"]
