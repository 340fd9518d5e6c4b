"""What a valid experiment config is: one rule per config key, checked once per run.

Every experiment's profile config (after ``--set`` overrides) goes through
``validate_config`` before any work starts, so that a bad value is refused with a message
naming the key and the accepted values, instead of failing deep inside torch or numpy, or
worse, running and writing a finished-looking result (``ns=[]``: an empty panel).

The rules are keyed by the config key's *name*, which means the same thing in every
experiment ("steps", "lr", "ns", "device", ...); an experiment may add or override rules
(module attribute ``CONFIG_RULES``) and check relations between keys (a function
``check_config(config)``). A key without a rule is a programming error, reported as such.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch

from theory._checks import check_int, check_real

__all__ = [
    "Rule",
    "Int",
    "Real",
    "Choice",
    "Flag",
    "Text",
    "OrNone",
    "Device",
    "ListOf",
    "RULES",
    "validate_config",
    "validate_experiment_config",
    "check_device",
]


class Rule:
    """A check of one config value: ``check(name, value)`` raises ValueError naming it."""

    def describe(self) -> str:
        raise NotImplementedError

    def check(self, name: str, value: Any) -> None:
        raise NotImplementedError

    def ok(self, value: Any) -> bool:
        try:
            self.check("value", value)
        except ValueError:
            return False
        return True


@dataclass(frozen=True)
class Int(Rule):
    """An integer (not a bool) in [low, high], a multiple of ``step``."""

    low: int = 0
    high: int | None = None
    step: int = 1

    def describe(self) -> str:
        top = "" if self.high is None else f" and <= {self.high}"
        step = f", a multiple of {self.step}" if self.step > 1 else ""
        return f"an integer >= {self.low}{top}{step}"

    def check(self, name: str, value: Any) -> None:
        check_int(value, name, self.low, self.high)
        if value % self.step:
            raise ValueError(f"{name} must be {self.describe()}, got {value!r}")


@dataclass(frozen=True)
class Real(Rule):
    """A finite real number in the interval from low to high; open ends where stated."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False

    def describe(self) -> str:
        left = "(" if self.low_open or self.low == -math.inf else "["
        right = ")" if self.high_open or self.high == math.inf else "]"
        return f"in {left}{self.low:g}, {self.high:g}{right}"

    def _inside(self, v: float) -> bool:
        above = v > self.low if self.low_open else v >= self.low
        return above and (v < self.high if self.high_open else v <= self.high)

    def check(self, name: str, value: Any) -> None:
        check_real(value, name, self.describe(), self._inside)


@dataclass(frozen=True)
class Choice(Rule):
    """One of a fixed set of values."""

    options: tuple

    def describe(self) -> str:
        return "one of " + ", ".join(repr(o) for o in self.options)

    def check(self, name: str, value: Any) -> None:
        if not (isinstance(value, str | int | float | type(None)) and value in self.options):
            raise ValueError(f"{name} must be {self.describe()}, got {value!r}")


@dataclass(frozen=True)
class Flag(Rule):
    """True or False."""

    def describe(self) -> str:
        return "True or False"

    def check(self, name: str, value: Any) -> None:
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be True or False, got {value!r}")


@dataclass(frozen=True)
class Text(Rule):
    """A non-empty string, or None when ``optional``."""

    optional: bool = False

    def describe(self) -> str:
        return "a non-empty string" + (" or None" if self.optional else "")

    def check(self, name: str, value: Any) -> None:
        if not ((value is None and self.optional) or (isinstance(value, str) and value)):
            raise ValueError(f"{name} must be {self.describe()}, got {value!r}")


@dataclass(frozen=True)
class OrNone(Rule):
    """None (the default behaviour, e.g. native image size) or a value passing ``rule``."""

    rule: Rule

    def describe(self) -> str:
        return f"None or {self.rule.describe()}"

    def check(self, name: str, value: Any) -> None:
        if value is not None:
            try:
                self.rule.check(name, value)
            except ValueError:
                raise ValueError(f"{name} must be {self.describe()}, got {value!r}") from None


def check_device(device: Any, name: str = "device") -> None:
    """Raise ValueError unless ``device`` is "auto", "cpu" or an available "cuda[:k]"/"mps"."""
    expected = f"{name} must be 'auto', 'cpu', 'cuda' or 'cuda:<k>', got {device!r}"
    if not isinstance(device, str):
        raise ValueError(expected)
    if device == "auto":
        return
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(expected) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{name}={device!r}, but CUDA is not available on this machine; "
                             "use 'auto' (CUDA when present) or 'cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{name}={device!r}, but this machine has "
                             f"{torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"{name}={device!r}, but MPS is not available on this machine")
    elif dev.type != "cpu":
        raise ValueError(expected)


@dataclass(frozen=True)
class Device(Rule):
    """"auto", "cpu", or a CUDA/MPS device that this machine has."""

    def describe(self) -> str:
        return "'auto', 'cpu', 'cuda' or 'cuda:<k>'"

    def check(self, name: str, value: Any) -> None:
        check_device(value, name)


@dataclass(frozen=True)
class ListOf(Rule):
    """A non-empty list (or tuple) whose every entry passes ``item``; optionally strictly
    increasing (a grid: no repeats, drawn in order) or only ``distinct`` (a set of
    choices, each run once)."""

    item: Rule
    increasing: bool = False
    distinct: bool = False

    def describe(self) -> str:
        order = (", strictly increasing" if self.increasing
                 else ", without repeats" if self.distinct else "")
        return f"a non-empty list, each entry {self.item.describe()}{order}"

    def check(self, name: str, value: Any) -> None:
        if not isinstance(value, list | tuple) or not value:
            raise ValueError(f"{name} must be {self.describe()}, got {value!r}")
        for i, v in enumerate(value):
            self.item.check(f"{name}[{i}]", v)
        if self.increasing and not all(a < b for a, b in zip(value, value[1:], strict=False)):
            raise ValueError(f"{name} must be strictly increasing, got {value!r}")
        if self.distinct and len(set(value)) < len(value):
            raise ValueError(f"{name} must not repeat an entry, got {value!r}")


