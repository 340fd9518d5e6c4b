"""Table 1, Fig. 4 and the pruning-ratio sweep: does head pruning make a memorizing DiT
memorize less? (§6.2, App. D.1)

The paper trains a DiT on a small image set until it memorizes, removes eta = 20% of its
attention heads by importance (Alg. 2: |dL/d xi_h| of the DSM loss at t ~ Beta(0.8, 2),
normalized per layer, ranked globally) or at random, fine-tunes, and compares
memorization ratio (pixel space, the 1/9 rule), FID and precision/recall (Table 1). Here,
per seed (a training subset and an initialization):

  1. train the original DiT on n images (x_0-prediction, read as a score);
  2. fine-tune it unpruned for the same number of steps as the pruned ones (the control:
     fine-tuning alone changes memorization, see paper_notes/pruning_bridge.md);
  3. prune eta of all heads by importance and at random, physically, and fine-tune each;
  4. sample each model (reverse SDE) and measure memorization against the n training
     images and FD, KID, precision and recall against the whole dataset, in a named
     feature space ("FD-SmallCNN-digits": no Inception weights on this machine).

On the first seed the same is done for a range of eta (the sweep). Outputs: Table 1 as
markdown + JSON (mean +- std over seeds, beside the paper's numbers), Fig. 4 (samples of
the original and pruned models, each over its nearest training image) and the sweep.

Run: python -m experiments.dit_pruning [--profile smoke|quick|gpu|paper] [--set key=value]
Under torchrun the training steps run data-parallel (experiments/common/training.py).
"""

from __future__ import annotations

import copy
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from experiments.common.config import Int
from experiments.common.data import IMAGE_SHAPES, average_pool, load_dataset, random_subset
from experiments.common.dit import DiT, ScoreDiT
from experiments.common.features import (
    NEIGHBOURS_K,
    extract_features,
    feature_extractor,
    quality_report_from_features,
)
from experiments.common.metrics import MEMORIZATION_THRESHOLD, nearest_ratio, two_nearest
from experiments.common.plotting import COLORS, caption, new_figure, save_figure
from experiments.common.pruning import AttentionHeads, importance, prune, select
from experiments.common.runs import (
    REPO_ROOT,
    Units,
    atomic_write_bytes,
    main,
    resolve_device,
    run_units,
)
from experiments.common.sampling import sample
from experiments.common.stats import (
    Interval,
    as_facts,
    format_interval,
    interval_stderr,
    markdown_table,
    paired_difference,
    pooled_interval,
    proportion_interval,
    seed_interval,
)
from experiments.common.training import (
    TrainConfig,
    checkpoint_path,
    setup_distributed,
    train,
)
from theory.process import generator

NAME = "dit_pruning"
CACHE = REPO_ROOT / "runs" / "checkpoints"

# -- configuration ----------------------------------------------------------------------------
# Unpublished in the paper, so ours (paper_notes/dit_pruning.md): the DiT size, steps,
# fine-tuning steps, sampler and sample counts. quick: 16 digits and a 2-block DiT with 8
# heads of width 8 memorize about 2/3 of their samples after 2,500 steps (pilot: 0.66,
# 68 s on 2 cores); x_0-prediction memorizes far more readily than eps-prediction here.
PROFILES = {
    "smoke": {
        "seed": 0, "seeds": 2, "workers": 1, "device": "cpu", "cache": False,
        "dataset": "digits",
        "data_root": None, "n": 8, "patch_size": 2, "depth": 1, "hidden_size": 32,
        "num_heads": 4, "mlp_ratio": 2.0, "parametrization": "denoiser",
        "steps": 20, "batch": 16, "lr": 2e-3, "t0": 1e-3, "T": 8.0,
        "eta": 0.25, "etas": [0.0, 0.25, 0.5], "sweep_seeds": 2, "importance_batches": 2,
        "finetune_steps": 10, "finetune_lr": 1e-3,
        "samples": 32, "sampler_steps": 10, "features": "classifier", "real_images": 256,
        "grid": 4,
    },
    "quick": {
        "seed": 0, "seeds": 5, "workers": 2, "device": "cpu", "cache": True,
        "dataset": "digits",
        "data_root": None, "n": 16, "patch_size": 2, "depth": 2, "hidden_size": 64,
        "num_heads": 8, "mlp_ratio": 4.0, "parametrization": "denoiser",
        "steps": 2500, "batch": 128, "lr": 2e-3, "t0": 1e-3, "T": 8.0,
        "eta": 0.2, "etas": [0.0, 0.2, 0.4], "sweep_seeds": 3, "importance_batches": 16,
        "finetune_steps": 400, "finetune_lr": 1e-3,
        "samples": 256, "sampler_steps": 200, "features": "classifier", "real_images": 1797,
        "grid": 8,
    },
    # Real images on 2 CPU cores (run once, committed under figures/cifar_cpu/): CIFAR-10
    # average-pooled to 16 x 16 (d = 768, not the paper's 3,072), 16 tokens of patch 4, a
    # DiT-T-sized model (4 blocks of width 128, 4 heads). The step count is calibrated by a
    # pilot so that the original memorizes at least half of its samples (issue 13's pilot:
    # 55% after 1,500 steps at n = 32). Features: SmallCNN-cifar10 on the 16 x 16 images
    # upsampled (nearest) to its 32 x 32 input, real and generated alike.
    "cifar_cpu": {
        "seed": 0, "seeds": 3, "workers": 2, "device": "cpu", "cache": True,
        "dataset": "cifar10", "image_size": 16,
        "data_root": None, "n": 32, "patch_size": 4, "depth": 4, "hidden_size": 128,
        "num_heads": 4, "mlp_ratio": 4.0, "parametrization": "denoiser",
        "steps": 3000, "batch": 128, "lr": 2e-3, "t0": 1e-3, "T": 8.0,
        "eta": 0.2, "etas": [0.0, 0.2, 0.4], "sweep_seeds": 1, "importance_batches": 16,
        "finetune_steps": 400, "finetune_lr": 1e-3,
        "samples": 1000, "sampler_steps": 100, "features": "classifier", "real_images": 10000,
        "grid": 8,
    },
    # One H200, <= 8 minutes (never run yet: no GPU so far): a CIFAR-10 subset small enough
    # to memorize, DiT-S/4 in bf16 (autocast on CUDA, experiments/common/training.py).
    "gpu": {
        "seed": 0, "seeds": 3, "workers": 1, "device": "auto", "cache": True,
        "dataset": "cifar10",
        "data_root": None, "n": 500, "patch_size": 4, "depth": 12, "hidden_size": 384,
        "num_heads": 6, "mlp_ratio": 4.0, "parametrization": "denoiser",
        "steps": 12000, "batch": 256, "lr": 3e-4, "t0": 1e-3, "T": 8.0,
        "eta": 0.2, "etas": [0.0, 0.2, 0.4, 0.6], "sweep_seeds": 3, "importance_batches": 32,
        "finetune_steps": 2000, "finetune_lr": 1e-4,
        "samples": 1000, "sampler_steps": 200, "features": "classifier", "real_images": 10000,
        "grid": 8,
    },
    # The paper's scale: 5,000 CIFAR-10 images, 5 seeds, DiT-S/2.
    "paper": {
        "seed": 0, "seeds": 5, "workers": 1, "device": "auto", "cache": True,
        "dataset": "cifar10",
        "data_root": None, "n": 5000, "patch_size": 2, "depth": 12, "hidden_size": 384,
        "num_heads": 6, "mlp_ratio": 4.0, "parametrization": "denoiser",
        "steps": 200000, "batch": 256, "lr": 1e-4, "t0": 1e-3, "T": 8.0,
        "eta": 0.2, "etas": [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6], "sweep_seeds": 3,
        "importance_batches": 100,
        "finetune_steps": 20000, "finetune_lr": 5e-5,
        "samples": 10000, "sampler_steps": 400, "features": "inception",
        "real_images": 50000, "grid": 8,
    },
}

# Table 1 of the paper (CIFAR-10, DiT, eta = 20%, 5 runs): mean, std.
PAPER_TABLE1 = {
    "original": {"precision": (0.39, 0.01), "recall": (0.08, 0.01),
                 "memorization": (73.82, 1.12), "FID": (15.47, 0.28)},
    "importance": {"precision": (0.33, 0.02), "recall": (0.12, 0.01),
                   "memorization": (68.58, 0.77), "FID": (15.07, 0.33)},
    "random": {"precision": (0.30, 0.02), "recall": (0.09, 0.01),
               "memorization": (66.87, 0.94), "FID": (17.14, 0.25)},
}
VARIANTS = ("original", "finetuned", "importance", "random")
METHOD = {"importance": "mask_gradient", "random": "random"}


# -- the pieces --------------------------------------------------------------------------------


def load_images(config: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The training split (N, C, S, S) in [-1, 1] and its labels, average-pooled to
    S = config["image_size"] when the profile sets it (data.average_pool; an optional key,
    so that the results of profiles without it keep their config)."""
    images, labels = load_dataset(config["dataset"], "train", config["data_root"])
    if config.get("image_size") is not None:
        images = average_pool(images, config["image_size"])
    return images, labels


def feature_input(config: dict, images: torch.Tensor) -> torch.Tensor:
    """images (N, C, S, S) as the feature net takes them: pooled images are upsampled
    (nearest, each pixel to a block) to the dataset's own size, real and generated alike."""
    native = IMAGE_SHAPES[config["dataset"]][-1]
    if images.shape[-1] == native:
        return images
    return F.interpolate(images, scale_factor=native // images.shape[-1], mode="nearest")


def build(config: dict, channels: int, size: int, seed: int) -> ScoreDiT:
    """The original DiT (unconditional, no learned sigma) read as a score; init from seed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        dit = DiT(input_size=size, patch_size=config["patch_size"], in_channels=channels,
                  hidden_size=config["hidden_size"], depth=config["depth"],
                  num_heads=config["num_heads"], mlp_ratio=config["mlp_ratio"],
                  class_dropout_prob=0.0, num_classes=0, learn_sigma=False)
    return ScoreDiT(dit, config["parametrization"])


def fit(config: dict, model: ScoreDiT, images: torch.Tensor, steps: int, lr: float,
        seed: int) -> ScoreDiT:
    """DSM training (or fine-tuning) with the shared loop, cached by content."""
    tc = TrainConfig(steps=steps, batch=config["batch"], lr=lr, t0=config["t0"], T=config["T"],
                     time_sampling="log_uniform", grad_clip=1.0, seed=seed,
                     checkpoint_every=max(1, steps // 4))
    ckpt = checkpoint_path(CACHE, model, images, tc) if config["cache"] else None
    model, _, _ = train(model, images, tc, ckpt, config["device"], progress=False)
    return model.eval()


def generate(config: dict, model: ScoreDiT, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """config["samples"] images (M, C, H, W) by the reverse SDE from T to t0 (§3)."""
    dev = resolve_device(config["device"])
    d = math.prod(shape)

    def score(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # flat (B, d) <-> images
        return model(z.view(-1, *shape), t).reshape(z.shape[0], d)

    x = sample(score, config["samples"], d, config["T"], config["t0"], config["sampler_steps"],
               generator=generator(seed, 2), device=dev)
    return x.view(-1, *shape).float().cpu()


def evaluate(config: dict, fake: torch.Tensor, train_images: torch.Tensor,
             real_features: torch.Tensor, extractor) -> dict:
    """Memorization (pixel space, the 1/9 rule, against the n training images) and the
    feature-space metrics against the real images; a few samples for Fig. 4."""
    flat, ref = fake.flatten(1).double(), train_images.flatten(1).double()
    ratio = nearest_ratio(flat, ref)
    hits = int((ratio <= MEMORIZATION_THRESHOLD).sum())
    fake_features = extract_features(feature_input(config, fake), extractor)
    quality = quality_report_from_features(real_features, fake_features, extractor.name,
                                           seed=0)
    g = config["grid"]
    _, _, nearest = two_nearest(flat[:g], ref)
    ci = proportion_interval(hits, len(ratio))
    return {"memorization_ratio": hits / len(ratio), "ci": [ci.low, ci.high],
            **quality, "grid": fake[:g].tolist(), "grid_nearest": nearest.tolist()}


def run_seed(config: dict, seed: int, etas: list[float]) -> dict:
    """Original, fine-tuned control, pruned by importance and at random (each eta), one seed."""
    images, labels = load_images(config)
    train_images, _, idx = random_subset(images, labels, config["n"], seed)
    dev = resolve_device(config["device"])
    extractor = feature_extractor(config["features"], config["dataset"], device=str(dev))
    real, _, _ = random_subset(images, labels, min(config["real_images"], len(images)), 0)
    real_features = extract_features(feature_input(config, real), extractor)
    shape = tuple(train_images.shape[1:])
    base = fit(config, build(config, shape[0], shape[1], seed), train_images, config["steps"],
               config["lr"], seed)
    out = {"train_indices": idx.tolist(),
           "original": evaluate(config, generate(config, base, shape, seed), train_images,
                                real_features, extractor)}
    tuned = fit(config, copy.deepcopy(base), train_images, config["finetune_steps"],
                config["finetune_lr"], seed)
    out["finetuned"] = evaluate(config, generate(config, tuned, shape, seed), train_images,
                                real_features, extractor)
    heads = AttentionHeads(base)
    total = sum(heads.sizes().values())
    scores = {variant: importance(heads, method, train_images.to(dev),
                                  config["importance_batches"], config["batch"], config["t0"],
                                  config["T"], seed=seed) for variant, method in METHOD.items()}
    for eta in [e for e in etas if e > 0]:
        for variant in METHOD:
            keep = select(scores[variant], eta, heads.min_keep)
            small = fit(config, prune(heads, keep), train_images, config["finetune_steps"],
                        config["finetune_lr"], seed)
            rep = evaluate(config, generate(config, small, shape, seed), train_images,
                           real_features, extractor)
            rep["heads_left"] = {k: int(v.sum()) for k, v in keep.items()}
            rep["heads_removed"] = total - sum(rep["heads_left"].values())
            out[f"{variant}/eta={eta}"] = rep
    return out


# Precision/recall's k-nearest-neighbour radii need more than k real and k fake images.
CONFIG_RULES = {"samples": Int(NEIGHBOURS_K + 1), "real_images": Int(NEIGHBOURS_K + 1)}


def check_config(config: dict) -> None:
    """Relations between keys (run before any work; single keys: experiments/common/config.py)."""
    if not config["sweep_seeds"] <= config["seeds"]:
        raise ValueError(f"config sweep_seeds must be in [1, seeds={config['seeds']}], "
                         f"got {config['sweep_seeds']}")
    if config["hidden_size"] % config["num_heads"]:
        raise ValueError(f"config hidden_size={config['hidden_size']} must be a multiple of "
                         f"num_heads={config['num_heads']}")
    if config["eta"] <= 0:  # Table 1 compares pruned models: eta = 0 prunes nothing
        raise ValueError(f"config eta (Table 1's pruning ratio) must be > 0, got {config['eta']}")
    native = IMAGE_SHAPES[config["dataset"]][-1]
    side = config.get("image_size") or native
    if native % side:
        raise ValueError(f"config image_size={side} must divide the {native}x{native} images "
                         f"of dataset={config['dataset']!r}")
    if side % config["patch_size"]:
        raise ValueError(f"config patch_size={config['patch_size']} must divide the "
                         f"{side}x{side} images of dataset={config['dataset']!r}")


def compute(config: dict, units: Units) -> dict:
    """Every seed at the table's eta; the first ``sweep_seeds`` seeds also at every eta of
    the sweep.

    Under torchrun every rank runs this with its own device: training steps are
    data-parallel, sampling and evaluation are repeated on every rank (the same numbers).
    """
    _, world, device = setup_distributed()
    if device is not None:
        config = {**config, "device": str(device)}
    sweep = sorted({config["eta"], *config["etas"]})
    tasks = [(f"seed={s}", run_seed,
              (config, s, sweep if s < config["sweep_seeds"] else [config["eta"]]))
             for s in range(config["seeds"])]
    # Under torchrun the ranks train together: one seed at a time, no worker processes.
    done = run_units(units, tasks, 1 if world > 1 else config["workers"], "seeds")
    runs = [done[key] for key, _, _ in tasks]
    return {"runs": runs, "table1": table1(config, runs), "paired": paired(config, runs)}


def _columns(reports: list[dict]) -> dict[str, list[float]]:
    """Table 1's columns of one model over seeds (memorization in percent)."""
    return {"precision": [x["precision"] for x in reports],
            "recall": [x["recall"] for x in reports],
            "memorization": [100 * x["memorization_ratio"] for x in reports],
            "FD": [x["fd"] for x in reports], "KID": [x["kid_mean"] for x in reports]}


def _row_key(config: dict, row: str) -> str:
    """The key of a Table 1 row in a seed's results."""
    return row if row in ("original", "finetuned") else f"{row}/eta={config['eta']}"


def table1(config: dict, runs: list[dict]) -> dict:
    """Mean and std over seeds of every Table 1 column, per model (the paper's format)."""
    out = {}
    for row in VARIANTS:
        reps = [r[_row_key(config, row)] for r in runs]
        out[row] = {c: (float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else None)
                    for c, v in _columns(reps).items()}
        out[row]["feature_space"] = reps[0]["feature_space"]
    return out


# The comparisons Table 1 is read for, each paired by seed (same subset, initialization and
# sampling noise): a - b.
COMPARISONS = (("importance", "original"), ("importance", "finetuned"), ("random", "finetuned"),
               ("importance", "random"), ("finetuned", "original"))


def paired(config: dict, runs: list[dict]) -> dict:
    """Paired differences over seeds of every Table 1 column for each of ``COMPARISONS``:
    mean, 95% t-interval, per-seed differences, seeds with a positive difference. Empty
    with one seed (no seed interval exists)."""
    if len(runs) < 2:
        return {}
    out = {}
    for a, b in COMPARISONS:
        ca = _columns([r[_row_key(config, a)] for r in runs])
        cb = _columns([r[_row_key(config, b)] for r in runs])
        out[f"{a}-{b}"] = {c: paired_difference(ca[c], cb[c]).to_dict() for c in ca}
    return out


# -- drawing from the JSON ------------------------------------------------------------------------


def _pm(v: tuple) -> str:
    mean, std = v
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


NAMES = {"original": "original", "finetuned": "original + same fine-tuning (control)",
         "importance": "pruned (importance)", "random": "pruned (random)"}
SHORT = {"original": "original", "finetuned": "control", "importance": "importance",
         "random": "random"}
FORMATS = {"precision": "+.3f", "recall": "+.3f", "memorization": "+.1f", "FD": "+.1f",
           "KID": "+.2f"}


def paired_markdown(result: dict) -> str:
    """The paired-difference table: one row per comparison, one column per metric."""
    r = result["results"]
    if not r.get("paired"):
        return "(one seed: no paired differences)\n"
    space = r["table1"]["original"]["feature_space"]
    cols = ["precision", "recall", "memorization", "FD", "KID"]
    head = ["a − b (paired by seed)", "precision", "recall", "memorization (points)",
            f"FD-{space}", f"KID-{space}"]
    rows = []
    for a, b in COMPARISONS:
        cells = []
        for c in cols:
            e = r["paired"][f"{a}-{b}"][c]
            cells.append(f"{format_interval(e['value'], e['low'], e['high'], FORMATS[c])} "
                         f"({e['positive']}/{e['n']})")
        rows.append([f"{SHORT[a]} − {SHORT[b]}", *cells])
    return markdown_table(head, rows) + "\n"


def dataset_label(cfg: dict) -> str:
    """The dataset as the tables name it, with its size when average-pooled."""
    size = cfg.get("image_size")
    return cfg["dataset"] if size is None else f"{cfg['dataset']} at {size} × {size} (pooled)"


def table_markdown(result: dict) -> str:
    """Table 1 as markdown, ours beside the paper's."""
    r, cfg = result["results"], result["config"]
    t = r["table1"]
    space = t["original"]["feature_space"]
    ours = markdown_table(
        ["model", "precision", "recall", "memorization ratio (%)", f"FD-{space}", f"KID-{space}"],
        [[label] + [_pm(t[row][c]) for c in ("precision", "recall", "memorization", "FD", "KID")]
         for row, label in NAMES.items()])
    paper = markdown_table(
        ["model", "precision", "recall", "memorization ratio (%)", "FID"],
        [[label] + [_pm(PAPER_TABLE1[row][c]) for c in ("precision", "recall", "memorization",
                                                         "FID")]
         for row, label in (("original", "original"), ("importance", "pruned (importance)"),
                            ("random", "pruned (random)"))])
    lines = [f"Ours ({result['profile']} profile: {dataset_label(cfg)}, n = {cfg['n']}, "
             f"eta = {cfg['eta']:.0%}, {cfg['seeds']} seeds, mean ± std; FD and KID in the "
             f"{space} feature space, not Inception):", "", ours,
             "", "Paper (CIFAR-10, 5,000 images, eta = 20%, 5 runs):", "", paper]
    lines += ["", f"Ours, the effects paired by seed: mean difference [95% t-interval over "
                  f"{cfg['seeds']} seeds] (seeds with a positive difference):", "",
              paired_markdown(result)]
    return "\n".join(lines).rstrip("\n") + "\n"


# -- what the notes quote (figures/claims.py) ----------------------------------------------------


def facts(result: dict) -> dict[str, float]:
    """Table 1 (mean, std per model and column), the paired differences (value, low, high,
    positive, negative, n per comparison and column) and the sweep over its seeds
    (memorization and FD, mean and 95% interval per variant and eta)."""
    r = result["results"]
    out: dict[str, float] = {}
    for row, cols in r["table1"].items():
        for col, v in cols.items():
            if col != "feature_space":
                out[f"table1/{row}/{col}/mean"] = v[0]
                if v[1] is not None:
                    out[f"table1/{row}/{col}/std"] = v[1]
    for comp, cols in r.get("paired", {}).items():
        for col, e in cols.items():
            out |= as_facts(f"paired/{comp}/{col}", e)
            out[f"paired/{comp}/{col}/negative"] = sum(d < 0 for d in e["diffs"])
    cfg = result["config"]
    sweep_runs = r["runs"][: cfg["sweep_seeds"]]
    for variant in METHOD:
        for eta in sweep_etas(cfg):
            point = sweep_point(sweep_runs, variant, eta)
            for key, iv in point.items():
                for k in ("value", "low", "high"):
                    out[f"sweep/{variant}/eta={eta:g}/{key}/{k}"] = getattr(iv, k)
    out["sweep/original/memorization"] = float(np.mean(
        [run["original"]["memorization_ratio"] for run in sweep_runs]))
    return out


def compare_rerun(result: dict, rerun: dict) -> dict[str, float]:
    """How a rerun of the same profile (same seeds, other float rounding: another thread
    count or CPU) sits against ``result``'s paired intervals: "inside" of "total" paired
    differences (every comparison and column) fall in the first run's 95% interval;
    "resolved" of them excluded 0 in the first run, "same_sign" kept their sign."""
    first, second = result["results"]["paired"], rerun["results"]["paired"]
    out = {"inside": 0, "total": 0, "resolved": 0, "same_sign": 0}
    for comp, cols in first.items():
        for col, e in cols.items():
            value = second[comp][col]["value"]
            out["total"] += 1
            out["inside"] += e["low"] <= value <= e["high"]
            if e["low"] > 0 or e["high"] < 0:
                out["resolved"] += 1
                out["same_sign"] += (value > 0) == (e["value"] > 0)
    return out


def blocks(result: dict) -> dict[str, str]:
    """Table 1 beside the paper's, with the paired differences (the file the script writes)."""
    return {"table1": table_markdown(result)}


def sweep_etas(config: dict) -> list[float]:
    """The pruning ratios of the sweep, 0 (the fine-tuned control) first."""
    return sorted({config["eta"], *config["etas"], 0.0})


def sweep_point(runs: list[dict], variant: str, eta: float) -> dict[str, Interval]:
    """Memorization ratio and FD of one (variant, eta) over the given seeds' runs: mean and
    95% interval over seeds (pooled with the Wilson sampling error for memorization; with
    one seed, its sampling interval). eta = 0 is the fine-tuned control."""
    reps = [run["finetuned"] if eta == 0 else run[f"{variant}/eta={eta}"] for run in runs]
    mem = pooled_interval([rep["memorization_ratio"] for rep in reps],
                          [interval_stderr(*rep["ci"]) for rep in reps])
    fds = [rep["fd"] for rep in reps]
    fd = (seed_interval(fds) if len(fds) > 1
          else Interval(fds[0], fds[0], fds[0], 1, 0.95, "one seed, no interval"))
    return {"memorization": mem, "fd": fd}


def _to_image(x: np.ndarray) -> np.ndarray:
    """(C, H, W) in [-1, 1] -> (H, W) or (H, W, 3) in [0, 1] for imshow."""
    img = np.clip((x + 1) / 2, 0, 1)
    return img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)


def plot(result: dict, stem) -> list:
    """Table 1 (markdown), Fig. 4 (sample grids) and the pruning-ratio sweep."""
    r, cfg = result["results"], result["config"]
    paths = []
    table = Path(f"{stem}_table1.md")
    atomic_write_bytes(table, table_markdown(result).encode())
    paths.append(table)

    # Fig. 4: first seed; per model a row of samples and below it their nearest training image
    first = r["runs"][0]
    train_all, _ = load_images(cfg)
    train_imgs = train_all[first["train_indices"]].numpy()
    rows = [("original", "original"), (f"importance/eta={cfg['eta']}", "pruned (importance)"),
            (f"random/eta={cfg['eta']}", "pruned (random)")]
    g = cfg["grid"]
    fig, axes = new_figure(2 * len(rows), g, width=1.0 * g, height=1.05)
    for i, (key, label) in enumerate(rows):
        rep = first[key]
        for j in range(g):
            top, bottom = axes[2 * i, j], axes[2 * i + 1, j]
            top.imshow(_to_image(np.array(rep["grid"][j])), cmap="gray", vmin=0, vmax=1)
            bottom.imshow(_to_image(train_imgs[rep["grid_nearest"][j]]), cmap="gray",
                          vmin=0, vmax=1)
            for ax in (top, bottom):
                ax.set_xticks([])
                ax.set_yticks([])
                ax.grid(False)
        axes[2 * i, 0].set_ylabel(f"{label}\nsample", fontsize=7)
        axes[2 * i + 1, 0].set_ylabel("nearest\ntraining", fontsize=7)
        over = pooled_interval([run[key]["memorization_ratio"] for run in r["runs"]],
                               [interval_stderr(*run[key]["ci"]) for run in r["runs"]])
        axes[2 * i, g // 2].set_title(
            f"{label}: memorization {rep['memorization_ratio']:.2f} (seed 0, shown); "
            f"{format_interval(over.value, over.low, over.high)} over "
            f"{len(r['runs'])} seeds", fontsize=8)
    fig.tight_layout(h_pad=0.2, w_pad=0.1)
    paths += save_figure(fig, f"{stem}_fig4")

    # Sweep: the first sweep_seeds seeds, mean and 95% interval over them
    fig, axes = new_figure(1, 2, width=8.0, height=3.0)
    sweep_runs = r["runs"][: cfg["sweep_seeds"]]
    for c, variant in enumerate(METHOD):
        rows = [sweep_point(sweep_runs, variant, eta) for eta in sweep_etas(cfg)]
        xs = sweep_etas(cfg)
        for ax, key in ((axes[0, 0], "memorization"), (axes[0, 1], "fd")):
            mean = np.array([p[key].value for p in rows])
            err = [mean - [p[key].low for p in rows], [p[key].high for p in rows] - mean]
            ax.errorbar(xs, mean, yerr=err, marker="o", ms=3, capsize=2, color=COLORS[c],
                        label=f"pruned ({variant})")
    orig = [run["original"] for run in sweep_runs]
    axes[0, 0].axhline(np.mean([o["memorization_ratio"] for o in orig]), color="k", ls="--",
                       lw=1, label="original (no fine-tuning)")
    axes[0, 1].axhline(np.mean([o["fd"] for o in orig]), color="k", ls="--", lw=1,
                       label="original (no fine-tuning)")
    space = orig[0]["feature_space"]
    axes[0, 0].set(xlabel="fraction of heads removed (eta)", ylabel="memorization ratio",
                   ylim=(-0.03, 1.03), title="(a) memorization after fine-tuning")
    axes[0, 1].set(xlabel="fraction of heads removed (eta)", ylabel=f"FD-{space}",
                   title="(b) Frechet distance to the data")
    for ax in axes[0]:
        ax.legend(fontsize=6.5)
    fig.tight_layout()
    caption(fig, f"{result['profile']} profile, seeds 0-{cfg['sweep_seeds'] - 1}: "
                 f"{dataset_label(cfg)}, n = {cfg['n']}; eta = 0 is the unpruned model with the "
                 f"same {cfg['finetune_steps']} fine-tuning steps; bars: 95% intervals over "
                 f"{cfg['sweep_seeds']} training seeds (never narrower than the sampling noise).")
    paths += save_figure(fig, f"{stem}_sweep")
    return paths


if __name__ == "__main__":
    main(sys.modules[__name__])
