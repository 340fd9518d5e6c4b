"""Beyond Alg. 2: find and remove what memorizes, against the right controls (Gaussian mixtures).

The paper's mitigation (§6.2, App. D.1) keeps the groups the *training* loss needs, and the
training loss is minimized by the empirical score: it keeps the memorizing units, and the
fine-tuning that follows re-memorizes (paper_notes/pruning_bridge.md). This study asks
whether any way of removing parts of a trained memorizing network lowers its memorization
ratio by >= 80% (relative) while sample quality stays within 5%, and measures every
method against controls that make the comparison fair:

  1. train the memorizing base: the width-512 x 3 denoiser of Fig. 3a on n = 32 points of
     the d = 32 mixture (the gmm_pruning base, same config and seeds);
  2. importance of each hidden unit by every criterion of experiments/common/pruning.py:
     Alg. 2's mask gradient with the paper's DDPM times and with small times, the
     generalization gap (training minus held-out loss), the oracle (distance to the true
     score), magnitude, random; eta counts over *live* units (dead ones go for free);
  3. after pruning: nothing; fine-tuning on the training set (250 and 1,000 steps);
     fine-tuning stopped where the held-out DSM loss is lowest; iterative pruning
     (generalization gap, rounds with fine-tuning between them); two theory-guided
     fine-tunings, alone and after pruning: a small-t Lipschitz penalty (Lemma C.1) and a
     noise floor (train only on t >= tau, sample down to tau, then a posterior-mean step);
  4. controls: the original; the original with the same fine-tuning; random pruning at
     the ratio that does the same damage before fine-tuning (damage-matched); a network of
     the pruned size trained from scratch; weight decay; the original stopped early where
     its held-out DSM loss is lowest;
  5. every model: memorization ratio (1/9 rule), energy distance and precision/recall
     against fresh draws of the mixture (they see copying *and* collapse), mean
     log-likelihood (rewards collapse: reported, not used to judge), and an extraction
     probe (noised training points at t = 0.3 and 1: how many come back to themselves).

Quality band (``quality_tolerance``), fixed before any pruned network was measured: a setting
keeps quality within 5% when its quality loss q = (E - E_orig) / (E_prior - E_orig),
averaged over seeds (paired: each seed's own original), is at most 0.05; E is the energy
distance to fresh draws, E_prior that of N(0, I), the law the sampler starts from (what a
network that learned nothing returns). First choice was the moment-matched Gaussian as the
worse model; the bases showed it is *closer* to the data than the memorizing original
(energy distance penalizes copies: 500 samples on 32 points), so it cannot anchor a band.

Figure: memorization ratio against that quality loss (the Pareto plane), one panel per
fine-tuning length, the 80%-at-5% target as a box. Table: the best in-band setting of
each method with its paired relative reduction.

Run: python -m experiments.mitigation [--profile smoke|quick|paper] [--set key=value] [--force]
"""

from __future__ import annotations

import copy
import dataclasses
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from scipy import special

from experiments.common.config import Choice, Int, ListOf, Real
from experiments.common.features import precision_recall
from experiments.common.metrics import distance_ratio, energy_distance, two_nearest
from experiments.common.plotting import COLORS, caption, new_figure, save_figure
from experiments.common.pruning import (
    Groups,
    HiddenUnits,
    criterion_scores,
    groups_to_remove,
    importance,
    live_groups,
    mask_gradient_sums,
    prune,
    select,
)
from experiments.common.runs import Units, atomic_write_bytes, main, run_units
from experiments.common.sampling import posterior_mean, reverse_sde, sampling_times
from experiments.common.score_nets import (
    CACHE_DIR,
    NetSpec,
    SamplerSpec,
    aggregate,
    build_net,
    effect_cell,
    measure,
    paired_effect,
    sampler_spec,
    train_config,
    train_score_net,
    training_set,
)
from experiments.common.stats import as_facts, format_interval, markdown_table, seed_interval
from experiments.common.training import dsm_loss, train_snapshots
from theory.empirical import EmpiricalScore
from theory.loss_gap import loss_gap
from theory.mixtures import GaussianMixture, paper_mixture
from theory.process import (
    DDPMBetaTimeSampler,
    LogUniformTimeSampler,
    alpha,
    generator,
    sigma,
)

NAME = "mitigation"

# Random streams of this study (theory.process.generator keys), apart from score_nets'.
_HELDOUT, _REFERENCE, _LOSS_DRAWS, _PROBE, _GAUSSIAN, _GAP, _PRIOR = 21, 22, 23, 24, 25, 26, 27

CRITERIA = ("mask_gradient_paper", "mask_gradient_small_t", "generalization_gap", "oracle",
            "magnitude", "random")

