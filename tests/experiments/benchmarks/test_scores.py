"""The score benchmark runs end to end at its --quick size and compares like with like.

No timing assertions: wall-clock numbers depend on the machine and its load. What is
pinned down: the three scores (streaming, full-matrix reference, float64) agree, and every
ratio the benchmark reports is a finite positive number.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from experiments.benchmarks import scores as bs


@pytest.fixture(scope="module")
def quick_result(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    path = tmp_path_factory.mktemp("bench") / "bench.json"
    threads = torch.get_num_threads()
    try:
        res = bs.main(["--quick", "--repeats", "1", "--json", str(path)])
    finally:
        torch.set_num_threads(threads)
    return res, json.loads(path.read_text())


def test_quick_scores_agree(quick_result: tuple[dict, dict]) -> None:
    res, _ = quick_result
    agreement = res["agreement"]
    assert agreement["agree"]
    assert agreement["max_difference"] <= bs.AGREEMENT_TOL[torch.float32]
    # One check at the benchmarked t, one where the posterior is spread over many points.
    assert len(agreement["checks"]) == 2
    assert agreement["checks"][1]["effective_points"] > 10


def test_quick_ratios_finite_positive(quick_result: tuple[dict, dict]) -> None:
    res, _ = quick_result
    for name, value in res["ratios"].items():
        assert value is not None and math.isfinite(value) and value > 0, name
    for m in bs.METHODS:
        assert res["median_s"][m] > 0
        assert res["memory_mib"][m] > 0


def test_quick_json_matches_result(quick_result: tuple[dict, dict]) -> None:
    res, written = quick_result
    assert (
        written["config"]
        == res["config"]
        == {**bs.asdict(bs.BenchConfig()), **bs.QUICK, "repeats": 1}
    )
    assert written["ratios"] == pytest.approx(res["ratios"])
    assert set(written["targets"]) == set(res["targets"])


def test_streaming_matches_reference_small_float64() -> None:
    cfg = bs.BenchConfig(n=300, d=16, batch=7, dtype="float64", t=0.5)
    points, x = bs.make_data(cfg)
    ours = bs.score_ours(bs.EmpiricalScore(points), x, cfg.t)
    ref = bs.score_full_reference(points, x, cfg.t)
    exact, effective = bs.score_float64_check(points, x, cfg.t)
    assert effective >= 1
    assert bs.max_relative_difference(ours, exact) < 1e-10
    assert bs.max_relative_difference(ref, exact) < 1e-10


def test_bad_config_raises() -> None:
    with pytest.raises(ValueError, match="dtype"):
        bs.BenchConfig(dtype="float16")
    with pytest.raises(ValueError, match="t must be"):
        bs.BenchConfig(t=0.0)
    with pytest.raises(ValueError, match="n must be"):
        bs.BenchConfig(n=0)
