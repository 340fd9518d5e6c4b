"""Figs. 3a and 3b: when do score networks on Gaussian mixtures memorize? (§6.1)

Theory (§4-5): the empirical score, which a network memorizes by fitting, minimizes the
training loss, and fitting it needs a network that grows with n. So memorization should
rise with network size and fall with n and d; weight decay, which limits the effective
size, should push back. We train score networks on n draws from the paper's mixture
(K = 8 components N(mu_k, I_d), mu_k ~ N(0, 4 I)), sample from each, and measure

  memorization ratio: the fraction of samples with ||x - x_(1)||^2 <= ||x - x_(2)||^2 / 9;
  log-likelihood: mean log p_data(x) of the samples under the true mixture.

  Fig. 3a (left)  memorization ratio vs n, one line per network size, d = d_main;
  Fig. 3a (right) memorization ratio vs n, one line per d, at width d_width;
  Fig. 3b (left)  memorization ratio (solid) and log-likelihood (dashed) vs width, two n;
  Fig. 3b (right) the same vs weight decay at width wd_width.

Every panel also shows the two exact references measured the same way: sampling with
the exact empirical score (memorizes: ratio ~1) and with the exact true score (ratio at
chance, log-likelihood = E log p(X)). The quick profile is a CPU-sized version: networks
of 14K-567K parameters and n = 16-256 instead of 24K-44M and 1K-100K, chosen so that the
grid still crosses the memorization transition.

Run: python -m experiments.gmm_sweeps [--profile smoke|quick|gpu|paper] [--set key=value] [--force]
"""

from __future__ import annotations

import sys

import numpy as np
from matplotlib import colormaps

from experiments.common.plotting import COLORS, caption, log_ticks, new_figure, save_figure
from experiments.common.runs import Units, main, run_units
from experiments.common.score_nets import (
    CACHE_DIR,
    NetSpec,
    aggregate,
    cell,
    data_log_likelihood,
    effect_cell,
    measure,
    paired_effect,
    reference,
    sampler_spec,
    train_config,
    train_score_net,
    training_set,
)
from experiments.common.stats import as_facts, markdown_table, seed_interval, slope_over_seeds
from theory.mixtures import paper_mixture
from theory.networks import mlp_param_count

NAME = "gmm_sweeps"

# -- configuration ----------------------------------------------------------------------------
# The network predicts x_0 (the "denoiser" parametrization of theory.networks, read as a score):
# in a pilot it memorized far more readily than eps-prediction at equal cost (n = 16,
# width 256, 3,000 steps: memorization ratio 0.85 vs 0.54).
# ``widths`` x ``ns`` is the grid of Fig. 3a (left); its rows at ``width_ns`` are Fig. 3b
# (left) and its column at ``wd_width`` is the weight decay 0 point of Fig. 3b (right).
# quick: 3 training seeds, so that effects are shown over training runs, not samples; batch
# 128 (a pilot memorized as much as at batch 256 for the same 3,000 steps, at two thirds of
# the cost); ``workers`` processes train networks side by side (experiments/common/runs.py).
# The d panel stops at n = 64: at n = 256 no d memorized more than the rule's chance level
# (3 seeds, an earlier run of this grid), and its 9 networks kept the whole quick profile
# above 30 minutes.
PROFILES = {
    "smoke": {
        "seed": 0, "seeds": 2, "workers": 1, "device": "cpu", "cache": False, "K": 8,
        "mean_std": 2.0, "d_main": 4, "ns": [8, 16], "widths": [8, 16], "depth": 2, "emb_dim": 16,
        "ds": [2, 4], "d_ns": [8, 16], "d_width": 16,
        "width_ns": [8, 16], "wd_ns": [8, 16], "wd_width": 16, "weight_decays": [0.0, 1.0],
        "steps": 60, "batch": 64, "lr": 2e-3, "weight_decay": 0.0, "t0": 1e-3, "T": 8.0,
        "samples": 64, "sampler_steps": 20, "data_ll_draws": 1000,
    },
    "quick": {
        "seed": 0, "seeds": 3, "workers": 2, "device": "cpu", "cache": True, "K": 8,
        "mean_std": 2.0, "d_main": 32, "ns": [16, 32, 64, 128, 256], "widths": [64, 128, 256, 512],
        "depth": 3, "emb_dim": 16,
        "ds": [8, 16, 32, 64], "d_ns": [16, 64], "d_width": 256,
        "width_ns": [32, 128], "wd_ns": [32, 128], "wd_width": 256,
        "weight_decays": [0.0, 0.1, 0.3, 1.0, 3.0],
        "steps": 3000, "batch": 128, "lr": 2e-3, "weight_decay": 0.0, "t0": 1e-3, "T": 8.0,
        "samples": 500, "sampler_steps": 200, "data_ll_draws": 20000,
    },
    "paper": {
        "seed": 0, "seeds": 3, "workers": 1, "device": "auto", "cache": True, "K": 8,
        "mean_std": 2.0, "d_main": 32, "ns": [1000, 3200, 10000, 32000, 100000],
        "widths": [74, 256, 1024, 2048, 3840], "depth": 4, "emb_dim": 32,  # 24K-44.6M params
        "ds": [8, 16, 32, 64], "d_ns": [1000, 3200, 10000, 32000, 100000], "d_width": 1984,
        "width_ns": [3200, 10000], "wd_ns": [3200, 10000], "wd_width": 1984,
        "weight_decays": [0.0, 0.01, 0.1, 0.3, 1.0],
        "steps": 100000, "batch": 1024, "lr": 1e-3, "weight_decay": 0.0, "t0": 1e-3, "T": 8.0,
        "samples": 10000, "sampler_steps": 400, "data_ll_draws": 100000,
    },
}