# -- configuration ----------------------------------------------------------------------------
# Base: the gmm_pruning / Fig. 3a base (width 512 x 3, n = 32, 3,000 steps; shared cache).
# Importance: 32 batches of 128, as gmm_pruning. Fine-tuning lr 1e-3 as gmm_pruning. The
# Lipschitz weight and the noise floor's gap level are set once here, not tuned on results.
PROFILES = {
    "smoke": {
        "seed": 0, "seeds": 2, "workers": 1, "device": "cpu", "cache": False, "d": 4, "K": 4,
        "mean_std": 2.0, "n": 4, "width": 64, "depth": 2, "emb_dim": 16,
        "steps": 300, "batch": 64, "lr": 5e-3, "weight_decay": 0.0, "t0": 1e-3, "T": 8.0,
        "criteria": ["generalization_gap", "random"], "etas": [0.5],
        "random_etas": [0.25, 0.5, 0.75], "importance_batches": 2,
        "finetune_steps": [10, 20], "early_every": 10, "finetune_lr": 1e-3,
        "iterative_etas": [0.5], "iterative_rounds": 2, "iterative_steps": 5,
        "lipschitz_weight": 1.0, "lipschitz_t_max": 0.1, "floor_gap": 0.5,
        "theory_on_eta": 0.5, "scratch_eta": 0.5, "control_weight_decay": 1.0,
        "early_base_every": 100, "heldout_points": 256, "loss_draws": 256,
        "samples": 64, "sampler_steps": 20, "reference_draws": 64, "pr_k": 3,
        "probe_times": [0.3, 1.0], "probe_repeats": 2, "probe_steps": 10,
        "quality_tolerance": 0.05, "target_reduction": 0.8,
    },
    "quick": {
        "seed": 0, "seeds": 3, "workers": 2, "device": "cpu", "cache": True, "d": 32, "K": 8,
        "mean_std": 2.0, "n": 32, "width": 512, "depth": 3, "emb_dim": 16,
        "steps": 3000, "batch": 128, "lr": 2e-3, "weight_decay": 0.0, "t0": 1e-3, "T": 8.0,
        "criteria": ["mask_gradient_paper", "mask_gradient_small_t", "generalization_gap",
                     "oracle", "random"],
        "etas": [0.2, 0.4, 0.6], "random_etas": [0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7],
        "importance_batches": 32, "finetune_steps": [250, 1000], "early_every": 125,
        "finetune_lr": 1e-3, "iterative_etas": [0.4, 0.6], "iterative_rounds": 4,
        "iterative_steps": 100, "lipschitz_weight": 1.0, "lipschitz_t_max": 0.1,
        "floor_gap": 0.5, "theory_on_eta": 0.4, "scratch_eta": 0.4,
        "control_weight_decay": 1.0, "early_base_every": 250, "heldout_points": 2048,
        "loss_draws": 4096, "samples": 500, "sampler_steps": 200, "reference_draws": 500,
        "pr_k": 3, "probe_times": [0.3, 1.0], "probe_repeats": 8, "probe_steps": 100,
        "quality_tolerance": 0.05, "target_reduction": 0.8,
    },
}
PROFILES["paper"] = {**PROFILES["quick"], "workers": 1, "device": "auto", "seeds": 5,
                     "criteria": list(CRITERIA), "etas": [0.2, 0.4, 0.6],
                     "importance_batches": 100, "samples": 2000, "reference_draws": 2000}

_fraction = Real(0.0, 1.0, low_open=True, high_open=True)  # a ratio strictly inside (0, 1)
CONFIG_RULES = {
    "criteria": ListOf(Choice(CRITERIA), distinct=True),
    "random_etas": ListOf(_fraction, increasing=True),
    "iterative_etas": ListOf(_fraction, increasing=True),
    "finetune_steps": ListOf(Int(1), increasing=True),
    "early_every": Int(1), "iterative_rounds": Int(1), "iterative_steps": Int(1),
    "early_base_every": Int(1), "heldout_points": Int(2), "loss_draws": Int(1),
    "reference_draws": Int(2), "pr_k": Int(1), "probe_repeats": Int(1), "probe_steps": Int(1),
    "lipschitz_weight": Real(0.0, low_open=True), "lipschitz_t_max": Real(0.0, low_open=True),
    "floor_gap": Real(0.0, low_open=True), "theory_on_eta": Real(0.0, 1.0, high_open=True),
    "scratch_eta": Real(0.0, 1.0, high_open=True), "control_weight_decay": Real(0.0),
    "probe_times": ListOf(Real(0.0, low_open=True), increasing=True),
    "quality_tolerance": Real(0.0, 1.0, low_open=True),
    "target_reduction": Real(0.0, 1.0, low_open=True),
}


def check_config(config: dict) -> None:
    """Relations between keys (run before any work)."""
    if config["finetune_steps"][-1] % config["early_every"]:
        raise ValueError(f"config early_every={config['early_every']} must divide the longest "
                         f"fine-tuning {config['finetune_steps'][-1]}")
    if config["steps"] % config["early_base_every"]:
        raise ValueError(f"config early_base_every must divide steps={config['steps']}")
    if config["reference_draws"] <= config["pr_k"] or config["samples"] <= config["pr_k"]:
        raise ValueError("config samples and reference_draws must exceed pr_k")
    for key in ("etas", "random_etas", "iterative_etas"):
        try:  # eta counts over live units, of which there are at most width * depth
            groups_to_remove([config["width"]] * config["depth"], max(config[key]),
                             HiddenUnits.min_keep)
        except ValueError as err:
            raise ValueError(f"config {key} and width: {err}") from None


# -- the pieces every unit shares -------------------------------------------------------------


def setup(config: dict, seed: int) -> dict:
    """The mixture, training set D (n, d), held-out draws, quality reference draws and the
    fixed (x, t, eps) draws of the held-out DSM loss, all from (config seed, seed)."""
    mixture = paper_mixture(config["d"], config["K"], config["mean_std"], seed=config["seed"])
    points = training_set(mixture, config["n"], seed)
    heldout = mixture.sample(config["heldout_points"], generator(seed, _HELDOUT)).float()
    reference = mixture.sample(config["reference_draws"], generator(seed, _REFERENCE))
    g = generator(seed, _LOSS_DRAWS)
    m = config["loss_draws"]
    loss_draws = {
        "x0": mixture.sample(m, g).float(),
        "t": LogUniformTimeSampler(config["t0"], config["T"]).sample(m, g, torch.float32),
        "eps": torch.randn((m, config["d"]), generator=g)}
    return {"mixture": mixture, "points": points, "heldout": heldout, "reference": reference,
            "loss_draws": loss_draws}


def base_spec(config: dict) -> NetSpec:
    return NetSpec.uniform(config["width"], config["depth"], emb_dim=config["emb_dim"],
                           parametrization="denoiser")


def base_net(config: dict, points: torch.Tensor, seed: int, weight_decay: float | None = None):
    """The trained memorizing base of ``seed`` (cached training checkpoint)."""
    cache = CACHE_DIR if config["cache"] else None
    return train_score_net(points, base_spec(config), train_config(config, seed, weight_decay),
                           config["device"], cache)


def heldout_loss(net, draws: dict, t_min: float = 0.0) -> float:
    """The weighted DSM loss (eq. 3.1) on fixed fresh draws (x0, t, eps) with t >= t_min."""
    keep = draws["t"] >= t_min
    with torch.no_grad():
        return float(dsm_loss(net, draws["x0"][keep], draws["t"][keep], draws["eps"][keep]))