_count = Int(1)  # a positive number of things (steps, samples, draws, widths, ...)
_size_n = Int(2)  # a training-set size: the 1/9 rule and pairwise distances need n >= 2
_time = Real(0.0, low_open=True)  # a diffusion time: the process lives on (0, T]
_rate = Real(0.0, low_open=True)  # a learning rate, a scale
_decay = Real(0.0)  # weight decay: >= 0
_ratio = Real(0.0, 1.0, high_open=True)  # a pruning ratio: a fraction of units removed

# Keys shared by the experiments, with their meaning fixed across them.
RULES: dict[str, Rule] = {
    # randomness, machine, caching
    "seed": Int(0), "seeds": _count, "sweep_seeds": _count, "workers": Int(1, 64),
    "device": Device(), "dtype": Choice(("float32", "float64")), "cache": Flag(),
    # data
    "dataset": Choice(("digits", "cifar10")), "data_root": Text(optional=True),
    "d": _count, "d_main": _count, "K": _count, "mean_std": Real(0.0, low_open=True),
    "n": _size_n, "n_fixed": _size_n, "lipschitz_n": _size_n,
    "ns": ListOf(_size_n, increasing=True), "d_ns": ListOf(_size_n, increasing=True),
    "width_ns": ListOf(_size_n, increasing=True), "wd_ns": ListOf(_size_n, increasing=True),
    "dims": ListOf(_count, increasing=True), "ds": ListOf(_count, increasing=True),
    "cov_scales": ListOf(Real(0.0, low_open=True), increasing=True),
    "real_images": Int(2), "image_size": OrNone(Int(1)),  # None: the dataset's own size
    # networks
    "width": _count, "widths": ListOf(_count, increasing=True), "depth": _count,
    "depths": ListOf(_count, increasing=True), "d_width": _count, "wd_width": _count,
    "max_width_deep": _count, "emb_dim": Int(2, step=2), "hidden_size": _count, "num_heads": _count,
    "patch_size": _count, "mlp_ratio": Real(0.0, low_open=True),
    "parametrization": Choice(("score", "denoiser", "eps")),
    # training
    "steps": _count, "doublings": _count, "batch": _count, "lr": _rate, "weight_decay": _decay,
    "weight_decays": ListOf(_decay, increasing=True), "finetune_steps": _count,
    "finetune_lr": _rate, "eval_draws": _count,
    # times
    "t0": _time, "T": _time, "t_min": _time, "t_max": _time, "t_main": _time,
    "t_interval": ListOf(_time, increasing=True), "t_points": Int(2),
    "t_fixed": ListOf(_time, increasing=True),
    "ratio_times": ListOf(_time, increasing=True), "num_times": Int(2),
    # Monte Carlo sizes
    # (an interval over training sets needs >= 2 of them)
    "num_draws": Int(2), "num_datasets": Int(2), "data_ll_draws": Int(2),
    "lipschitz_pairs": _count, "lipschitz_draws": _count, "num_nodes": Int(2),
    # the width-vs-n fit
    "eps": Real(0.0, low_open=True), "eps_grid": ListOf(Real(0.0, low_open=True), increasing=True),
    "flat_tol": Real(0.0, low_open=True), "fit_min_n": _size_n,
    "lrs": ListOf(_rate, increasing=True),
    "interval_depths": ListOf(_count, increasing=True), "dup_n": _size_n,
    "dup_copies": ListOf(_count, increasing=True), "dup_depth": _count,
    # pruning
    "eta": _ratio, "etas": ListOf(_ratio, increasing=True), "importance_batches": _count,
    "methods": ListOf(Choice(("mask_gradient", "magnitude", "random")), distinct=True),
    # sampling and measurement
    "samples": Int(2), "sampler_steps": _count, "features": Choice(("classifier", "inception")),
    "grid": _count, "scatter": Int(0),
}

# Pairs (low, high) of keys that must be ordered low < high wherever both are present.
_ORDERED = (("t0", "T"), ("t_min", "t_max"))


def validate_config(
    config: Mapping[str, Any], rules: Mapping[str, Rule] | None = None,
    check: Callable[[Mapping[str, Any]], None] | None = None,
) -> None:
    """Raise ValueError naming the first bad key of ``config`` (module docstring).

    rules: extra or overriding rules (an experiment's ``CONFIG_RULES``); check: a function
    of the whole config for relations between keys (an experiment's ``check_config``).
    """
    table = {**RULES, **(rules or {})}
    missing = sorted(set(config) - set(table))
    if missing:
        raise ValueError(f"config keys without a validation rule: {missing} "
                         "(add them to experiments/common/config.py RULES or CONFIG_RULES)")
    for key, value in config.items():
        table[key].check(f"config {key}", value)
    for low, high in _ORDERED:
        if low in config and high in config and not config[low] < config[high]:
            raise ValueError(f"config {low} must be < {high}, got {low}={config[low]!r}, "
                             f"{high}={config[high]!r}")
    if check is not None:
        check(config)


def validate_experiment_config(experiment: ModuleType, config: Mapping[str, Any]) -> None:
    """validate_config with the experiment module's own CONFIG_RULES and check_config."""
    validate_config(config, getattr(experiment, "CONFIG_RULES", None),
                    getattr(experiment, "check_config", None))
