"""The GPU campaign: each time model counts what its part runs (enumerated by hand here),
the plan fits its budget and takes the largest cut of an MLP study that fits its share, a
failing part is recorded while the others run, and the whole campaign runs end to end at its
tiny size on CPU."""

from __future__ import annotations

import json

import pytest
import torch

from experiments import dit_pruning, gmm_sweeps, gpu_campaign, width_vs_n
from experiments.common.runs import apply_overrides
from experiments.gpu_campaign import LADDERS, Rates, UnitCost, choose_cut, dit_study_seconds


def test_the_time_model_counts_every_step_and_pass_of_the_smoke_study():
    """Enumerated by hand from dit_pruning.run_seed for the smoke profile: 2 seeds, both
    in the sweep (eta = 0.25, 0.5), so per seed 20 training steps, 10 fine-tuning steps for
    the control and for 2 methods x 2 etas, 2 x 2 importance batches; 6 models sampled with
    10 steps, 32 samples in one batch of 32."""
    config = dit_pruning.PROFILES["smoke"]
    per_seed_steps = 20 + 10 * (1 + 2 * 2) + 2 * 2
    per_seed_passes = 6 * 1 * 10
    assert dit_study_seconds(config, Rates(1.0, 0.0, config["batch"])) == 2 * per_seed_steps
    assert dit_study_seconds(config, Rates(0.0, 1.0, 32)) == 2 * per_seed_passes
    # only the first sweep_seeds seeds run the sweep; samples in batches of the probe's
    one = apply_overrides(config, ["sweep_seeds=1", "samples=33"])
    assert dit_study_seconds(one, Rates(0.0, 1.0, 32)) == 6 * 2 * 10 + 4 * 2 * 10


def test_plan_only_probes_and_writes_nothing(tmp_path, capsys):
    assert gpu_campaign.main(["--plan", "--tiny", "--device", "cpu", "--out",
                              str(tmp_path)]) is None
    text = capsys.readouterr().out
    assert "probe (measured)" in text and "DiT study (estimated)" in text
    assert list(tmp_path.iterdir()) == []


def test_a_budget_too_small_is_a_usage_error_naming_it(capsys):
    # 1 ms: less than the probe itself takes on any machine
    with pytest.raises(SystemExit) as info:
        gpu_campaign.main(["--plan", "--tiny", "--device", "cpu", "--budget-s", "0.001"])
    assert info.value.code == 2 and "budget_s" in capsys.readouterr().err


def test_the_benchmark_time_model_counts_every_call_of_every_variant():
    """Tiny size: 3 variants, each (1 repeat + 3) calls of 2 steps at 1 s, and 10 s to
    compile the one compiled variant."""
    assert gpu_campaign.bench_seconds("tiny", Rates(1.0, 0.0, 16)) == 3 * 4 * 2 + 10
    assert gpu_campaign.bench_seconds("tiny", Rates(0.0, 1.0, 16)) == 3 * 4 * 2 + 10


def test_the_width_time_model_counts_every_sweep_of_the_smoke_profile():
    """Enumerated by hand: 2 targets x depth 1 x n in (4, 8) for the main panel and again
    for the interval panel, one duplicates sweep (m = 4): 9 sweeps x 2 training sets."""
    config = width_vs_n.PROFILES["smoke"]
    assert LADDERS["width_vs_n"].seconds(config, UnitCost(1.0, 0.0)) == 18
    assert LADDERS["width_vs_n"].seconds(config, UnitCost(0.0, 1.0)) == 18 * config["steps"]


def test_the_mixture_time_model_counts_every_network_and_reference_of_the_smoke_profile():
    """Enumerated by hand from the smoke grid: (d, n, width, wd) = 4 networks at d = 4 (n 8,
    16 x width 8, 16), 2 at d = 2 (width 16), 2 with weight decay 1: 8 x 2 seeds; references
    for (d, n) in {2, 4} x {8, 16}: 4 x 2 seeds, at 10 s each."""
    config = gmm_sweeps.PROFILES["smoke"]
    assert LADDERS["gmm_sweeps"].seconds(config, UnitCost(1.0, 0.0, 10.0)) == 16 + 8 * 10


def test_unit_cost_is_the_line_through_two_timings_and_an_upper_bound_when_noisy():
    cost = UnitCost.from_two((100, 300), (3.0, 7.0))
    assert (cost.fixed_s, cost.step_s) == pytest.approx((1.0, 0.02))
    noisy = UnitCost.from_two((100, 300), (7.0, 6.0))  # the longer run was faster
    assert noisy.fixed_s == 0 and noisy.step_s == pytest.approx(6.0 / 300)


@pytest.mark.parametrize("size", ["full", "tiny"])
@pytest.mark.parametrize("name", sorted(LADDERS))
def test_every_ladder_is_valid_and_gets_cheaper_down_its_cuts(name, size):
    ladder = LADDERS[name]
    cost = UnitCost(1.0, 0.01, 5.0)
    estimates = choose_cut(ladder, size, float("inf"), cost)["estimates_s"]
    assert list(estimates) == list(ladder.cuts[size])
    values = list(estimates.values())
    assert all(a > b for a, b in zip(values, values[1:], strict=False)), estimates


