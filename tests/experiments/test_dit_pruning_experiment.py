"""The DiT pruning script (Table 1, Fig. 4, sweep): the smoke profile runs end to end in
seconds and writes the table, the figures and well-formed numbers."""

from __future__ import annotations

import pytest

from experiments import dit_pruning


@pytest.fixture(scope="module")
def smoke(smoke_run):
    return smoke_run(dit_pruning)


def test_smoke_writes_table_and_figures(smoke):
    out, result = smoke
    for name in ("fig4", "sweep"):
        assert (out / f"dit_pruning_{name}.png").stat().st_size > 5_000
    table = (out / "dit_pruning_table1.md").read_text()
    assert "pruned (importance)" in table and "73.82 ± 1.12" in table  # ours beside the paper's
    assert "FD-SmallCNN-digits" in table  # the feature space is named, never "FID"


def test_smoke_numbers_are_well_formed(smoke):
    _, result = smoke
    cfg, runs = result["config"], result["results"]["runs"]
    assert len(runs) == cfg["seeds"]
    first = runs[0]
    assert len(set(first["train_indices"])) == cfg["n"]
    sweep = [e for e in cfg["etas"] if e > 0]
    for eta in sweep:
        for variant in ("importance", "random"):
            rep = first[f"{variant}/eta={eta}"]
            total = sum(rep["heads_left"].values()) + rep["heads_removed"]
            assert rep["heads_removed"] == int(eta * total)
    for key in ("original", "finetuned", f"importance/eta={cfg['eta']}"):
        rep = first[key]
        lo, hi = rep["ci"]
        assert 0 <= lo <= rep["memorization_ratio"] <= hi <= 1
        assert rep["fd"] > -1e-6 and 0 <= rep["precision"] <= 1 and 0 <= rep["recall"] <= 1
        assert len(rep["grid"]) == len(rep["grid_nearest"]) == cfg["grid"]
    table = result["results"]["table1"]
    assert set(table) == {"original", "finetuned", "importance", "random"}
    assert table["original"]["memorization"][0] == pytest.approx(
        100 * first["original"]["memorization_ratio"])


def test_smoke_runs_under_torchrun_with_two_gloo_ranks(tmp_path):
    # torchrun --nproc_per_node=2: training is data-parallel (gloo on CPU); every rank
    # evaluates and writes the same result.
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "experiments.dit_pruning", "--profile", "smoke", "--out", str(tmp_path),
           "--force", "--no-plot"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "dit_pruning.json").read_text())
    assert len(result["results"]["runs"]) == result["config"]["seeds"]
