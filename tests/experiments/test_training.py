"""The DSM training loop: resumable with identical numbers, atomic checkpoints, the loss."""

from __future__ import annotations

import io
from dataclasses import replace

import pytest
import torch

from experiments.common import training
from experiments.common.runs import CorruptFileError, load_checkpoint
from experiments.common.training import TrainConfig, dsm_loss, sample_times, train
from theory.empirical import EmpiricalScore
from theory.networks import ScoreMLP

CFG = TrainConfig(steps=12, batch=16, lr=1e-2, checkpoint_every=5, ema=0.9, seed=3)


def _model() -> ScoreMLP:
    torch.manual_seed(0)
    return ScoreMLP(3, 16, 2)


def _data() -> torch.Tensor:
    return torch.randn(40, 3, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path, schedule):
    cfg = replace(CFG, lr_schedule=schedule)
    straight, ema_straight, losses = train(_model(), _data(), cfg, progress=False)
    ckpt = tmp_path / "run.pt"
    train(_model(), _data(), cfg, ckpt, progress=False, stop_after=7)  # "killed" after 7 steps
    resumed, ema_resumed, losses_resumed = train(_model(), _data(), cfg, ckpt, progress=False)
    assert losses_resumed == losses
    for a, b in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(ema_straight.parameters(), ema_resumed.parameters(), strict=True):
        assert torch.equal(a, b)