def sampler_of(config: dict, floor: float | None = None) -> SamplerSpec:
    """The study's sampler; with a noise floor tau: stop at tau, then the posterior-mean step."""
    spec = sampler_spec(config)
    return spec if floor is None else dataclasses.replace(spec, t0=floor, denoise=True)


def extraction_probe(score, points: torch.Tensor, t_start: float, config: dict, seed: int,
                     floor: float | None = None,
                     dtype: torch.dtype = torch.float32) -> float | None:
    """Fraction of noised training points alpha_t x_i + sigma_t eps (t = t_start, each x_i
    ``probe_repeats`` times) that the reverse process brings back to x_i under the 1/9 rule
    (nearest training point x_i and d1 <= d2 / 9). With a noise floor tau the process stops
    at tau and takes the posterior-mean step; None when t_start <= tau (never sampled)."""
    t_end = config["t0"] if floor is None else floor
    if t_start <= t_end:
        return None
    g = generator(seed, _PROBE, int(round(t_start * 1000)))
    idx = torch.arange(points.shape[0]).repeat(config["probe_repeats"])
    x0 = points[idx].to(dtype)
    eps = torch.randn(x0.shape, generator=g, dtype=dtype)
    x = alpha(t_start) * x0 + sigma(t_start) * eps
    with torch.no_grad():
        x = reverse_sde(score, x, sampling_times(t_start, t_end, config["probe_steps"]), g)
        if floor is not None:
            x = posterior_mean(score, x, t_end)
    d1, d2, nearest = two_nearest(x.double(), points.double())
    back = (nearest == idx) & (distance_ratio(d1, d2) <= 1 / 9)
    return float(back.double().mean())


def evaluate(score, config: dict, env: dict, seed: int, floor: float | None = None,
             dtype: torch.dtype = torch.float32) -> dict:
    """Every number of one model: memorization ratio (1/9 rule, Wilson interval),
    log-likelihood, energy distance and precision/recall against fresh draws, extraction
    probe at each probe time. ``score``: a network (float32) or an exact s(x, t) (float64)."""
    sampler = sampler_of(config, floor)
    out = measure(score, env["points"], env["mixture"], sampler, seed, config["device"],
                  keep_samples=sampler.num, dtype=dtype)
    x = torch.tensor(out.pop("samples"), dtype=torch.float64)
    out.pop("memorized")
    out["energy"] = energy_distance(x, env["reference"])
    out["precision"], out["recall"] = precision_recall(env["reference"], x, k=config["pr_k"])
    out["probe"] = {f"{t:g}": extraction_probe(score, env["points"], t, config, seed, floor,
                                               dtype) for t in config["probe_times"]}
    return out


def moment_matched_gaussian(mixture: GaussianMixture, num: int, seed: int) -> torch.Tensor:
    """num draws (num, d) of N(m, C) with the mixture's mean m = sum_k w_k mu_k and covariance
    C = Sigma + sum_k w_k (mu_k - m)(mu_k - m)^T: the clearly worse model of the quality band
    (right moments, no clusters)."""
    w, mu = mixture.weights, mixture.means
    m = w @ mu
    centred = mu - m
    cov = mixture.cov_matrix() + (centred * w[:, None]).T @ centred
    z = torch.randn((num, mixture.d), generator=generator(seed, _GAUSSIAN), dtype=mu.dtype)
    return m + z @ torch.linalg.cholesky(cov).T


def noise_floor(env: dict, config: dict, seed: int) -> dict:
    """tau: the smallest time of a log grid on [t0, T] where the exact Loss-Gap (Prop. 4.1)
    in DSM units, sigma_t^2 Loss-Gap_t / d = E||eps_hat_emp - eps_hat_true||^2 / d, falls to
    ``floor_gap``: above tau the empirical and the true denoiser nearly agree, so the DSM
    terms there carry little incentive to memorize. Computed on this seed's training set."""
    points, mixture = env["points"].double(), env["mixture"]
    emp = EmpiricalScore(points)
    grid = np.geomspace(config["t0"], config["T"], 40)
    g = generator(seed, _GAP)
    curve = []
    for t in grid:
        gap = loss_gap(mixture.score, points, float(t), num=1024, generator=g, empirical=emp)
        curve.append(float(gap.fisher.value) * (1 - math.exp(-t)) / config["d"])
    below = [t for t, c in zip(grid, curve, strict=True) if c <= config["floor_gap"]]
    if not below:
        raise ValueError(f"floor_gap={config['floor_gap']}: the Loss-Gap never falls that low "
                         f"on [t0, T]; raise floor_gap")
    return {"tau": float(below[0]), "grid": grid.tolist(), "gap_per_dim": curve}


# -- units ------------------------------------------------------------------------------------


def scores_of(criterion: str, groups: Groups, sums: dict) -> dict:
    """The importance of one criterion from the two mask-gradient passes ``sums`` ("paper",
    "small_t", and the "seed" of random scores), per layer; any ``Groups``."""
    if criterion == "mask_gradient_paper":
        return criterion_scores("mask_gradient", sums["paper"])
    if criterion == "mask_gradient_small_t":
        return criterion_scores("mask_gradient", sums["small_t"])
    if criterion in ("generalization_gap", "oracle"):
        return criterion_scores(criterion, sums["small_t"])
    return importance(groups, criterion, seed=sums["seed"])


def importance_passes(net, env: dict, config: dict, seed: int) -> dict:
    """Mask gradients from two passes: the paper's DDPM times (Alg. 2) and small times
    (log-uniform on [t0, 0.1]) with the training, held-out and oracle losses on shared
    draws; plus which units are live (a nonzero training-loss gradient in either pass)."""
    groups = HiddenUnits(net)
    common = dict(batches=config["importance_batches"], batch_size=config["batch"],
                  t0=config["t0"], T=config["T"], seed=seed)
    paper = mask_gradient_sums(groups, env["points"].float(), times="paper", **common)
    small = mask_gradient_sums(groups, env["points"].float(), times="small_t",
                               heldout=env["heldout"], true_score=env["mixture"].score, **common)
    live = live_groups(paper, small)
    return {"paper": paper, "small_t": small, "live": live, "seed": seed}


