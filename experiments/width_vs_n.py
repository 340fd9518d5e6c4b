"""The architectural separation (Thm 5.1): width needed to fit the empirical vs the true score.

Thm 5.1 says a ReLU network must grow like n to approximate the empirical score of n
points (W1 = O~(n), an upper bound), while the true score needs a size independent of n.
We measure it: on the paper's mixture (§6.1) at small d, for each n we fit a geometric
grid of widths (one ``MLPEnsemble``) to the empirical score and to the true score on
P_hat_t, score each fit by r = E||s_net - s_target||^2 / Loss-Gap_t (error in units of the
separation, fresh draws), and read off the smallest width W* with r <= eps. Each member
trains until its held-out error plateaus or a step cap, and which of the two stopped it is
recorded; the **budget check** reads W* also at half the cap, a quarter, ... (``doublings``
smaller caps, from the same run, see ``FitBudget.snapshots``): a W* that moves by more than
20% when the cap doubles is budget-limited, not capacity-limited.

  (a) r against width, one curve per n, both targets (the shallowest depth, t = t_main);
  (b) W* against n, log-log, both targets and every depth, slopes fitted on n >= fit_min_n;
  (c) those slopes against eps and depth, with 95% intervals; the theorem's 1 (O~(n)) and
      the band |slope| <= flat_tol in which the true score's W* counts as flat (both fixed
      in the config before the run);
  (d) the budget check: W* at each cap over W* at half that cap;
  (e) "for all t": W* when r is the max over a grid of times in t_interval (eq. 5.1 holds
      at every t, so the width must fit the whole interval), trained on t log-uniform there;
  (f) duplicates: n points of which m are copies of the others (drawn at random among them)
      against n - m distinct points, paired by training seed.

Run: python -m experiments.width_vs_n [--profile smoke|quick|cpu|gpu|paper] [--set key=value]
     [--force]
"""

from __future__ import annotations

import math
import sys

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.ticker import LogFormatter, NullLocator

from experiments.common.plotting import COLORS, caption, new_figure, save_figure
from experiments.common.runs import Units, main, resolve_device, run_units
from experiments.common.stats import (
    format_interval,
    markdown_table,
    paired_difference,
    slope_interval,
)
from theory.capacity import FitBudget, fit_width_sweep, smallest_width
from theory.empirical import EmpiricalScore
from theory.mixtures import paper_mixture
from theory.process import generator

NAME = "width_vs_n"

# -- configuration ----------------------------------------------------------------------------
# Our choices (the paper reports no such experiment): the regime of the theorem needs
# training points well separated at the scale sigma_t (log n = O(d)), so d = 8 and small t.
# Depth >= 2 needs far fewer units, so its grid stops at max_width_deep. steps is the cap
# of the plateau rule; W* is also read at steps / 2, steps / 4, ... (``doublings`` of them:
# the budget check). flat_tol and the eps grid were fixed before the run that produced the
# committed JSON. The cpu profile (about an hour on 2 cores, n to 256) trades depth 1 for
# a cap 4x the quick one and widths to 512: are the fits of two layers capacity-limited there?
PROFILES = {
    "smoke": {
        "seed": 0, "workers": 1, "device": "cpu", "dtype": "float32", "d": 4, "K": 4,
        "mean_std": 2.0, "ns": [4, 8], "fit_min_n": 4,
        "widths": [2, 4, 8, 16], "max_width_deep": 16, "depths": [1], "seeds": 2,
        "t_main": 0.2, "t_interval": [0.05, 0.2], "t_points": 3, "interval_depths": [1],
        "dup_n": 8, "dup_copies": [4], "dup_depth": 1,
        "eps": 0.5, "eps_grid": [0.25, 0.5, 1.0], "flat_tol": 0.25,
        "steps": 400, "doublings": 2, "batch": 64, "lrs": [1e-2], "eval_draws": 256,
    },
    "quick": {
        "seed": 0, "workers": 2, "device": "cpu", "dtype": "float32", "d": 8, "K": 8,
        "mean_std": 2.0, "ns": [4, 8, 16, 32, 64], "fit_min_n": 8,
        "widths": [2, 4, 8, 16, 32, 64, 128, 256, 512, 1024], "max_width_deep": 256,
        "depths": [1, 2], "seeds": 3,
        "t_main": 0.2, "t_interval": [0.05, 0.2], "t_points": 5, "interval_depths": [2],
        "dup_n": 32, "dup_copies": [16, 24, 28], "dup_depth": 2,
        "eps": 0.25, "eps_grid": [0.1, 0.25, 0.5], "flat_tol": 0.25,
        "steps": 1600, "doublings": 2, "batch": 256, "lrs": [3e-3], "eval_draws": 2048,
    },
    "paper": {
        "seed": 0, "workers": 1, "device": "auto", "dtype": "float32", "d": 8, "K": 8,
        "mean_std": 2.0, "ns": [4, 8, 16, 32, 64, 128, 256, 512, 1024], "fit_min_n": 8,
        "widths": [2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192],
        "max_width_deep": 4096, "depths": [1, 2, 3], "seeds": 5,
        "t_main": 0.2, "t_interval": [0.05, 0.2], "t_points": 5, "interval_depths": [2, 3],
        "dup_n": 256, "dup_copies": [128, 192, 224], "dup_depth": 2,
        "eps": 0.25, "eps_grid": [0.1, 0.25, 0.5], "flat_tol": 0.25,
        "steps": 20000, "doublings": 2, "batch": 512, "lrs": [1e-3, 3e-3],
        "eval_draws": 16384,
    },
}
# The GPU campaign's size (experiments/gpu_campaign.py runs the largest of its cuts that fits
# its share of a lent GPU's minutes): the paper profile's n range, widths and learning-rate
# grid, three training sets, depths 2-3 and a cap of 6,400 steps (4x the quick profile's).
PROFILES["gpu"] = {**PROFILES["paper"], "workers": 1, "seeds": 3, "depths": [2, 3],
                   "interval_depths": [2], "dup_n": 64, "dup_copies": [32, 48, 56],
                   "steps": 6400, "eval_draws": 8192}
