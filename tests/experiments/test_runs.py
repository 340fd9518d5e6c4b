"""The run machinery: overrides, atomic files, resumable units, result reuse."""

from __future__ import annotations

import json
import math
import os
import stat
import types

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from experiments.common.runs import (
    CorruptFileError,
    Units,
    apply_overrides,
    atomic_write_json,
    execute,
    save_checkpoint,
)

CONFIG = {"seed": 0, "lr": 0.1, "ns": [1, 2], "device": "cpu", "ema": True}


def test_overrides_parse_literals_and_keep_types():
    out = apply_overrides(CONFIG, ["seed=3", "lr=1", "ns=[5, 6, 7]", "device=cuda", "ema=False"])
    assert out == {"seed": 3, "lr": 1.0, "ns": [5, 6, 7], "device": "cuda", "ema": False}
    assert isinstance(out["lr"], float)
    assert CONFIG["seed"] == 0  # the profile itself is not modified


@pytest.mark.parametrize(
    ("item", "match"),
    [("nokey=1", "unknown key 'nokey'"), ("seed", "key=value"), ("seed=1.5", "seed"),
     ("ema=1", "ema"), ("ns=3", "ns"), ("lr=True", "lr")],
)
def test_bad_overrides_name_the_key(item, match):
    with pytest.raises(ValueError, match=match):
        apply_overrides(CONFIG, [item])


@settings(max_examples=25, deadline=None)
@given(st.recursive(st.floats(allow_nan=False, allow_infinity=False) | st.integers() | st.text(),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(), c, max_size=3),
                    max_leaves=10))
def test_atomic_json_round_trip(tmp_path_factory, obj):
    path = tmp_path_factory.mktemp("j") / "x.json"
    atomic_write_json(path, {"v": obj})
    assert json.loads(path.read_text()) == {"v": obj}
    assert [p.name for p in path.parent.iterdir()] == ["x.json"]  # no temporary left behind


@pytest.mark.parametrize("bad", [float("nan"), -math.inf, np.float32("nan"), np.float64("inf"),
                                 torch.tensor([0.0, math.nan])])
def test_non_finite_numbers_are_refused_naming_where(tmp_path, bad):
    """Also NumPy scalars (np.float32 is not a float) and tensors; the message gives the
    path of the number inside the result."""
    with pytest.raises(ValueError, match=r"non-finite .* at /v/w\[1\]"):
        atomic_write_json(tmp_path / "x.json", {"v": {"w": [1.0, bad]}})
    assert not (tmp_path / "x.json").exists()


def test_units_resume_after_interruption(tmp_path):
    path, calls = tmp_path / "u.partial.json", []

    def work(k):
        calls.append(k)
        if k == 2 and len(calls) == 3:
            raise KeyboardInterrupt  # killed during the third unit
        return {"k": k}

    units = Units(path, CONFIG)
    with pytest.raises(KeyboardInterrupt):
        for k in range(4):
            units.get(f"u{k}", lambda k=k: work(k))
    resumed = Units(path, CONFIG)
    assert sorted(resumed.done) == ["u0", "u1"]
    values = [resumed.get(f"u{k}", lambda k=k: work(k)) for k in range(4)]
    assert values == [{"k": k} for k in range(4)]
    assert calls == [0, 1, 2, 2, 3]  # finished units were not redone
    other = Units(path, {**CONFIG, "seed": 1})  # a different config starts afresh
    assert other.done == {}