def pruned(net, criterion: str, eta: float, sums: dict):
    """net without the dead units and floor(eta * live units) live ones, lowest first."""
    groups = HiddenUnits(net)
    keep = select(scores_of(criterion, groups, sums), eta, groups.min_keep, sums["live"])
    return prune(groups, keep)


def finetune_config(config: dict, seed: int, **changes):
    """The fine-tuning recipe: the training recipe at finetune_lr for the longest length."""
    base = train_config({**config, "lr": config["finetune_lr"]}, seed,
                        steps=int(config["finetune_steps"][-1]))
    return dataclasses.replace(base, **changes)


def after_pruning(net, config: dict, env: dict, seed: int, tune=None,
                  floor: float | None = None, early: bool = True) -> dict:
    """Reports of a (pruned) network: right away ("ft0"), after each fine-tuning length
    ("ft<steps>") and, if ``early``, at the fine-tuning snapshot (every early_every steps,
    0 included) with the lowest held-out DSM loss ("early", with its step); the held-out
    loss of each snapshot ("heldout_curve"). One fine-tuning run, paused at each snapshot."""
    tune = tune if tune is not None else finetune_config(config, seed)
    t_min = 0.0 if floor is None else floor
    out = {"ft0": evaluate(net, config, env, seed, floor),
           "params": sum(p.numel() for p in net.parameters()),
           "hidden_widths": list(net.hidden_widths)}
    curve = [(0, heldout_loss(net, env["loss_draws"], t_min))]
    best = (curve[0][1], 0, copy.deepcopy(net))
    every = int(config["early_every"])
    stops = sorted(set(range(every, tune.steps + 1, every)) | {int(s) for s in
                                                              config["finetune_steps"]})
    for step, model in train_snapshots(copy.deepcopy(net), env["points"].float(), tune, stops,
                                       config["device"]):
        model.eval()
        curve.append((step, heldout_loss(model, env["loss_draws"], t_min)))
        if step in config["finetune_steps"]:
            out[f"ft{step}"] = evaluate(model, config, env, seed, floor)
        if early and curve[-1][1] < best[0]:
            best = (curve[-1][1], step, copy.deepcopy(model))
    if early:
        out["early"] = {**evaluate(best[2], config, env, seed, floor), "step": best[1]}
    out["heldout_curve"] = curve
    return out


def base_unit(config: dict, seed: int) -> dict:
    """The base of ``seed``: its reports, importance passes, pre-fine-tuning damage of every
    (criterion, eta) and of random pruning on the damage-matching grid, the noise floor
    tau, and the quality of the clearly worse model (the mixture's moment-matched Gaussian)."""
    env = setup(config, seed)
    net = base_net(config, env["points"], seed)
    sums = importance_passes(net, env, config, seed)
    ref_loss = heldout_loss(net, env["loss_draws"])
    damage = {}
    for criterion in set(config["criteria"]) | {"random"}:
        etas = config["random_etas"] if criterion == "random" else config["etas"]
        for eta in sorted(set(etas) | set(config["etas"])):
            small = pruned(net, criterion, eta, sums)
            damage[f"{criterion}/{eta:g}"] = heldout_loss(small, env["loss_draws"]) - ref_loss
    gauss = moment_matched_gaussian(env["mixture"], config["samples"], seed)
    live = {k: v.tolist() for k, v in sums["live"].items()}
    return {"heldout_loss": ref_loss, "damage": damage, "live": live,
            "dead": sum(len(v) - sum(v) for v in live.values()),
            "floor": noise_floor(env, config, seed),
            "gaussian_energy": energy_distance(gauss, env["reference"]),
            "exact_empirical": evaluate(EmpiricalScore(env["points"].double()).score, config,
                                        env, seed, dtype=torch.float64),
            "exact_true": evaluate(env["mixture"].score, config, env, seed,
                                   dtype=torch.float64)}


def prune_unit(config: dict, criterion: str, eta: float, seed: int) -> dict:
    """One-shot pruning of the base by ``criterion`` at eta (eta = 0: the original, no
    pruning), then ``after_pruning``; with its pre-fine-tuning damage."""
    env = setup(config, seed)
    net = base_net(config, env["points"], seed)
    if eta > 0:
        net = pruned(net, criterion, eta, importance_passes(net, env, config, seed))
    return after_pruning(net, config, env, seed)


def iterative_unit(config: dict, eta: float, seed: int) -> dict:
    """Generalization-gap pruning in ``iterative_rounds`` rounds: round r removes live units
    until floor(eta r / R * L0) are gone (L0: the base's live units), recomputing the
    importance on the current network, with iterative_steps of fine-tuning between rounds;
    then ``after_pruning``. The rounds' fine-tuning is extra compute, stated in the notes."""
    env = setup(config, seed)
    net = base_net(config, env["points"], seed)
    rounds = int(config["iterative_rounds"])
    live0 = sum(int(v.sum()) for v in importance_passes(net, env, config, seed)["live"].values())
    removed = 0
    for r in range(1, rounds + 1):
        sums = importance_passes(net, env, config, seed * 1000 + r)
        groups = HiddenUnits(net)
        count = math.floor(eta * r / rounds * live0) - removed
        net = prune(groups, select(criterion_scores("generalization_gap", sums["small_t"]), eta,
                                   groups.min_keep, sums["live"], count=count))
        removed += count
        if r < rounds:
            tune = finetune_config(config, seed * 1000 + r, steps=int(config["iterative_steps"]))
            net = train_score_net(env["points"], NetSpec(tuple(net.hidden_widths),
                                                         config["emb_dim"], "denoiser"),
                                  tune, config["device"], None, init=net)
    return after_pruning(net, config, env, seed)


