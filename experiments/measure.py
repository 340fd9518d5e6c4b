"""Memorization ratio and FD/KID/precision/recall of anyone's samples against a training set.

    python -m experiments.measure --samples gen.npz --train train_pngs/ --reference test.npz \\
        --features classifier --dataset digits --out measure.json

*Memorization* (paper §6, the 1/9 rule of Yoon et al. 2023 and DiffMemorize, Gu et al.
2023), in pixel space: a generated x is memorized when ||x - x_(1)||^2 <= (1/9)
||x - x_(2)||^2, x_(1), x_(2) its two nearest training images (images in [-1, 1], flattened);
the memorization ratio is the fraction of memorized samples. The search is
``experiments.common.metrics.two_nearest``: exact (float64 distances, certified ranking),
streamed over the training set, on the GPU when there is one. The JSON keeps, for every
sample, the index of its nearest training image, both squared distances and the ratio.

*Quality* in a named feature space (``experiments.common.features``): FD, KID (mean, std),
precision and recall (k = 3) of the samples against the training set and, when given,
against a reference set (e.g. held-out test images). "classifier" is the small CNN the suite
ships for --dataset digits or cifar10 (numbers named "FD-SmallCNN-<dataset>", ...);
"inception" is Inception-v3 from the file in $MEMSEP_INCEPTION (or --feature-path), whose FD
is the FID; "none" skips this part.

Inputs (--samples, --train, --reference): an .npz file (the array under the key "images",
else "x", else its only array) or a folder of .png files (read in sorted name order with
Pillow, which matplotlib requires). Layouts: uint8 (N, H, W, C) with values 0..255 (as
images are stored; mapped by x / 127.5 - 1), or floating (N, C, H, W) with values in
[-1, 1] (as the suite's models produce them); C is 1 or 3 and all sets share (C, H, W).
PNGs are 8-bit grey or RGB.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from experiments.common.features import (
    INCEPTION_ENV,
    NEIGHBOURS_K,
    SMALLCNN_CONFIGS,
    extract_features,
    feature_extractor,
    labelled_metrics,
    quality_report_from_features,
)
from experiments.common.metrics import MEMORIZATION_THRESHOLD, distance_ratio, two_nearest
from experiments.common.runs import atomic_write_json, provenance, resolve_device

__all__ = [
    "FEATURE_SPACES",
    "NPZ_KEYS",
    "LAYOUT",
    "read_images",
    "to_model_range",
    "memorization",
    "quality",
    "measure",
    "main",
]

FEATURE_SPACES = ("classifier", "inception", "none")
NPZ_KEYS = ("images", "x")  # looked up in this order; else the file's only array
LAYOUT = "uint8 (N, H, W, C) or float (N, C, H, W) in [-1, 1]"
_SEARCH_BLOCK = 2048  # samples per nearest-neighbour call (one step of the progress bar)


# -- reading -------------------------------------------------------------------------------


def _describe(array: np.ndarray) -> str:
    """'<dtype> <shape> with max <value>' (max only for a non-empty numeric array)."""
    text = f"{array.dtype} {tuple(array.shape)}"
    if array.size and (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        text += f" with max {array.max():g}"
    return text


def _read_npz(path: Path, arg: str) -> tuple[np.ndarray, str]:
    """The image array of an npz file and the key it was found under."""
    try:
        with np.load(path, allow_pickle=False) as f:
            for key in NPZ_KEYS:
                if key in f.files:
                    return f[key], key
            if len(f.files) == 1:
                return f[f.files[0]], f.files[0]
            keys = f.files
    except (OSError, ValueError) as err:
        raise ValueError(f"{arg}: cannot read {path} as an .npz file ({err})") from None
    raise ValueError(f"{arg}: {path} has no array named {' or '.join(map(repr, NPZ_KEYS))} "
                     f"and more than one array ({', '.join(keys) or 'none'}); rename the "
                     "images' array to 'images'")


def _read_png_folder(path: Path, arg: str, progress: bool) -> np.ndarray:
    """uint8 (N, H, W, C) of the folder's .png files in sorted name order."""
    from PIL import Image  # Pillow: required by matplotlib, a dependency

    files = sorted(p for p in path.iterdir() if p.suffix.lower() == ".png" and p.is_file())
    if not files:
        raise ValueError(f"{arg}: the folder {path} holds no .png files")
    images = []
    for file in tqdm(files, desc=f"reading {arg}", disable=not progress):
        with Image.open(file) as im:
            if im.mode == "P":
                im = im.convert("RGB")
            if im.mode not in ("L", "RGB"):
                raise ValueError(f"{arg}: {file} is a {im.mode!r} PNG; expected 8-bit grey "
                                 "('L') or RGB")
            a = np.asarray(im, dtype=np.uint8)
        images.append(a[:, :, None] if a.ndim == 2 else a)
        if images[-1].shape != images[0].shape:
            raise ValueError(f"{arg}: {file} is {images[-1].shape} (H, W, C) but {files[0]} is "
                             f"{images[0].shape}; all images of a set must have one shape")
    return np.stack(images)