# The quick profile with two hidden layers only, n to 256, widths to 512 and a 4x cap.
PROFILES["cpu"] = {**PROFILES["quick"], "ns": [4, 8, 16, 32, 64, 128, 256],
                   "widths": [2, 4, 8, 16, 32, 64, 128, 256, 512],
                   "max_width_deep": 512, "depths": [2], "steps": 6400, "doublings": 3}
TARGETS = ("empirical", "true")
BUDGET_MOVE = 0.2  # a W* that moves by more than this (relative) when the cap doubles


def widths_for(config: dict, depth: int) -> list[int]:
    """The width grid of a depth: all widths for one hidden layer, capped for deeper nets."""
    return [w for w in config["widths"] if depth == 1 or w <= config["max_width_deep"]]


def caps(config: dict) -> list[int]:
    """The caps W* is read at, increasing: steps / 2^doublings, ..., steps / 2, steps (one run)."""
    return [config["steps"] >> k for k in range(config["doublings"], -1, -1)]


def budget(config: dict) -> FitBudget:
    """The plateau rule of every fit (``FitBudget``'s defaults: evaluate every 100 steps,
    cut the rate x0.3 after 3 evaluations without a 1% gain, twice, then stop), capped at
    config["steps"], with snapshots at the smaller caps for the budget check."""
    return FitBudget(config["steps"], config["batch"], tuple(config["lrs"]), 0.0,
                     config["eval_draws"], snapshots=tuple(caps(config)[:-1]))


def check_config(config: dict) -> None:
    """Relations between keys (run before any work; single keys: experiments/common/config.py)."""
    if config["steps"] % (100 << config["doublings"]):
        raise ValueError(f"steps must be a multiple of 100 x 2^doublings (the budget check reads"
                         f" W* at steps / 2^doublings, a multiple of the 100-step evaluations),"
                         f" got steps = {config['steps']}, doublings = {config['doublings']}")
    budget(config)
    for depth in sorted({*config["depths"], *config["interval_depths"], config["dup_depth"]}):
        if len(widths_for(config, depth)) < 2:  # W* is interpolated between grid widths
            raise ValueError(f"config widths (capped at max_width_deep={config['max_width_deep']}"
                             f" for depth {depth}) must leave at least two widths, got "
                             f"{widths_for(config, depth)}")
    if sum(n >= config["fit_min_n"] for n in config["ns"]) < 2:
        raise ValueError(f"fit_min_n ({config['fit_min_n']}) must leave at least two of ns "
                         f"{config['ns']} to fit a slope on")
    if len(config["t_interval"]) != 2:
        raise ValueError(f"t_interval must be [t_a, t_b], got {config['t_interval']}")
    if config["dup_n"] not in config["ns"] or config["dup_depth"] not in config["depths"]:
        raise ValueError(f"dup_n ({config['dup_n']}) must be one of ns and dup_depth "
                         f"({config['dup_depth']}) one of depths: the duplicates are compared "
                         "with the distinct training sets of the main panel")
    for m in config["dup_copies"]:
        if not (m < config["dup_n"] and config["dup_n"] - m in config["ns"]):
            raise ValueError(f"dup_copies must leave dup_n - m distinct points, one of ns "
                             f"{config['ns']}, got m = {m} with dup_n = {config['dup_n']}")


