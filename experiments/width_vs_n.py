"""The architectural separation (Thm 5.1): width needed to fit the empirical vs the true score.

Thm 5.1 says a ReLU network must grow like n to approximate the empirical score of n
points, while the true score needs a size independent of n. We measure it: on the
paper's mixture (§6.1) at small d, for each n we fit a geometric grid of widths (one
``MLPEnsemble``; each member trains until its held-out error plateaus or a step cap, and
which of the two stopped it is recorded) to the empirical score and to the true score on P_hat_t,
score each fit by r = E||s_net - s_target||^2 / Loss-Gap_t (error in units of the
separation, fresh draws), and read off the smallest width with r <= eps.

  (a) r against width, one curve per n, both targets (depth 1, t = t_main);
  (b) smallest width against n, log-log, both targets, depths 1 and 2, with fitted
      slopes and 95% intervals;
  (c) the same at a smaller t, where the empirical score is rougher (Lemma C.1).

Run: python -m experiments.width_vs_n [--profile smoke|quick|paper] [--set key=value] [--force]
"""

from __future__ import annotations

import math
import sys

import numpy as np
import torch
from matplotlib import colormaps

from experiments.common.plotting import COLORS, caption, new_figure, save_figure
from experiments.common.runs import Units, main, resolve_device, run_units
from experiments.common.stats import format_interval, markdown_table, slope_interval
from theory.capacity import FitBudget, fit_width_sweep, smallest_width
from theory.empirical import EmpiricalScore
from theory.mixtures import paper_mixture
from theory.process import generator

NAME = "width_vs_n"

# -- configuration ----------------------------------------------------------------------------
# Our choices (the paper reports no such experiment): the regime of the theorem needs
# training points well separated at the scale sigma_t (log n = O(d)), so d = 8 and small t.
# Depth >= 2 needs far fewer units, so its grid stops at max_width_deep.
PROFILES = {
    "smoke": {
        "seed": 0, "workers": 1, "device": "cpu", "dtype": "float32", "d": 4, "K": 4,
        "mean_std": 2.0, "ns": [4, 8],
        "widths": [2, 4, 8, 16], "max_width_deep": 16, "depths": [1], "seeds": 2,
        "t_main": 0.2, "t_small": 0.05, "eps": 0.25,
        "steps": 300, "batch": 64, "lr": 1e-2, "eval_draws": 256,
    },
    "quick": {
        "seed": 0, "workers": 2, "device": "cpu", "dtype": "float32", "d": 8, "K": 8,
        "mean_std": 2.0, "ns": [4, 8, 16, 32, 64],
        "widths": [2, 4, 8, 16, 32, 64, 128, 256, 512, 1024], "max_width_deep": 256,
        "depths": [1, 2], "seeds": 3, "t_main": 0.2, "t_small": 0.05, "eps": 0.25,
        "steps": 1500, "batch": 256, "lr": 3e-3, "eval_draws": 2048,
    },
    "paper": {
        "seed": 0, "workers": 1, "device": "auto", "dtype": "float32", "d": 8, "K": 8,
        "mean_std": 2.0, "ns": [4, 8, 16, 32, 64, 128, 256, 512, 1024],
        "widths": [2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192],
        "max_width_deep": 2048, "depths": [1, 2, 3], "seeds": 5, "t_main": 0.2,
        "t_small": 0.05, "eps": 0.25, "steps": 20000, "batch": 512, "lr": 2e-3,
        "eval_draws": 16384,
    },
}
TARGETS = ("empirical", "true")


def widths_for(config: dict, depth: int) -> list[int]:
    """The width grid of a depth: all widths for one hidden layer, capped for deeper nets."""
    return [w for w in config["widths"] if depth == 1 or w <= config["max_width_deep"]]


def check_config(config: dict) -> None:
    """Relations between keys (run before any work; single keys: experiments/common/config.py)."""
    FitBudget(config["steps"], config["batch"], (config["lr"],), 0.0, config["eval_draws"])
    for depth in config["depths"]:  # W* is interpolated between grid widths: it needs two
        if len(widths_for(config, depth)) < 2:
            raise ValueError(f"config widths (capped at max_width_deep={config['max_width_deep']}"
                             f" for depth {depth}) must leave at least two widths, got "
                             f"{widths_for(config, depth)}")


# -- one width sweep ------------------------------------------------------------------------------