@pytest.mark.parametrize("name", sorted(LADDERS))
def test_choose_cut_takes_the_largest_cut_within_the_share(name):
    ladder, cost = LADDERS[name], UnitCost(1.0, 0.01, 5.0)
    estimates = list(choose_cut(ladder, "full", float("inf"), cost)["estimates_s"].items())
    (first, big), (second, smaller) = estimates[0], estimates[1]
    assert choose_cut(ladder, "full", big, cost)["cut"] == first
    chosen = choose_cut(ladder, "full", (big + smaller) / 2, cost)
    assert chosen["cut"] == second and chosen["estimated_s"] == smaller
    assert chosen["overrides"] == list(ladder.cuts["full"][second])
    nothing = choose_cut(ladder, "full", estimates[-1][1] / 2, cost)
    assert nothing["cut"] is None and nothing["estimated_s"] == 0


def test_an_unknown_part_is_a_usage_error_naming_it(capsys):
    with pytest.raises(SystemExit) as info:
        gpu_campaign.main(["--plan", "--tiny", "--device", "cpu", "--parts", "benchmark,fid"])
    assert info.value.code == 2 and "--parts must name" in capsys.readouterr().err


def test_a_failing_part_is_recorded_and_the_next_part_still_runs(tmp_path, monkeypatch):
    real = gpu_campaign.execute

    def execute(module, *args, **kwargs):
        if module is width_vs_n:
            raise RuntimeError("out of memory (simulated)")
        return real(module, *args, **kwargs)

    monkeypatch.setattr(gpu_campaign, "execute", execute)
    with pytest.raises(SystemExit) as info:
        gpu_campaign.main(["--tiny", "--device", "cpu", "--parts", "gmm_sweeps,width_vs_n",
                           "--out", str(tmp_path)])
    assert info.value.code == 1
    stored = json.loads((tmp_path / "campaign.json").read_text())
    assert list(stored["parts"]) == ["width_vs_n", "gmm_sweeps"]  # in PARTS' order
    assert "out of memory (simulated)" in stored["parts"]["width_vs_n"]["error"]
    assert (tmp_path / stored["parts"]["gmm_sweeps"]["file"]).exists()
    assert not (tmp_path / "bench_dit.json").exists()


def test_the_tiny_campaign_runs_end_to_end_on_cpu(tmp_path):
    record = gpu_campaign.main(["--tiny", "--device", "cpu", "--budget-s", "240",
                                "--out", str(tmp_path)])
    stored = json.loads((tmp_path / "campaign.json").read_text())
    assert list(stored["parts"]) == list(gpu_campaign.PARTS) == list(record["parts"])
    assert stored["plan"]["total_s"] <= 240
    for name, part in stored["parts"].items():
        assert "error" not in part and part["wall_s"] > 0, name
        if name != "benchmark":
            assert (tmp_path / part["file"]).exists()
    variants = stored["parts"]["benchmark"]["variants"]
    assert set(variants) == set(gpu_campaign.SIZES["tiny"]["variants"])
    for variant in variants.values():
        bench = json.loads((tmp_path / variant["file"]).read_text())
        assert bench["first_call_s"] == variant["first_call_s"]
    assert json.loads((tmp_path / variants["compiled"]["file"]).read_text())["config"][
        "compile"] == "eager"
    study = json.loads((tmp_path / "dit_pruning.json").read_text())
    assert [f"{k}={v}" for k, v in study["config"].items() if k in ("steps", "finetune_steps")
            ] == stored["plan"]["study_overrides"]
    for name in LADDERS:  # each MLP study ran the cut the plan chose
        cut = stored["plan"]["ladders"][name]
        ran = json.loads((tmp_path / f"{name}.json").read_text())["config"]
        assert ran == apply_overrides(LADDERS[name].config("tiny", cut["overrides"]),
                                      ["device='cpu'"])
    assert stored["hardware"]["device_name"] == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the full plan needs a CUDA device")
def test_the_full_plan_fits_the_budget_on_cuda(capsys):
    gpu_campaign.main(["--plan"])
    assert "GPU campaign (full size) on cuda" in capsys.readouterr().out


def test_a_study_no_cut_of_which_fits_is_skipped_and_says_so(tmp_path, monkeypatch, capsys):
    """An MLP study whose smallest cut needs more than its share is recorded as skipped,
    with every cut's estimate, and runs nothing."""
    ladder = LADDERS["gmm_sweeps"]
    slow = gpu_campaign.Ladder(ladder.module, ladder.profiles, ladder.cuts,
                               lambda config, device, steps: UnitCost(1e6, 0.0),
                               ladder.seconds, ladder.probe_steps)
    monkeypatch.setitem(LADDERS, "gmm_sweeps", slow)
    record = gpu_campaign.main(["--tiny", "--device", "cpu", "--parts", "gmm_sweeps",
                                "--out", str(tmp_path)])
    part = record["parts"]["gmm_sweeps"]
    assert part["skipped"] == "no cut fits its share" and part["cut"] is None
    assert min(part["estimates_s"].values()) > part["share_s"]
    assert not (tmp_path / "gmm_sweeps.json").exists()
    assert "skipped: no cut fits" in capsys.readouterr().out