def theory_unit(config: dict, kind: str, on: str, seed: int, tau: float) -> dict:
    """A theory-guided fine-tuning of the original (on = "original") or of the network
    pruned by the generalization gap at theory_on_eta (on = "pruned"):
    kind "lipschitz": the fine-tuning recipe plus lipschitz_weight * E sigma_t^4 ||ds/dx||_F^2
    at t log-uniform on [t0, lipschitz_t_max] (training.jacobian_penalty);
    kind "floor": fine-tuning on t in [tau, T] only, sampled down to tau then the
    posterior-mean step (its "ft0" is the original sampled that way, without fine-tuning)."""
    env = setup(config, seed)
    net = base_net(config, env["points"], seed)
    if on == "pruned":
        net = pruned(net, "generalization_gap", config["theory_on_eta"],
                     importance_passes(net, env, config, seed))
    if kind == "lipschitz":
        tune = finetune_config(config, seed, jacobian_penalty=config["lipschitz_weight"],
                               jacobian_t_max=config["lipschitz_t_max"])
        return after_pruning(net, config, env, seed, tune, early=False)
    tune = finetune_config(config, seed, t0=tau)
    return after_pruning(net, config, env, seed, tune, floor=tau, early=False)


def control_unit(config: dict, kind: str, seed: int) -> dict:
    """Controls trained from scratch: "scratch" (a network of the size the generalization
    gap leaves at scratch_eta, trained steps + the longest fine-tuning steps),
    "weight_decay" (the base recipe with control_weight_decay), "early" (the base's own
    run, paused every early_base_every steps: the snapshot with the lowest held-out DSM
    loss)."""
    env = setup(config, seed)
    cache = CACHE_DIR if config["cache"] else None
    if kind == "scratch":
        base = base_net(config, env["points"], seed)
        small = pruned(base, "generalization_gap", config["scratch_eta"],
                       importance_passes(base, env, config, seed))
        spec = NetSpec(tuple(small.hidden_widths), config["emb_dim"], "denoiser")
        steps = config["steps"] + int(config["finetune_steps"][-1])
        net = train_score_net(env["points"], spec, train_config(config, seed, steps=steps),
                              config["device"], cache)
        return {"final": evaluate(net, config, env, seed)}
    if kind == "weight_decay":
        net = base_net(config, env["points"], seed, config["control_weight_decay"])
        return {"final": evaluate(net, config, env, seed)}
    every = int(config["early_base_every"])
    net = build_net(config["d"], base_spec(config), seed)
    best, curve = None, []
    for step, model in train_snapshots(net, env["points"].float(), train_config(config, seed),
                                       list(range(every, config["steps"] + 1, every)),
                                       config["device"]):
        curve.append((step, heldout_loss(model, env["loss_draws"])))
        if best is None or curve[-1][1] < best[0]:
            best = (curve[-1][1], step, copy.deepcopy(model).eval())
    return {"final": {**evaluate(best[2], config, env, seed), "step": best[1]},
            "heldout_curve": curve}


def compute(config: dict, units: Units) -> dict:
    """Bases first (with the from-scratch controls, which need no base); then damage
    matching on the bases' pre-fine-tuning damage; then every pruned, fine-tuned and
    theory-guided network, in ``workers`` processes (the bases' checkpoints are shared)."""
    seeds, workers = range(config["seeds"]), config["workers"]
    first = [(f"base/s={s}", base_unit, (config, s)) for s in seeds]
    controls = [(f"control/{kind}/s={s}", control_unit, (config, kind, s),
                 {"method": kind, "eta": 0.0, "seed": s})
                for kind in ("weight_decay", "early") for s in seeds]
    done = run_units(units, first + [t[:3] for t in controls], workers,
                     "bases and controls from scratch")
    bases = [done[f"base/s={s}"] for s in seeds]
    prior = [prior_energy(config, s) for s in seeds]
    costs = units.get("importance_costs", lambda: importance_costs(config))
    matched = damage_matched(config, bases)
    settings = {(c, eta) for c in config["criteria"] if c != "random" for eta in config["etas"]}
    settings |= {("random", eta) for eta in matched.values()}
    if "random" in config["criteria"]:
        settings |= {("random", eta) for eta in config["etas"]}
    tasks = [(f"prune/{c}/{eta:g}/s={s}", prune_unit, (config, c, eta, s),
              {"method": c, "eta": eta, "seed": s})
             for c, eta in [("original", 0.0), *sorted(settings)] for s in seeds]
    tasks += [(f"iterative/{eta:g}/s={s}", iterative_unit, (config, eta, s),
               {"method": "iterative_gap", "eta": eta, "seed": s})
              for eta in config["iterative_etas"] for s in seeds]
    for kind in ("lipschitz", "floor"):
        for on, suffix, eta in (("original", "", 0.0),
                                ("pruned", "_pruned", config["theory_on_eta"])):
            tasks += [(f"{kind}/{on}/s={s}", theory_unit,
                       (config, kind, on, s, bases[s]["floor"]["tau"]),
                       {"method": kind + suffix, "eta": eta, "seed": s}) for s in seeds]
    tasks += [(f"control/scratch/s={s}", control_unit, (config, "scratch", s),
               {"method": "scratch", "eta": config["scratch_eta"], "seed": s}) for s in seeds]
    done |= run_units(units, [t[:3] for t in tasks], workers, "pruned, fine-tuned, theory-guided")
    runs = [{**meta, **done[key]} for key, _, _, meta in tasks + controls]
    return {"bases": bases, "prior_energy": prior, "importance_costs": costs,
            "matched": {f"{c}/{eta:g}": r for (c, eta), r in matched.items()}, "runs": runs}


def importance_costs(config: dict, repeats: int = 3) -> dict[str, float]:
    """Seconds of one importance pass (importance_batches batches, this process's threads)
    on seed 0's base, median of ``repeats``, by what it computes: Alg. 2 alone (training
    loss), + the held-out loss (generalization gap), + the oracle loss; and the ratio of
    each to Alg. 2 alone."""
    env = setup(config, 0)
    groups = HiddenUnits(base_net(config, env["points"], 0))
    common = dict(batches=config["importance_batches"], batch_size=config["batch"],
                  t0=config["t0"], T=config["T"], times="small_t")
    variants = {"mask_gradient": {}, "generalization_gap": {"heldout": env["heldout"]},
                "all_three": {"heldout": env["heldout"], "true_score": env["mixture"].score}}
    out = {}
    for name, extra in variants.items():
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            mask_gradient_sums(groups, env["points"].float(), **common, **extra)
            times.append(time.perf_counter() - start)
        out[f"seconds/{name}"] = float(np.median(times))
    for name in variants:
        out[f"ratio/{name}"] = out[f"seconds/{name}"] / out["seconds/mask_gradient"]
    return out