# The GPU campaign's size (experiments/gpu_campaign.py runs the largest of its cuts that fits
# its share of a lent GPU's minutes): the quick recipe (d = 32, 3,000 steps) on a grid with
# 4x the n and the width, so that Fig. 3a's transition n can move with width.
PROFILES["gpu"] = {**PROFILES["quick"], "workers": 1, "device": "auto",
                   "ns": [16, 32, 64, 128, 256, 512, 1024],
                   "widths": [64, 128, 256, 512, 1024, 2048]}


def num_params(config: dict, d: int, width: int) -> int:
    """Parameters of the score network of width ``width`` at dimension d."""
    return mlp_param_count(d + config["emb_dim"], width, config["depth"], d)


def jobs(config: dict) -> list[tuple[int, int, int, float]]:
    """Every network the figures need, as (d, n, width, weight decay), without repeats."""
    d, base = config["d_main"], config["weight_decay"]
    grid = [(d, n, w, base) for n in config["ns"] for w in config["widths"]]
    grid += [(d, n, w, base) for n in config["width_ns"] for w in config["widths"]]
    grid += [(dd, n, config["d_width"], base) for dd in config["ds"] for n in config["d_ns"]]
    grid += [(d, n, config["wd_width"], wd)
             for n in config["wd_ns"] for wd in config["weight_decays"]]
    return list(dict.fromkeys(grid))


def reference_pairs(config: dict) -> list[tuple[int, int]]:
    """Every (d, n) of the networks, once: each gets the exact empirical and true scores."""
    return sorted({(d, n) for d, n, _, _ in jobs(config)})


# -- one network: train, sample, measure --------------------------------------------------------


def run_network(config: dict, d: int, n: int, width: int, wd: float, seed: int) -> dict:
    """Train one score network on D (n points, seed) and measure its samples."""
    mixture = paper_mixture(d, config["K"], config["mean_std"], seed=config["seed"])
    points = training_set(mixture, n, seed)
    spec = NetSpec.uniform(width, config["depth"], emb_dim=config["emb_dim"],
                           parametrization="denoiser")
    net = train_score_net(points, spec, train_config(config, seed, wd), config["device"],
                          CACHE_DIR if config["cache"] else None)
    return measure(net, points, mixture, sampler_spec(config), seed, config["device"])


def run_references(config: dict, d: int, n: int, seed: int) -> dict:
    """The exact empirical and true scores on the same D, measured the same way."""
    mixture = paper_mixture(d, config["K"], config["mean_std"], seed=config["seed"])
    points = training_set(mixture, n, seed)
    return {kind: reference(kind, points, mixture, sampler_spec(config), seed, config["device"])
            for kind in ("empirical", "true")}