# -- one width sweep ------------------------------------------------------------------------------


def training_set(config: dict, n: int, copies: int, seed: int) -> torch.Tensor:
    """n points (n, d) in float64: n - copies distinct draws from the mixture (the training
    set of n - copies points of the main panel, same seed), then ``copies`` of them picked
    at random with replacement, so some points weigh 2, 3, ... times more."""
    mixture = paper_mixture(config["d"], config["K"], config["mean_std"], seed=config["seed"])
    distinct = mixture.sample(n - copies, generator(config["seed"], n - copies, seed))
    pick = torch.randint(n - copies, (copies,), generator=generator(config["seed"], n, copies,
                                                                     seed))
    return torch.cat([distinct, distinct[pick]])


def sweep(config: dict, n: int, copies: int, target: str, depth: int,
          t_range: tuple[float, float], seed: int) -> dict:
    """Fit all widths of a depth to one target on training set (n, copies, seed); r per width
    at the cap and at the smaller caps of the budget check (r: the max over the time grid of
    t_range)."""
    mixture = paper_mixture(config["d"], config["K"], config["mean_std"], seed=config["seed"])
    # Training sets are drawn in float64 on the CPU (same numbers everywhere), then cast.
    device, dtype = resolve_device(config["device"]), getattr(torch, config["dtype"])
    points = training_set(config, n, copies, seed).to(device, dtype)
    true = mixture.to(device, dtype)
    goal = EmpiricalScore(points) if target == "empirical" else true
    fit = fit_width_sweep(goal, points, true, t_range, widths_for(config, depth), depth,
                          budget(config), seed=seed, t_points=config["t_points"])
    return {"widths": list(fit.widths), "num_params": list(fit.num_params),
            "t_grid": list(fit.t_grid), "ratio": list(fit.ratio),
            "ratio_at": {str(c): list(f.ratio) for c, f in fit.snapshots.items()},
            "on_plateau": list(fit.final.on_plateau), "stop_step": list(fit.final.stop_step),
            "lr": list(fit.final.lr)}


# -- slopes of log W* against log n ---------------------------------------------------------------


def slope_fit(ns: list[int], widths: list[list[float]], min_n: int = 1) -> dict:
    """Least-squares slope of log W* on log n over all finite (n, seed) pairs with n >= min_n,
    with a 95% t-interval (training sets are independent across n and seeds).

    widths[i] holds W* of each seed at ns[i]; inf (eps never reached) is left out and
    counted, which biases the slope down if it happens at large n (reported as such).
    """
    kept = [(n, ws) for n, ws in zip(ns, widths, strict=True) if n >= min_n]
    x = [math.log(n) for n, ws in kept for w in ws if math.isfinite(w)]
    y = [math.log(w) for _, ws in kept for w in ws if math.isfinite(w)]
    missing = sum(not math.isfinite(w) for _, ws in kept for w in ws)
    if len(set(x)) < 2 or len(x) < 3:  # a t-interval needs a residual degree of freedom
        return {"slope": None, "ci_low": None, "ci_high": None, "points": len(x),
                "not_reached": missing}
    fit = slope_interval(x, y)
    return {"slope": fit.value, "ci_low": fit.low, "ci_high": fit.high, "points": len(x),
            "not_reached": missing}


def moved(w_cap: float, w_half: float) -> bool | None:
    """Whether W* moved by more than BUDGET_MOVE from half a cap to the cap; None if neither
    reached eps (nothing to compare), True if only one did."""
    if not (math.isfinite(w_cap) or math.isfinite(w_half)):
        return None
    if not (math.isfinite(w_cap) and math.isfinite(w_half)):
        return True
    return abs(w_cap / w_half - 1) > BUDGET_MOVE


# -- the whole figure -----------------------------------------------------------------------------


def _none_for_inf(widths: dict) -> dict:
    """inf cannot be stored in JSON: "not reached within the grid" becomes None."""
    return {n: [w if math.isfinite(w) else None for w in ws] for n, ws in widths.items()}