def test_no_partial_checkpoint_when_writing_fails(tmp_path, monkeypatch):
    ckpt = tmp_path / "run.pt"

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt  # killed while serializing

    monkeypatch.setattr(training.torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        train(_model(), _data(), CFG, ckpt, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_dsm_loss_of_the_exact_empirical_score_is_near_zero_at_small_t():
    """The empirical score minimizes the DSM loss on its own training set (§3): at small
    t its weighted loss is far below that of a zero score (which is E||eps||^2 = d)."""
    data = 3 * _data()
    emp = EmpiricalScore(data)
    g = torch.Generator().manual_seed(2)
    idx = torch.randint(40, (256,), generator=g)
    t = torch.full((256,), 1e-3)
    eps = torch.randn(256, 3, generator=g)
    assert dsm_loss(emp, data[idx], t, eps) < 1e-3
    zero = dsm_loss(lambda x, t: torch.zeros_like(x), data[idx], t, eps)
    assert zero == pytest.approx(eps.square().sum(1).mean())


@pytest.mark.parametrize("how", ["uniform", "log_uniform", "beta"])
def test_times_lie_in_range(how):
    cfg = TrainConfig(time_sampling=how, t0=1e-3, T=2.0)
    t = sample_times(cfg, 2000, torch.Generator().manual_seed(0))
    assert t.min() >= 1e-3 and t.max() <= 2.0


def test_bad_config_and_data():
    with pytest.raises(ValueError, match="time_sampling"):
        TrainConfig(time_sampling="cosine")
    with pytest.raises(ValueError, match="t0"):
        TrainConfig(t0=0.0)
    with pytest.raises(ValueError, match="ema"):
        TrainConfig(ema=1.5)
    with pytest.raises(ValueError, match="data"):
        train(_model(), torch.tensor([[float("nan")] * 3]), CFG, progress=False)


def test_cosine_learning_rate_decays_from_lr_to_zero():
    cfg = TrainConfig(steps=100, lr=3e-3, lr_schedule="cosine")
    rates = [training.learning_rate(cfg, k) for k in range(cfg.steps + 1)]
    assert rates[0] == 3e-3 and rates[-1] == pytest.approx(0, abs=1e-18)
    assert all(a >= b for a, b in zip(rates, rates[1:], strict=False))
    assert training.learning_rate(TrainConfig(lr=3e-3), 50) == 3e-3
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainConfig(lr_schedule="linear")


def test_ddp_two_gloo_processes_match_one_process(tmp_path):
    # Two CPU ranks (gloo) on slices of the same global batch: identical weights on both
    # ranks, equal to one process training on the whole batch (up to summation order).
    import os
    import subprocess
    import sys
    from pathlib import Path

    worker = Path(__file__).with_name("ddp_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(worker), str(tmp_path)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert r0["world"] == r1["world"] == 2
    for key in ("model", "ema"):
        for name, value in r0[key].items():
            assert torch.equal(value, r1[key][name]), name
    assert r0["losses"] == r1["losses"]

    import importlib.util

    spec = importlib.util.spec_from_file_location("ddp_worker", worker)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    model, data = mod.problem()
    single, ema, losses = train(model, data, mod.CONFIG, device="cpu", progress=False)
    for name, value in single.state_dict().items():
        assert torch.allclose(value, r0["model"][name], rtol=1e-10, atol=1e-12), name
    assert losses == pytest.approx(r0["losses"], rel=1e-10)


def test_ema_is_the_exponential_moving_average_of_the_iterates():
    """EMA with decay beta: e_0 = p_0 and e_k = beta e_{k-1} + (1 - beta) p_k after step k.
    The iterates p_1..p_3 come from runs of 1, 2 and 3 steps (a constant learning rate makes
    the first k steps of every run identical); beta = 0.7 is far from 1 - beta."""
    cfg = replace(CFG, steps=3, ema=0.7)
    start = [p.detach().clone() for p in _model().parameters()]
    iterates = [
        [p.detach().clone() for p in train(_model(), _data(), replace(cfg, steps=k),
                                           progress=False)[0].parameters()]
        for k in (1, 2, 3)
    ]
    _, ema, _ = train(_model(), _data(), cfg, progress=False)
    expected = start
    for p_k in iterates:
        expected = [0.7 * e + 0.3 * p for e, p in zip(expected, p_k, strict=True)]
    for e, want in zip(ema.parameters(), expected, strict=True):
        torch.testing.assert_close(e, want, rtol=1e-6, atol=1e-7)
    for e, p in zip(ema.parameters(), iterates[-1], strict=True):  # the EMA lags the model
        assert not torch.allclose(e, p)


def test_checkpoint_key_changes_with_data_model_and_config(tmp_path):
    """The checkpoint file is keyed by everything that fixes the numbers: one changed data
    value, one changed starting weight or one changed config field gives another file; fresh
    copies of the same inputs give the same file."""
    key = training.checkpoint_path(tmp_path, _model(), _data(), CFG)
    assert key == training.checkpoint_path(tmp_path, _model(), _data(), CFG)
    assert key.parent == tmp_path and key.suffix == ".pt"
    other_data = _data()
    other_data[7, 1] += 1e-3
    other_model = _model()
    with torch.no_grad():
        other_model.out.bias[0] += 1e-3
    others = [
        training.checkpoint_path(tmp_path, _model(), other_data, CFG),
        training.checkpoint_path(tmp_path, other_model, _data(), CFG),
        training.checkpoint_path(tmp_path, _model(), _data(), replace(CFG, lr=2e-2)),
    ]
    assert len({key, *others}) == 4


def test_checkpoint_of_another_config_is_not_resumed(tmp_path):
    """A checkpoint written by a run with another config (here another learning rate) is
    ignored: the run starts afresh and equals an uninterrupted run of its own config."""
    ckpt = tmp_path / "run.pt"
    train(_model(), _data(), CFG, ckpt, progress=False, stop_after=7)
    other = replace(CFG, lr=3e-3)
    resumed, _, losses = train(_model(), _data(), other, ckpt, progress=False)
    straight, _, losses_straight = train(_model(), _data(), other, progress=False)
    assert losses == losses_straight and len(losses) == other.steps
    for a, b in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)


def test_a_checkpoint_with_one_flipped_byte_inside_a_tensor_is_refused(tmp_path):
    """torch.load alone reads the damaged file without complaint (different weights); the
    digest stored with the checkpoint refuses it, naming the file and how to recover."""
    ckpt = tmp_path / "run.pt"
    model, _, _ = train(_model(), _data(), CFG, ckpt, progress=False, stop_after=7)
    raw = bytearray(ckpt.read_bytes())
    weight = model.hidden[0].weight.detach().numpy().tobytes()
    at = bytes(raw).find(weight)
    assert at > 0  # the tensor's bytes are stored verbatim
    raw[at + 5] ^= 0x10
    ckpt.write_bytes(bytes(raw))
    payload = bytes(raw).partition(b"\n")[2]
    damaged = torch.load(io.BytesIO(payload), weights_only=False)["model"]["hidden.0.weight"]
    assert not torch.equal(damaged, model.hidden[0].weight)  # silent without the digest
    with pytest.raises(CorruptFileError, match=r"run\.pt.*digest.*delete it"):
        train(_model(), _data(), CFG, ckpt, progress=False)


@pytest.mark.parametrize("content", [b"", b"half a checkpoint", b"PK\x03\x04 not a zip"])
def test_a_truncated_or_foreign_checkpoint_is_refused_naming_it(tmp_path, content):
    ckpt = tmp_path / "run.pt"
    ckpt.write_bytes(content)
    with pytest.raises(CorruptFileError, match=r"run\.pt"):
        train(_model(), _data(), CFG, ckpt, progress=False)


def test_a_checkpoint_of_another_config_is_not_resumed(tmp_path):
    """Stated policy: a checkpoint written by another config is ignored and overwritten (the
    content-keyed cache never hands one out, but a user-chosen path may)."""
    ckpt = tmp_path / "run.pt"
    train(_model(), _data(), replace(CFG, seed=9), ckpt, progress=False)
    _, _, fresh = train(_model(), _data(), CFG, progress=False)
    _, _, reused = train(_model(), _data(), CFG, ckpt, progress=False)
    assert reused == fresh
    assert load_checkpoint(ckpt)["config"]["seed"] == CFG.seed


def test_a_diverging_run_stops_before_a_nan_reaches_a_checkpoint(tmp_path):
    ckpt = tmp_path / "run.pt"
    data = _data()
    data[0, 0] = 1e30  # finite data, but its squared loss overflows float32
    with pytest.raises(FloatingPointError, match="lr"):
        train(_model(), data, replace(CFG, grad_clip=None), ckpt, progress=False)
    assert not ckpt.exists()