def prior_energy(config: dict, seed: int) -> float:
    """Energy distance between N(0, I) draws (the sampler's starting law, what a network
    that learned nothing returns) and the seed's reference draws: the quality band's
    clearly worse model."""
    z = torch.randn((config["samples"], config["d"]), generator=generator(seed, _PRIOR),
                    dtype=torch.float64)
    return energy_distance(z, setup(config, seed)["reference"])


def damage_matched(config: dict, bases: list[dict]) -> dict[tuple[str, float], float]:
    """For each pruned (criterion, eta): the ratio of the random_etas grid whose random
    pruning does the nearest pre-fine-tuning damage (held-out DSM loss increase over the
    base, mean over seeds): the damage-matched random control. A criterion whose pruning
    lowers the held-out loss is matched to the smallest random ratio."""
    def mean_damage(key: str) -> float:
        return float(np.mean([b["damage"][key] for b in bases]))

    grid = {eta: mean_damage(f"random/{eta:g}") for eta in config["random_etas"]}
    return {(c, eta): min(grid, key=lambda r, c=c, eta=eta: abs(
        grid[r] - mean_damage(f"{c}/{eta:g}")))
        for c in config["criteria"] if c != "random" for eta in config["etas"]}



# -- what the notes quote (figures/claims.py) ----------------------------------------------------

LABELS = {
    "original": "original + fine-tuning", "mask_gradient_paper": "Alg. 2, paper times",
    "mask_gradient_small_t": "Alg. 2, small t", "generalization_gap": "generalization gap",
    "iterative_gap": "generalization gap, iterative", "oracle": "oracle (true score)",
    "magnitude": "magnitude", "random": "random", "lipschitz": "Lipschitz fine-tuning",
    "lipschitz_pruned": "gap pruning + Lipschitz", "floor": "noise floor",
    "floor_pruned": "gap pruning + noise floor", "scratch": "pruned size, from scratch",
    "weight_decay": "weight decay", "early": "original, stopped early",
}
CONTROLS = ("scratch", "weight_decay", "early")  # trained from scratch: one phase, "final"


def phases(config: dict) -> list[str]:
    """The measurement points of a pruned network: right after pruning, after each
    fine-tuning length, at the early-stopped snapshot."""
    return ["ft0", *[f"ft{int(s)}" for s in config["finetune_steps"]], "early"]


def phase_label(phase: str) -> str:
    return {"ft0": "no fine-tuning", "early": "fine-tuning stopped early",
            "final": "trained from scratch"}.get(phase, f"{phase[2:]} fine-tuning steps")


def reports(result: dict, method: str, eta: float, phase: str) -> list[dict]:
    """Per-seed reports (each with its "seed") of one setting, sorted by seed."""
    out = [{"seed": r["seed"], **r[phase]} for r in result["results"]["runs"]
           if r["method"] == method and r["eta"] == eta and phase in r]
    return sorted(out, key=lambda r: r["seed"])


def settings(result: dict) -> list[tuple[str, float, str]]:
    """Every (method, eta, phase) measured, in run order, the untouched original first."""
    out = [("original", 0.0, "ft0")]
    for r in result["results"]["runs"]:
        for phase in [*phases(result["config"]), "final"]:
            key = (r["method"], r["eta"], phase)
            # a Lipschitz fine-tuning not yet run is the original or the gap-pruned network
            if r["method"].startswith("lipschitz") and phase == "ft0":
                continue
            if phase in r and key not in out:
                out.append(key)
    return out


def summary(result: dict, method: str, eta: float, phase: str) -> dict:
    """One setting over seeds, paired with the original (the same seed's base, unpruned,
    not fine-tuned): memorization ratio (pooled interval), relative reduction
    1 - ratio / ratio_original, quality loss q = (E - E_orig) / (E_prior - E_orig) of the
    energy distance E (0: as the original, 1: as N(0, I) draws), each a mean
    with a t-interval over seeds; in_band: mean q <= quality_tolerance."""
    cfg, r = result["config"], result["results"]
    reps = reports(result, method, eta, phase)
    orig = {x["seed"]: x for x in reports(result, "original", 0.0, "ft0")}
    worse = dict(enumerate(r["prior_energy"]))
    seeds = [x["seed"] for x in reps]
    if not reps or any(orig[s]["memorization_ratio"] == 0 for s in seeds):
        raise ValueError(f"{method}/{eta}/{phase}: no reports, or an original that does not "
                         "memorize (no relative reduction)")
    red = [1 - x["memorization_ratio"] / orig[x["seed"]]["memorization_ratio"] for x in reps]
    q = [(x["energy"] - orig[x["seed"]]["energy"]) / (worse[x["seed"]] - orig[x["seed"]]["energy"])
         for x in reps]
    agg = aggregate(reps)
    red_i, q_i = seed_interval(red), seed_interval(q)
    probes = {t: [x["probe"][t] for x in reps] for t in reps[0]["probe"]}
    return {"ratio": agg["ratio"], "ratio_low": agg["ratio_low"], "ratio_high": agg["ratio_high"],
            "reduction": red_i.value, "reduction_low": red_i.low, "reduction_high": red_i.high,
            "quality_loss": q_i.value, "quality_loss_low": q_i.low, "quality_loss_high": q_i.high,
            "in_band": float(q_i.value <= cfg["quality_tolerance"]),
            "energy": float(np.mean([x["energy"] for x in reps])), "ll": agg["ll"],
            "precision": float(np.mean([x["precision"] for x in reps])),
            "recall": float(np.mean([x["recall"] for x in reps])),
            **{f"probe_{t}": float(np.mean(v)) for t, v in probes.items() if None not in v},
            "seeds": len(reps)}


