"""The run machinery: overrides, atomic files, resumable units, result reuse."""

from __future__ import annotations

import json
import types

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from experiments.common.runs import Units, apply_overrides, atomic_write_json, execute

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


def test_non_finite_numbers_are_refused(tmp_path):
    with pytest.raises(ValueError, match="non-finite"):
        atomic_write_json(tmp_path / "x.json", {"v": float("nan")})
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
