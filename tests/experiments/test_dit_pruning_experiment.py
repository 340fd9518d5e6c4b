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
        assert 0 <= rep["precision"] <= 1 and 0 <= rep["recall"] <= 1


def test_fig4_nearest_training_images_are_the_nearest_by_brute_force(smoke):
    """Fig. 4 pairs each sample with its nearest training image: recomputed here with
    plain pixel distances to the seed's training images."""
    import torch

    from experiments.common.data import load_dataset

    _, result = smoke
    cfg, first = result["config"], result["results"]["runs"][0]
    images, _ = load_dataset(cfg["dataset"], "train", cfg["data_root"])
    train = images[first["train_indices"]].flatten(1).double()
    for key in ("original", f"random/eta={cfg['eta']}"):
        grid = torch.tensor(first[key]["grid"], dtype=torch.float64).flatten(1)
        assert len(grid) == cfg["grid"]
        nearest = torch.cdist(grid, train).argmin(1)
        assert nearest.tolist() == first[key]["grid_nearest"]


def test_table1_and_paired_differences_recomputed_from_the_seeds(smoke):
    """Table 1's mean +- std and the paired table, recomputed from the per-seed reports
    with numpy and scipy's paired t-test (ttest_rel)."""
    import numpy as np
    from scipy import stats as sps

    _, result = smoke
    cfg, r = result["config"], result["results"]
    runs, eta = r["runs"], cfg["eta"]
    mem = {row: np.array([100 * x[key]["memorization_ratio"] for x in runs])
           for row, key in (("original", "original"), ("finetuned", "finetuned"),
                            ("importance", f"importance/eta={eta}"),
                            ("random", f"random/eta={eta}"))}
    fd = {"importance": np.array([x[f"importance/eta={eta}"]["fd"] for x in runs]),
          "original": np.array([x["original"]["fd"] for x in runs])}
    for row, v in mem.items():
        mean, std = r["table1"][row]["memorization"]
        assert mean == pytest.approx(v.mean()) and std == pytest.approx(v.std(ddof=1))
    e = r["paired"]["importance-original"]["FD"]
    ci = sps.ttest_rel(fd["importance"], fd["original"]).confidence_interval(0.95)
    assert e["value"] == pytest.approx(np.mean(fd["importance"] - fd["original"]))
    assert (e["low"], e["high"]) == pytest.approx((ci.low, ci.high))
    diffs = mem["random"] - mem["finetuned"]
    assert r["paired"]["random-finetuned"]["memorization"]["diffs"] == pytest.approx(diffs)
    table = dit_pruning.table_markdown(result)
    assert "importance − original" in table and "paired by seed" in table


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


def test_compare_rerun_counts_values_inside_and_kept_signs():
    """Three paired cells: one resolved and kept, one resolved and flipped, one unresolved
    that the rerun leaves; counted by hand."""
    def cells(values, lows, highs):
        return {"results": {"paired": {"a-b": {
            c: {"value": v, "low": lo, "high": hi}
            for c, v, lo, hi in zip("xyz", values, lows, highs, strict=True)}}}}

    first = cells([2.0, -3.0, 0.5], [1.0, -5.0, -1.0], [3.0, -1.0, 2.0])
    rerun = cells([2.5, 0.4, 4.0], [0, 0, 0], [0, 0, 0])
    assert dit_pruning.compare_rerun(first, rerun) == {
        "inside": 1, "total": 3, "resolved": 2, "same_sign": 1}


def test_the_cifar_cpu_recipe_runs_on_pooled_images(tmp_path):
    """The cifar_cpu profile at a tiny size on random 32 x 32 RGB images (no CIFAR copy
    needed): the DiT and the memorization test see 16 x 16 pooled images, the CIFAR feature
    net their nearest upsampling; Table 1 comes with paired intervals and the table names
    the pooled size."""
    import torch

    from experiments.common.data import save_subset
    from experiments.common.runs import execute

    g = torch.Generator().manual_seed(0)
    save_subset(tmp_path / "cifar10" / "train.npz",
                torch.rand((40, 3, 32, 32), generator=g) * 2 - 1, torch.arange(40) % 10)
    sets = [f"data_root={str(tmp_path)!r}", "n=8", "steps=6", "finetune_steps=3",
            "samples=8", "sampler_steps=3", "real_images=16", "importance_batches=1",
            "seeds=2", "workers=1", "cache=False", "etas=[0.0, 0.2]", "grid=2"]
    out = tmp_path / "out"
    result = execute(dit_pruning, "cifar_cpu", sets, out_dir=out)
    first = result["results"]["runs"][0]
    assert torch.tensor(first["original"]["grid"]).shape == (2, 3, 16, 16)
    e = result["results"]["paired"]["importance-original"]["memorization"]
    assert e["n"] == 2 and e["low"] <= e["value"] <= e["high"]
    assert "cifar10 at 16 × 16 (pooled)" in (out / "dit_pruning_table1.md").read_text()
    assert (out / "dit_pruning_fig4.png").stat().st_size > 5_000


def test_feature_input_undoes_nothing_the_pooling_kept():
    """Nearest upsampling for the feature net, then pooling again, gives back the pooled
    images exactly: the features see the DiT's images, block for block."""
    import torch

    from experiments.common.data import average_pool

    x = torch.rand((3, 3, 32, 32), generator=torch.Generator().manual_seed(1)) * 2 - 1
    config = {**dit_pruning.PROFILES["cifar_cpu"]}
    pooled = average_pool(x, config["image_size"])
    up = dit_pruning.feature_input(config, pooled)
    assert up.shape == x.shape and torch.equal(average_pool(up, config["image_size"]), pooled)