def best(result: dict, method: str) -> tuple[tuple, dict, bool]:
    """The setting of ``method`` with the largest mean reduction among those within the
    quality band; if none is, the one with the smallest quality loss. (setting, summary,
    whether it is in the band). The untouched original is not a candidate."""
    cands = [(k, summary(result, *k)) for k in settings(result)
             if k[0] == method and k != ("original", 0.0, "ft0")]
    inside = [c for c in cands if c[1]["in_band"]]
    if inside:
        key, summ = max(inside, key=lambda c: c[1]["reduction"])
        return key, summ, True
    key, summ = min(cands, key=lambda c: c[1]["quality_loss"])
    return key, summ, False


def methods(result: dict) -> list[str]:
    """Every method measured, in LABELS order."""
    present = {r["method"] for r in result["results"]["runs"]}
    return [m for m in LABELS if m in present]


def matched_effect(result: dict, criterion: str, eta: float, phase: str) -> dict:
    """Memorization ratio of a pruned setting minus that of random pruning at the
    damage-matched ratio, same phase, paired by seed."""
    r_eta = result["results"]["matched"][f"{criterion}/{eta:g}"]
    return paired_effect(reports(result, criterion, eta, phase),
                         reports(result, "random", r_eta, phase))


def facts(result: dict) -> dict[str, float]:
    """Per setting (method/eta/phase): ratio, reduction, quality loss (mean, 95% interval),
    precision, recall, probes; per method the best in-band setting; the bases' numbers;
    each criterion minus its damage-matched random control."""
    cfg, r = result["config"], result["results"]
    out: dict[str, float] = {}
    for key in settings(result):
        name = f"{key[0]}/{key[1]:g}/{key[2]}"
        for field, value in summary(result, *key).items():
            out[f"{field}/{name}"] = value
    for method in methods(result):
        if method == "original" and len(settings(result)) < 2:
            continue
        (m, eta, phase), summ, inside = best(result, method)
        out[f"best_in_band/{method}"] = float(inside)
        out[f"best_eta/{method}"] = eta
        for field in ("reduction", "reduction_low", "reduction_high", "quality_loss", "ratio"):
            out[f"best_{field}/{method}"] = summ[field]
    reached = [m for m in methods(result) if best(result, m)[2]
               and best(result, m)[1]["reduction"] >= cfg["target_reduction"]]
    out["methods_reaching_target"] = len(reached)
    out["best_reduction_in_band"] = max(best(result, m)[1]["reduction"] for m in methods(result)
                                        if best(result, m)[2])
    for key, r_eta in r["matched"].items():
        c, eta = key.rsplit("/", 1)
        out[f"matched_eta/{key}"] = r_eta
        for phase in phases(cfg):
            out |= as_facts(f"matched/{key}/{phase}", matched_effect(result, c, float(eta), phase))
    bases = r["bases"]
    out["dead_min"] = min(b["dead"] for b in bases)
    out["dead_max"] = max(b["dead"] for b in bases)
    out["units"] = cfg["width"] * cfg["depth"]
    out["tau_min"] = min(b["floor"]["tau"] for b in bases)
    out["tau_max"] = max(b["floor"]["tau"] for b in bases)
    for kind in ("exact_empirical", "exact_true"):
        for field, short in (("memorization_ratio", "ratio"), ("energy", "energy"),
                             ("recall", "recall"), ("precision", "precision")):
            out[f"{short}/{kind}"] = float(np.mean([b[kind][field] for b in bases]))
    steps = [x["final"]["step"] for x in r["runs"] if x["method"] == "early"]
    out["early_step_min"], out["early_step_max"] = min(steps), max(steps)
    # The importance time laws (theory, not measured): where their medians and tails fall.
    ddpm = DDPMBetaTimeSampler()  # the "paper" law of importance_times, Beta(0.8, 2)
    u = special.betaincinv(ddpm.a, ddpm.b, 0.5)
    out["ddpm/median_t"], out["ddpm/median_step"] = ddpm.median(), float(ddpm.step_index(
        np.array([u]))[0])
    out["ddpm/above_T"] = 1 - float(special.betainc(ddpm.a, ddpm.b, np.searchsorted(
        ddpm.times, cfg["T"], side="right") / len(ddpm.times)))
    out["ddpm/below_t0"] = float(special.betainc(ddpm.a, ddpm.b, np.searchsorted(
        ddpm.times, cfg["t0"]) / len(ddpm.times)))
    out["linear/median_t"] = cfg["t0"] + (cfg["T"] - cfg["t0"]) * float(u)
    out["energy/gaussian"] = float(np.mean([b["gaussian_energy"] for b in bases]))
    out["energy/prior"] = float(np.mean(r["prior_energy"]))
    out |= {f"cost/{k}": v for k, v in r["importance_costs"].items()}
    return out


def fmt_interval(summ: dict, field: str, fmt: str = ".2f") -> str:
    """'mean [low, high]' of summ[field], summ[field_low], summ[field_high]."""
    return format_interval(summ[field], summ[f"{field}_low"], summ[f"{field}_high"], fmt)


def _setting(key: tuple) -> str:
    method, eta, phase = key
    return (f"eta {eta:g}, " if eta and method not in CONTROLS else "") + phase_label(phase)


def best_table(result: dict) -> str:
    """The best setting of each method within the quality band (or, flagged, the one
    closest to it), with its paired reduction against the original."""
    cfg = result["config"]
    rows = []
    for method in methods(result):
        key, summ, inside = best(result, method)
        probes = " / ".join(f"{summ[f'probe_{t:g}']:.2f}" if f"probe_{t:g}" in summ else "–"
                            for t in cfg["probe_times"])
        rows.append([LABELS[method], _setting(key) + ("" if inside else " (outside the band)"),
                     fmt_interval(summ, "ratio"), fmt_interval(summ, "reduction", "+.0%"),
                     fmt_interval(summ, "quality_loss", "+.2f"),
                     f"{summ['precision']:.2f} / {summ['recall']:.2f}", probes])
    orig = summary(result, "original", 0.0, "ft0")
    probes = " / ".join(f"{orig[f'probe_{t:g}']:.2f}" for t in cfg["probe_times"])
    rows.insert(0, ["original (no change)", "–", fmt_interval(orig, "ratio"), "0%", "0",
                    f"{orig['precision']:.2f} / {orig['recall']:.2f}", probes])
    times = " / ".join(f"t = {t:g}" for t in cfg["probe_times"])
    return markdown_table(["method", "best setting within the band", "memorization",
                           "reduction (paired)", "quality loss q", "precision / recall",
                           f"extraction probe {times}"], rows)