def _line(config: dict, fits: dict[int, list[dict]]) -> dict:
    """One fitted line from its sweeps {n: [fit per seed]}: r and W* at every cap, how many
    member fits the cap stopped, slopes at every eps, the budget check of each doubling."""
    first = next(iter(fits.values()))[0]
    smaller = [str(c) for c in caps(config)[:-1]]
    entry: dict = {"widths": first["widths"], "num_params": first["num_params"],
                   "t_grid": first["t_grid"], "ratio": {}, "on_cap": {}, "smallest_width": {},
                   "ratio_at": {c: {} for c in smaller},
                   "smallest_width_at": {c: {} for c in smaller}}
    star: dict[str, dict[str, list[float]]] = {}  # eps -> n -> W* per seed (at the cap)
    for n, per_seed in fits.items():
        entry["ratio"][str(n)] = [f["ratio"] for f in per_seed]
        entry["on_cap"][str(n)] = [sum(not p for p in f["on_plateau"]) for f in per_seed]
        for eps in config["eps_grid"]:
            star.setdefault(str(eps), {})[str(n)] = [
                smallest_width(f["widths"], f["ratio"], eps) for f in per_seed]
        entry["smallest_width"][str(n)] = [smallest_width(f["widths"], f["ratio"], config["eps"])
                                           for f in per_seed]
        for c in smaller:
            entry["ratio_at"][c][str(n)] = [f["ratio_at"][c] for f in per_seed]
            entry["smallest_width_at"][c][str(n)] = [
                smallest_width(f["widths"], f["ratio_at"][c], config["eps"]) for f in per_seed]
    ns = list(fits)
    entry["slope"] = slope_fit(ns, list(entry["smallest_width"].values()), config["fit_min_n"])
    entry["slopes_by_eps"] = {eps: slope_fit(ns, list(ws.values()), config["fit_min_n"])
                              for eps, ws in star.items()}
    at = {**entry["smallest_width_at"], str(config["steps"]): entry["smallest_width"]}
    entry["budget_check"] = {}  # per doubling, keyed by the cap it ends at
    for lo, hi in zip(list(at)[:-1], list(at)[1:], strict=True):
        moves = [moved(a, b) for n in at[hi] for a, b in zip(at[hi][n], at[lo][n], strict=True)]
        entry["budget_check"][hi] = {"from": int(lo), "moved": sum(m is True for m in moves),
                                     "compared": sum(m is not None for m in moves)}
    entry["smallest_width"] = _none_for_inf(entry["smallest_width"])
    entry["smallest_width_at"] = {c: _none_for_inf(entry["smallest_width_at"][c])
                                  for c in smaller}
    return entry


def sweep_lines(config: dict) -> list[tuple[str, str, int, int, int, tuple[float, float]]]:
    """Every width sweep of the figure but its seed, as (panel, target, depth, n, copies,
    t_range); the duplicates panel reuses the main panel's sweeps with no copies."""
    t_main, t_int = (config["t_main"],) * 2, tuple(config["t_interval"])
    lines = [("main", tgt, depth, n, 0, t_main) for tgt in TARGETS for depth in config["depths"]
             for n in config["ns"]]
    lines += [("interval", tgt, depth, n, 0, t_int) for tgt in TARGETS
              for depth in config["interval_depths"] for n in config["ns"]]
    lines += [("duplicates", "empirical", config["dup_depth"], config["dup_n"], m, t_main)
              for m in config["dup_copies"]]
    return lines


def compute(config: dict, units: Units) -> dict:
    """Every number of the figure; one unit per sweep (panel, target, depth, n, copies, seed)."""
    t_int = tuple(config["t_interval"])
    seeds = range(config["seeds"])
    lines = sweep_lines(config)
    key = "{}/{}/L={}/n={}/m={}/s={}".format
    done = run_units(units, [(key(p, tgt, depth, n, m, s), sweep,
                              (config, n, m, tgt, depth, t, s))
                             for p, tgt, depth, n, m, t in lines for s in seeds],
                     config["workers"], "width sweeps")
    result: dict = {"panels": {"main": {"t": config["t_main"]},
                               "interval": {"t": list(t_int)}}}
    grouped: dict[tuple, dict[int, list[dict]]] = {}
    for p, tgt, depth, n, m, _ in lines:
        if p != "duplicates":
            grouped.setdefault((p, f"{tgt}/L={depth}"), {})[n] = [
                done[key(p, tgt, depth, n, m, s)] for s in seeds]
    for (panel, name), fits in grouped.items():
        result["panels"][panel][name] = _line(config, fits)

    # Duplicates: W* of n points with m copies, against the main panel's distinct sets of
    # n - m and of n points with the same seeds (log W*, paired by seed).
    n, depth, eps = config["dup_n"], config["dup_depth"], config["eps"]
    distinct = result["panels"]["main"][f"empirical/L={depth}"]["smallest_width"]
    dup: dict = {"n": n, "depth": depth, "t": config["t_main"], "copies": {}}
    for m in config["dup_copies"]:
        fits = [done[key("duplicates", "empirical", depth, n, m, s)] for s in seeds]
        w = [smallest_width(f["widths"], f["ratio"], eps) for f in fits]
        row: dict = {"smallest_width": [x if math.isfinite(x) else None for x in w],
                     "on_cap": [sum(not p for p in f["on_plateau"]) for f in fits]}
        for versus, ref in (("vs_distinct", distinct[str(n - m)]), ("vs_n", distinct[str(n)])):
            # A paired interval needs two training sets and W* reached in all of them.
            if len(w) >= 2 and all(x is not None and math.isfinite(x) for x in [*w, *ref]):
                row[versus] = paired_difference(np.log(w), np.log(ref)).to_dict()
        dup["copies"][str(m)] = row
    result["duplicates"] = dup
    return result


