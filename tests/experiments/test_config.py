"""Experiment configs: every profile is valid, every bad ``--set`` is refused before any
work with an error naming the key, and every accepted override runs (fuzzed)."""

from __future__ import annotations

import importlib
import math
import re
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from experiments.common.config import RULES, validate_experiment_config
from experiments.common.runs import REPO_ROOT, apply_overrides, execute

EXPERIMENTS = ["loss_gap", "gmm_2d", "gmm_sweeps", "gmm_pruning", "width_vs_n", "dit_pruning"]
MODULES = {name: importlib.import_module(f"experiments.{name}") for name in EXPERIMENTS}
# Keys the fuzz leaves alone: cache=True would write into the repository's checkpoint
# cache, and more workers only start processes (both are checked by their rules).
UNFUZZED = {"cache", "workers"}


def _literal(value: object) -> str:
    """value written as --set expects it (a Python literal; nan/inf as float('...'))."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"float('{value}')"
    return repr(value)


def _fails_naming(key: str, err: Exception) -> bool:
    return re.search(rf"\b{re.escape(key)}\b", str(err)) is not None


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_profile_is_valid_and_every_key_has_a_rule(name):
    module = MODULES[name]
    for config in module.PROFILES.values():
        validate_experiment_config(module, config)
        assert set(config) <= set(RULES) | set(getattr(module, "CONFIG_RULES", {}))


# Values that are wrong for every key of every experiment: no count, time, rate, ratio or
# size is negative, non-finite or empty, and no name is the empty string.
CLEARLY_BAD = [math.nan, math.inf, -math.inf, -1, -2.5, [], [math.nan], [-1], [0.5, -3], ""]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
@pytest.mark.parametrize("name", EXPERIMENTS)
def test_a_bad_override_is_refused_naming_the_key_and_writes_nothing(name, tmp_path_factory,
                                                                     data):
    module = MODULES[name]
    key = data.draw(st.sampled_from(sorted(module.PROFILES["smoke"])), label="key")
    value = data.draw(st.sampled_from(CLEARLY_BAD), label="value")
    # A value that is not a Python literal ([nan], float('inf')) reaches --set as a bare
    # word: for a path (data_root) that is a strange but valid folder name.
    try:
        parsed = apply_overrides(module.PROFILES["smoke"], [f"{key}={_literal(value)}"])[key]
    except ValueError:  # refused for its type: the case under test
        parsed = value
    assume(not (isinstance(parsed, str) and not isinstance(value, str)))
    out = tmp_path_factory.mktemp("out")
    with pytest.raises(ValueError) as info:
        execute(module, "smoke", [f"{key}={_literal(value)}"], out_dir=out, plot=False)
    assert _fails_naming(key, info.value), info.value
    assert list(out.iterdir()) == []


# Overrides that passed the per-key rules and then failed deep inside a run (found by
# trying every value of ``_near`` for every key): each relation is now checked up front.
FOUND_BY_THE_FUZZ = [
    ("dit_pruning", "patch_size", 3),  # must divide the 8x8 digits
    ("dit_pruning", "real_images", 2),  # precision/recall's k = 3 needs 4 images
    ("dit_pruning", "samples", 3),
    ("dit_pruning", "eta", 0.0),  # Table 1 compares pruned models
    ("gmm_pruning", "methods", ["mask_gradient", "mask_gradient"]),  # each method runs once
    ("gmm_pruning", "width", 1),  # eta = 0.5 of 2 single-unit layers would empty one
    ("loss_gap", "num_datasets", 1),  # the t-interval over training sets needs 2
    ("width_vs_n", "widths", [16]),  # W* is interpolated between two grid widths
]


@pytest.mark.parametrize(("name", "key", "value"), FOUND_BY_THE_FUZZ)
def test_an_override_that_used_to_fail_inside_the_run_is_refused_first(name, key, value):
    module = MODULES[name]
    config = apply_overrides(module.PROFILES["smoke"], [f"{key}={_literal(value)}"])
    with pytest.raises(ValueError) as info:  # by the check that runs before any work
        validate_experiment_config(module, config)
    assert _fails_naming(key, info.value), info.value


def _near(value: object) -> st.SearchStrategy:
    """Values near a smoke value: some valid, some not (zero, halves, doubles, reversed or
    shortened lists, neighbouring integers)."""
    if isinstance(value, bool):
        return st.sampled_from([True, False])
    if isinstance(value, int):
        return st.sampled_from(sorted({0, 1, 2, max(value - 1, 0), value, value + 1}))
    if isinstance(value, float):
        return st.sampled_from([0.0, value / 2, value, 2 * value, 1.0])
    if isinstance(value, list):
        options = [value[:1], value[::-1], value[:-1], [value[0], value[0]], value]
        return st.sampled_from([o for o in options if o])
    if isinstance(value, str):
        return st.sampled_from(["cpu", "auto", "float32", "float64", "denoiser", "eps",
                                "digits", "classifier", value, "x"])
    return st.sampled_from([None, "relative/path"])


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
@pytest.mark.parametrize("name", EXPERIMENTS)
def test_an_accepted_override_runs_the_smoke_profile(name, tmp_path_factory, data):
    """The rules are not too lax: an override they accept runs to a finished result or
    stops with FloatingPointError (a valid learning rate can still diverge); a value that
    passes them and then fails inside torch or numpy fails this test. One they refuse
    names its key and writes nothing."""
    module = MODULES[name]
    smoke = module.PROFILES["smoke"]
    key = data.draw(st.sampled_from(sorted(set(smoke) - UNFUZZED)), label="key")
    value = data.draw(_near(smoke[key]), label="value")
    out = tmp_path_factory.mktemp("out")
    sets = [f"{key}={_literal(value)}"]
    try:
        validate_experiment_config(module, apply_overrides(smoke, sets))
    except ValueError as err:
        assert _fails_naming(key, err), err
        with pytest.raises(ValueError):
            execute(module, "smoke", sets, out_dir=out, plot=False)
        assert list(out.iterdir()) == []
        return
    try:
        result = execute(module, "smoke", sets, out_dir=out, plot=False)
    except FloatingPointError:  # a valid but too large step diverged: said so, nothing kept
        assert not (out / f"{module.NAME}.json").exists()
        return
    assert (out / f"{module.NAME}.json").exists() and result["config"][key] == value


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120)


def test_the_command_line_names_the_program_and_refuses_a_bad_set(tmp_path):
    usage = _cli("experiments.loss_gap", "--help")
    assert usage.returncode == 0 and "usage: python -m experiments.loss_gap" in usage.stdout
    bad = _cli("experiments.loss_gap", "--profile", "smoke", "--out", str(tmp_path),
               "--set", "ns=[]")
    assert bad.returncode == 2 and "config ns must be" in bad.stderr
    assert list(tmp_path.iterdir()) == []