def to_model_range(array: np.ndarray, arg: str) -> torch.Tensor:
    """Images float32 (N, C, H, W) in [-1, 1] from uint8 (N, H, W, C) (x / 127.5 - 1) or
    floating (N, C, H, W) in [-1, 1]; C in {1, 3}, N >= 1.

    Raises ValueError naming ``arg`` (e.g. "--samples") for any other dtype, number of
    dimensions, channel position, or range (or non-finite values)."""
    array = np.asarray(array)
    bad = f"{arg}: expected {LAYOUT}, got {_describe(array)}"
    if array.ndim != 4 or array.shape[0] == 0:
        raise ValueError(bad)
    if array.dtype == np.uint8:
        if array.shape[3] not in (1, 3):
            raise ValueError(bad + " (uint8 images are channels-last, C = 1 or 3)")
        x = torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2)
        return x.to(torch.float32).div_(127.5).sub_(1.0).contiguous()  # (N, C, H, W)
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(bad)
    if array.shape[1] not in (1, 3):
        raise ValueError(bad + " (float images are channels-first, C = 1 or 3)")
    if not np.isfinite(array).all():
        raise ValueError(f"{arg}: images must be finite, found NaN or inf in {_describe(array)}")
    if array.min() < -1 or array.max() > 1:
        raise ValueError(bad + f" and min {array.min():g}")
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def read_images(path: str | Path, arg: str, progress: bool = False) -> tuple[torch.Tensor, dict]:
    """Images float32 (N, C, H, W) in [-1, 1] from an .npz file or a folder of PNGs, and a
    record of where they came from ({"path", "format", "stored": dtype and shape}).

    Errors (missing path, unreadable file, wrong layout) are ValueError/FileNotFoundError
    naming ``arg``."""
    path = Path(path)
    if path.is_dir():
        array, fmt = _read_png_folder(path, arg, progress), "png folder"
    elif path.is_file():
        array, key = _read_npz(path, arg)
        fmt = f"npz[{key!r}]"
    else:
        raise FileNotFoundError(f"{arg}: {path} is neither an .npz file nor a folder of PNGs")
    images = to_model_range(array, arg)
    return images, {"path": str(path), "format": fmt,
                    "stored": f"{array.dtype} {tuple(array.shape)}"}


def _check_same_shape(sets: dict[str, torch.Tensor]) -> None:
    """All image sets share the (C, H, W) of the first; ValueError naming one that differs."""
    (first, ref), *rest = sets.items()
    for arg, images in rest:
        if images.shape[1:] != ref.shape[1:]:
            raise ValueError(
                f"{arg}: images are (C, H, W) = {tuple(images.shape[1:])} but {first} images "
                f"are {tuple(ref.shape[1:])}; all sets must have one image shape")


# -- the two measurements ---------------------------------------------------------------------


def memorization(
    samples: torch.Tensor, train: torch.Tensor, *, device: str | torch.device = "cpu",
    threshold: float = MEMORIZATION_THRESHOLD, progress: bool = False,
) -> dict[str, Any]:
    """The 1/9 rule in pixel space for samples (M, C, H, W) against train (N, C, H, W), N >= 2.

    Returns {"threshold", "ratio" (fraction memorized), "ratio_stderr" (binomial standard
    error sqrt(p (1 - p) / M)), "memorized", "num_samples", "num_train", "per_sample":
    {"nearest_index" (M,), "d1" (M,), "d2" (M,) squared distances, "ratio" (M,) d1 / d2
    (0 where d2 = 0, as metrics.nearest_ratio), "memorized" (M,) bool}}."""
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    dev = resolve_device(str(device)) if not isinstance(device, torch.device) else device
    x = samples.reshape(samples.shape[0], -1)  # (M, D)
    y = train.reshape(train.shape[0], -1).to(dev)  # (N, D)
    d1s, d2s, idxs = [], [], []
    for lo in tqdm(range(0, x.shape[0], _SEARCH_BLOCK), desc="nearest neighbours",
                   disable=not progress):
        d1, d2, idx = two_nearest(x[lo : lo + _SEARCH_BLOCK].to(dev), y)
        d1s.append(d1.cpu())
        d2s.append(d2.cpu())
        idxs.append(idx.cpu())
    d1, d2, idx = torch.cat(d1s), torch.cat(d2s), torch.cat(idxs)  # (M,) float64, int64
    ratio = distance_ratio(d1, d2)  # as metrics.nearest_ratio, without a second search
    memorized = ratio <= threshold
    p, m = float(memorized.double().mean()), int(x.shape[0])
    return {
        "threshold": threshold,
        "ratio": p,
        "ratio_stderr": math.sqrt(p * (1 - p) / m),
        "memorized": int(memorized.sum()),
        "num_samples": m,
        "num_train": int(train.shape[0]),
        "per_sample": {"nearest_index": idx, "d1": d1, "d2": d2, "ratio": ratio,
                       "memorized": memorized},
    }