# -- what the notes quote (figures/claims.py) ----------------------------------------------------


def _entries(result: dict):
    """(panel, target, depth, entry) for every fitted line of the figure."""
    for panel, data in result["results"]["panels"].items():
        for key, entry in data.items():
            if key != "t":
                target, depth = key.split("/")
                yield panel, target, depth, entry


def _mean_width(ws: list) -> float | None:
    """Arithmetic mean of W* over training sets, None if any fit never reached eps."""
    return None if any(w is None for w in ws) else float(np.mean(ws))


def _cap_counts(entry: dict) -> tuple[int, int]:
    """(member fits the step cap stopped, all member fits) of a line: one per width and
    training set; the first are budget-limited (FitBudget's plateau rule was not met)."""
    on_cap = sum(sum(v) for v in entry["on_cap"].values())
    return on_cap, len(entry["widths"]) * sum(len(v) for v in entry["on_cap"].values())


def _w_star_by_cap(entry: dict, steps: int) -> dict[str, dict[str, list]]:
    """W* per training set (None: beyond the grid) at every cap, increasing: cap -> n -> list."""
    return {**entry["smallest_width_at"], str(steps): entry["smallest_width"]}


def _move_ratio(at: dict, lo: str, hi: str) -> dict[int, float]:
    """W*(cap hi) / W*(cap lo) per n: the geometric mean over the training sets where both
    reached eps (n without such a set left out)."""
    out = {}
    for n, ws in at[hi].items():
        logs = [math.log(a / b) for a, b in zip(ws, at[lo][n], strict=True)
                if a is not None and b is not None]
        if logs:
            out[int(n)] = math.exp(float(np.mean(logs)))
    return out


def _flat(slope: dict, tol: float) -> bool:
    """Whether a slope's whole 95% interval lies within [-tol, tol] (W* flat in n)."""
    return slope["ci_low"] is not None and -tol <= slope["ci_low"] and slope["ci_high"] <= tol


