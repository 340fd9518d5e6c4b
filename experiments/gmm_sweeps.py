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

Run: python -m experiments.gmm_sweeps [--profile smoke|quick|paper] [--set key=value] [--force]
"""

from __future__ import annotations

import sys

import numpy as np
from matplotlib import colormaps
from tqdm import tqdm

from experiments.common.plotting import COLORS, caption, log_ticks, new_figure, save_figure
from experiments.common.runs import Units, main
from experiments.common.score_nets import (
    CACHE_DIR,
    NetSpec,
    aggregate,
    data_log_likelihood,
    measure,
    reference,
    sampler_spec,
    train_config,
    train_score_net,
    training_set,
)
from theory.mixtures import paper_mixture
from theory.networks import mlp_param_count

NAME = "gmm_sweeps"

# -- configuration ----------------------------------------------------------------------------
# The network predicts x_0 (the "denoiser" parametrization of theory.networks, read as a score):
# in a pilot it memorized far more readily than eps-prediction at equal cost (n = 16,
# width 256, 3,000 steps: memorization ratio 0.85 vs 0.54).
# ``widths`` x ``ns`` is the grid of Fig. 3a (left); its rows at ``width_ns`` are Fig. 3b
# (left) and its column at ``wd_width`` is the weight decay 0 point of Fig. 3b (right).
PROFILES = {
    "smoke": {
        "seed": 0, "seeds": 1, "device": "cpu", "cache": False, "K": 8, "mean_std": 2.0,
        "d_main": 4, "ns": [8, 16], "widths": [8, 16], "depth": 2, "emb_dim": 16,
        "ds": [2, 4], "d_ns": [8, 16], "d_width": 16,
        "width_ns": [8, 16], "wd_ns": [8, 16], "wd_width": 16, "weight_decays": [0.0, 1.0],
        "steps": 60, "batch": 64, "lr": 2e-3, "weight_decay": 0.0, "t0": 1e-3, "T": 8.0,
        "samples": 64, "sampler_steps": 20, "data_ll_draws": 1000,
    },
    "quick": {
        "seed": 0, "seeds": 1, "device": "cpu", "cache": True, "K": 8, "mean_std": 2.0,
        "d_main": 32, "ns": [16, 32, 64, 128, 256], "widths": [64, 128, 256, 512],
        "depth": 3, "emb_dim": 16,
        "ds": [8, 16, 32, 64], "d_ns": [16, 64, 256], "d_width": 256,
        "width_ns": [32, 128], "wd_ns": [32, 128], "wd_width": 256,
        "weight_decays": [0.0, 0.1, 0.3, 1.0, 3.0],
        "steps": 3000, "batch": 256, "lr": 2e-3, "weight_decay": 0.0, "t0": 1e-3, "T": 8.0,
        "samples": 500, "sampler_steps": 200, "data_ll_draws": 20000,
    },
    "paper": {
        "seed": 0, "seeds": 3, "device": "auto", "cache": True, "K": 8, "mean_std": 2.0,
        "d_main": 32, "ns": [1000, 3200, 10000, 32000, 100000],
        "widths": [74, 256, 1024, 2048, 3840], "depth": 4, "emb_dim": 32,  # 24K-44.6M params
        "ds": [8, 16, 32, 64], "d_ns": [1000, 3200, 10000, 32000, 100000], "d_width": 1984,
        "width_ns": [3200, 10000], "wd_ns": [3200, 10000], "wd_width": 1984,
        "weight_decays": [0.0, 0.01, 0.1, 0.3, 1.0],
        "steps": 100000, "batch": 1024, "lr": 1e-3, "weight_decay": 0.0, "t0": 1e-3, "T": 8.0,
        "samples": 10000, "sampler_steps": 400, "data_ll_draws": 100000,
    },
}


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
    """All networks and references, one resumable unit each, as flat records."""
    nets, refs = [], []
    todo = [(job, s) for job in jobs(config) for s in range(config["seeds"])]
    bar = tqdm(todo, desc="score networks")
    for (d, n, width, wd), s in bar:
        bar.set_postfix_str(f"d={d} n={n} width={width} wd={wd} seed={s}")
        rep = units.get(f"net/d={d}/n={n}/w={width}/wd={wd}/s={s}",
                        lambda a=(d, n, width, wd, s): run_network(config, *a))
        nets.append({"d": d, "n": n, "width": width, "weight_decay": wd, "seed": s,
                     "num_params": num_params(config, d, width), **rep})
    pairs = sorted({(d, n) for d, n, _, _ in jobs(config)})
    for (d, n), s in tqdm([(p, s) for p in pairs for s in range(config["seeds"])],
                          desc="exact references"):
        rep = units.get(f"ref/d={d}/n={n}/s={s}", lambda a=(d, n, s): run_references(config, *a))
        for kind, r in rep.items():
            refs.append({"d": d, "n": n, "seed": s, "kind": kind, **r})
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


# -- drawing from the JSON ------------------------------------------------------------------------


def select(records: list[dict], **match) -> list[dict]:
    """The records whose fields equal ``match``."""
    return [r for r in records if all(r[k] == v for k, v in match.items())]


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
    return text + ". Bars: 95% Wilson intervals (1 seed) or +-1 std over seeds."


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
            twin.errorbar(xs, c["ll"], yerr=c["ll_err"], color=color, ls="--", marker="s",
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
