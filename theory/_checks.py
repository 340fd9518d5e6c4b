"""Input checks shared by the theory modules: clear errors naming the argument."""

from __future__ import annotations

import torch


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
    # amax/amin propagate NaN and keep inf, and need no (rows x cols) temporary.
    if x.numel() and not (torch.isfinite(x.amax()) and torch.isfinite(x.amin())):
        raise ValueError(f"{name} must be finite, found NaN or inf")
    return x
