"""Beyond Alg. 2 on the DiT (digits): memorization-targeted head pruning against the controls.

The DiT half of the mitigation study (experiments/mitigation.py has the Gaussian-mixture
half, the definitions and the reasons). The groups are the attention heads of the DiT of
the Table 1 study (experiments/dit_pruning.py: the same model, training and sampler),
trained on n digits until it memorizes; per seed:

  1. importance of every head by the criteria that apply without a true score: Alg. 2's
     mask gradient with the paper's DDPM times and with small times, the generalization
     gap (training minus held-out DSM loss; held-out = digits outside the training subset),
     random; eta counts over live heads;
  2. each pruned model measured right after pruning and after fine-tuning on the training
     set; the original and the original with the same fine-tuning as controls;
  3. memorization ratio (pixel space, 1/9 rule) and FD / KID / precision / recall in the
     named feature space (SmallCNN-digits) against the whole dataset.

Quality band as for the mixtures, with FD for the energy distance: q = (FD - FD_orig) /
(FD_prior - FD_orig), FD_prior that of N(0, I) images; within 5%: mean q <= 0.05.

Run: python -m experiments.mitigation_dit [--profile smoke|quick|gpu|paper] [--set key=value]
"""

from __future__ import annotations

import copy
import sys

import numpy as np
import torch
from matplotlib.patches import Rectangle

from experiments import dit_pruning as dp
from experiments.common.config import Choice, Int, ListOf
from experiments.common.data import random_subset
from experiments.common.features import extract_features, feature_extractor
from experiments.common.plotting import COLORS, caption, new_figure, save_figure
from experiments.common.pruning import (
    AttentionHeads,
    live_groups,
    mask_gradient_sums,
    prune,
    select,
)
from experiments.common.runs import Units, main, resolve_device, run_units
from experiments.common.stats import (
    interval_stderr,
    markdown_table,
    paired_difference,
    pooled_interval,
    seed_interval,
)
from experiments.mitigation import CONFIG_RULES as MIXTURE_RULES
from experiments.mitigation import extraction_probe, fmt_interval, scores_of
from theory.process import generator

NAME = "mitigation_dit"
CRITERIA = ("mask_gradient_paper", "mask_gradient_small_t", "generalization_gap", "random")
_HELDOUT, _PRIOR = 31, 32  # theory.process.generator keys of this study

# -- configuration ----------------------------------------------------------------------------
# The DiT, training recipe, sampler and feature space of dit_pruning's quick profile; n = 32
# digits (the minimum) needs longer training than its n = 16 to memorize.
PROFILES = {
    # smoke: the smallest DiT that memorizes some of 4 digits in seconds (about 0.3)
    "smoke": {**dp.PROFILES["smoke"], "n": 4, "depth": 2, "hidden_size": 64, "num_heads": 4,
              "steps": 600, "batch": 32, "lr": 5e-3, "sampler_steps": 50, "workers": 2,
              "criteria": ["generalization_gap", "random"], "etas": [0.25],
              "heldout_images": 64, "quality_tolerance": 0.05, "target_reduction": 0.8,
              "probe_times": [0.3, 1.0], "probe_repeats": 2, "probe_steps": 10},
    "quick": {**dp.PROFILES["quick"], "seeds": 3, "n": 32, "steps": 5000,
              "criteria": list(CRITERIA), "etas": [0.2, 0.4], "heldout_images": 512,
              "quality_tolerance": 0.05, "target_reduction": 0.8,
              "probe_times": [0.3, 1.0], "probe_repeats": 8, "probe_steps": 100},
}
# CIFAR-10 at the Table 1 study's GPU and paper scales (never run: no GPU has been lent).
PROFILES |= {name: {**dp.PROFILES[name], "criteria": list(CRITERIA), "etas": [0.2, 0.4],
                    "heldout_images": 1000, "quality_tolerance": 0.05, "target_reduction": 0.8,
                    "probe_times": [0.3, 1.0], "probe_repeats": 8, "probe_steps": 100}
             for name in ("gpu", "paper")}
for _cfg in PROFILES.values():  # keys of the Table 1 study that this study does not use
    for _key in ("eta", "sweep_seeds"):
        _cfg.pop(_key)

CONFIG_RULES = {
    **dp.CONFIG_RULES,
    **{k: MIXTURE_RULES[k] for k in ("probe_times", "probe_repeats", "probe_steps",
                                     "quality_tolerance", "target_reduction")},
    "criteria": ListOf(Choice(CRITERIA), distinct=True), "heldout_images": Int(1),
}