def quality(
    samples: torch.Tensor, against: dict[str, torch.Tensor], *, features: str = "classifier",
    dataset: str | None = None, feature_path: str | Path | None = None,
    device: str = "cpu", batch_size: int = 256, kid_subsets: int = 100,
    kid_subset_size: int | None = None, seed: int = 0, progress: bool = False,
) -> dict[str, Any]:
    """FD, KID, precision and recall of samples (M, C, H, W) against each set of real images
    (N, C, H, W) in ``against`` ({"train": ..., "reference": ...}), all in [-1, 1], on the
    features of ``features`` ("classifier" of ``dataset``, or "inception").

    Returns {"feature_space": name, "<set>": quality_report_from_features(...) plus
    "labelled": {"FD-<space>", "KID-<space>", ...}} for each set."""
    extractor = feature_extractor(features, dataset, feature_path, device)
    name = extractor.name

    def feats(images: torch.Tensor) -> torch.Tensor:  # (N, F) float64
        return extract_features(images, extractor, batch_size, progress)

    fake = feats(samples)
    out: dict[str, Any] = {"feature_space": name}
    for key, real in against.items():
        report = quality_report_from_features(feats(real), fake, name, kid_subsets=kid_subsets,
                                              kid_subset_size=kid_subset_size, seed=seed)
        out[key] = {**report, "labelled": labelled_metrics(report)}
    return out


def _check_quality_inputs(sets: dict[str, torch.Tensor], features: str, dataset: str | None,
                          feature_path: str | None) -> None:
    """Refuse, before any work, what the feature space cannot take (naming the argument)."""
    if features == "none":
        return
    for arg, images in sets.items():
        if images.shape[0] <= NEIGHBOURS_K:
            raise ValueError(f"{arg}: precision/recall need more than k = {NEIGHBOURS_K} images, "
                             f"got {images.shape[0]} (or use --features none)")
    if features == "classifier":
        if dataset is None:
            raise ValueError("--dataset: --features classifier needs --dataset "
                             f"({' or '.join(SMALLCNN_CONFIGS)})")
        cfg = SMALLCNN_CONFIGS[dataset]
        want = (cfg["in_channels"], cfg["image_size"], cfg["image_size"])
        for arg, images in sets.items():
            if tuple(images.shape[1:]) != want:
                raise ValueError(f"{arg}: the {dataset} classifier takes (C, H, W) = {want} "
                                 f"images, got {tuple(images.shape[1:])}")
    if features == "inception" and feature_path is None:
        if not os.environ.get(INCEPTION_ENV):
            raise ValueError(f"--features inception needs the Inception-v3 weights file: set "
                             f"{INCEPTION_ENV} or pass --feature-path")


