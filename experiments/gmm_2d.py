"""Fig. 2: score networks of growing size on a 2-D Gaussian mixture, from underfitting to
memorizing (§6.1).

A small training set is drawn from a K = 4 mixture in d = 2. Score networks of
increasing width are trained on it by DSM, and each draws samples with the reverse SDE.
Each panel scatters the samples over the training points; a sample is red when the
paper's rule calls it memorized (||x - x_(1)||^2 <= ||x - x_(2)||^2 / 9). The first and
last panels are the exact references, measured the same way: the true score (fresh
samples; in 2-D chance alone flags about (1/3)^2 = 11% of them, the baseline every
network panel must be read against) and the empirical score (samples are training
points). Titles give the memorization ratio with its 95% interval and the mean
log-likelihood under the true mixture.

Run: python -m experiments.gmm_2d [--profile smoke|quick|paper] [--set key=value] [--force]
"""

from __future__ import annotations

import sys

import numpy as np

from experiments.common.plotting import new_figure, save_figure
from experiments.common.runs import Units, main, run_units
from experiments.common.score_nets import (
    CACHE_DIR,
    NetSpec,
    aggregate,
    data_log_likelihood,
    measure,
    paired_effect,
    reference,
    sampler_spec,
    train_config,
    train_score_net,
    training_set,
)
from experiments.common.stats import as_facts
from theory.mixtures import paper_mixture
from theory.networks import mlp_param_count

NAME = "gmm_2d"

# -- configuration ----------------------------------------------------------------------------
# The paper does not state n or the network sizes of Fig. 2: ours, in
# paper_notes/gmm_memorization.md.
PROFILES = {
    "smoke": {
        "seed": 0, "seeds": 2, "workers": 1, "device": "cpu", "cache": False, "d": 2, "K": 4,
        "mean_std": 2.0, "n": 16, "widths": [4, 16], "depth": 2, "emb_dim": 16,
        "steps": 60, "batch": 64, "lr": 2e-3, "weight_decay": 0.0, "t0": 1e-3, "T": 8.0,
        "samples": 64, "sampler_steps": 20, "scatter": 64, "data_ll_draws": 1000,
    },
    "quick": {
        "seed": 0, "seeds": 3, "workers": 2, "device": "cpu", "cache": True, "d": 2, "K": 4,
        "mean_std": 2.0, "n": 16, "widths": [8, 32, 128, 512], "depth": 3, "emb_dim": 16,
        "steps": 3000, "batch": 128, "lr": 2e-3, "weight_decay": 0.0, "t0": 1e-3, "T": 8.0,
        "samples": 1000, "sampler_steps": 200, "scatter": 1000, "data_ll_draws": 20000,
    },
    "paper": {
        "seed": 0, "seeds": 3, "workers": 1, "device": "auto", "cache": True, "d": 2, "K": 4,
        "mean_std": 2.0, "n": 16, "widths": [8, 32, 128, 512, 2048], "depth": 3,
        "emb_dim": 16, "steps": 20000, "batch": 512, "lr": 1e-3, "weight_decay": 0.0,
        "t0": 1e-3, "T": 8.0, "samples": 5000, "sampler_steps": 400, "scatter": 2000,
        "data_ll_draws": 100000,
    },
}


def run_panel(config: dict, panel: str, seed: int) -> dict:
    """Samples and metrics of one panel ("true", "empirical" or "width=W") for one seed;
    the first seed keeps ``scatter`` samples for the figure."""
    mixture = paper_mixture(config["d"], config["K"], config["mean_std"], seed=config["seed"])
    points = training_set(mixture, config["n"], seed)
    keep = config["scatter"] if seed == 0 else 0
    if panel in ("true", "empirical"):
        return reference(panel, points, mixture, sampler_spec(config), seed, config["device"],
                         keep)
    spec = NetSpec.uniform(int(panel.split("=")[1]), config["depth"],
                           emb_dim=config["emb_dim"], parametrization="denoiser")
    net = train_score_net(points, spec, train_config(config, seed), config["device"],
                          CACHE_DIR if config["cache"] else None)
    return measure(net, points, mixture, sampler_spec(config), seed, config["device"], keep)