def compute(config: dict, units: Units) -> dict:
    """All networks and references for every seed, one resumable unit each (run in
    ``workers`` processes), as flat records."""
    seeds = range(config["seeds"])
    tasks = [(f"net/d={d}/n={n}/w={width}/wd={wd}/s={s}", run_network, (config, d, n, width, wd, s))
             for d, n, width, wd in jobs(config) for s in seeds]
    done = run_units(units, tasks, config["workers"], "score networks")
    nets = [{"d": d, "n": n, "width": width, "weight_decay": wd, "seed": s,
             "num_params": num_params(config, d, width), **done[key]}
            for key, _, (_, d, n, width, wd, s) in tasks]
    pairs = reference_pairs(config)
    tasks = [(f"ref/d={d}/n={n}/s={s}", run_references, (config, d, n, s))
             for d, n in pairs for s in seeds]
    done = run_units(units, tasks, config["workers"], "exact references")
    refs = [{"d": d, "n": n, "seed": s, "kind": kind, **r}
            for key, _, (_, d, n, s) in tasks for kind, r in done[key].items()]
    data_ll = {}
    for d in sorted({p[0] for p in pairs}):
        mixture = paper_mixture(d, config["K"], config["mean_std"], seed=config["seed"])
        data_ll[str(d)] = data_log_likelihood(mixture, config["data_ll_draws"], config["seed"])
    return {"networks": nets, "references": refs, "data_log_likelihood": data_ll,
            "reference_checks": reference_checks(refs, data_ll)}


def reference_checks(refs: list[dict], data_ll: dict) -> dict:
    """The references' sanity numbers: empirical ratio (should be >= 0.99), true ratio, and the
    true-score log-likelihood minus E log p in joint standard errors, worst case per d."""
    out = {}
    for d in sorted({r["d"] for r in refs}):
        emp = [r["memorization_ratio"] for r in refs if r["d"] == d and r["kind"] == "empirical"]
        true = [r for r in refs if r["d"] == d and r["kind"] == "true"]
        ref = data_ll[str(d)]
        z = [abs(r["log_likelihood"] - ref["value"])
             / float(np.hypot(r["log_likelihood_se"], ref["stderr"])) for r in true]
        out[str(d)] = {"empirical_ratio_min": min(emp),
                       "true_ratio_max": max(r["memorization_ratio"] for r in true),
                       "true_ll_z_max": max(z)}
    return out


# -- what the notes quote (figures/claims.py renders it into README.md and paper_notes/) ----------


def select(records: list[dict], **match) -> list[dict]:
    """The records whose fields equal ``match``."""
    return [r for r in records if all(r[k] == v for k, v in match.items())]


def transition_n(ns: list[int], ratios: list[float], level: float = 0.5) -> float | None:
    """The n at which one seed's memorization ratio first falls below ``level`` along the
    grid ``ns``, interpolated linearly in log n; None if it does not cross inside the grid."""
    points = list(zip(ns, ratios, strict=True))
    for (n0, r0), (n1, r1) in zip(points, points[1:], strict=False):
        if r0 >= level > r1:
            u = (r0 - level) / (r0 - r1)
            return float(np.exp(np.log(n0) + u * (np.log(n1) - np.log(n0))))
    return None


def effects(result: dict) -> dict[str, dict]:
    """Paired effects over training seeds (same training set and initialization), each a
    ``paired_effect`` dict: widest - narrowest width at each n of Fig. 3b (memorization and
    log-likelihood), and each weight decay - no weight decay at each n of Fig. 3b."""
    cfg, nets = result["config"], result["results"]["networks"]
    d, base, widths = cfg["d_main"], cfg["weight_decay"], cfg["widths"]
    out = {}
    for n in cfg["width_ns"]:
        wide = select(nets, d=d, n=n, width=max(widths), weight_decay=base)
        narrow = select(nets, d=d, n=n, width=min(widths), weight_decay=base)
        for field, short in (("memorization_ratio", "ratio"), ("log_likelihood", "ll")):
            out[f"width{max(widths)}-{min(widths)}/n={n}/{short}"] = paired_effect(
                wide, narrow, field)
    for n in cfg["wd_ns"]:
        none = select(nets, d=d, n=n, width=cfg["wd_width"], weight_decay=base)
        for wd in cfg["weight_decays"]:
            if wd == base:
                continue
            some = select(nets, d=d, n=n, width=cfg["wd_width"], weight_decay=wd)
            for field, short in (("memorization_ratio", "ratio"), ("log_likelihood", "ll")):
                out[f"wd={wd:g}-{base:g}/n={n}/{short}"] = paired_effect(some, none, field)
    return out