def test_execute_reuses_a_finished_result_unless_forced(tmp_path):
    calls = []

    def compute(config, units):
        calls.append(config["seed"])
        return {"value": units.get("a", lambda: config["seed"] * 2)}

    fake = types.SimpleNamespace(
        NAME="fake", PROFILES={"smoke": {"seed": 1}}, compute=compute, plot=lambda result, stem: []
    )
    first = execute(fake, "smoke", out_dir=tmp_path)
    assert first["results"] == {"value": 2} and first["config"] == {"seed": 1}
    assert {"provenance", "wall_time_s", "seed"} <= set(first)
    execute(fake, "smoke", out_dir=tmp_path)
    assert calls == [1]
    execute(fake, "smoke", overrides=["seed=2"], out_dir=tmp_path)  # new config: recompute
    execute(fake, "smoke", overrides=["seed=2"], out_dir=tmp_path, force=True)
    assert calls == [1, 2, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fake.json"]  # partial file removed
    with pytest.raises(ValueError, match="profile"):
        execute(fake, "paper", out_dir=tmp_path)


def test_run_units_in_worker_processes_equals_in_order_and_resumes(tmp_path):
    """Two worker processes give the same values as one, every finished unit lands in the
    partial file as it finishes, and a stored unit is not recomputed (resume)."""
    import math

    from experiments.common.runs import run_units

    tasks = [(f"comb/{n}/{k}", math.comb, (n, k)) for n in range(4, 9) for k in (1, 2)]
    here = run_units(Units(None, CONFIG), tasks, workers=1)
    path = tmp_path / "x.partial.json"
    units = Units(path, CONFIG)
    units.put("comb/4/1", -1)  # a finished unit from an interrupted run
    there = run_units(units, tasks, workers=2)
    assert there == {**here, "comb/4/1": -1}
    stored = json.loads(path.read_text())["units"]
    assert stored == there


def test_run_units_stores_each_unit_while_others_still_run(tmp_path):
    """A unit is saved as soon as it finishes: the slow unit below waits for the partial
    file to appear (exit 3) and gives up after 10 s (exit 4). It then fails, and the unit
    that finished stays stored for the rerun."""
    import math
    import subprocess

    from experiments.common.runs import run_units

    path = tmp_path / "x.partial.json"
    wait_then_fail = ["sh", "-c", f"for i in $(seq 100); do [ -s {path} ] && exit 3; "
                                  "sleep 0.1; done; exit 4"]
    tasks = [("slow", subprocess.check_call, (wait_then_fail,)), ("ok", math.sqrt, (4.0,))]
    with pytest.raises(subprocess.CalledProcessError) as err:
        run_units(Units(path, CONFIG), tasks, workers=2)
    assert err.value.returncode == 3
    assert json.loads(path.read_text())["units"] == {"ok": 2.0}


def test_run_units_reports_a_failing_unit_and_refuses_bad_settings(tmp_path):
    import math

    from experiments.common.runs import run_units

    units = Units(tmp_path / "x.partial.json", CONFIG)
    tasks = [("ok", math.sqrt, (4.0,)), ("bad", math.sqrt, (-1.0,))]
    with pytest.raises(ValueError, match="math domain"):
        run_units(units, tasks, workers=2)
    with pytest.raises(ValueError, match="workers"):
        run_units(units, tasks, workers=0)
    with pytest.raises(ValueError, match="unique"):
        run_units(units, tasks + tasks[:1], workers=1)


def _fake_experiment(calls: list) -> types.SimpleNamespace:
    def compute(config, units):
        calls.append(config["seed"])
        return {"value": units.get("a", lambda: config["seed"] * 2)}

    return types.SimpleNamespace(NAME="fake", PROFILES={"smoke": {"seed": 1}}, compute=compute,
                                 plot=lambda result, stem: [])


def test_reuse_only_redraws_a_stored_result_and_never_computes(tmp_path):
    """What `python -m figures` does for the committed cifar_cpu result: a missing or
    stale (other config) result is an error naming the file, not a long recompute."""
    calls = []
    with pytest.raises(FileNotFoundError, match=r"fake\.json"):
        execute(_fake_experiment(calls), "smoke", out_dir=tmp_path, reuse_only=True)
    first = execute(_fake_experiment(calls), "smoke", out_dir=tmp_path)
    assert execute(_fake_experiment(calls), "smoke", out_dir=tmp_path, reuse_only=True) == first
    with pytest.raises(FileNotFoundError, match="--force"):
        execute(_fake_experiment(calls), "smoke", ["seed=2"], out_dir=tmp_path, reuse_only=True)
    assert calls == [1]


@pytest.mark.parametrize("content", [b"", b'{"name": "fake", "res', b"\xff\xfe garbage"])
def test_a_corrupt_result_is_refused_naming_it_and_moved_aside_by_force(tmp_path, content):
    calls, path = [], tmp_path / "fake.json"
    path.write_bytes(content)
    with pytest.raises(CorruptFileError, match=r"fake\.json.*--force"):
        execute(_fake_experiment(calls), "smoke", out_dir=tmp_path)
    assert calls == [] and path.read_bytes() == content  # nothing run, nothing lost
    result = execute(_fake_experiment(calls), "smoke", out_dir=tmp_path, force=True)
    assert calls == [1] and result["results"] == {"value": 2}
    assert (tmp_path / "fake.json.corrupt").read_bytes() == content  # kept for inspection
    assert json.loads(path.read_text())["results"] == {"value": 2}


@pytest.mark.parametrize("content", [b'{"config": {"seed": 1}, "units": {"a": ', b"[1, 2]"])
def test_a_corrupt_partial_file_is_refused_and_moved_aside_by_force(tmp_path, content):
    calls, partial = [], tmp_path / "fake.partial.json"
    partial.write_bytes(content)
    with pytest.raises(CorruptFileError, match=r"fake\.partial\.json.*--force"):
        execute(_fake_experiment(calls), "smoke", out_dir=tmp_path)
    assert calls == [] and partial.read_bytes() == content
    execute(_fake_experiment(calls), "smoke", out_dir=tmp_path, force=True)  # not blocked
    assert calls == [1] and not partial.exists()
    assert (tmp_path / "fake.partial.json.corrupt").read_bytes() == content


def test_a_partial_file_of_another_config_is_set_aside_not_lost(tmp_path):
    """Stated policy: resuming with a changed config starts afresh; the other config's
    finished units are moved to <name>.stale (.stale-2, ...), never overwritten."""
    path = tmp_path / "x.partial.json"
    Units(path, CONFIG).put("u0", 1)
    other = Units(path, {**CONFIG, "seed": 1})
    assert other.done == {}
    stale = json.loads((tmp_path / "x.partial.json.stale").read_text())
    assert stale == {"config": CONFIG, "units": {"u0": 1}}
    other.put("u0", 2)  # a second change of config keeps both earlier sets of units
    assert Units(path, {**CONFIG, "seed": 2}).done == {}
    assert json.loads((tmp_path / "x.partial.json.stale").read_text()) == stale
    second = json.loads((tmp_path / "x.partial.json.stale-2").read_text())
    assert second == {"config": {**CONFIG, "seed": 1}, "units": {"u0": 2}}


def test_written_files_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write_json(tmp_path / "a.json", {"v": 1})
        save_checkpoint(tmp_path / "a.pt", {"v": 1})
        reference = tmp_path / "plain"
        reference.write_text("x")  # what open() gives under this umask
    finally:
        os.umask(old)
    want = stat.S_IMODE(reference.stat().st_mode)
    assert want == 0o640
    for name in ("a.json", "a.pt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == want


def test_a_run_interrupted_after_validation_leaves_no_result(tmp_path):
    """A bad config fails before anything is written, even the partial file."""
    with pytest.raises(ValueError, match="config seed"):
        execute(_fake_experiment([]), "smoke", ["seed=-3"], out_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []
