"""Fig. 1's script: the smoke profile runs in seconds, writes its JSON and its figure; its
numbers agree with an independent computation, and the facts and tables the notes quote
(``facts``, ``blocks``) are what they say they are."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest

from experiments import loss_gap
from experiments.common.runs import main
from theory.empirical import EmpiricalScore
from theory.loss_gap import loss_gap as loss_gap_at
from theory.mixtures import paper_mixture
from theory.process import generator


@pytest.fixture(scope="module")
def smoke(smoke_run):
    return smoke_run(loss_gap)


def test_smoke_writes_json_and_figure(smoke):
    out, result = smoke
    assert (out / "loss_gap.png").stat().st_size > 10_000
    assert (out / "loss_gap.pdf").exists()
    assert result["profile"] == "smoke" and result["config"] == loss_gap.PROFILES["smoke"]
    r = result["results"]
    cfg = result["config"]
    assert len(r["times"]) == cfg["num_times"]
    assert set(r["by_n"]) == {str(n) for n in cfg["ns"]}
    for entry in r["by_n"].values():
        for form in ("direct", "fisher"):
            m, lo, hi = (np.array(entry[form][k]) for k in ("mean", "ci_low", "ci_high"))
            assert np.all(lo <= m) and np.all(m <= hi) and np.all(m > 0)


def test_smoke_gap_tracks_closed_form_at_small_t(smoke):
    # Even the smoke setting (d=8, n<=80) is in the one-hot regime at t = 1e-3.
    r = smoke[1]["results"]
    for entry in r["by_n"].values():
        assert entry["fisher"]["mean"][0] == pytest.approx(r["closed_form"][0], rel=0.1)


def test_smoke_closed_forms_are_the_formulas(smoke):
    """The JSON's closed forms against the formulas written out here with numpy (not
    theory/bounds.py): d/(e^t - 1) for Sigma = I, d/sigma^2 + tr Sigma for the rate shape,
    and sum_j a^2 c/(s^2 (a^2 c + s^2)) for Sigma = c I."""
    r, cfg = smoke[1]["results"], smoke[1]["config"]
    d, t = cfg["d"], np.asarray(r["times"])
    np.testing.assert_allclose(r["closed_form"], d / np.expm1(t), rtol=1e-12)
    np.testing.assert_allclose(r["thm43_rate"], d / -np.expm1(-t) + d, rtol=1e-12)
    tf = np.asarray(cfg["t_fixed"])
    a2, s2 = np.exp(-tf), -np.expm1(-tf)
    for dim, entry in r["by_d"].items():
        np.testing.assert_allclose(entry["closed_form"], int(dim) / np.expm1(tf), rtol=1e-12)
    for c, entry in r["by_var"].items():
        c = float(c)
        assert entry["trace_cov"] == pytest.approx(d * c)
        np.testing.assert_allclose(entry["closed_form"], d * a2 * c / (s2 * (a2 * c + s2)),
                                   rtol=1e-12)


def test_smoke_gaps_recomputed_directly_with_theory(smoke):
    """Panel (a) at the smallest n, redone from theory alone (mixture, training sets from the
    documented streams (seed, panel 0, index 0, dataset r), loss_gap at each t): the JSON's
    means over datasets are these numbers. At the smallest t the posterior is one-hot, so
    the direct and Fisher forms are the same number (Prop. 4.1 holds by construction there)."""
    r, cfg = smoke[1]["results"], smoke[1]["config"]
    mix = paper_mixture(cfg["d"], cfg["K"], cfg["mean_std"], cov=1.0, seed=cfg["seed"])
    n = cfg["ns"][0]
    per_set = {"direct": [], "fisher": []}
    for dataset in range(cfg["num_datasets"]):
        g = generator(cfg["seed"], 0, 0, dataset)
        points = mix.sample(n, g)
        emp = EmpiricalScore(points)
        gaps = [loss_gap_at(mix, points, float(t), cfg["num_draws"], g, emp) for t in r["times"]]
        for form in per_set:
            per_set[form].append([getattr(x, form).value for x in gaps])
    entry = r["by_n"][str(n)]
    for form, values in per_set.items():
        np.testing.assert_allclose(entry[form]["mean"], np.mean(values, axis=0), rtol=1e-10)
    assert entry["direct"]["mean"][0] == pytest.approx(entry["fisher"]["mean"][0], rel=1e-9)


def test_facts_of_the_smoke_run(smoke):
    result = smoke[1]
    r, cfg = result["results"], result["config"]
    facts = loss_gap.facts(result)
    assert all(isinstance(v, float) and math.isfinite(v) for v in facts.values())
    assert facts["closed_form_rel_err_max"] == pytest.approx(
        max(c["max_rel_err_t_le_0.3"] for c in r["checks"].values()))
    assert facts["ci_level"] == 0.95
    d, (n_lo, n_hi) = cfg["d"], (cfg["ns"][0], cfg["ns"][-1])
    assert facts["rate_drop_predicted"] == pytest.approx(1 - (n_hi / n_lo) ** (-1 / d))
    # sigma_t = d^(-1/2) at the window edge, and t = 0.05 lies at sigma_t = d^(-gamma)
    assert -np.expm1(-facts["window_edge_half"]) == pytest.approx(1 / d)
    assert math.sqrt(-math.expm1(-cfg["t_fixed"][0])) == pytest.approx(
        d ** -facts["window_gamma/j=0"])
    assert facts["ceiling/j=1"] == pytest.approx(d / -math.expm1(-cfg["t_fixed"][1]))
    assert facts["max_z"] == max(e["max_abs_z_direct_vs_fisher"] for e in r["by_n"].values())
    assert not any(k.startswith("slope_n") for k in facts)  # two n: no slope to fit
    tables = loss_gap.blocks(result)
    assert set(tables) == {"prop41_means", "by_d", "by_var", "integrated", "settings"}
    for table in tables.values():
        rows = table.splitlines()
        assert rows[1].startswith("| --- |") and all(row.startswith("|") for row in rows)
    assert len(tables["by_var"].splitlines()) == 2 + len(cfg["cov_scales"])


def test_fitted_n_slopes_match_numpy_polyfit(smoke):
    """facts()' slope of log gap on log n, on a result with four n whose gaps follow known
    power laws times small noise: numpy.polyfit's slope, inside its own interval, and close
    to the true exponent."""
    result = copy.deepcopy(smoke[1])
    r = result["results"]
    ns = [30, 300, 3000, 30000]
    times = np.asarray(r["times"])
    exponents = np.linspace(0.0, -0.5, times.size)  # one per t
    rng = np.random.default_rng(0)
    template = r["by_n"][next(iter(r["by_n"]))]
    r["by_n"] = {}
    gaps = {}
    for n in ns:
        gaps[n] = np.asarray(r["closed_form"]) * n ** exponents * np.exp(
            rng.normal(0, 1e-3, times.size))
        entry = copy.deepcopy(template)
        for form in ("direct", "fisher"):
            entry[form] = {"mean": gaps[n].tolist(), "ci_low": (0.99 * gaps[n]).tolist(),
                           "ci_high": (1.01 * gaps[n]).tolist()}
        r["by_n"][str(n)] = entry
    result["config"]["ns"] = ns
    first = next(iter(r["integrated"].values()))
    r["integrated"] = {str(n): first for n in ns}
    facts = loss_gap.facts(result)
    logn = np.log(ns)
    for k, b in enumerate(exponents):
        want = np.polyfit(logn, np.log([gaps[n][k] for n in ns]), 1)[0]
        assert facts[f"slope_n/k={k}"] == pytest.approx(want, rel=1e-9, abs=1e-12)
        assert facts[f"slope_n_low/k={k}"] < want < facts[f"slope_n_high/k={k}"]
        assert facts[f"slope_n/k={k}"] == pytest.approx(b, abs=0.01)  # ~50 standard errors
    assert "n_slopes" in loss_gap.blocks(result)


def test_replot_uses_json_only(smoke, monkeypatch):
    out, _ = smoke
    monkeypatch.setattr(loss_gap, "compute", lambda *a: pytest.fail("recomputed"))
    main(loss_gap, ["--profile", "smoke", "--out", str(out)])


def test_bad_override_is_a_clear_cli_error(capsys, tmp_path):
    with pytest.raises(SystemExit):
        main(loss_gap, ["--profile", "smoke", "--out", str(tmp_path), "--set", "num_draw=5"])
    assert "unknown key 'num_draw'" in capsys.readouterr().err