def transitions(result: dict) -> dict:
    """Fig. 3a (left): per width, the n where memorization falls through 0.5, per seed and
    over seeds; and the slope of log n_half on log width, per seed then over seeds."""
    cfg, nets = result["config"], result["results"]["networks"]
    per_width, xs, ys, ss = {}, [], [], []
    for w in cfg["widths"]:
        values = []
        for s in range(cfg["seeds"]):
            rows = [select(nets, d=cfg["d_main"], n=n, width=w, weight_decay=cfg["weight_decay"],
                           seed=s)[0]["memorization_ratio"] for n in cfg["ns"]]
            values.append(transition_n(cfg["ns"], rows))
        found = [v for v in values if v is not None]
        per_width[w] = {"per_seed": values, "found": len(found),
                        "mean": float(np.mean(found)) if found else None}
        if len(found) >= 2:
            per_width[w].update(seed_interval(found).to_dict())
        for s, v in enumerate(values):
            if v is not None:
                xs.append(np.log(w))
                ys.append(np.log(v))
                ss.append(s)
    slope = None
    if len(set(ss)) >= 2 and all(ss.count(s) >= 2 for s in set(ss)):
        slope = slope_over_seeds(xs, ys, ss).to_dict()
    return {"per_width": per_width, "slope": slope}


def facts(result: dict) -> dict[str, float]:
    """Named numbers the notes quote: every cell (mean and 95% interval over seeds) of
    memorization ratio and log-likelihood, the paired effects, the transition n, the
    references' extremes and the parameter count of each width at d_main."""
    cfg, r = result["config"], result["results"]
    out: dict[str, float] = {}
    for d, n, w, wd in jobs(cfg):
        a = aggregate(select(r["networks"], d=d, n=n, width=w, weight_decay=wd))
        key = f"d={d}/n={n}/w={w}/wd={wd:g}"
        for field in ("ratio", "ratio_low", "ratio_high", "ll", "ll_low", "ll_high"):
            out[f"{field}/{key}"] = a[field]
    for name, e in effects(result).items():
        out |= as_facts(f"effect/{name}", e)
    t = transitions(result)
    for w, v in t["per_width"].items():
        for field in ("mean", "low", "high", "found"):
            if v.get(field) is not None:
                out[f"n_half/w={w}/{field}"] = v[field]
    if t["slope"] is not None:
        for field in ("value", "low", "high"):
            out[f"n_half_slope/{field}"] = t["slope"][field]
    refs = r["references"]
    for d in sorted({x["d"] for x in refs}):
        true = [x["memorization_ratio"] for x in refs if x["d"] == d and x["kind"] == "true"]
        out[f"true_ratio_max/d={d}"] = max(true)
    for x in refs:
        key = f"ref_ll/{x['kind']}/d={x['d']}/n={x['n']}"
        out[key] = aggregate(select(refs, kind=x["kind"], d=x["d"], n=x["n"]))["ll"]
    out["true_ratio_max"] = max(x["memorization_ratio"] for x in refs if x["kind"] == "true")
    out["empirical_ratio_min"] = min(x["memorization_ratio"] for x in refs
                                     if x["kind"] == "empirical")
    for w in cfg["widths"]:
        out[f"params/w={w}"] = num_params(cfg, cfg["d_main"], w)
    out["data_ll"] = r["data_log_likelihood"][str(cfg["d_main"])]["value"]
    out["data_ll_se"] = r["data_log_likelihood"][str(cfg["d_main"])]["stderr"]
    return out


def blocks(result: dict) -> dict[str, str]:
    """Markdown tables of Figs. 3a and 3b and of the paired effects (figures/claims.py)."""
    cfg, r = result["config"], result["results"]
    nets, d, base = r["networks"], cfg["d_main"], cfg["weight_decay"]

    def mem(**match) -> str:
        return cell(select(nets, **match))

    def both(**match) -> str:
        return f"{cell(select(nets, **match))} / {cell(select(nets, **match), 'll', '.1f')}"

    out = {}
    rows = [[f"{w} ({num_params(cfg, d, w) / 1e3:.0f}K)"]
            + [mem(d=d, n=n, width=w, weight_decay=base) for n in cfg["ns"]]
            for w in cfg["widths"]]
    for kind in ("empirical", "true"):
        rows.append([f"exact {kind} score"] + [cell(select(r["references"], d=d, n=n, kind=kind))
                                               for n in cfg["ns"]])
    out["fig3a_width"] = markdown_table(["width (params)"] + [f"n = {n}" for n in cfg["ns"]], rows)
    rows = [[str(dd)] + [mem(d=dd, n=n, width=cfg["d_width"], weight_decay=base)
                         for n in cfg["d_ns"]] for dd in cfg["ds"]]
    rows += [[f"exact true score, d = {dd}"] + [cell(select(r["references"], d=dd, n=n,
                                                            kind="true")) for n in cfg["d_ns"]]
             for dd in cfg["ds"]]
    out["fig3a_d"] = markdown_table(["d"] + [f"n = {n}" for n in cfg["d_ns"]], rows)
    out["fig3b_width"] = markdown_table(
        ["memorization / log-likelihood"] + [f"width {w}" for w in cfg["widths"]],
        [[f"n = {n}"] + [both(d=d, n=n, width=w, weight_decay=base) for w in cfg["widths"]]
         for n in cfg["width_ns"]])
    out["fig3b_wd"] = markdown_table(
        [f"weight decay (width {cfg['wd_width']})"] + [f"{wd:g}" for wd in cfg["weight_decays"]],
        [[f"n = {n}"] + [both(d=d, n=n, width=cfg["wd_width"], weight_decay=wd)
                         for wd in cfg["weight_decays"]] for n in cfg["wd_ns"]])
    rows = []
    for name, e in effects(result).items():
        what, n, field = name.split("/")
        label = {"ratio": "memorization ratio", "ll": "log-likelihood"}[field]
        a, b = what.removeprefix("width").removeprefix("wd=").split("-")
        kind = "width" if what.startswith("width") else "weight decay"
        rows.append([f"{kind} {a} − {b}, {n.replace('=', ' = ')}", label,
                     effect_cell(e, "+.2f" if field == "ratio" else "+.1f")])
    out["effects"] = markdown_table(
        ["paired by seed", "on", "difference [95% CI], seeds > 0"], rows)
    return out


# -- drawing from the JSON ------------------------------------------------------------------------


def curve(records: list[dict], key: str, values: list, **match) -> dict[str, np.ndarray]:
    """aggregate() of the records at each value of ``key`` (other fields fixed by match)."""
    rows = [aggregate(select(records, **{key: v}, **match)) for v in values]
    return {k: np.array([r[k] for r in rows]) for k in rows[0]}


def draw_ratio(ax, x, c: dict, color, label, ls="-", marker="o") -> None:
    ax.errorbar(x, c["ratio"], yerr=[c["ratio"] - c["ratio_low"], c["ratio_high"] - c["ratio"]],
                color=color, ls=ls, marker=marker, ms=3, capsize=2, label=label)


def draw_references(ax, r: dict, d: int, ns: list[int]) -> None:
    """Dashed/dotted black lines: exact empirical (memorizes) and exact true score (chance)."""
    for kind, ls, label in (("empirical", "--", "exact empirical score"),
                            ("true", ":", "exact true score")):
        c = curve(r["references"], "n", ns, d=d, kind=kind)
        ax.plot(ns, c["ratio"], color="k", ls=ls, lw=1, label=label)


def grid_caption(result: dict) -> str:
    """What grid made the figure: the quick profile is a CPU-sized version of the paper's."""
    cfg, nets = result["config"], result["results"]["networks"]
    sizes = [x["num_params"] for x in nets]
    text = (f"{result['profile']} profile: n = {min(cfg['ns'])}-{max(cfg['ns'])}, networks of "
            f"{min(sizes) / 1e3:.0f}K-{max(sizes) / 1e3:.0f}K parameters, {cfg['steps']} steps, "
            f"{cfg['samples']} samples per network, {cfg['seeds']} seed(s)")
    if result["profile"] != "paper":
        text += "; the paper: n = 1K-100K, 24K-44M parameters"
    bars = ("95% intervals over training seeds (never narrower than the sampling noise)"
            if cfg["seeds"] > 1 else "95% sampling intervals of one training seed")
    return text + f". Bars: {bars}."