def sweep(config: dict, n: int, target: str, depth: int, t: float, seed: int) -> dict:
    """Fit all widths of a depth to one target on training set (n, seed); errors r per width."""
    mixture = paper_mixture(config["d"], config["K"], config["mean_std"], seed=config["seed"])
    # Training sets are drawn in float64 on the CPU (same numbers everywhere), then cast.
    device, dtype = resolve_device(config["device"]), getattr(torch, config["dtype"])
    points = mixture.sample(n, generator(config["seed"], n, seed)).to(device, dtype)
    true = mixture.to(device, dtype)
    goal = EmpiricalScore(points) if target == "empirical" else true
    # One learning rate with the plateau rule of FitBudget (its defaults: evaluate every
    # 100 steps, cut the rate x0.3 after 3 evaluations without a 1% gain, twice, then stop);
    # config["steps"] is the cap.
    budget = FitBudget(config["steps"], config["batch"], (config["lr"],), 0.0,
                       config["eval_draws"])
    fit = fit_width_sweep(goal, points, true, (t, t), widths_for(config, depth), depth,
                          budget, seed=seed)
    return {"widths": list(fit.widths), "num_params": list(fit.num_params),
            "ratio": list(fit.ratio), "on_plateau": list(fit.final.on_plateau),
            "stop_step": list(fit.final.stop_step)}


# -- slopes of log W* against log n ---------------------------------------------------------------


def slope_fit(ns: list[int], widths: list[list[float]]) -> dict:
    """Least-squares slope of log W* on log n over all finite (n, seed) pairs, with a 95% CI.

    widths[i] holds W* of each seed at ns[i]; inf (eps never reached) is left out and
    counted, which biases the slope down if it happens at large n (reported as such).
    """
    x = [math.log(n) for n, ws in zip(ns, widths, strict=True) for w in ws if math.isfinite(w)]
    y = [math.log(w) for ws in widths for w in ws if math.isfinite(w)]
    missing = sum(not math.isfinite(w) for ws in widths for w in ws)
    if len(set(x)) < 2 or len(x) < 3:  # a t-interval needs a residual degree of freedom
        return {"slope": None, "ci_low": None, "ci_high": None, "points": len(x),
                "not_reached": missing}
    fit = slope_interval(x, y)
    return {"slope": fit.value, "ci_low": fit.low, "ci_high": fit.high, "points": len(x),
            "not_reached": missing}


# -- the whole figure -----------------------------------------------------------------------------


def compute(config: dict, units: Units) -> dict:
    """Every number of the figure; one unit per (panel, target, depth, n, seed)."""
    panels = {"main": (config["t_main"], config["depths"]), "small_t": (config["t_small"], [1])}
    jobs = [(p, tgt, depth, n, s) for p, (_, depths) in panels.items() for tgt in TARGETS
            for depth in depths for n in config["ns"] for s in range(config["seeds"])]
    key = "{}/{}/L={}/n={}/s={}".format
    done = run_units(units, [(key(p, tgt, depth, n, s), sweep,
                              (config, n, tgt, depth, panels[p][0], s))
                             for p, tgt, depth, n, s in jobs], config["workers"], "width sweeps")
    result: dict = {"panels": {}}
    for panel, target, depth, n, s in jobs:
        t = panels[panel][0]
        fit = done[key(panel, target, depth, n, s)]
        entry = result["panels"].setdefault(panel, {"t": t}).setdefault(
            f"{target}/L={depth}", {"widths": fit["widths"], "num_params": fit["num_params"],
                                    "ratio": {}, "smallest_width": {}})
        entry["ratio"].setdefault(str(n), []).append(fit["ratio"])
        # How many widths of this fit were still improving at the cap (budget-limited).
        entry.setdefault("on_cap", {}).setdefault(str(n), []).append(
            sum(not p for p in fit["on_plateau"]))
        w_star = smallest_width(fit["widths"], fit["ratio"], config["eps"])
        entry["smallest_width"].setdefault(str(n), []).append(w_star)
    for panel in result["panels"].values():
        for key, entry in panel.items():
            if key == "t":
                continue
            ns = [int(n) for n in entry["smallest_width"]]
            entry["slope"] = slope_fit(ns, list(entry["smallest_width"].values()))
            # inf cannot be stored in JSON: "not reached within the grid" becomes None.
            entry["smallest_width"] = {
                n: [w if math.isfinite(w) else None for w in ws]
                for n, ws in entry["smallest_width"].items()
            }
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


def facts(result: dict) -> dict[str, float]:
    """Per fitted line ("<panel>/<target>/<depth>", e.g. "main/empirical/L=1"): the slope of
    log W* on log n with its interval, the fits left out, W* (mean over training sets) at
    each n and the local slopes between neighbouring n; the range of W* of the true score."""
    out: dict[str, float] = {}
    for panel, target, depth, entry in _entries(result):
        line = f"{panel}/{target}/{depth}"
        sl = entry["slope"]
        for k in ("slope", "ci_low", "ci_high", "not_reached"):
            if sl.get(k) is not None:
                out[f"{line}/{k}"] = sl[k]
        out[f"{line}/on_cap"], out[f"{line}/member_fits"] = _cap_counts(entry)
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
            out["true_slopes"] = out.get("true_slopes", 0) + 1
            excludes = sl["ci_low"] is not None and (sl["ci_low"] > 0 or sl["ci_high"] < 0)
            out["true_slopes_excluding_zero"] = out.get("true_slopes_excluding_zero", 0) + excludes
    return out


