"""The GPU campaign: the study's time model counts what the study runs, the plan fits its
budget, and the whole campaign runs end to end at its tiny size on CPU."""

from __future__ import annotations

import json

import pytest
import torch

from experiments import dit_pruning, gpu_campaign
from experiments.common.runs import apply_overrides
from experiments.gpu_campaign import Rates, dit_study_seconds


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


def test_the_tiny_campaign_runs_end_to_end_on_cpu(tmp_path):
    record = gpu_campaign.main(["--tiny", "--device", "cpu", "--budget-s", "120",
                                "--out", str(tmp_path)])
    stored = json.loads((tmp_path / "campaign.json").read_text())
    assert stored["parts"].keys() == {"benchmark", "dit_pruning"} == record["parts"].keys()
    assert stored["plan"]["total_s"] <= 120
    for part in stored["parts"].values():
        assert (tmp_path / part["file"]).exists() and part["wall_s"] > 0
    study = json.loads((tmp_path / "dit_pruning.json").read_text())
    assert [f"{k}={v}" for k, v in study["config"].items() if k in ("steps", "finetune_steps")
            ] == stored["plan"]["study_overrides"]
    assert stored["hardware"]["device_name"] == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the full plan needs a CUDA device")
def test_the_full_plan_fits_the_budget_on_cuda(capsys):
    gpu_campaign.main(["--plan"])
    assert "GPU campaign (full size) on cuda" in capsys.readouterr().out