def facts(result: dict) -> dict[str, float]:
    """Per fitted line ("<panel>/<target>/<depth>", e.g. "main/empirical/L=1"): the slope of
    log W* on log n (n >= fit_min_n) with its interval at eps and at every eps of the grid,
    the fits left out, the member fits stopped by the cap, the budget check (at every eps
    for the last doubling), W* (mean over
    training sets) at each n and the local slopes between neighbouring n, the slope at the
    smaller caps and W*(cap) / W*(cap / 2) per n; counts of true-score slopes flat within
    flat_tol and of empirical slopes whose interval reaches down to 1; the duplicates'
    paired ratios of W*."""
    cfg = result["config"]
    out: dict[str, float] = {"true_slopes": 0, "true_slopes_flat": 0,
                             "true_slopes_excluding_zero": 0, "empirical_slopes": 0,
                             "empirical_slopes_reaching_1": 0}
    for panel, target, depth, entry in _entries(result):
        line = f"{panel}/{target}/{depth}"
        for k, v in entry["slope"].items():
            if v is not None:
                out[f"{line}/{k}"] = v
        for eps, sl in entry["slopes_by_eps"].items():
            for k in ("slope", "ci_low", "ci_high", "not_reached"):
                if sl[k] is not None:
                    out[f"{line}/eps={eps}/{k}"] = sl[k]
            # The budget check of the last doubling, read at this eps from the stored r.
            moves = [moved(smallest_width(entry["widths"], a, float(eps)),
                           smallest_width(entry["widths"], b, float(eps)))
                     for n, rs in entry["ratio"].items()
                     for a, b in zip(rs, entry["ratio_at"][str(cfg["steps"] // 2)][n],
                                     strict=True)]
            out[f"{line}/eps={eps}/budget_moved"] = sum(m is True for m in moves)
            out[f"{line}/eps={eps}/budget_compared"] = sum(m is not None for m in moves)
            if sl["ci_low"] is None:
                continue
            if target == "true":
                out["true_slopes"] += 1
                out["true_slopes_flat"] += _flat(sl, cfg["flat_tol"])
                out["true_slopes_excluding_zero"] += sl["ci_low"] > 0 or sl["ci_high"] < 0
            else:
                out["empirical_slopes"] += 1
                out["empirical_slopes_reaching_1"] += sl["ci_low"] <= 1
        out[f"{line}/on_cap"], out[f"{line}/member_fits"] = _cap_counts(entry)
        for cap, check in entry["budget_check"].items():
            out[f"{line}/budget_moved/cap={cap}"] = check["moved"]
            out[f"{line}/budget_compared/cap={cap}"] = check["compared"]
        final = entry["budget_check"][str(cfg["steps"])]
        out[f"{line}/budget_moved"], out[f"{line}/budget_compared"] = (final["moved"],
                                                                       final["compared"])
        # The slope a run capped at a smaller cap would report, and how W* moved per n.
        half = str(cfg["steps"] // 2)
        for cap, ws in entry["smallest_width_at"].items():
            sl = slope_fit([int(n) for n in ws], [[math.inf if w is None else w for w in v]
                                                  for v in ws.values()], cfg["fit_min_n"])
            for k in ("slope", "not_reached"):
                if sl[k] is not None:
                    out[f"{line}/cap={cap}/{k}"] = sl[k]
        moves = _move_ratio(_w_star_by_cap(entry, cfg["steps"]), half, str(cfg["steps"]))
        for n, ratio in moves.items():
            out[f"{line}/budget_ratio/n={n}"] = ratio
        ns = [int(n) for n in entry["smallest_width"]]
        means = [_mean_width(ws) for ws in entry["smallest_width"].values()]
        for n, m in zip(ns, means, strict=True):
            if m is not None:
                out[f"{line}/W/n={n}"] = m
        for (n0, m0), (n1, m1) in zip(zip(ns, means, strict=True),
                                      list(zip(ns, means, strict=True))[1:], strict=False):
            if m0 is not None and m1 is not None:
                out[f"{line}/local_slope/n={n0}-{n1}"] = math.log(m1 / m0) / math.log(n1 / n0)
        if target == "true":
            ws = [w for v in entry["smallest_width"].values() for w in v if w is not None]
            out[f"{line}/W_min"], out[f"{line}/W_max"] = min(ws), max(ws)
    for m, row in result["results"]["duplicates"]["copies"].items():
        if (w := _mean_width(row["smallest_width"])) is not None:
            out[f"duplicates/m={m}/W"] = w
        for versus in ("vs_distinct", "vs_n"):
            if versus in row:  # a difference of log W*, written as a ratio of widths
                for k in ("value", "low", "high"):
                    out[f"duplicates/m={m}/{versus}/{k}"] = math.exp(row[versus][k])
    for name, cap in zip(("half_cap", "quarter_cap", "eighth_cap"), caps(cfg)[-2::-1],
                         strict=False):
        out[name] = cap
    out["on_cap"] = sum(v for k, v in out.items() if k.endswith("/on_cap"))
    out["member_fits"] = sum(v for k, v in out.items() if k.endswith("/member_fits"))
    out["on_plateau"] = out["member_fits"] - out["on_cap"]
    out["budget_moved"] = sum(v for k, v in out.items() if k.endswith("/budget_moved"))
    out["budget_compared"] = sum(v for k, v in out.items() if k.endswith("/budget_compared"))
    return out


def blocks(result: dict) -> dict[str, str]:
    """The table of W* against n and the slopes (n >= fit_min_n), one row per fitted line."""
    cfg = result["config"]
    rows = []
    for panel, target, depth, entry in _entries(result):
        t = result["results"]["panels"][panel]["t"]
        cells = []
        for ws in entry["smallest_width"].values():
            m = _mean_width(ws)
            cells.append(f"> {max(widths_for(cfg, int(depth[2:])))}" if m is None
                         else f"{m:.3g}")
        sl = entry["slope"]
        slope = "—" if sl["slope"] is None else format_interval(sl["slope"], sl["ci_low"],
                                                                  sl["ci_high"])
        if sl["not_reached"]:
            slope += f" ({sl['not_reached']} fits beyond the grid left out)"
        when = f"{t:g}" if panel == "main" else f"all of [{t[0]:g}, {t[1]:g}]"
        check = entry["budget_check"][str(cfg["steps"])]
        rows.append([target, depth.split("=")[1], when, ", ".join(cells), slope,
                     f"{check['moved']} of {check['compared']}"])
    header = ["target", "depth", "t", f"W* at n = {', '.join(map(str, cfg['ns']))} (mean of "
              f"{cfg['seeds']} training sets)", f"slope of log W* on log n, n ≥ "
              f"{cfg['fit_min_n']} [95% CI]", f"W* moved > 20% from {cfg['steps'] // 2} to "
              f"{cfg['steps']} steps (fits)"]
    return {"table": markdown_table(header, rows)}


# -- drawing from the JSON ------------------------------------------------------------------------


def _slope_label(target: str, depth: str, sl: dict) -> str:
    label = f"{target}, {depth}: no slope"
    if sl["slope"] is not None:
        label = f"{target}, {depth}: slope {sl['slope']:.2f}"
        if sl["ci_low"] is not None:
            label += f" [{sl['ci_low']:.2f}, {sl['ci_high']:.2f}]"
    if sl["not_reached"]:
        label += f"; {sl['not_reached']} fits beyond the grid"
    return label


def _draw_w_star(ax, data: dict, cfg: dict, title: str) -> None:
    """W* against n for every line of a panel: geometric mean over training sets, bars the
    range, slope (n >= fit_min_n) in the legend."""
    k = 0
    for key, entry in data.items():
        if key == "t":
            continue
        target, depth = key.split("/")
        ns = np.array([int(n) for n in entry["smallest_width"]], dtype=float)
        ws = [[w for w in v if w is not None] for v in entry["smallest_width"].values()]
        if not any(ws):  # eps reached at no n: nothing to draw on a log axis
            continue
        mean = np.array([np.exp(np.mean(np.log(w))) if w else np.nan for w in ws])
        lo = np.array([min(w) if w else np.nan for w in ws])
        hi = np.array([max(w) if w else np.nan for w in ws])
        ax.errorbar(ns, mean, yerr=[mean - lo, hi - mean], marker="o", capsize=2,
                    ls="-" if target == "empirical" else "--", color=COLORS[k % len(COLORS)],
                    label=_slope_label(target, depth, entry["slope"]))
        k += 1
    ax.set(xlabel="n", ylabel=f"smallest width with r <= {cfg['eps']}", title=title)
    _log_axes(ax, k > 0, cfg["ns"], y=True)
    ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.2))


def _log_axes(ax, drawn: bool, ns: list[int], y: bool) -> None:
    """Log n on x (and log y) ticked at ns; a panel with nothing to draw says so instead
    (a log axis without data cannot be drawn)."""
    if not drawn:
        ax.text(0.5, 0.5, "no fit reached eps", transform=ax.transAxes, ha="center")
        return
    ax.set(xscale="log", yscale="log" if y else "linear")
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.xaxis.set_minor_locator(NullLocator())
    if y:  # plain numbers; minor ticks labelled only when the range is under a decade
        ax.yaxis.set_major_formatter(LogFormatter())
        ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False))