def measure(
    samples: torch.Tensor, train: torch.Tensor, reference: torch.Tensor | None = None, *,
    features: str = "classifier", dataset: str | None = None,
    feature_path: str | Path | None = None, device: str = "auto",
    threshold: float = MEMORIZATION_THRESHOLD, batch_size: int = 256, kid_subsets: int = 100,
    kid_subset_size: int | None = None, seed: int = 0, progress: bool = False,
) -> dict[str, Any]:
    """Memorization (pixel space) and quality (feature space) of samples (M, C, H, W) against
    train (N, C, H, W) and optionally reference (R, C, H, W), all float in [-1, 1] with one
    (C, H, W). Returns {"memorization": see :func:`memorization`, "quality": see
    :func:`quality` (None for features "none")}."""
    if features not in FEATURE_SPACES:
        raise ValueError(f"--features must be one of {FEATURE_SPACES}, got {features!r}")
    sets = {"--train": train, "--samples": samples}  # shapes are checked against --train
    if reference is not None:
        sets["--reference"] = reference
    _check_same_shape(sets)
    if train.shape[0] < 2:
        raise ValueError(f"--train: the 1/9 rule needs at least 2 training images, got "
                         f"{train.shape[0]}")
    _check_quality_inputs(sets, features, dataset, feature_path)
    dev = resolve_device(device)
    result: dict[str, Any] = {
        "memorization": memorization(samples, train, device=dev, threshold=threshold,
                                     progress=progress),
        "quality": None,
    }
    if features != "none":
        against = {"train": train} if reference is None else {"train": train,
                                                              "reference": reference}
        result["quality"] = quality(samples, against, features=features, dataset=dataset,
                                    feature_path=feature_path, device=str(dev),
                                    batch_size=batch_size, kid_subsets=kid_subsets,
                                    kid_subset_size=kid_subset_size, seed=seed,
                                    progress=progress)
    return result


# -- command line ------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m experiments.measure", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    where = (f"an .npz file (array 'images', else 'x', else its only array) or a folder of "
             f".png files; layout {LAYOUT}")
    p.add_argument("--samples", required=True, help=f"generated images: {where}")
    p.add_argument("--train", required=True, help=f"training images (>= 2): {where}")
    p.add_argument("--reference", default=None,
                   help=f"optional reference images, e.g. held-out test images: {where}")
    p.add_argument("--out", required=True, type=Path, help="JSON file to write (atomically)")
    p.add_argument("--features", choices=FEATURE_SPACES, default="classifier",
                   help="feature space of FD/KID/precision/recall (default classifier; "
                        "inception needs $" + INCEPTION_ENV + " or --feature-path)")
    p.add_argument("--dataset", choices=tuple(SMALLCNN_CONFIGS), default=None,
                   help="whose shipped classifier to use with --features classifier")
    p.add_argument("--feature-path", default=None,
                   help="weights file of the feature network (default: the shipped classifier, "
                        "or $" + INCEPTION_ENV + ")")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, ...")
    p.add_argument("--threshold", type=float, default=MEMORIZATION_THRESHOLD,
                   help="memorized when d1 <= threshold * d2 (squared distances; default 1/9)")
    p.add_argument("--batch-size", type=int, default=256, help="feature extraction batch")
    p.add_argument("--kid-subsets", type=int, default=100, help="KID: number of subsets")
    p.add_argument("--kid-subset-size", type=int, default=None,
                   help="KID: subset size (default min(1000, set sizes))")
    p.add_argument("--seed", type=int, default=0, help="seed of the KID subsets")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Command line: read the sets, measure, write --out (JSON with the arguments, inputs,
    provenance and wall time); returns what was written. Bad inputs are usage errors (exit 2)
    naming the argument."""
    parser = _parser()
    args = parser.parse_args(argv)
    progress = not args.no_progress
    start = time.perf_counter()
    try:
        sets, inputs = {}, {}
        for name in ("samples", "train", "reference"):
            path = getattr(args, name)
            if path is not None:
                sets[name], inputs[name] = read_images(path, f"--{name}", progress)
                inputs[name]["count"] = int(sets[name].shape[0])
        numbers = measure(
            sets["samples"], sets["train"], sets.get("reference"), features=args.features,
            dataset=args.dataset, feature_path=args.feature_path, device=args.device,
            threshold=args.threshold, batch_size=args.batch_size, kid_subsets=args.kid_subsets,
            kid_subset_size=args.kid_subset_size, seed=args.seed, progress=progress)
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    result = {
        "name": "measure",
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "inputs": inputs,
        "image_shape": list(sets["samples"].shape[1:]),
        "device": str(resolve_device(args.device)),
        "provenance": provenance(),
        "wall_time_s": round(time.perf_counter() - start, 2),
        **numbers,
    }
    atomic_write_json(args.out, result)
    mem = numbers["memorization"]
    print(f"memorization ratio {mem['ratio']:.4f} +- {mem['ratio_stderr']:.4f} "
          f"({mem['memorized']} of {mem['num_samples']} samples)")
    if numbers["quality"] is not None:
        for key in ("train", "reference"):
            if key in numbers["quality"]:
                text = ", ".join(f"{k} {v:.4g}" for k, v in
                                 numbers["quality"][key]["labelled"].items())
                print(f"vs {key}: {text}")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
