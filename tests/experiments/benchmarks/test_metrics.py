"""The memorization-search benchmark runs end to end at its --quick size and compares like
with like.

No timing assertions: wall-clock numbers depend on the machine and its load. What is
pinned down: the streaming search and the full-matrix cdist+topk reference find the same
nearest neighbours, ratios and memorization decisions (both branches of the 1/9 rule
exercised by planted near-copies), every ratio the benchmark reports is a finite positive
number, and the memory bound it checks ours against does not depend on n.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from experiments.benchmarks import metrics as bm


@pytest.fixture(scope="module")
def quick_result(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    path = tmp_path_factory.mktemp("bench") / "bench.json"
    threads = torch.get_num_threads()
    try:
        res = bm.main(["--quick", "--repeats", "1", "--json", str(path)])
    finally:
        torch.set_num_threads(threads)
    return res, json.loads(path.read_text())


def test_quick_searches_agree(quick_result: tuple[dict, dict]) -> None:
    res, _ = quick_result
    a = res["agreement"]
    assert a["agree"]
    assert a["index_mismatches_untied"] == 0
    assert a["decision_mismatches_not_borderline"] == 0
    assert a["index_mismatches_float64_untied"] == 0
    tol = bm.AGREEMENT_TOL[torch.float32]
    assert max(a["max_ratio_difference"], a["ours_vs_float64"], a["reference_vs_float64"]) <= tol
    # Both branches of the rule: some copies are memorized, the fresh draws are not.
    assert 0 < a["memorized_ours"] < a["copies"] == round(0.25 * bm.QUICK["m"])
    assert a["copies_nearest_is_source"] == a["copies"]


def test_quick_ratios_finite_positive(quick_result: tuple[dict, dict]) -> None:
    res, _ = quick_result
    for name, value in res["ratios"].items():
        assert value is not None and math.isfinite(value) and value > 0, name
    for m in bm.METHODS:
        assert res["median_s"][m] > 0
        assert res["memory_mib"][m] > 0


def test_quick_json_matches_result(quick_result: tuple[dict, dict]) -> None:
    res, written = quick_result
    assert (
        written["config"]
        == res["config"]
        == {**bm.asdict(bm.BenchConfig()), **bm.QUICK, "repeats": 1}
    )
    assert written["ratios"] == pytest.approx(res["ratios"])
    assert written["agreement"] == res["agreement"]
    assert set(written["targets"]) == set(res["targets"])


def test_streaming_matches_reference_across_blocks() -> None:
    # m > 2,048 and n > 2,048: several sample blocks and training chunks at default sizes.
    cfg = bm.BenchConfig(m=2100, n=2500, d=6, dtype="float64", copy_fraction=0.5)
    train, samples, _ = bm.make_data(cfg)
    d1, d2, idx = bm.search_ours(samples, train)
    full = torch.cdist(samples, train).square().sort(dim=1)
    torch.testing.assert_close(d1, full.values[:, 0])
    torch.testing.assert_close(d2, full.values[:, 1])
    assert torch.equal(idx, full.indices[:, 0])
    a = bm.compare_searches((d1, d2, idx), bm.search_full_reference(samples, train), 1e-10)
    assert a["index_mismatches"] == a["decision_mismatches"] == 0
    assert 0 < a["memorized_ours"] < cfg.n_copies


def test_compare_searches_counts_disagreement() -> None:
    cfg = bm.BenchConfig(m=40, n=60, d=8, dtype="float64")
    train, samples, _ = bm.make_data(cfg)
    d1, d2, idx = bm.search_ours(samples, train)
    ref = bm.search_full_reference(samples, train)
    a = bm.compare_searches((d1 * 1.5, d2, (idx + 1) % cfg.n), ref, 1e-10)
    assert a["index_mismatches_untied"] == cfg.m
    assert a["max_ratio_difference"] > 1e-3


def test_memory_bound_independent_of_n() -> None:
    small, large = bm.BenchConfig(n=5000), bm.BenchConfig(n=500_000)
    assert bm.memory_bound_mib(small) == bm.memory_bound_mib(large)
    assert bm.memory_bound_mib(bm.BenchConfig(m=100_000)) > bm.memory_bound_mib(small)
    # At the full size: far below the (m x n) float32 matrix that (a) and (b) hold.
    assert bm.memory_bound_mib(bm.BenchConfig()) < 0.05 * 10_000 * 50_000 * 4 / 2**20


def test_bad_config_raises() -> None:
    with pytest.raises(ValueError, match="dtype"):
        bm.BenchConfig(dtype="float16")
    with pytest.raises(ValueError, match="copy_fraction"):
        bm.BenchConfig(copy_fraction=1.5)
    with pytest.raises(ValueError, match="n must be >= 2"):
        bm.BenchConfig(n=1)
    with pytest.raises(ValueError, match="m must be"):
        bm.BenchConfig(m=0)
    with pytest.raises(ValueError, match="threads"):
        bm.BenchConfig(threads=-1)
    with pytest.raises(ValueError, match="method"):
        bm.peak_extra_mib(bm.BenchConfig(), ["fastest"])