def plot(result: dict, stem) -> list:
    """Six panels: r against width; W* against n; slopes against eps and depth; the budget
    check; W* for all t of an interval; duplicates."""
    r, cfg = result["results"], result["config"]
    fig, axes = new_figure(2, 3, width=12.0, height=8.4)

    ax = axes[0, 0]  # (a)
    main_panel, shallow = r["panels"]["main"], min(cfg["depths"])
    for target, ls in (("empirical", "-"), ("true", "--")):
        entry = main_panel[f"{target}/L={shallow}"]
        ns = list(entry["ratio"])
        for i, n in enumerate(ns):
            c = colormaps["viridis"](i / max(1, len(ns) - 1))
            ratio = np.exp(np.mean(np.log(entry["ratio"][n]), axis=0))  # geometric mean, seeds
            ax.plot(entry["widths"], ratio, ls=ls, marker="o", ms=2.5, color=c,
                    label=f"n = {n}" if target == "empirical" else None)
    ax.axhline(cfg["eps"], color="k", lw=0.8, ls=":", label=f"eps = {cfg['eps']}")
    ax.set(xscale="log", yscale="log", xlabel="width", ylabel="r = error / Loss-Gap",
           title=f"(a) fit error, {shallow} hidden layer{'s' * (shallow > 1)}, "
                 f"t = {cfg['t_main']}\n"
                 "solid: empirical score, dashed: true score")
    ax.legend(ncol=3, fontsize=6.5, loc="upper center", bbox_to_anchor=(0.5, -0.2))

    _draw_w_star(axes[0, 1], main_panel, cfg, f"(b) smallest width vs n, t = {cfg['t_main']}")

    ax = axes[0, 2]  # (c)
    eps_grid = [str(e) for e in cfg["eps_grid"]]
    lines = list(_entries(result))
    for k, (panel, target, depth, entry) in enumerate(lines):
        x = np.arange(len(eps_grid)) + (k - (len(lines) - 1) / 2) * 0.08
        sl = [entry["slopes_by_eps"][e] for e in eps_grid]
        ok = [s["ci_low"] is not None for s in sl]
        y = np.array([s["slope"] if o else np.nan for s, o in zip(sl, ok, strict=True)])
        lo = np.array([s["ci_low"] if o else np.nan for s, o in zip(sl, ok, strict=True)])
        hi = np.array([s["ci_high"] if o else np.nan for s, o in zip(sl, ok, strict=True)])
        where = f"t = {cfg['t_main']}" if panel == "main" else "all t"
        ax.errorbar(x, y, yerr=[y - lo, hi - y], marker="o" if target == "empirical" else "s",
                    ls="none", capsize=2, color=COLORS[k % len(COLORS)],
                    label=f"{target}, {depth}, {where}")
    ax.axhline(1.0, color="k", lw=0.8, ls=":", label="1: W1 = O~(n)")
    ax.axhspan(-cfg["flat_tol"], cfg["flat_tol"], color="0.85", zorder=0,
               label=f"flat: |slope| <= {cfg['flat_tol']}")
    ax.set_xticks(range(len(eps_grid)), eps_grid)
    ax.set(xlabel="eps (r <= eps)", ylabel=f"slope of log W* on log n (n >= {cfg['fit_min_n']})",
           title="(c) slope against eps and depth, 95% CI")
    ax.legend(fontsize=6, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.2))

    ax = axes[1, 0]  # (d): W*(cap) / W*(cap / 2) per doubling, the main panel's lines
    drawn = False
    for k, (panel, target, depth, entry) in enumerate(lines):
        if panel != "main":
            continue
        at = _w_star_by_cap(entry, cfg["steps"])
        doublings = list(zip(list(at)[:-1], list(at)[1:], strict=True))
        for i, (lo, hi) in enumerate(doublings):  # the last doubling solid, earlier ones faint
            last = i == len(doublings) - 1
            moves = _move_ratio(at, lo, hi)
            drawn |= bool(moves)
            ax.plot(list(moves), list(moves.values()), marker="o" if target == "empirical" else "s",
                    ls="-" if last else ":", alpha=1.0 if last else 0.3 + 0.5 * i / len(doublings),
                    color=COLORS[k % len(COLORS)],
                    label=f"{target}, {depth}: {lo} -> {hi} steps")
    ax.axhspan(1 - BUDGET_MOVE, 1 + BUDGET_MOVE, color="0.85", zorder=0,
               label=f"within {BUDGET_MOVE:.0%}")
    ax.set(xlabel="n", ylabel="W* at a cap / W* at half that cap",
           title=f"(d) budget check, t = {cfg['t_main']}: the cap doubled\n"
                 "(geometric mean over training sets)")
    _log_axes(ax, drawn, cfg["ns"], y=False)
    ax.legend(fontsize=6, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.2))

    t_a, t_b = cfg["t_interval"]
    _draw_w_star(axes[1, 1], r["panels"]["interval"], cfg,
                 f"(e) for all t in [{t_a}, {t_b}]: r = max over {cfg['t_points']} times")

    ax = axes[1, 2]  # (f)
    dup = r["duplicates"]
    ref = main_panel[f"empirical/L={dup['depth']}"]["smallest_width"]
    ns = [int(n) for n in ref if all(w is not None for w in ref[n])]
    ax.plot(ns, [np.exp(np.mean(np.log(ref[str(n)]))) for n in ns], marker="o", color=COLORS[0],
            label=f"n distinct points (panel b, {dup['depth']} hidden layers)")
    label = f"{dup['n']} points, m copies"
    drawn = bool(ns)
    for m, row in dup["copies"].items():
        ws = [w for w in row["smallest_width"] if w is not None]
        if not ws:
            continue
        x, mean = dup["n"] - int(m), np.exp(np.mean(np.log(ws)))
        ax.plot([x] * len(ws), ws, ls="none", marker="x", color=COLORS[1])
        ax.plot(x, mean, marker="D", ls="none", color=COLORS[1], label=label)
        ax.annotate(f"m = {m}", (x, mean), textcoords="offset points", xytext=(4, -10),
                    fontsize=6)
        label, drawn = None, True
    ax.set(xlabel="distinct points n - m", ylabel=f"smallest width with r <= {cfg['eps']}",
           title=f"(f) duplicates: {dup['n']} points of which m are copies\n"
                 "(diamonds: geometric mean; crosses: training sets)")
    _log_axes(ax, drawn, cfg["ns"], y=True)
    ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.2))

    fig.tight_layout()
    on_cap, fits = (sum(c) for c in zip(*(_cap_counts(e) for *_, e in _entries(result)),
                                        strict=True))
    caption(fig, f"{result['profile']} profile: d = {cfg['d']}, {cfg['seeds']} training sets per "
                 f"n; each fit trains to its plateau or {cfg['steps']} steps ({on_cap} of {fits} "
                 "member fits stopped on the step cap: budget-limited). (b, e): geometric mean "
                 "over training sets, bars the range; slopes: least squares on all (n, training "
                 f"set) points with n >= {cfg['fit_min_n']}, 95% t-intervals.", y=-0.05)
    return save_figure(fig, stem)


if __name__ == "__main__":
    main(sys.modules[__name__])
