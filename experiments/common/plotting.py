"""A paper-like matplotlib style and atomic PNG + PDF saving, shared by every figure."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # figures are files; no display is ever needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from experiments.common.runs import atomic_write_bytes  # noqa: E402

__all__ = ["STYLE", "COLORS", "new_figure", "save_figure", "band", "positive", "caption",
           "log_ticks"]

STYLE = {
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 9,
    "legend.fontsize": 7.5,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.25,
    "lines.linewidth": 1.4,
    "lines.markersize": 4,
    "legend.frameon": False,
    "savefig.bbox": "tight",
    "pdf.fonttype": 42,
}
plt.rcParams.update(STYLE)  # applied once on import: ticks and labels are created lazily
COLORS = plt.rcParams["axes.prop_cycle"].by_key()["color"]


def new_figure(rows: int, cols: int, width: float = 7.0, height: float = 2.6):
    """A figure of rows x cols panels in the suite's style; height is per row (inches)."""
    return plt.subplots(rows, cols, figsize=(width, height * rows), squeeze=False)


def save_figure(fig, stem: Path) -> list[Path]:
    """Save fig as stem.png (200 dpi) and stem.pdf, each written atomically; close it."""
    paths = []
    # No creation date in the PDF: regenerating an unchanged figure gives the same bytes.
    for ext, kwargs in (("png", {"dpi": 200}), ("pdf", {"metadata": {"CreationDate": None}})):
        buf = io.BytesIO()
        fig.savefig(buf, format=ext, **kwargs)
        path = Path(f"{stem}.{ext}")
        atomic_write_bytes(path, buf.getvalue())
        paths.append(path)
    plt.close(fig)
    return paths


def band(ax, x, mean, low, high, color, label=None, **kwargs) -> None:
    """A line with a shaded interval (e.g. a 95% confidence band)."""
    ax.plot(x, mean, color=color, label=label, **kwargs)
    ax.fill_between(x, low, high, color=color, alpha=0.2, linewidth=0)


def positive(values) -> np.ndarray:
    """values with non-positive entries replaced by NaN, so a log axis leaves them out visibly."""
    arr = np.asarray(values, dtype=float)
    return np.where(arr > 0, arr, np.nan)


def caption(fig, text: str, y: float = -0.01) -> None:
    """A small italic caption under the panels (e.g. which profile and grid made them);
    y in figure coordinates (lower it below a figure legend)."""
    fig.text(0.5, y, text, ha="center", va="top", fontsize=7, style="italic", wrap=True)


def log_ticks(ax, values, axis: str = "x") -> None:
    """Ticks at exactly ``values`` labelled as plain numbers, no minor ticks (log axes)."""
    getattr(ax, f"set_{axis}ticks")(list(values), [f"{v:g}" for v in values])
    ax.minorticks_off()
