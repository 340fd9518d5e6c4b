"""The pruning bridge: from Thm 5.1 (width) to the DiT head-pruning method (§5, §6.2).

Thm 5.1: fitting the empirical score, i.e. memorizing, needs a network whose size grows
with n; the true score does not. So removing capacity from a memorizing network should
push it from the empirical towards the true score. We test that with the paper's
pruning method (Alg. 2: mask-gradient importance at t ~ Beta(0.8, 2), per-layer
normalization, global ranking), applied to the hidden units of a memorizing score MLP:

  1. train a wide network on a small training set of the d = 32 mixture (it memorizes);
  2. for each pruning ratio eta and each importance (mask gradient, magnitude, random)
     remove the floor(eta * H) least important hidden units, physically;
  3. fine-tune the smaller network with the same DSM loop (the unpruned network gets
     the same fine-tuning: the eta = 0 control);
  4. sample, and measure memorization ratio and log-likelihood, before and after fine-tuning.

Figure: memorization ratio (left) and mean log-likelihood (right) against eta, one
colour per importance, solid after fine-tuning, dotted before; the exact empirical and
true scores as references.

Run: python -m experiments.gmm_pruning [--profile smoke|quick|paper] [--set key=value] [--force]
"""

from __future__ import annotations

import sys

import numpy as np

from experiments.common.plotting import COLORS, caption, new_figure, save_figure
from experiments.common.pruning import HiddenUnits, groups_to_remove, importance, prune, select
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
from experiments.common.stats import as_facts, markdown_table
from theory.mixtures import paper_mixture

NAME = "gmm_pruning"

# -- configuration ----------------------------------------------------------------------------
# The base network is the widest network of the quick Fig. 3a grid at n = 32 (the same
# config and seeds, so its training checkpoints are shared): it memorizes most of its
# samples. Importance uses 32 batches of 128, as many as a few epochs of the DiT study.
PROFILES = {
    "smoke": {
        "seed": 0, "seeds": 2, "workers": 1, "device": "cpu", "cache": False, "d": 4, "K": 8,
        "mean_std": 2.0, "n": 8, "width": 16, "depth": 2, "emb_dim": 16,
        "steps": 60, "batch": 64, "lr": 2e-3, "weight_decay": 0.0, "t0": 1e-3, "T": 8.0,
        "etas": [0.0, 0.5], "methods": ["mask_gradient", "random"],
        "importance_batches": 2, "finetune_steps": 20, "finetune_lr": 1e-3,
        "samples": 64, "sampler_steps": 20, "data_ll_draws": 1000,
    },
    "quick": {
        "seed": 0, "seeds": 3, "workers": 2, "device": "cpu", "cache": True, "d": 32, "K": 8,
        "mean_std": 2.0, "n": 32, "width": 512, "depth": 3, "emb_dim": 16,
        "steps": 3000, "batch": 128, "lr": 2e-3, "weight_decay": 0.0, "t0": 1e-3, "T": 8.0,
        "etas": [0.0, 0.2, 0.4, 0.6, 0.8], "methods": ["mask_gradient", "magnitude", "random"],
        "importance_batches": 32, "finetune_steps": 1000, "finetune_lr": 1e-3,
        "samples": 500, "sampler_steps": 200, "data_ll_draws": 20000,
    },
    "paper": {
        "seed": 0, "seeds": 3, "workers": 1, "device": "auto", "cache": True, "d": 32, "K": 8,
        "mean_std": 2.0, "n": 1000, "width": 2048, "depth": 4, "emb_dim": 32,
        "steps": 100000, "batch": 1024, "lr": 1e-3, "weight_decay": 0.0, "t0": 1e-3, "T": 8.0,
        "etas": [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8],
        "methods": ["mask_gradient", "magnitude", "random"],
        "importance_batches": 100, "finetune_steps": 10000, "finetune_lr": 5e-4,
        "samples": 10000, "sampler_steps": 400, "data_ll_draws": 100000,
    },
}


def prune_and_finetune(config: dict, eta: float, method: str, seed: int) -> dict:
    """Prune the trained base network of ``seed`` by ``method`` at ratio eta, fine-tune;
    metrics before and after fine-tuning and the remaining parameter count."""
    mixture = paper_mixture(config["d"], config["K"], config["mean_std"], seed=config["seed"])
    points = training_set(mixture, config["n"], seed)
    cache = CACHE_DIR if config["cache"] else None
    spec = NetSpec.uniform(config["width"], config["depth"], emb_dim=config["emb_dim"],
                           parametrization="denoiser")
    base = train_score_net(points, spec, train_config(config, seed), config["device"], cache)
    groups = HiddenUnits(base)
    scores = importance(groups, method, points.float(), config["importance_batches"],
                        config["batch"], config["t0"], config["T"], seed=seed)
    small = prune(groups, select(scores, eta, groups.min_keep))
    sampler = sampler_spec(config)
    before = measure(small, points, mixture, sampler, seed, config["device"])
    small_spec = NetSpec(small.hidden_widths, config["emb_dim"], "denoiser")
    tune = train_config({**config, "lr": config["finetune_lr"]}, seed,
                        steps=config["finetune_steps"])
    tuned = train_score_net(points, small_spec, tune, config["device"], cache, init=small)
    after = measure(tuned, points, mixture, sampler, seed, config["device"])
    return {"num_params": small.num_params, "hidden_widths": list(small.hidden_widths),
            "before_finetune": before, "after_finetune": after}


