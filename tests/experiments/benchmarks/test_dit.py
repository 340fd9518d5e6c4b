"""The DiT benchmark runs end to end at its --quick size and counts the FLOPs it divides by.

No timing assertions: wall-clock numbers depend on the machine and its load. What is
pinned down: every throughput and FLOP count the benchmark reports is a finite positive
number, the JSON holds the same numbers, the FlopCounterMode count (with CPU attention
added) equals the closed form of a DiT forward pass and is linear in the batch, and bad
configurations are refused with a ValueError naming the argument.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from experiments.benchmarks import dit as bd


@pytest.fixture(scope="module")
def quick_result(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    path = tmp_path_factory.mktemp("bench") / "bench_dit.json"
    res = bd.main(["--quick", "--repeats", "1", "--threads", "1", "--json", str(path)])
    return res, json.loads(path.read_text())


def _finite_positive(x: object) -> bool:
    return isinstance(x, int | float) and math.isfinite(x) and x > 0


def test_quick_throughputs_and_flops_finite_positive(quick_result: tuple[dict, dict]) -> None:
    res, _ = quick_result
    for name, value in res["throughput"].items():
        assert _finite_positive(value), name
    for name in ("train_step", "forward", "forward_analytic", "train_step_per_image"):
        assert _finite_positive(res["flops"][name]), name
    # forward + backward: about three forward passes (the input needs no gradient)
    assert 2.5 < res["flops"]["train_step"] / res["flops"]["forward"] < 3.1
    for times in res["times_s"].values():
        assert len(times) == 1 and all(t > 0 for t in times)
    # images/s follow from the same median times
    cfg, tp = res["config"], res["throughput"]
    assert tp["train_images_per_s"] == pytest.approx(
        cfg["batch"] * cfg["steps"] / res["median_s"]["train"])
    assert tp["sampler_images_per_s"] == pytest.approx(
        tp["sample_image_evaluations_per_s"] / cfg["sampler_steps"])


def test_quick_on_cpu_reports_no_peak(quick_result: tuple[dict, dict]) -> None:
    res, _ = quick_result
    if res["environment"]["device"] != "cpu":
        pytest.skip("runs on CUDA here")
    assert res["peak"]["bf16_matmul_flop_per_s"] is None
    assert res["peak"]["note"] == "not measured (no GPU)"
    (target,) = res["targets"].values()
    assert target["value"] is None and not target["met"]
    assert "not measured (no GPU)" in bd.format_report(res)


def test_quick_json_matches_result(quick_result: tuple[dict, dict]) -> None:
    res, written = quick_result
    expected = bd.asdict(bd.BenchConfig(**bd.QUICK, repeats=1, threads=1))
    assert written["config"] == res["config"] == expected
    assert written["config"]["model"] == "quick" and written["config"]["image_size"] == 8
    assert written["throughput"] == pytest.approx(res["throughput"])
    assert written["flops"]["train_step"] == res["flops"]["train_step"]
    assert written["environment"]["torch"] == torch.__version__
    assert set(written) == set(res)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"model": "quick"},
        {"model": "smoke"},
        {"model": "DiT-N/4", "image_size": 16, "channels": 3},
    ],
)
def test_counted_forward_flops_equal_closed_form(kwargs: dict) -> None:
    cfg = bd.BenchConfig(batch=3, device="cpu", **kwargs)
    w = bd.make_workload(cfg)
    counted, per_op = bd.count_flops(w.forward)
    assert counted == bd.analytic_forward_flops(w.model.dit, cfg.batch)
    # attention is counted on CPU too (torch's counter alone misses the fused CPU kernel)
    assert any("attention" in op for op in per_op)


def test_flops_linear_in_batch() -> None:
    flops = {}
    for batch in (8, 16):
        w = bd.make_workload(bd.BenchConfig(batch=batch, device="cpu"))
        flops[batch] = (bd.count_flops(w.train_step)[0], bd.count_flops(w.forward)[0])
    for i in range(2):
        assert flops[16][i] / flops[8][i] == pytest.approx(2.0, rel=0.05)


def test_matmul_peak_finite_positive() -> None:
    assert _finite_positive(bd.matmul_peak(32, torch.device("cpu"), repeats=1, iters=2))


def test_defaults_resolve_from_model() -> None:
    quick = bd.BenchConfig()
    assert (quick.batch, quick.channels, quick.image_size) == (128, 1, 8)
    assert quick.sampler_steps == bd.PROFILES["quick"]["sampler_steps"]
    preset = bd.BenchConfig(model="DiT-S/2")
    assert (preset.batch, preset.channels, preset.image_size) == (256, 4, 32)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"model": "DiT-Q/2"}, "model"),
        ({"batch": 0}, "batch"),
        ({"steps": 0}, "steps"),
        ({"repeats": -1}, "repeats"),
        ({"precision": "float16"}, "precision"),
        ({"threads": -1}, "threads"),
        ({"model": "DiT-S/4", "image_size": 30}, "image_size"),
        ({"sample_passes": 300, "sampler_steps": 200}, "sample_passes"),
        ({"device": "gpu0"}, "device"),
        ({"attention": "fast"}, "attention"),
        ({"compile": "max-autotune"}, "compile"),
    ],
)
def test_bad_config_raises(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        bd.BenchConfig(**kwargs)


def test_bad_cli_model_is_a_usage_error_naming_it(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        bd.main(["--model", "nope", "--quick"])
    assert info.value.code == 2 and "model must be" in capsys.readouterr().err


def test_a_cuda_only_kernel_on_cpu_is_refused_naming_it(capsys: pytest.CaptureFixture) -> None:
    cfg = bd.BenchConfig(**bd.QUICK, attention="efficient", device="cpu")
    with pytest.raises(ValueError, match="attention='efficient' has a CUDA kernel only"):
        bd.make_workload(cfg)
    with pytest.raises(SystemExit) as info:
        bd.main(["--quick", "--attention", "cudnn", "--device", "cpu", "--no-json"])
    assert info.value.code == 2 and "attention='cudnn'" in capsys.readouterr().err


@pytest.mark.parametrize("variant", [{"attention": "flash"}, {"attention": "math"},
                                     {"compile": "eager"}])
def test_every_variant_times_the_same_computation(variant: dict) -> None:
    """A forced attention kernel or a compiled module computes the eager model's outputs and
    gradients from the same initialization (the compiled module shares its parameters)."""
    base = bd.make_workload(bd.BenchConfig(**bd.QUICK, device="cpu"))
    other = bd.make_workload(bd.BenchConfig(**bd.QUICK, device="cpu", **variant))
    torch.testing.assert_close(other.forward(), base.forward(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(other.train_step(), base.train_step(), rtol=1e-5, atol=1e-6)
    # the optimizer stepped the shared parameters: the next outputs agree as well
    torch.testing.assert_close(other.forward(), base.forward(), rtol=1e-4, atol=1e-4)


def test_a_compiled_run_counts_the_eager_models_flops_and_times_its_first_call() -> None:
    eager = bd.run_benchmark(bd.BenchConfig(**bd.QUICK, repeats=1, threads=1, device="cpu"))
    compiled = bd.run_benchmark(bd.BenchConfig(**bd.QUICK, repeats=1, threads=1, device="cpu",
                                               compile="eager"))
    assert compiled["flops"]["train_step"] == eager["flops"]["train_step"] > 0
    assert compiled["flops"]["forward"] == eager["flops"]["forward"] > 0
    assert set(compiled["first_call_s"]) == {"train_step", "forward"}
    assert all(_finite_positive(s) for s in compiled["first_call_s"].values())
    assert "compile=eager" in bd.format_report(compiled)