def check_config(config: dict) -> None:
    """Relations between keys (run before any work)."""
    if config["hidden_size"] % config["num_heads"]:
        raise ValueError(f"config hidden_size={config['hidden_size']} must be a multiple of "
                         f"num_heads={config['num_heads']}")


def setup(config: dict, seed: int) -> dict:
    """The seed's training subset (n, C, S, S), held-out digits outside it, the feature
    extractor with the real images' features, and a ``measure(model)`` of every number."""
    images, labels = dp.load_images(config)
    train_images, _, idx = random_subset(images, labels, config["n"], seed)
    rest = torch.ones(len(images), dtype=torch.bool)
    rest[idx] = False
    others = images[rest]
    pick = torch.randperm(len(others), generator=generator(seed, _HELDOUT))
    heldout = others[pick[: int(config["heldout_images"])]]
    dev = resolve_device(config["device"])
    extractor = feature_extractor(config["features"], config["dataset"], device=str(dev))
    real, _, _ = random_subset(images, labels, min(config["real_images"], len(images)), 0)
    real_features = extract_features(dp.feature_input(config, real), extractor)
    shape = tuple(train_images.shape[1:])
    flat_train = train_images.flatten(1).float()

    def measure(model) -> dict:
        """Memorization, FD/KID/precision/recall (dit_pruning.evaluate) and the extraction
        probe (mitigation.extraction_probe on the flattened images)."""
        rep = dp.evaluate(config, dp.generate(config, model, shape, seed), train_images,
                          real_features, extractor)

        def score(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # flat (B, d) <-> images
            return model(z.view(-1, *shape), t).reshape(z.shape[0], -1)

        rep["probe"] = {f"{t:g}": extraction_probe(score, flat_train, t, config, seed)
                        for t in config["probe_times"]}
        return {k: v for k, v in rep.items() if k not in ("grid", "grid_nearest")}

    return {"train": train_images, "heldout": heldout, "shape": shape, "device": dev,
            "measure": measure, "real_features": real_features, "extractor": extractor}


def base_model(config: dict, env: dict, seed: int):
    """The trained memorizing DiT of ``seed`` (dit_pruning's recipe, cached by content)."""
    shape = env["shape"]
    return dp.fit(config, dp.build(config, shape[0], shape[1], seed), env["train"],
                  config["steps"], config["lr"], seed)


def tuned(config: dict, env: dict, model, seed: int):
    """``model`` fine-tuned on the training subset (a copy; cached by content)."""
    return dp.fit(config, copy.deepcopy(model), env["train"], config["finetune_steps"],
                  config["finetune_lr"], seed)


def base_unit(config: dict, seed: int) -> dict:
    """The original and the original with the same fine-tuning, FD of N(0, I) images."""
    env = setup(config, seed)
    base = base_model(config, env, seed)
    noise = torch.randn((config["samples"], *env["shape"]), generator=generator(seed, _PRIOR))
    prior = dp.evaluate(config, noise, env["train"], env["real_features"], env["extractor"])
    return {"prior_fd": prior["fd"],
            "runs": [{"method": "original", "eta": 0.0, "ft0": env["measure"](base),
                      "ft": env["measure"](tuned(config, env, base, seed))}]}


def criterion_unit(config: dict, criterion: str, seed: int) -> dict:
    """The base pruned by ``criterion`` at every eta, right after pruning and after
    fine-tuning; the number of dead heads (a zero training-loss mask gradient)."""
    env = setup(config, seed)
    base = base_model(config, env, seed)
    heads = AttentionHeads(base)
    common = dict(batches=config["importance_batches"], batch_size=config["batch"],
                  t0=config["t0"], T=config["T"], seed=seed)
    data = env["train"].to(env["device"])
    sums = {"paper": mask_gradient_sums(heads, data, times="paper", **common),
            "small_t": mask_gradient_sums(heads, data, times="small_t",
                                          heldout=env["heldout"].to(env["device"]), **common),
            "seed": seed}
    live = live_groups(sums["paper"], sums["small_t"])
    scores = scores_of(criterion, heads, sums)
    runs = []
    for eta in config["etas"]:
        small = prune(heads, select(scores, eta, heads.min_keep, live))
        runs.append({"method": criterion, "eta": eta, "ft0": env["measure"](small),
                     "ft": env["measure"](tuned(config, env, small, seed))})
    return {"dead": sum(int((~v).sum()) for v in live.values()), "runs": runs}


def compute(config: dict, units: Units) -> dict:
    """The bases first, then one unit per (criterion, seed), in ``workers`` processes, all
    queued at once so that no worker idles at a phase boundary (a criterion unit reads its
    base from the checkpoint cache; if it ever started first it would train the same base
    again and get the same numbers)."""
    seeds = range(config["seeds"])
    tasks = [(f"base/s={s}", base_unit, (config, s)) for s in seeds]
    tasks += [(f"{c}/s={s}", criterion_unit, (config, c, s))
              for s in seeds for c in config["criteria"]]
    done = run_units(units, tasks, config["workers"], "bases and pruned models")
    runs = [{"seed": args[-1], **run} for key, _, args in tasks for run in done[key]["runs"]]
    return {"runs": runs, "prior_fd": [done[f"base/s={s}"]["prior_fd"] for s in seeds],
            "dead": [max(done[f"{c}/s={s}"]["dead"] for c in config["criteria"])
                     for s in seeds]}


# -- what the notes quote ---------------------------------------------------------------------

LABELS = {"original": "original + fine-tuning", "mask_gradient_paper": "Alg. 2, paper times",
          "mask_gradient_small_t": "Alg. 2, small t", "generalization_gap": "generalization gap",
          "random": "random"}
PHASES = {"ft0": "no fine-tuning", "ft": "after fine-tuning"}


def reports(result: dict, method: str, eta: float, phase: str) -> list[dict]:
    """Per-seed reports of one setting (each with its "seed"), sorted by seed."""
    return sorted(({"seed": r["seed"], **r[phase]} for r in result["results"]["runs"]
                   if r["method"] == method and r["eta"] == eta), key=lambda r: r["seed"])


def settings(result: dict) -> list[tuple[str, float, str]]:
    """Every measured (method, eta, phase), the untouched original first."""
    out = [("original", 0.0, "ft0")]
    for r in result["results"]["runs"]:
        for phase in PHASES:
            if (r["method"], r["eta"], phase) not in out:
                out.append((r["method"], r["eta"], phase))
    return out


def summary(result: dict, method: str, eta: float, phase: str) -> dict:
    """One setting over seeds, paired with each seed's original: memorization (pooled
    interval), relative reduction, quality loss q of FD (0: the original, 1: N(0, I)
    images), the FD change itself, precision, recall; in_band: mean q <= quality_tolerance."""
    cfg = result["config"]
    reps = reports(result, method, eta, phase)
    orig = {x["seed"]: x for x in reports(result, "original", 0.0, "ft0")}
    prior = result["results"]["prior_fd"]
    if any(orig[x["seed"]]["memorization_ratio"] == 0 for x in reps):
        raise ValueError("an original that does not memorize has no relative reduction")
    red = seed_interval([1 - x["memorization_ratio"] / orig[x["seed"]]["memorization_ratio"]
                         for x in reps])
    q = seed_interval([(x["fd"] - orig[x["seed"]]["fd"]) / (prior[x["seed"]]
                                                           - orig[x["seed"]]["fd"])
                       for x in reps])
    ratio = pooled_interval([x["memorization_ratio"] for x in reps],
                            [interval_stderr(*x["ci"]) for x in reps])
    fd = seed_interval([x["fd"] - orig[x["seed"]]["fd"] for x in reps])
    return {"ratio": ratio.value, "ratio_low": max(0.0, ratio.low),
            "ratio_high": min(1.0, ratio.high), "reduction": red.value,
            "reduction_low": red.low, "reduction_high": red.high, "quality_loss": q.value,
            "quality_loss_low": q.low, "quality_loss_high": q.high,
            "in_band": float(q.value <= cfg["quality_tolerance"]),
            "fd": float(np.mean([x["fd"] for x in reps])), "fd_change": fd.value,
            "fd_change_low": fd.low, "fd_change_high": fd.high,
            "precision": float(np.mean([x["precision"] for x in reps])),
            "recall": float(np.mean([x["recall"] for x in reps])),
            **{f"probe_{t}": float(np.mean([x["probe"][t] for x in reps]))
               for t in reps[0].get("probe", {})}}


def vs_random(result: dict, method: str, eta: float, phase: str) -> dict:
    """Memorization of a criterion minus random pruning at the same eta, paired by seed."""
    a = [x["memorization_ratio"] for x in reports(result, method, eta, phase)]
    b = [x["memorization_ratio"] for x in reports(result, "random", eta, phase)]
    return paired_difference(a, b).to_dict()


def facts(result: dict) -> dict[str, float]:
    """Per setting: ratio, reduction, quality loss (mean, interval), FD, precision, recall;
    criteria minus random at the same eta; FD of N(0, I) images; dead heads."""
    out: dict[str, float] = {}
    for key in settings(result):
        for field, value in summary(result, *key).items():
            out[f"{field}/{key[0]}/{key[1]:g}/{key[2]}"] = value
        if key[0] not in ("original", "random"):
            e = vs_random(result, *key)
            for field in ("value", "low", "high"):
                out[f"vs_random/{key[0]}/{key[1]:g}/{key[2]}/{field}"] = e[field]
    in_band = [summary(result, *k) for k in settings(result)[1:]]
    in_band = [s["reduction"] for s in in_band if s["in_band"]]
    out["best_reduction_in_band"] = max(in_band) if in_band else float("nan")
    out["prior_fd"] = float(np.mean(result["results"]["prior_fd"]))
    out["dead_max"] = max(result["results"]["dead"])
    return out


def grid_table(result: dict) -> str:
    """Every setting: memorization, reduction, FD change, quality loss, precision / recall,
    extraction probe, in band."""
    cfg = result["config"]
    rows = []
    for key in settings(result):
        s = summary(result, *key)
        rows.append(["original" if key == ("original", 0.0, "ft0") else LABELS[key[0]],
                     f"{key[1]:g}", PHASES[key[2]], fmt_interval(s, "ratio"),
                     fmt_interval(s, "reduction", "+.0%"), fmt_interval(s, "fd_change", "+.1f"),
                     fmt_interval(s, "quality_loss", "+.3f"),
                     f"{s['precision']:.2f} / {s['recall']:.2f}",
                     " / ".join(f"{s[f'probe_{t:g}']:.2f}" for t in cfg["probe_times"]),
                     "yes" if s["in_band"] else "no"])
    times = " / ".join(f"t = {t:g}" for t in cfg["probe_times"])
    return markdown_table(["method", "eta", "", "memorization", "reduction (paired)",
                           "FD change (paired)", "quality loss q", "precision / recall",
                           f"extraction probe {times}", "in band"], rows)


def blocks(result: dict) -> dict[str, str]:
    """Every setting's table."""
    return {"grid": grid_table(result)}


def plot(result: dict, stem) -> list:
    """Memorization against FD quality loss, right after pruning and after fine-tuning."""
    cfg = result["config"]
    fig, axes = new_figure(1, 2, width=7.4, height=3.1)
    orig = summary(result, "original", 0.0, "ft0")
    methods = [m for m in LABELS if any(r["method"] == m for r in result["results"]["runs"])]
    for j, phase in enumerate(PHASES):
        ax = axes[0, j]
        left = -0.5
        ax.add_patch(Rectangle((left, 0), cfg["quality_tolerance"] - left,
                               (1 - cfg["target_reduction"]) * orig["ratio"], fc="#d9f0d3",
                               ec="green", lw=0.8, zorder=0))
        for i, method in enumerate(methods):
            for eta in sorted({r["eta"] for r in result["results"]["runs"]
                               if r["method"] == method}):
                if (method, eta, phase) == ("original", 0.0, "ft0"):
                    continue  # the original itself: the star
                s = summary(result, method, eta, phase)
                ax.errorbar(s["quality_loss"], s["ratio"],
                            xerr=[[s["quality_loss"] - s["quality_loss_low"]],
                                  [s["quality_loss_high"] - s["quality_loss"]]],
                            yerr=[[s["ratio"] - s["ratio_low"]], [s["ratio_high"] - s["ratio"]]],
                            color=COLORS[i % len(COLORS)], marker="os^"[cfg["etas"].index(eta)
                                                                         + 1 if eta else 0],
                            ms=4, lw=0.6, capsize=1.5, ls="none",
                            label=f"{LABELS[method]}" + (f", eta {eta:g}" if eta else ""))
        ax.plot([0], [orig["ratio"]], marker="*", color="k", ms=9, ls="none", label="original")
        ax.set_xscale("symlog", linthresh=0.1, linscale=2)
        ax.set_xlim(left, None)
        ax.set(xlabel="quality loss q (FD: 0 = original, 1 = N(0, I) images)",
               ylabel="memorization ratio" if j == 0 else None, ylim=(-0.03, 1.03),
               title=f"({'ab'[j]}) {PHASES[phase]}")
    fig.tight_layout()
    fig.legend(*axes[0, 1].get_legend_handles_labels(), fontsize=6.5, ncol=4,
               loc="upper center", bbox_to_anchor=(0.5, 0.0))
    caption(fig, f"{result['profile']} profile: digits, n = {cfg['n']}, DiT {cfg['depth']} x "
                 f"{cfg['hidden_size']}, {cfg['num_heads']} heads per block; "
                 f"{cfg['seeds']} seeds, bars 95% intervals over seeds; green box: the target "
                 f"(>= {cfg['target_reduction']:.0%} fewer memorized samples at quality loss "
                 f"<= {cfg['quality_tolerance']:g}).", y=-0.22)
    return save_figure(fig, stem)


if __name__ == "__main__":
    main(sys.modules[__name__])