def check_config(config: dict) -> None:
    """Relations between keys (run before any work; single keys: experiments/common/config.py)."""
    if config["etas"][0] != 0:
        raise ValueError(f"config etas must start with 0 (the control), got {config['etas']}")
    try:  # the largest ratio must leave every hidden layer a unit (HiddenUnits.min_keep)
        groups_to_remove([config["width"]] * config["depth"], config["etas"][-1],
                         HiddenUnits.min_keep)
    except ValueError as err:
        raise ValueError(f"config etas and width: {err}") from None


def compute(config: dict, units: Units) -> dict:
    """Every (eta, method, seed), eta = 0 once per seed (the fine-tuning-only control), in
    ``workers`` processes: first the controls (they train the base networks, which the
    pruned ones then share through the checkpoint cache), then the rest."""
    seeds = range(config["seeds"])
    controls = [(f"eta={config['etas'][0]}/{config['methods'][0]}/s={s}", prune_and_finetune,
                 (config, config["etas"][0], config["methods"][0], s)) for s in seeds]
    pruned = [(f"eta={eta}/{method}/s={s}", prune_and_finetune, (config, eta, method, s))
              for s in seeds for eta in config["etas"][1:] for method in config["methods"]]
    done = run_units(units, controls, config["workers"], "base networks + control")
    done |= run_units(units, pruned, config["workers"], "pruned + fine-tuned")
    runs = [{"eta": eta, "method": method if eta else "none", "seed": s, **done[key]}
            for key, _, (_, eta, method, s) in controls + pruned]
    mixture = paper_mixture(config["d"], config["K"], config["mean_std"], seed=config["seed"])
    refs = {kind: [{"seed": s, **units.get(f"ref/{kind}/s={s}", lambda k=kind, s=s: reference(
        k, training_set(mixture, config["n"], s), mixture, sampler_spec(config), s,
        config["device"]))} for s in seeds] for kind in ("empirical", "true")}
    return {"runs": runs, "references": refs,
            "data_log_likelihood": data_log_likelihood(mixture, config["data_ll_draws"],
                                                       config["seed"])}


# -- what the notes quote (figures/claims.py) ----------------------------------------------------


def runs_of(result: dict, eta: float, method: str) -> list[dict]:
    """The runs (one per seed) of one (eta, method); eta = 0 is the unpruned control."""
    return [x for x in result["results"]["runs"]
            if x["eta"] == eta and x["method"] == (method if eta else "none")]


def reports(result: dict, eta: float, method: str, phase: str) -> list[dict]:
    """The per-seed reports of one (eta, method) in one phase ("before_finetune",
    "after_finetune"), each with its "seed"; eta = 0 is the unpruned control."""
    return [{"seed": x["seed"], **x[phase]} for x in runs_of(result, eta, method)]


def facts(result: dict) -> dict[str, float]:
    """Per (eta, method, phase): memorization ratio and log-likelihood over seeds (mean,
    95% interval); paired effects after fine-tuning: each pruned network - the control,
    importance - random; parameters left."""
    cfg, r = result["config"], result["results"]
    out: dict[str, float] = {}
    for eta in cfg["etas"]:
        for method in cfg["methods"][: 1 if eta == 0 else None]:
            name = f"eta={eta:g}/{method if eta else 'none'}"
            for phase in ("before_finetune", "after_finetune"):
                for field, value in aggregate(reports(result, eta, method, phase)).items():
                    if isinstance(value, float):
                        out[f"{field}/{name}/{phase}"] = value
            params = [x["num_params"] for x in runs_of(result, eta, method)]
            out[f"params_min/{name}"], out[f"params_max/{name}"] = min(params), max(params)
    control = reports(result, 0.0, cfg["methods"][0], "after_finetune")
    base = reports(result, 0.0, cfg["methods"][0], "before_finetune")
    out |= as_facts("effect/control-base/ratio", paired_effect(control, base))
    after = [x["after_finetune"]["log_likelihood"] for x in r["runs"] if x["eta"] > 0]
    out["ll_after_min"], out["ll_after_max"] = min(after), max(after)
    for eta in cfg["etas"][1:]:
        for method in cfg["methods"]:
            for field, short in (("memorization_ratio", "ratio"), ("log_likelihood", "ll")):
                out |= as_facts(f"effect/eta={eta:g}/{method}-control/{short}", paired_effect(
                    reports(result, eta, method, "after_finetune"), control, field))
        if {"mask_gradient", "random"} <= set(cfg["methods"]):
            out |= as_facts(f"effect/eta={eta:g}/mask_gradient-random/ratio", paired_effect(
                reports(result, eta, "mask_gradient", "after_finetune"),
                reports(result, eta, "random", "after_finetune")))
    for kind in ("empirical", "true"):
        for field, value in aggregate(r["references"][kind]).items():
            if isinstance(value, float):
                out[f"{field}/exact_{kind}"] = value
    out["data_ll"] = r["data_log_likelihood"]["value"]
    return out