def matched_table(result: dict) -> str:
    """Each criterion's memorization minus damage-matched random pruning's, per phase."""
    cfg = result["config"]
    rows = []
    for key, r_eta in result["results"]["matched"].items():
        c, eta = key.rsplit("/", 1)
        rows.append([LABELS[c], eta, f"{r_eta:g}"] + [
            effect_cell(matched_effect(result, c, float(eta), ph)) for ph in phases(cfg)])
    return markdown_table(["criterion", "eta", "matched random eta"]
                          + [phase_label(p) for p in phases(cfg)], rows)


def grid_table(result: dict) -> str:
    """Every setting: memorization, reduction, quality loss, in band or not."""
    rows = []
    for key in settings(result):
        summ = summary(result, *key)
        rows.append([LABELS[key[0]] if key != ("original", 0.0, "ft0") else "original",
                     f"{key[1]:g}", phase_label(key[2]), fmt_interval(summ, "ratio"),
                     fmt_interval(summ, "reduction", "+.0%"),
                     fmt_interval(summ, "quality_loss", "+.2f"),
                     "yes" if summ["in_band"] else "no"])
    return markdown_table(["method", "eta", "after pruning", "memorization", "reduction",
                           "quality loss q", "in band"], rows)


def blocks(result: dict) -> dict[str, str]:
    """The best-per-method table and the damage-matched comparison."""
    return {"best": best_table(result), "matched": matched_table(result)}


# -- drawing from the JSON ------------------------------------------------------------------------

MARKERS = {0.0: "D", 0.2: "o", 0.4: "s", 0.6: "^"}


def plot(result: dict, stem) -> list:
    """The Pareto plane (memorization against quality loss) per phase, with the target box;
    and the markdown tables (best per method, damage-matched, every setting)."""
    cfg = result["config"]
    table = Path(f"{stem}_table.md")
    atomic_write_bytes(table, ("## Best setting of each method within the quality band\n\n"
                               + best_table(result) + "\n\n## Against damage-matched random "
                               "pruning (memorization, paired by seed)\n\n"
                               + matched_table(result) + "\n\n## Every setting\n\n"
                               + grid_table(result) + "\n").encode())
    panels = phases(cfg)
    fig, axes = new_figure(1, len(panels), width=3.1 * len(panels), height=3.3)
    orig = summary(result, "original", 0.0, "ft0")
    shown = [m for m in methods(result) if m not in CONTROLS]
    palette = COLORS if len(shown) <= len(COLORS) else list(colormaps["tab20"].colors)
    colors = {m: palette[i % len(palette)] for i, m in enumerate(shown)}
    left = -0.5
    for j, phase in enumerate(panels):
        ax = axes[0, j]
        target = (1 - cfg["target_reduction"]) * orig["ratio"]
        ax.add_patch(Rectangle((left, 0), cfg["quality_tolerance"] - left, target,
                               fc="#d9f0d3", ec="green", lw=0.8, zorder=0))
        for key in settings(result):
            method, eta, ph = key
            control = ph == "final" and method in CONTROLS
            if key == ("original", 0.0, "ft0") or (ph != phase and not control):
                continue
            if method == "random" and eta not in cfg["etas"]:
                continue  # the damage-matching grid: in the table, not on the plane
            summ = summary(result, *key)
            ax.errorbar(summ["quality_loss"], summ["ratio"],
                        xerr=[[summ["quality_loss"] - summ["quality_loss_low"]],
                              [summ["quality_loss_high"] - summ["quality_loss"]]],
                        yerr=[[summ["ratio"] - summ["ratio_low"]],
                              [summ["ratio_high"] - summ["ratio"]]],
                        color="grey" if control else colors[method],
                        marker="x" if control else MARKERS.get(eta, "v"), ms=4, lw=0.6,
                        capsize=1.5, ls="none", alpha=0.9)
            if control:
                ax.annotate(LABELS[method], (summ["quality_loss"], summ["ratio"]), fontsize=5,
                            color="grey", xytext=(3, -8), textcoords="offset points")
        ax.plot([0], [orig["ratio"]], marker="*", color="k", ms=10, ls="none", zorder=5)
        ax.set_xscale("symlog", linthresh=0.1, linscale=2)
        ax.set_xlim(left, None)
        ax.set(xlabel="quality loss q (energy distance: 0 = original, 1 = N(0, I))",
               ylabel="memorization ratio" if j == 0 else None, ylim=(-0.03, 1.03),
               title=f"({'abcdefg'[j]}) {phase_label(phase)}")
        ax.xaxis.label.set_size(6.5)
    handles = [Line2D([], [], color="k", marker="*", ms=8, ls="none", label="original")]
    handles += [Line2D([], [], color=colors[m], marker="o", ms=4, ls="none", label=LABELS[m])
                for m in shown]
    handles += [Line2D([], [], color="k", marker=MARKERS[e], ms=4, ls="none", mfc="none",
                       label=f"eta {e:g}") for e in cfg["etas"] if e in MARKERS]
    handles += [Line2D([], [], color="grey", marker="x", ms=4, ls="none",
                       label="controls trained from scratch")]
    fig.tight_layout()
    fig.legend(handles=handles, fontsize=6.5, ncol=6, loc="upper center",
               bbox_to_anchor=(0.5, 0.0))
    caption(fig, f"{result['profile']} profile: d = {cfg['d']}, n = {cfg['n']}, width "
                 f"{cfg['width']} x {cfg['depth']} denoiser, {cfg['seeds']} training seeds; "
                 f"bars: 95% intervals over seeds (quality loss paired with each seed's "
                 f"original); eta: fraction of the live hidden units removed. Green box: the "
                 f"target (>= {cfg['target_reduction']:.0%} fewer memorized samples at "
                 f"quality loss <= {cfg['quality_tolerance']:g}).", y=-0.24)
    return [table, *save_figure(fig, stem)]


if __name__ == "__main__":
    main(sys.modules[__name__])