def blocks(result: dict) -> dict[str, str]:
    """The table of W* against n and the slopes, one row per fitted line."""
    cfg = result["config"]
    ns = cfg["ns"]
    rows = []
    for panel, target, depth, entry in _entries(result):
        t = result["results"]["panels"][panel]["t"]
        cells = []
        for ws in entry["smallest_width"].values():
            m = _mean_width(ws)
            cells.append(f"> {max(cfg['widths'])}" if m is None else f"{m:.3g}")
        sl = entry["slope"]
        slope = "—" if sl["slope"] is None else format_interval(sl["slope"], sl["ci_low"],
                                                                  sl["ci_high"])
        if sl["not_reached"]:
            slope += f" ({sl['not_reached']} fits beyond the grid left out)"
        rows.append([target, depth.split("=")[1], f"{t:g}", ", ".join(cells), slope])
    header = ["target", "depth", "t", f"W* at n = {', '.join(map(str, ns))} (mean of "
              f"{cfg['seeds']} training sets)", "slope of log W* on log n [95% CI]"]
    return {"table": markdown_table(header, rows)}


# -- drawing from the JSON ------------------------------------------------------------------------


def plot(result: dict, stem) -> list:
    """Three panels: r against width; W* against n at t_main; W* against n at t_small."""
    r, cfg = result["results"], result["config"]
    fig, axes = new_figure(1, 3, width=11.0, height=3.4)

    ax = axes[0, 0]  # (a)
    main_panel = r["panels"]["main"]
    for target, ls in (("empirical", "-"), ("true", "--")):
        entry = main_panel[f"{target}/L=1"]
        ns = list(entry["ratio"])
        for i, n in enumerate(ns):
            c = colormaps["viridis"](i / max(1, len(ns) - 1))
            ratio = np.exp(np.mean(np.log(entry["ratio"][n]), axis=0))  # geometric mean, seeds
            ax.plot(entry["widths"], ratio, ls=ls, marker="o", ms=2.5, color=c,
                    label=f"n = {n}" if target == "empirical" else None)
    ax.axhline(cfg["eps"], color="k", lw=0.8, ls=":", label=f"eps = {cfg['eps']}")
    ax.set(xscale="log", yscale="log", xlabel="width", ylabel="r = error / Loss-Gap",
           title=f"(a) fit error, 1 hidden layer, t = {cfg['t_main']}\n"
                 "solid: empirical score, dashed: true score")
    ax.legend(ncol=3, fontsize=6.5, loc="upper center", bbox_to_anchor=(0.5, -0.2))

    for ax, panel, title in ((axes[0, 1], "main", "(b)"), (axes[0, 2], "small_t", "(c)")):
        data = r["panels"][panel]
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
            sl = entry["slope"]
            label = f"{target}, {depth}: no slope"
            if sl["slope"] is not None:
                label = f"{target}, {depth}: slope {sl['slope']:.2f}"
                if sl["ci_low"] is not None:
                    label += f" [{sl['ci_low']:.2f}, {sl['ci_high']:.2f}]"
            if sl["not_reached"]:
                label += f"; {sl['not_reached']} fits beyond the grid"
            color = COLORS[k % len(COLORS)]
            ls = "-" if target == "empirical" else "--"
            ax.errorbar(ns, mean, yerr=[mean - lo, hi - mean], marker="o", ls=ls, color=color,
                        label=label, capsize=2)
            k += 1
        ax.set(xscale="log", yscale="log", xlabel="n",
               ylabel=f"smallest width with r <= {cfg['eps']}",
               title=f"{title} smallest width vs n, t = {data['t']}")
        ax.set_xticks(cfg["ns"], [str(n) for n in cfg["ns"]])
        ax.minorticks_off()
        ax.legend(fontsize=6.5, loc="upper center", bbox_to_anchor=(0.5, -0.2))
    fig.tight_layout()
    on_cap, fits = (sum(c) for c in zip(*(_cap_counts(e) for *_, e in _entries(result)),
                                        strict=True))
    caption(fig, f"{result['profile']} profile: d = {cfg['d']}, {cfg['seeds']} training sets per "
                 f"n; each fit trains to its plateau or {cfg['steps']} steps ({on_cap} of {fits} "
                 "member fits stopped on the step cap: budget-limited). (b, c): geometric mean "
                 "over training sets, bars the range; slopes: least squares on all (n, training "
                 "set) points, 95% t-intervals.", y=-0.28)
    return save_figure(fig, stem)


if __name__ == "__main__":
    main(sys.modules[__name__])