def compute(config: dict, units: Units) -> dict:
    """Every panel for every seed (one resumable unit each), the training set, the means."""
    mixture = paper_mixture(config["d"], config["K"], config["mean_std"], seed=config["seed"])
    names = ["true", "empirical"] + [f"width={w}" for w in config["widths"]]
    tasks = [(f"{name}/s={s}", run_panel, (config, name, s))
             for name in names for s in range(config["seeds"])]
    done = run_units(units, tasks, config["workers"], "panels")
    panels = {name: [{"seed": s, **done[f"{name}/s={s}"]} for s in range(config["seeds"])]
              for name in names}
    points = training_set(mixture, config["n"], 0)
    return {
        "training_points": points.tolist(),
        "means": mixture.means.tolist(),
        "panels": panels,
        "num_params": {str(w): mlp_param_count(config["d"] + config["emb_dim"], w,
                                               config["depth"], config["d"])
                       for w in config["widths"]},
        "data_log_likelihood": data_log_likelihood(mixture, config["data_ll_draws"],
                                                   config["seed"]),
    }


# -- what the notes quote (figures/claims.py) ----------------------------------------------------


def facts(result: dict) -> dict[str, float]:
    """Per panel: memorization ratio and log-likelihood, mean and 95% interval over seeds;
    paired by seed, the widest - the narrowest network and every network - the exact true
    score on the same training set (memorization above the rule's chance level); E log p(X)."""
    cfg, r = result["config"], result["results"]
    out: dict[str, float] = {}
    for name, reports in r["panels"].items():
        for field, value in aggregate(reports).items():
            if isinstance(value, float):
                out[f"{field}/{name}"] = value
    wide, narrow = f"width={max(cfg['widths'])}", f"width={min(cfg['widths'])}"
    pairs = [(wide, narrow)] + [(f"width={w}", "true") for w in cfg["widths"]]
    for a, b in pairs:
        for field, short in (("memorization_ratio", "ratio"), ("log_likelihood", "ll")):
            out |= as_facts(f"effect/{a}-{b}/{short}",
                            paired_effect(r["panels"][a], r["panels"][b], field))
    out["data_ll"] = r["data_log_likelihood"]["value"]
    return out


# -- drawing from the JSON ------------------------------------------------------------------------


def plot(result: dict, stem) -> list:
    """One scatter panel per score: true, the networks by width, empirical."""
    r, cfg = result["results"], result["config"]
    order = ["true"] + [f"width={w}" for w in cfg["widths"]] + ["empirical"]
    cols = 3
    rows = -(-len(order) // cols)
    fig, axes = new_figure(rows, cols, width=9.0, height=3.0)
    pts = np.array(r["training_points"])
    ref_ll = r["data_log_likelihood"]["value"]
    lim = np.abs(pts).max() + 2.5
    for ax, key in zip(axes.flat, order, strict=False):
        first = r["panels"][key][0]
        x, mem = np.array(first["samples"]), np.array(first["memorized"], dtype=bool)
        ax.scatter(*x[~mem].T, s=3, color="tab:blue", alpha=0.35, lw=0, label="generated")
        ax.scatter(*x[mem].T, s=4, color="tab:red", alpha=0.8, lw=0, label="memorized")
        ax.scatter(*pts.T, s=22, marker="x", color="k", lw=0.9, label="training point")
        a = aggregate(r["panels"][key])
        if key.startswith("width"):
            w = key.split("=")[1]
            name = f"network, width {w} ({r['num_params'][w] / 1e3:.1f}K params)"
        else:
            name = f"exact {key} score"
        ax.set_title(f"{name}\nmemorized {a['ratio']:.2f} [{a['ratio_low']:.2f}, "
                     f"{a['ratio_high']:.2f}], log-lik {a['ll']:.2f}", fontsize=7.5)
        ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal")
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[len(order):]:
        ax.axis("off")
    axes[0, 0].legend(loc="lower left", fontsize=6.5, markerscale=2)
    fig.suptitle(f"n = {cfg['n']} training points (seed 0 shown), d = 2, K = {cfg['K']}; "
                 f"E log p(X) = {ref_ll:.2f}; depth {cfg['depth']}, {cfg['steps']} steps; "
                 f"titles: mean [95% interval] over {cfg['seeds']} training seeds",
                 fontsize=8.5)
    fig.tight_layout()
    return save_figure(fig, stem)


if __name__ == "__main__":
    main(sys.modules[__name__])