def blocks(result: dict) -> dict[str, str]:
    """The memorization table (right after pruning -> after fine-tuning, per eta and
    importance) and the paired effects against the control."""
    cfg = result["config"]
    control = reports(result, 0.0, cfg["methods"][0], "after_finetune")
    base = reports(result, 0.0, cfg["methods"][0], "before_finetune")
    rows = [["0 (control)", f"{cell(base)} → {cell(control)}"] + [""] * (len(cfg["methods"]) - 1)]
    rows += [[f"{eta:g}"] + [f"{cell(reports(result, eta, m, 'before_finetune'))} → "
                             f"{cell(reports(result, eta, m, 'after_finetune'))}"
                             for m in cfg["methods"]] for eta in cfg["etas"][1:]]
    out = {"memorization": markdown_table(["eta"] + [LABELS[m] for m in cfg["methods"]], rows)}
    rows = [[f"{eta:g}"] + [effect_cell(paired_effect(reports(result, eta, m, "after_finetune"),
                                                      control)) for m in cfg["methods"]]
            for eta in cfg["etas"][1:]]
    out["effects"] = markdown_table(
        ["eta"] + [f"{LABELS[m]} − control" for m in cfg["methods"]], rows)
    return out


# -- drawing from the JSON ------------------------------------------------------------------------

LABELS = {"mask_gradient": "importance (Alg. 2)", "magnitude": "magnitude", "random": "random"}


def plot(result: dict, stem) -> list:
    """Memorization ratio and log-likelihood against the pruning ratio, per importance."""
    r, cfg = result["results"], result["config"]
    fig, axes = new_figure(1, 2, width=8.6, height=3.2)
    etas = cfg["etas"]
    for i, method in enumerate(cfg["methods"]):
        color = COLORS[i % len(COLORS)]
        for phase, ls, suffix in (("after_finetune", "-", ""),
                                  ("before_finetune", ":", ", before fine-tuning")):
            rows = [aggregate(reports(result, eta, method, phase)) for eta in etas]
            ratio = np.array([a["ratio"] for a in rows])
            err = [ratio - [a["ratio_low"] for a in rows], [a["ratio_high"] for a in rows] - ratio]
            label = LABELS[method] + suffix
            axes[0, 0].errorbar(etas, ratio, yerr=err, color=color, ls=ls, marker="o", ms=3,
                                capsize=2, label=label)
            ll = np.array([a["ll"] for a in rows])
            axes[0, 1].errorbar(etas, ll, yerr=[ll - [a["ll_low"] for a in rows],
                                                [a["ll_high"] for a in rows] - ll],
                                color=color, ls=ls, marker="o", ms=3, capsize=2, label=label)
    for kind, ls in (("empirical", "--"), ("true", "-.")):
        a = aggregate(r["references"][kind])
        axes[0, 0].axhline(a["ratio"], color="k", ls=ls, lw=1, label=f"exact {kind} score")
        axes[0, 1].axhline(a["ll"], color="k", ls=ls, lw=1, label=f"exact {kind} score")
    axes[0, 1].axhline(r["data_log_likelihood"]["value"], color="grey", ls=":", lw=1,
                       label="E log p(X)")
    base = next(x for x in r["runs"] if x["eta"] == 0)["num_params"]
    axes[0, 0].set(xlabel="pruning ratio eta (hidden units removed)",
                   ylabel="memorization ratio", ylim=(-0.03, 1.03),
                   title=f"(a) memorization, n = {cfg['n']}, d = {cfg['d']}, "
                         f"width {cfg['width']} x {cfg['depth']} ({base / 1e3:.0f}K params)")
    axes[0, 1].set(xlabel="pruning ratio eta (hidden units removed)",
                   ylabel="mean log-likelihood", title="(b) log-likelihood of the samples")
    fig.tight_layout()
    fig.legend(*axes[0, 1].get_legend_handles_labels(), fontsize=6.5, ncol=4,
               loc="upper center", bbox_to_anchor=(0.5, 0.0))
    caption(fig, f"{result['profile']} profile. Solid: after {cfg['finetune_steps']} fine-tuning "
                 f"steps; dotted: right after pruning. eta = 0 is the unpruned network with the "
                 f"same fine-tuning. Bars: 95% intervals over {cfg['seeds']} training seed(s) "
                 f"(never narrower than the sampling noise).", y=-0.16)
    return save_figure(fig, stem)


if __name__ == "__main__":
    main(sys.modules[__name__])
