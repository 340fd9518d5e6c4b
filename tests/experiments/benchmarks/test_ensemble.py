"""The ensemble benchmark runs at its --quick size and times the same computation twice.

No timing assertions: wall-clock numbers depend on the machine and its load. What is
pinned down: the times and ratios are finite and positive and the JSON holds them; the
losses the batched arm (one MLPEnsemble) reports equal, member by member, those of an
independent loop written here: each member built as a plain ScoreMLP under the seed that
MLPEnsemble documents, trained by its own AdamW on the benchmark's batches.
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from experiments.benchmarks import ensemble as be
from theory.networks import ScoreMLP


@pytest.fixture(scope="module")
def quick_result(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    path = tmp_path_factory.mktemp("bench") / "bench_ensemble.json"
    res = be.main(["--quick", "--repeats", "1", "--threads", "1", "--json", str(path)])
    return res, json.loads(path.read_text())


def _loop_losses(cfg: be.BenchConfig) -> torch.Tensor:
    """Member losses (steps, G) of separately trained ScoreMLPs, written independently of
    the benchmark's arms: member g is built under torch.manual_seed(seed * 1_000_003 + g),
    as MLPEnsemble builds its members."""
    data = be.make_batches(cfg)
    per_member = []
    with torch.random.fork_rng(devices=[]):
        for g, width in enumerate(cfg.members):
            torch.manual_seed(cfg.seed * 1_000_003 + g)
            net = ScoreMLP(cfg.d, width, cfg.depth, parametrization="score")
            opt = torch.optim.AdamW(net.parameters(), lr=be.LR)
            losses = []
            for x, t, y in data:
                loss = ((net.raw(x, t) - y) ** 2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(loss.item())
            per_member.append(losses)
    return torch.tensor(per_member).T


def test_quick_times_and_ratios_finite_positive(quick_result: tuple[dict, dict]) -> None:
    res, _ = quick_result
    for arm in ("batched", "sequential"):
        assert len(res["times_s"][arm]) == 1
        assert math.isfinite(res["median_s"][arm]) and res["median_s"][arm] > 0
    ratios = res["ratios"]
    assert all(math.isfinite(v) and v > 0 for v in ratios.values())
    assert ratios["sequential_over_batched"] * ratios["batched_over_sequential"] == (
        pytest.approx(1.0))
    assert res["ratios"]["sequential_over_batched"] == pytest.approx(
        res["median_s"]["sequential"] / res["median_s"]["batched"])


def test_quick_peak_shares_and_bound_agree_with_the_times(quick_result: tuple[dict, dict]
                                                          ) -> None:
    """The bound is the ratio the batched arm would reach at the peak: with the batched
    arm's share s_b of the peak, bound x s_b is the measured ratio, and each share is the
    model FLOPs (counted by hand from the member widths) over time x peak."""
    res, _ = quick_result
    pk, cfg = res["peak"], res["config"]
    assert math.isfinite(pk["float32_matmul_flop_per_s"]) and pk["float32_matmul_flop_per_s"] > 0
    assert pk["ratio_bound"] * pk["share"]["batched"] == pytest.approx(
        res["ratios"]["sequential_over_batched"])
    d_in = cfg["d"] + be.EMB_DIM  # one hidden layer: d_in x w + w, then w x d + d
    flop = sum(6 * cfg["batch"] * cfg["steps"] * (d_in * w + w + w * cfg["d"] + cfg["d"])
               for w in res["members"]["widths"])
    for arm in ("batched", "sequential"):
        assert pk["share"][arm] == pytest.approx(
            flop / (res["median_s"][arm] * pk["float32_matmul_flop_per_s"]))


def test_quick_batched_losses_equal_an_independent_loop(
    quick_result: tuple[dict, dict],
) -> None:
    res, _ = quick_result
    cfg = be.BenchConfig(**{**res["config"], "widths": tuple(res["config"]["widths"])})
    loop = _loop_losses(cfg)
    assert loop.shape == (cfg.steps, 6)
    # first step: same weights, same batch, so the same loss up to float32 rounding
    first = torch.tensor(res["losses"]["batched_first"])
    assert torch.allclose(first, loop[0], rtol=1e-5, atol=0)
    # after the last step: the same AdamW trajectory, rounding grown over a few steps
    last = torch.tensor(res["losses"]["batched_last"])
    assert torch.allclose(last, loop[-1], rtol=1e-4, atol=0)
    assert not torch.allclose(loop[-1], loop[0], rtol=1e-3)  # training moved the losses
    # the benchmark's own loop arm is the same computation as the loop here
    seq = torch.tensor(res["losses"]["sequential_last"])
    assert torch.allclose(seq, loop[-1], rtol=1e-5, atol=0)
    assert res["agreement"]["agree"]
    assert res["agreement"]["max_difference"] <= be.AGREEMENT_TOL


def test_quick_json_matches_result(quick_result: tuple[dict, dict]) -> None:
    res, written = quick_result
    expected = be.asdict(be.BenchConfig(**be.QUICK, repeats=1, threads=1))
    assert written["config"] == {**expected, "widths": list(expected["widths"])}
    assert set(written) == set(res)
    assert written["ratios"] == pytest.approx(res["ratios"])
    assert written["losses"] == res["losses"]
    assert written["environment"]["torch"] == torch.__version__
    assert "commit" in written["environment"]
    assert set(written["targets"]) == set(res["targets"])
    assert "ratio" in be.format_report(res)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"widths": ()}, "widths"),
        ({"widths": (4, 0)}, "widths"),
        ({"steps": 0}, "steps"),
        ({"repeats": 0}, "repeats"),
        ({"adamw": "sgd"}, "adamw"),
        ({"threads": -1}, "threads"),
    ],
)
def test_bad_config_raises(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        be.BenchConfig(**kwargs)


def test_a_batched_arm_that_computes_something_else_is_caught(monkeypatch) -> None:
    """One output bias of one member moved by 1e-6 in the batched arm: a difference float32
    rounding could hide, which the float64 replay's verdict flags."""
    real = be.train_batched

    def perturbed(members, data, adamw="default"):
        members = [copy.deepcopy(m) for m in members]
        with torch.no_grad():
            members[-1].out.bias.add_(1e-6)
        return real(members, data, adamw)

    monkeypatch.setattr(be, "train_batched", perturbed)
    res = be.run_benchmark(be.BenchConfig(**be.QUICK, repeats=1, threads=1))
    assert not res["agreement"]["agree"]
    assert res["agreement"]["max_difference"] > 100 * be.AGREEMENT_TOL
    # a float32 tolerance of 1e-4 (the drift of a wide depth-2 sweep) would have let it pass
    assert res["agreement"]["float32_last_step"] < 1e-4
