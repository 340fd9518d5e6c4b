"""Input checks shared by the theory modules (and the experiments): clear errors naming
the argument and what was expected."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


def check_int(value: object, name: str, low: int = 0, high: int | None = None) -> int:
    """Return value if it is an integer (not a bool) in [low, high]; raise otherwise."""
    top = "" if high is None else f" and <= {high}"
    if (isinstance(value, bool) or not isinstance(value, int) or value < low
            or (high is not None and value > high)):
        raise ValueError(f"{name} must be an integer >= {low}{top}, got {value!r}")
    return value


def check_real(
    value: object, name: str, what: str = "", ok: Callable[[float], bool] = lambda v: True,
) -> float:
    """Return float(value) if it is a finite real number with ok(value); raise otherwise.

    what: the accepted range in words for the message, e.g. "> 0".
    """
    if (isinstance(value, bool) or not isinstance(value, int | float)
            or not math.isfinite(value) or not ok(value)):
        raise ValueError(f"{name} must be a finite number {what}".rstrip() + f", got {value!r}")
    return float(value)


def check_finite(x: torch.Tensor, name: str) -> torch.Tensor:
    """Return x if every entry is finite; ValueError naming it otherwise (any shape)."""
    # amax/amin propagate NaN and keep inf, and need no temporary of x's size.
    if x.numel() and not (torch.isfinite(x.amax()) and torch.isfinite(x.amin())):
        raise ValueError(f"{name} must be finite, found NaN or inf")
    return x


def check_matrix(
    x: object,
    name: str,
    *,
    cols: int | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | None = None,
    allow_empty: bool = False,
) -> torch.Tensor:
    """Return x if it is a finite floating tensor of shape (rows, cols); raise otherwise."""
    if not isinstance(x, torch.Tensor):
        kind = type(x).__name__
        raise TypeError(f"{name} must be a torch.Tensor of shape (batch, d), got {kind}")
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape (batch, d), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor (float32 or float64), got {x.dtype}")
    if cols is not None and x.shape[1] != cols:
        raise ValueError(f"{name} must have d = {cols} columns, got shape {tuple(x.shape)}")
    if not allow_empty and x.shape[0] == 0:
        raise ValueError(f"{name} must hold at least one row, got shape {tuple(x.shape)}")
    if dtype is not None and x.dtype != dtype:
        raise TypeError(f"{name} has dtype {x.dtype}, expected {dtype} (convert with .to())")
    if device is not None and x.device != device:
        raise ValueError(f"{name} is on {x.device}, expected {device}")
    return check_finite(x, name)