def plot(result: dict, stem) -> list:
    """Fig. 3a (two panels) and Fig. 3b (two panels with a log-likelihood axis each)."""
    r, cfg = result["results"], result["config"]
    nets, d = r["networks"], cfg["d_main"]
    base = cfg["weight_decay"]
    paths = []

    # Fig. 3a
    fig, axes = new_figure(1, 2, width=8.6, height=3.2)
    ax = axes[0, 0]
    for i, w in enumerate(cfg["widths"]):
        c = curve(nets, "n", cfg["ns"], d=d, width=w, weight_decay=base)
        draw_ratio(ax, cfg["ns"], c, colormaps["viridis"](i / max(1, len(cfg["widths"]) - 1)),
                   f"width {w} ({num_params(cfg, d, w) / 1e3:.0f}K params)")
    draw_references(ax, r, d, cfg["ns"])
    ax.set(xscale="log", xlabel="training set size n", ylabel="memorization ratio",
           ylim=(-0.03, 1.03), title=f"(a) network size, d = {d}")
    log_ticks(ax, cfg["ns"])
    ax.legend(fontsize=6.5)
    ax = axes[0, 1]
    for i, dd in enumerate(cfg["ds"]):
        c = curve(nets, "n", cfg["d_ns"], d=dd, width=cfg["d_width"], weight_decay=base)
        draw_ratio(ax, cfg["d_ns"], c, COLORS[i % len(COLORS)], f"d = {dd}")
    draw_references(ax, r, d, cfg["d_ns"])
    ax.set(xscale="log", xlabel="training set size n", ylabel="memorization ratio",
           ylim=(-0.03, 1.03),
           title=f"(b) dimension, width {cfg['d_width']} "
                 f"({num_params(cfg, d, cfg['d_width']) / 1e3:.0f}K params at d = {d})")
    log_ticks(ax, cfg["d_ns"])
    ax.legend(fontsize=6.5)
    fig.tight_layout()
    caption(fig, grid_caption(result))
    paths += save_figure(fig, f"{stem}_fig3a")

    # Fig. 3b
    fig, axes = new_figure(1, 2, width=9.0, height=3.2)
    data_ll = r["data_log_likelihood"][str(d)]["value"]
    panels = (("width", cfg["widths"], cfg["width_ns"], {"weight_decay": base}, "width"),
              ("weight_decay", cfg["weight_decays"], cfg["wd_ns"], {"width": cfg["wd_width"]},
               f"weight decay (AdamW), width {cfg['wd_width']}"))
    for ax, (key, xs, ns, fixed, xlabel) in zip(axes[0], panels, strict=True):
        twin = ax.twinx()
        for i, n in enumerate(ns):
            c = curve(nets, key, xs, d=d, n=n, **fixed)
            color = COLORS[i % len(COLORS)]
            draw_ratio(ax, xs, c, color, f"n = {n}: memorization ratio")
            twin.errorbar(xs, c["ll"], yerr=[c["ll"] - c["ll_low"], c["ll_high"] - c["ll"]],
                          color=color, ls="--", marker="s",
                          ms=2.5, capsize=2, label=f"n = {n}: log-likelihood")
        twin.axhline(data_ll, color="k", ls=":", lw=1, label="E log p(X) (exact)")
        twin.set_ylabel("mean log-likelihood (dashed)")
        twin.spines["right"].set_visible(True)
        twin.grid(False)
        ax.set(xlabel=xlabel, ylabel="memorization ratio (solid)", ylim=(-0.03, 1.03))
        if key == "width":
            ax.set_xscale("log", base=2)
        else:  # symlog: weight decay 0 sits at the left end of a log axis
            ax.set_xscale("symlog", linthresh=min(v for v in xs if v > 0))
        log_ticks(ax, xs)
        lines = ax.get_legend_handles_labels()
        more = twin.get_legend_handles_labels()
        ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=6.5, ncol=2,
                  loc="upper center", bbox_to_anchor=(0.5, -0.2))
    axes[0, 0].set_title(f"(a) width, depth {cfg['depth']}, d = {d}")
    axes[0, 1].set_title(f"(b) weight decay, d = {d}")
    fig.tight_layout()
    caption(fig, grid_caption(result))
    paths += save_figure(fig, f"{stem}_fig3b")
    return paths


if __name__ == "__main__":
    main(sys.modules[__name__])
