"""Statistics of the studies, in one place: intervals over samples, over seeds, and effects
paired by seed.

What an interval means decides what it may support. A trained network's samples give a
*sampling* interval (``proportion_interval``): it says how well 500 samples pin down that
one network's memorization ratio, nothing about another training run. An effect of width,
weight decay, pruning or a method is a statement about training runs, so it needs
training seeds (a seed fixes the training set, the initialization and the batches):

    seed_interval(values)              mean over seeds, Student-t interval (df = S - 1)
    pooled_interval(values, stderrs)   the same, never narrower than the sampling noise
    paired_difference(a, b)            effect of a vs b, compared seed by seed
    slope_interval(x, y)               least-squares slope of y on x, t-interval
    slope_over_seeds(x, y, seeds)      one slope per seed, t-interval over seeds

Every function returns an ``Interval`` (value, low, high, n, level, method) that is
written to the results JSON as is (``to_dict``). Computations are scipy's (binomtest,
ttest_1samp, linregress, bootstrap); this module only decides which one answers which
question.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import stats

__all__ = [
    "Interval",
    "PairedDifference",
    "proportion_interval",
    "seed_interval",
    "pooled_interval",
    "paired_difference",
    "slope_interval",
    "slope_over_seeds",
    "format_number",
    "format_interval",
    "interval_stderr",
    "as_facts",
    "markdown_table",
]

MINUS = "\u2212"  # typographic minus, as the notes write negative numbers


@dataclass(frozen=True)
class Interval:
    """An estimate with its confidence interval [low, high] at ``level`` from n units
    (samples, seeds or points, as ``method`` says)."""

    value: float
    low: float
    high: float
    n: int
    level: float
    method: str

    def contains(self, x: float) -> bool:
        """Whether x lies in [low, high]."""
        return self.low <= x <= self.high

    def excludes_zero(self) -> bool:
        """Whether the interval lies wholly on one side of 0 (the effect's sign is shown)."""
        return self.low > 0 or self.high < 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PairedDifference(Interval):
    """mean(a_s - b_s) over seeds s with its interval; ``diffs`` the per-seed differences,
    ``positive`` how many of them are > 0 (the sign test's count)."""

    diffs: tuple[float, ...] = field(default=())
    positive: int = 0


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")


def _finite_vector(values: Sequence[float], name: str, at_least: int) -> np.ndarray:
    v = np.asarray(values, dtype=float)
    if v.ndim != 1:
        raise ValueError(f"{name} must be a 1-D sequence, got shape {v.shape}")
    if v.size < at_least:
        raise ValueError(f"{name} needs at least {at_least} values, got {v.size}")
    if not np.isfinite(v).all():
        raise ValueError(f"{name} must be finite, got {v.tolist()}")
    return v


def proportion_interval(hits: int, total: int, level: float = 0.95) -> Interval:
    """Wilson score interval of a binomial proportion hits / total (scipy's binomtest).

    The sampling interval of one network's memorization ratio over its ``total`` samples.
    """
    _check_level(level)
    if isinstance(hits, bool) or isinstance(total, bool):
        raise TypeError("hits and total must be integers, not bool")
    if total < 1 or not 0 <= hits <= total:
        raise ValueError(f"need 0 <= hits <= total and total >= 1; got hits={hits}, total={total}")
    ci = stats.binomtest(int(hits), int(total)).proportion_ci(level, method="wilson")
    p = hits / total
    # Wilson's bounds can miss p by a rounding error at hits = 0 or total.
    return Interval(p, min(float(ci.low), p), max(float(ci.high), p), int(total), level,
                    "wilson")


def interval_stderr(low: float, high: float, level: float = 0.95) -> float:
    """The standard error a symmetric normal interval [low, high] at ``level`` implies:
    half-width / z. For one network's Wilson interval of a memorization ratio this is its
    sampling error, which stays > 0 at a ratio of 0 (sqrt(p (1 - p) / N) would not, although
    0 of 500 samples does not show a ratio of 0)."""
    _check_level(level)
    if not high >= low:
        raise ValueError(f"need low <= high, got [{low}, {high}]")
    return (high - low) / (2 * float(stats.norm.ppf(0.5 + level / 2)))


def seed_interval(values: Sequence[float], level: float = 0.95) -> Interval:
    """Mean over seeds (S values, one per training seed) with a Student-t interval, df = S - 1.

    The spread over seeds already contains each value's own sampling noise, so this is the
    interval of the expected value over training runs (and samples).
    """
    _check_level(level)
    v = _finite_vector(values, "values", 2)
    mean = float(v.mean())
    if np.ptp(v) == 0:  # all seeds agree exactly: scipy's t-test would divide by zero
        return Interval(mean, mean, mean, v.size, level, "t over seeds")
    ci = stats.ttest_1samp(v, 0.0).confidence_interval(level)
    return Interval(mean, float(ci.low), float(ci.high), v.size, level, "t over seeds")


def pooled_interval(values: Sequence[float], stderrs: Sequence[float],
                    level: float = 0.95) -> Interval:
    """Mean over S seeds of per-seed estimates with standard errors ``stderrs``, with a
    t-interval (df = S - 1) whose variance combines seed and sampling variance.

    Model: value_s = mu + b_s + e_s, Var(b_s) = tau^2 (training runs), Var(e_s) = se_s^2
    (samples). Var(mean) = (tau^2 + mean se^2) / S. The sample variance over seeds
    estimates tau^2 + mean se^2 without bias but can come out small by chance with 3 seeds;
    the estimate used here, max(sample variance, mean se^2), never falls below the sampling
    noise that is known exactly. With S = 1 there is no seed variance to estimate: the
    interval is the sampling interval alone (method says so).
    """
    _check_level(level)
    v = _finite_vector(values, "values", 1)
    se = _finite_vector(stderrs, "stderrs", 1)
    if se.shape != v.shape:
        raise ValueError(f"stderrs must match values, got {se.size} vs {v.size}")
    if (se < 0).any():
        raise ValueError(f"stderrs must be >= 0, got {se.tolist()}")
    mean = float(v.mean())
    if v.size == 1:
        half = float(stats.norm.ppf(0.5 + level / 2)) * float(se[0])
        return Interval(mean, mean - half, mean + half, 1, level, "sampling only (1 seed)")
    var = max(float(v.var(ddof=1)), float(np.mean(se**2)))
    half = float(stats.t.ppf(0.5 + level / 2, df=v.size - 1)) * math.sqrt(var / v.size)
    return Interval(mean, mean - half, mean + half, v.size, level, "t over seeds, pooled")


def paired_difference(a: Sequence[float], b: Sequence[float], level: float = 0.95,
                      method: str = "t", seed: int = 0) -> PairedDifference:
    """The effect a - b, paired by seed: a[s] and b[s] come from the same training seed s.

    method "t": Student-t interval of the mean difference (df = S - 1; scipy's
    ttest_1samp on the differences, the same as a paired t-test); "bootstrap": percentile
    bootstrap of the mean difference over seeds (scipy.stats.bootstrap, ``seed``), which
    needs more seeds than the t-interval to mean anything (S >= 8).
    """
    _check_level(level)
    x, y = _finite_vector(a, "a", 2), _finite_vector(b, "b", 2)
    if x.shape != y.shape:
        raise ValueError(f"a and b must hold one value per seed each, got {x.size} vs {y.size}")
    diffs = x - y
    mean = float(diffs.mean())
    if method == "t":
        if np.ptp(diffs) == 0:
            low = high = mean
        else:
            ci = stats.ttest_1samp(diffs, 0.0).confidence_interval(level)
            low, high = float(ci.low), float(ci.high)
        name = "paired t over seeds"
    elif method == "bootstrap":
        if diffs.size < 8:
            raise ValueError(f"method='bootstrap' needs >= 8 seeds, got {diffs.size}; use 't'")
        res = stats.bootstrap((diffs,), np.mean, confidence_level=level, method="percentile",
                              random_state=np.random.default_rng(seed))
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
        name = "paired bootstrap over seeds"
    else:
        raise ValueError(f"method must be 't' or 'bootstrap', got {method!r}")
    return PairedDifference(mean, low, high, diffs.size, level, name,
                            tuple(float(d) for d in diffs), int((diffs > 0).sum()))


def slope_interval(x: Sequence[float], y: Sequence[float], level: float = 0.95) -> Interval:
    """Least-squares slope of y on x with its t-interval (df = m - 2, scipy's linregress).

    Treats the m points as independent: right for one curve, too narrow when points share
    a training seed (use ``slope_over_seeds`` then).
    """
    _check_level(level)
    xs, ys = _finite_vector(x, "x", 3), _finite_vector(y, "y", 3)
    if xs.shape != ys.shape:
        raise ValueError(f"x and y must have the same length, got {xs.size} vs {ys.size}")
    if np.ptp(xs) == 0:
        raise ValueError("x must take at least two distinct values")
    fit = stats.linregress(xs, ys)
    # linregress gives stderr NaN (via r = 0/0) for a constant y, a perfect fit: its
    # residuals, hence its standard error, are 0.
    stderr = 0.0 if np.ptp(ys) == 0 else float(fit.stderr)
    half = float(stats.t.ppf(0.5 + level / 2, df=xs.size - 2)) * stderr
    return Interval(float(fit.slope), float(fit.slope) - half, float(fit.slope) + half,
                    xs.size, level, "least squares, t")


def slope_over_seeds(x: Sequence[float], y: Sequence[float], seeds: Sequence[int],
                     level: float = 0.95) -> Interval:
    """The slope of y on x fitted per seed, then the mean over seeds with a t-interval.

    Points of one seed share its training set and initialization, so they are not
    independent; each seed's slope is one independent replicate of the slope.
    """
    xs, ys = _finite_vector(x, "x", 2), _finite_vector(y, "y", 2)
    ss = np.asarray(seeds)
    if not xs.shape == ys.shape == ss.shape:
        raise ValueError(f"x, y and seeds must have the same length, got "
                         f"{xs.size}, {ys.size}, {ss.size}")
    slopes = []
    for s in np.unique(ss):
        xi, yi = xs[ss == s], ys[ss == s]
        if np.ptp(xi) == 0:
            raise ValueError(f"seed {s} needs at least two distinct x values")
        slopes.append(float(np.polyfit(xi, yi, 1)[0]))
    est = seed_interval(slopes, level)
    return Interval(est.value, est.low, est.high, est.n, level, "slope per seed, t over seeds")


def format_number(value: float, fmt: str | None = None) -> str:
    """``value`` as the notes write it: Python format spec ``fmt`` (default: repr), 'e'
    formats without '+' and exponent zeros (6.50e6, 1e-3), U+2212 for the minus sign."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"value must be an int or float, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"value must be finite, got {value}")
    text = format(value, fmt) if fmt else repr(value)
    if "e" in text:
        mant, exp = text.split("e")
        text = f"{mant}e{int(exp)}"
    return text.replace("-", MINUS)


def format_interval(value: float, low: float, high: float, fmt: str = ".2f") -> str:
    """'value [low, high]' with ``format_number``, e.g. '0.70 [0.55, 0.85]'."""
    return (f"{format_number(value, fmt)} [{format_number(low, fmt)}, "
            f"{format_number(high, fmt)}]")


def as_facts(prefix: str, interval: dict,
             fields: Sequence[str] = ("value", "low", "high", "positive", "n")) -> dict:
    """``interval`` (an ``Interval.to_dict()``, e.g. a paired difference) as named numbers
    "<prefix>/<field>" for the notes (figures/claims.py)."""
    return {f"{prefix}/{field}": interval[field] for field in fields}


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table: a header row, the separator, one line per row (no trailing newline)."""
    if any(len(row) != len(header) for row in rows):
        raise ValueError(f"every row must have {len(header)} cells, got "
                         f"{sorted({len(row) for row in rows})}")
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])
