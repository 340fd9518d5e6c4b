"""Image-quality metrics on features from a pluggable extractor (DESIGN.md, "Quality metrics
without internet").

FID needs Inception-v3 weights that cannot be downloaded where the suite is developed, so every
metric here takes features from an *extractor*: an ``nn.Module`` mapping images (B, C, H, W)
in [-1, 1] to features (B, F), with a ``name`` naming its feature space and a ``feature_dim``.

- :class:`InceptionFeatures` -- the 2048-d pool features of the Inception-v3 TorchScript file
  that NVlabs StyleGAN/EDM use for FID (``pt_inception-2015-12-05-6726825d.pt``), read from a
  local path. Name "Inception".
- :class:`ClassifierFeatures` -- the 128-d penultimate activations of a small CNN the suite
  trains on the same dataset and ships under ``experiments/common/feature_nets/``.
  Name "SmallCNN-<dataset>", e.g. "SmallCNN-digits".

Metrics, all on real features (N, F) and generated features (M, F), returning floats:

- :func:`frechet_distance` -- ||mu_r - mu_g||^2 + tr(S_r + S_g - 2 (S_r S_g)^(1/2))
  (Heusel et al. 2017), the trace of the square root by torchmetrics.
- :func:`kernel_inception_distance` -- unbiased squared MMD with the cubic polynomial kernel
  over random subsets (Binkowski et al. 2018), by torchmetrics' ``poly_mmd``; mean and std.
- :func:`precision_recall` -- improved precision and recall (Kynkaanniemi et al. 2019) from
  k-NN balls, exact, in bounded memory.
- :func:`quality_report` -- all of them from images and an extractor, in one dict whose
  ``feature_space`` names the extractor. Reports label the numbers by feature space,
  "FD-Inception" (= FID) versus "FD-SmallCNN-digits" (see :func:`labelled_metrics`), so that no
  number pretends to be an FID when it is not.

Train (and ship) a classifier::

    python -m experiments.common.features train --dataset digits \
        --out experiments/common/feature_nets/
    python -m experiments.common.features train --dataset cifar10 --epochs 30 --data-root DIR \
        --out experiments/common/feature_nets/
"""

from __future__ import annotations

import argparse
import hashlib
import io
import math
import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from experiments.common.runs import (
    REPO_ROOT,
    CorruptFileError,
    atomic_write_bytes,
    atomic_write_json,
    provenance,
    read_json,
    resolve_device,
)
from theory._checks import check_matrix

__all__ = [
    "NEIGHBOURS_K",
    "INCEPTION_ENV",
    "INCEPTION_FILENAME",
    "FEATURE_NETS_DIR",
    "SMALLCNN_CONFIGS",
    "InceptionFeatures",
    "ClassifierFeatures",
    "classifier_path",
    "feature_extractor",
    "extract_features",
    "frechet_distance",
    "kernel_inception_distance",
    "precision_recall",
    "quality_report",
    "quality_report_from_features",
    "labelled_metrics",
    "main",
]

# k of the k-nearest-neighbour radii in precision/recall (Kynkaanniemi et al. 2019 use 3);
# a set of features needs more than k rows.
NEIGHBOURS_K = 3

INCEPTION_ENV = "MEMSEP_INCEPTION"
INCEPTION_FILENAME = "pt_inception-2015-12-05-6726825d.pt"
INCEPTION_URL = (
    "https://api.ngc.nvidia.com/v2/models/nvidia/research/stylegan3/versions/1/files/metrics/"
    + INCEPTION_FILENAME
)
FEATURE_NETS_DIR = Path(__file__).resolve().parent / "feature_nets"
_BLOCK = 2**22  # elements of one working block (distances, centred features)


# -- checks ------------------------------------------------------------------------------------


def _check_images(
    images: object, name: str, *, channels: Sequence[int] | None = None,
    size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Return images if a finite floating tensor (B, C, H, W) with C in channels and (H, W) =
    size when given; raise TypeError/ValueError naming ``name`` otherwise."""
    if not isinstance(images, torch.Tensor):
        kind = type(images).__name__
        raise TypeError(f"{name} must be a torch.Tensor of shape (B, C, H, W), got {kind}")
    if images.ndim != 4:
        raise ValueError(f"{name} must have shape (B, C, H, W), got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor (values in [-1, 1]), got {images.dtype}")
    if channels is not None and images.shape[1] not in channels:
        raise ValueError(
            f"{name} must have C in {tuple(channels)} channels, got shape {tuple(images.shape)}"
        )
    if size is not None and tuple(images.shape[2:]) != tuple(size):
        raise ValueError(
            f"{name} must be {size[0]}x{size[1]} images, got shape {tuple(images.shape)}"
        )
    if images.numel() and not (torch.isfinite(images.amax()) and torch.isfinite(images.amin())):
        raise ValueError(f"{name} must be finite, found NaN or inf")
    return images


def _module_device(module: nn.Module) -> torch.device:
    """The device of the module's first parameter or buffer (CPU when it has none)."""
    for t in (*module.parameters(), *module.buffers()):
        return t.device
    return torch.device("cpu")


# -- extractors --------------------------------------------------------------------------------


class InceptionFeatures(nn.Module):
    """Inception-v3 pool3 features (B, 2048) of images (B, C, H, W) in [-1, 1], C in {1, 3},
    from the TorchScript file of NVlabs StyleGAN2-ADA/StyleGAN3/EDM FID
    (``pt_inception-2015-12-05-6726825d.pt``, the TF FID graph converted to TorchScript).

    The file is found at ``path``, else at the path in the environment variable
    ``MEMSEP_INCEPTION``; nothing is downloaded. What is assumed about the file: it is called as
    ``net(x, return_features=True)`` with x float (B, 3, 299, 299) holding pixel values in the
    uint8 range 0..255 (it normalizes internally with (x - 128) / 128), and returns (B, 2048).

    The pipeline, mirroring how generated images are scored in EDM (saved as 8-bit images, then
    fed to the network): grayscale is replicated to 3 channels; x in [-1, 1] maps to
    (x + 1) * 127.5, clipped to [0, 255] and rounded (``quantize=True``) as saving an 8-bit
    image would; then resized to 299x299 with ``F.interpolate(mode="bilinear",
    align_corners=False)`` here (so the file's own resize step is not used). Values of
    "FD-Inception" are comparable with each other; they may differ slightly from published FIDs
    if those resized differently, and all of them depend on the number of samples.
    """

    name = "Inception"
    feature_dim = 2048
    input_size = 299

    def __init__(self, path: str | os.PathLike | None = None, *, quantize: bool = True) -> None:
        super().__init__()
        source = path if path is not None else os.environ.get(INCEPTION_ENV)
        if source is None:
            raise FileNotFoundError(
                "Inception-v3 weights not given: pass path= or set the environment variable "
                f"{INCEPTION_ENV} to a local copy of {INCEPTION_FILENAME} (the TorchScript "
                f"file of NVlabs StyleGAN3/EDM metrics, {INCEPTION_URL}); nothing is downloaded. "
                "Without it, use feature_extractor('classifier', dataset)."
            )
        file = Path(source).expanduser()
        if not file.is_file():
            origin = "path" if path is not None else f"${INCEPTION_ENV}"
            raise FileNotFoundError(
                f"Inception-v3 TorchScript file not found at {file} (from {origin}): put "
                f"{INCEPTION_FILENAME} (from {INCEPTION_URL}) there, or point path= or "
                f"{INCEPTION_ENV} at it; nothing is downloaded."
            )
        self.path = file
        self.quantize = bool(quantize)
        with warnings.catch_warnings():  # torch.jit is deprecated, but it is the file's format
            warnings.simplefilter("ignore", DeprecationWarning)
            self.net = torch.jit.load(str(file), map_location="cpu").eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Features (B, 2048) float32 of images (B, 1 or 3, H, W) in [-1, 1]."""
        _check_images(images, "images", channels=(1, 3))
        x = images.to(device=_module_device(self), dtype=torch.float32)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)  # (B, 3, H, W)
        x = ((x + 1) * 127.5).clamp(0, 255)  # (B, 3, H, W) in the uint8 range
        if self.quantize:
            x = x.round()
        if tuple(x.shape[2:]) != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear",
                              align_corners=False)  # (B, 3, 299, 299)
        return self.net(x, return_features=True).float().reshape(x.shape[0], -1)  # (B, 2048)


# The small classifiers: per dataset, stages of (width, stride) with `convs` 3x3 conv-BN-ReLU
# layers each (the first one strided), global average pooling, a Linear+ReLU penultimate layer
# of `feature_dim` units (the features), and a linear classification head.
SMALLCNN_CONFIGS: dict[str, dict[str, Any]] = {
    # 8x8 -> 8x8 -> 4x4 -> 4x4: one downsampling suits the tiny digits; ~111k parameters.
    "digits": dict(in_channels=1, image_size=8, stages=((32, 1), (64, 2), (128, 1)), convs=1,
                   feature_dim=128, num_classes=10),
    # 32x32 -> 32 -> 16 -> 8 -> 4: a VGG-like net, two convs per stage; ~1.2M parameters.
    "cifar10": dict(in_channels=3, image_size=32,
                    stages=((32, 1), (64, 2), (128, 2), (256, 2)), convs=2,
                    feature_dim=128, num_classes=10),
}
# Training defaults per dataset (any of them can be overridden on the command line).
_TRAIN_DEFAULTS: dict[str, dict[str, Any]] = {
    "digits": dict(epochs=40, batch_size=64, lr=2e-3, weight_decay=5e-4, shift=1, flip=False),
    "cifar10": dict(epochs=30, batch_size=256, lr=2e-3, weight_decay=5e-4, shift=4, flip=True),
}
_DIGITS_TEST_FRACTION = 0.2


def classifier_path(dataset: str, directory: str | os.PathLike | None = None) -> Path:
    """Where the shipped classifier of ``dataset`` lives: <directory>/smallcnn_<dataset>.pt
    (its JSON record next to it), directory defaulting to experiments/common/feature_nets/."""
    return Path(directory or FEATURE_NETS_DIR) / f"smallcnn_{dataset}.pt"


def _train_command(dataset: str) -> str:
    out = os.path.relpath(FEATURE_NETS_DIR, REPO_ROOT)
    extra = " --data-root DIR" if dataset == "cifar10" else ""
    return f"python -m experiments.common.features train --dataset {dataset}{extra} --out {out}/"


class ClassifierFeatures(nn.Module):
    """Penultimate activations (B, feature_dim) of a small CNN classifier trained on the dataset
    whose images it scores; the feature space is named f"{arch}-{dataset}", e.g.
    "SmallCNN-digits".

    Architecture (:data:`SMALLCNN_CONFIGS`): stages of 3x3 conv-BatchNorm-ReLU layers, global
    average pooling, Linear + ReLU to ``feature_dim`` units (the features, like Inception's
    pool3 they are post-ReLU), and a Linear head to ``num_classes`` logits used only to train.

    Build with :meth:`for_dataset`, train with :meth:`train_classifier`, keep with
    :meth:`save` / :meth:`load` (a state-dict file and a JSON record with the dataset, arch,
    feature_dim, held-out test accuracy, training settings and versions, in ``record``).
    """

    arch = "SmallCNN"

    def __init__(
        self, dataset: str, *, in_channels: int, image_size: int,
        stages: Sequence[Sequence[int]], convs: int = 1, feature_dim: int = 128,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        if in_channels < 1 or image_size < 1 or feature_dim < 1 or num_classes < 2 or convs < 1:
            raise ValueError(
                "in_channels, image_size, feature_dim and convs must be >= 1 and num_classes >= 2"
                f", got {in_channels}, {image_size}, {feature_dim}, {convs} and {num_classes}"
            )
        self.dataset = str(dataset)
        self.name = f"{self.arch}-{self.dataset}"
        self.in_channels, self.image_size = int(in_channels), int(image_size)
        self.feature_dim, self.num_classes = int(feature_dim), int(num_classes)
        self.config: dict[str, Any] = dict(
            in_channels=self.in_channels, image_size=self.image_size,
            stages=[[int(w), int(s)] for w, s in stages], convs=int(convs),
            feature_dim=self.feature_dim, num_classes=self.num_classes,
        )
        self.record: dict[str, Any] = {}
        layers: list[nn.Module] = []
        width = self.in_channels
        for out, stride in self.config["stages"]:
            for i in range(self.config["convs"]):
                layers += [
                    nn.Conv2d(width, out, 3, stride=stride if i == 0 else 1, padding=1, bias=False),
                    nn.BatchNorm2d(out),
                    nn.ReLU(inplace=True),
                ]
                width = out
        self.body = nn.Sequential(*layers)
        self.penultimate = nn.Sequential(nn.Linear(width, self.feature_dim), nn.ReLU())
        self.head = nn.Linear(self.feature_dim, self.num_classes)

    @classmethod
    def for_dataset(cls, dataset: str) -> ClassifierFeatures:
        """An untrained classifier with the architecture of :data:`SMALLCNN_CONFIGS`[dataset]."""
        if dataset not in SMALLCNN_CONFIGS:
            raise ValueError(f"dataset must be one of {sorted(SMALLCNN_CONFIGS)}, got {dataset!r}")
        return cls(dataset, **SMALLCNN_CONFIGS[dataset])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Features (B, feature_dim) float32 of images (B, in_channels, image_size, image_size)
        in [-1, 1]."""
        _check_images(images, "images", channels=(self.in_channels,),
                      size=(self.image_size, self.image_size))
        x = images.to(device=_module_device(self), dtype=torch.float32)
        h = self.body(x)  # (B, width, h, w)
        return self.penultimate(h.mean(dim=(2, 3)))  # (B, feature_dim)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits (B, num_classes) of images (B, in_channels, image_size, image_size)."""
        return self.head(self(images))

    @torch.no_grad()
    def accuracy(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1024) -> float:
        """Fraction of images (N, C, H, W) whose predicted class equals labels (N,), eval mode."""
        if labels.shape != images.shape[:1]:
            raise ValueError(
                f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}"
            )
        was_training = self.training
        self.eval()
        dev = _module_device(self)
        correct = 0
        for i in range(0, images.shape[0], batch_size):
            pred = self.logits(images[i : i + batch_size].to(dev)).argmax(dim=1)
            correct += int((pred.cpu() == labels[i : i + batch_size].cpu()).sum())
        self.train(was_training)
        return correct / max(1, images.shape[0])

    @classmethod
    def train_classifier(
        cls, dataset: str, *, epochs: int | None = None, batch_size: int | None = None,
        lr: float | None = None, weight_decay: float | None = None, augment: bool = True,
        seed: int = 0, data_root: str | os.PathLike | None = None, device: str = "auto",
        progress: bool = False, limit: int | None = None,
    ) -> ClassifierFeatures:
        """Train the :meth:`for_dataset` classifier on the dataset's training split and measure
        its accuracy on the held-out split; the returned (eval-mode, CPU) model's ``record``
        holds the accuracy, settings and versions.

        Splits: digits, a seeded 80/20 split of all 1,797 scikit-learn digits (permutation from
        ``seed``); cifar10, the official train (50,000) and test (10,000) sets from
        ``experiments.common.data.load_dataset(..., root=data_root)``. Training: AdamW with a
        cosine learning-rate decay, cross-entropy, batches drawn by a seeded permutation, and
        (``augment``) random translations by up to ``shift`` pixels (edge-replicated), plus
        horizontal flips for cifar10. Defaults per dataset in ``_TRAIN_DEFAULTS``. ``limit``
        (tests) keeps only the first ``limit`` training images. Same seed, same numbers on CPU.
        """
        if dataset not in SMALLCNN_CONFIGS:
            raise ValueError(f"dataset must be one of {sorted(SMALLCNN_CONFIGS)}, got {dataset!r}")
        given = dict(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay)
        settings = {**_TRAIN_DEFAULTS[dataset], **{k: v for k, v in given.items() if v is not None}}
        if int(settings["epochs"]) < 1 or int(settings["batch_size"]) < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {settings}")
        settings.update(augment=bool(augment), seed=int(seed), limit=limit)
        start = time.perf_counter()
        (x_train, y_train), (x_test, y_test), split = _classifier_data(dataset, seed, data_root)
        if limit is not None:
            x_train, y_train = x_train[:limit], y_train[:limit]
        dev = resolve_device(device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = cls.for_dataset(dataset)
        model.to(dev).train()
        g = torch.Generator().manual_seed(seed + 1)
        n, bs = x_train.shape[0], int(settings["batch_size"])
        steps = int(settings["epochs"]) * math.ceil(n / bs)
        opt = torch.optim.AdamW(model.parameters(), lr=float(settings["lr"]),
                                weight_decay=float(settings["weight_decay"]))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
        x_dev, y_dev = x_train.to(dev), y_train.to(dev)
        bar = range(int(settings["epochs"]))
        if progress:
            from tqdm import tqdm

            bar = tqdm(bar, desc=f"train {model.name}")
        for _ in bar:
            perm = torch.randperm(n, generator=g)
            for i in range(0, n, bs):
                idx = perm[i : i + bs].to(dev)
                xb, yb = x_dev[idx], y_dev[idx]
                if augment:
                    xb = _augment(xb, g, int(settings["shift"]), bool(settings["flip"]))
                loss = F.cross_entropy(model.logits(xb), yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
        model.eval()
        train_acc, test_acc = model.accuracy(x_train, y_train), model.accuracy(x_test, y_test)
        model.cpu()
        versions = provenance()
        model.record = {
            "dataset": dataset,
            "arch": model.arch,
            "name": model.name,
            "feature_dim": model.feature_dim,
            "test_accuracy": test_acc,
            "train_accuracy": train_acc,
            "num_train": int(x_train.shape[0]),
            "num_test": int(x_test.shape[0]),
            "split": split,
            "config": model.config,
            "train_settings": {**settings, "optimizer": "AdamW", "schedule": "cosine",
                               "loss": "cross_entropy", "device": str(dev)},
            "torch_version": torch.__version__,
            "versions": versions,
            "wall_time_s": time.perf_counter() - start,
        }
        return model

    def save(self, path: str | os.PathLike) -> tuple[Path, Path]:
        """Write the float32 state dict to ``path`` (.pt) and the JSON record (with the
        architecture config) to the same path with suffix .json, atomically. Returns both."""
        path = Path(path)
        buf = io.BytesIO()
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        torch.save(state, buf)
        atomic_write_bytes(path, buf.getvalue())
        record = {**self.record, "dataset": self.dataset, "arch": self.arch, "name": self.name,
                  "feature_dim": self.feature_dim, "config": self.config,
                  "weights": path.name, "weights_bytes": len(buf.getvalue()),
                  "weights_sha256": hashlib.sha256(buf.getvalue()).hexdigest()}
        record.setdefault("torch_version", torch.__version__)
        json_path = path.with_suffix(".json")
        atomic_write_json(json_path, record)
        self.record = record
        return path, json_path

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu"
             ) -> ClassifierFeatures:
        """The classifier saved by :meth:`save` at ``path`` (.pt, with its .json next to it),
        in eval mode. FileNotFoundError names the missing file; CorruptFileError names a
        weights file whose SHA-256 differs from the one its record stores."""
        path = Path(path)
        json_path = path.with_suffix(".json")
        for f in (path, json_path):
            if not f.is_file():
                raise FileNotFoundError(f"classifier file {f} not found (save() writes both "
                                        f"{path.name} and {json_path.name})")
        record = read_json(json_path, "restore it (git checkout) or train the classifier again")
        if record.get("arch") != cls.arch:
            raise ValueError(
                f"{json_path} records arch {record.get('arch')!r}, expected {cls.arch!r}"
            )
        raw = path.read_bytes()
        if hashlib.sha256(raw).hexdigest() != record.get("weights_sha256"):
            raise CorruptFileError(
                f"{path} does not match the SHA-256 recorded in {json_path.name} (damaged or "
                "replaced); restore it (git checkout) or train it again (this module's train)")
        model = cls(record["dataset"], **record["config"])
        state = torch.load(io.BytesIO(raw), map_location=map_location, weights_only=True)
        model.load_state_dict(state)
        model.record = record
        return model.eval()


def _classifier_data(
    dataset: str, seed: int, data_root: str | os.PathLike | None
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor], str]:
    """((train images, labels), (held-out images, labels), description of the split)."""
    from experiments.common import data

    if dataset == "digits":
        images, labels = data.load_digits()
        images, labels = torch.as_tensor(images, dtype=torch.float32), torch.as_tensor(labels)
        n = images.shape[0]
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        n_test = round(_DIGITS_TEST_FRACTION * n)
        test, train = perm[:n_test], perm[n_test:]
        split = f"seeded 80/20 split of the {n} sklearn digits (torch.randperm, seed {seed})"
        return ((images[train], labels[train].long()), (images[test], labels[test].long()), split)
    out = []
    for part in ("train", "test"):
        images, labels = data.load_dataset(dataset, split=part, root=data_root)
        out.append((torch.as_tensor(images, dtype=torch.float32), torch.as_tensor(labels).long()))
    return out[0], out[1], f"official {dataset} train/test split"


def _augment(x: torch.Tensor, g: torch.Generator, shift: int, flip: bool) -> torch.Tensor:
    """Random translation of each image (B, C, H, W) by up to ``shift`` pixels in each direction
    (edges replicated), and a random horizontal flip when ``flip``; draws from g (CPU)."""
    b, _, h, w = x.shape
    if shift > 0:
        xp = F.pad(x, (shift, shift, shift, shift), mode="replicate")  # (B, C, H+2s, W+2s)
        dy, dx = torch.randint(0, 2 * shift + 1, (2, b, 1), generator=g).to(x.device)
        rows = dy + torch.arange(h, device=x.device)  # (B, H)
        cols = dx + torch.arange(w, device=x.device)  # (B, W)
        batch = torch.arange(b, device=x.device)[:, None, None]
        x = xp.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
        x = x.permute(0, 3, 1, 2)  # (B, C, H, W)
    if flip:
        mask = (torch.rand(b, generator=g) < 0.5).to(x.device)
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    return x


def feature_extractor(
    kind: str, dataset: str | None = None, path: str | os.PathLike | None = None,
    device: str = "cpu",
) -> nn.Module:
    """The extractor of feature space ``kind`` on ``device``, in eval mode.

    kind "inception": :class:`InceptionFeatures` from ``path`` or $MEMSEP_INCEPTION (dataset
    ignored). kind "classifier": the :class:`ClassifierFeatures` of ``dataset`` from ``path``,
    default the shipped experiments/common/feature_nets/smallcnn_<dataset>.pt; when missing,
    FileNotFoundError gives the command that trains it.
    """
    if kind == "inception":
        return InceptionFeatures(path).to(resolve_device(device)).eval()
    if kind != "classifier":
        raise ValueError(f"kind must be 'inception' or 'classifier', got {kind!r}")
    if dataset is None and path is None:
        raise ValueError("dataset must be given for kind='classifier' (e.g. 'digits')")
    file = Path(path) if path is not None else classifier_path(str(dataset))
    if not file.is_file() or not file.with_suffix(".json").is_file():
        name = dataset if dataset is not None else "<dataset>"
        raise FileNotFoundError(
            f"no trained feature classifier at {file} (and its .json record); train it with\n"
            f"    {_train_command(name)}"
        )
    return ClassifierFeatures.load(file).to(resolve_device(device)).eval()


@torch.no_grad()
def extract_features(
    images: torch.Tensor, extractor: nn.Module, batch_size: int = 256, progress: bool = False
) -> torch.Tensor:
    """Features (N, F) float64 on CPU of images (N, C, H, W) in [-1, 1], in batches of
    ``batch_size`` on the extractor's device, extractor in eval mode (its mode is restored)."""
    _check_images(images, "images")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    was_training = extractor.training
    extractor.eval()
    dev = _module_device(extractor)
    starts = range(0, images.shape[0], batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc=f"features {getattr(extractor, 'name', '')}")
    out = [extractor(images[i : i + batch_size].to(dev)).double().cpu() for i in starts]
    extractor.train(was_training)
    feats = torch.cat(out) if out else torch.empty(0, getattr(extractor, "feature_dim", 0))
    if feats.ndim != 2:
        raise ValueError(f"extractor must return features (B, F), got shape {tuple(feats.shape)}")
    return feats


# -- metrics -----------------------------------------------------------------------------------


def _check_pair(real: torch.Tensor, fake: torch.Tensor, min_rows: int, why: str) -> None:
    check_matrix(real, "real")
    check_matrix(fake, "fake", cols=real.shape[1])
    for name, x in (("real", real), ("fake", fake)):
        if x.shape[0] < min_rows:
            raise ValueError(f"{name} must hold at least {min_rows} rows {why}, got {x.shape[0]}")


def _mean_cov(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (F,) and unbiased covariance (F, F), float64, of x (N, F), N >= 2, centred in row
    blocks of about 2^22 elements (no float64 copy of x)."""
    n, f = x.shape
    step = max(1, _BLOCK // f)
    mu = torch.zeros(f, dtype=torch.float64, device=x.device)
    for i in range(0, n, step):
        mu += x[i : i + step].double().sum(dim=0)
    mu /= n
    cov = torch.zeros(f, f, dtype=torch.float64, device=x.device)
    for i in range(0, n, step):
        c = x[i : i + step].double() - mu  # (s, F)
        cov.addmm_(c.T, c)
    return mu, cov / (n - 1)


def frechet_distance(real: torch.Tensor, fake: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to real features (N, F) and fake (M, F),
    N, M >= 2: ||mu_r - mu_f||^2 + tr(S_r + S_f - 2 (S_r S_f)^(1/2)) (Heusel et al. 2017), in
    float64. FID when the features are Inception's; report it as "FD-<feature space>".

    Means and unbiased covariances are computed here by centring (exact in float64, memory
    O(F^2)); the trace of the matrix square root is torchmetrics' (sum of the square roots of
    the eigenvalues of S_r S_f, ``torchmetrics.image.fid._compute_fid``), so nothing downloads
    or touches a network. Symmetric in (real, fake); at rounding level it can be slightly
    negative for identical sets (it is not clipped).
    """
    from torchmetrics.image.fid import _compute_fid

    _check_pair(real, fake, 2, "for a covariance")
    mu_r, cov_r = _mean_cov(real)
    mu_f, cov_f = _mean_cov(fake.to(real.device))
    return float(_compute_fid(mu_r, cov_r, mu_f, cov_f))


def kernel_inception_distance(
    real: torch.Tensor, fake: torch.Tensor, subsets: int = 100, subset_size: int | None = None,
    seed: int = 0, *, degree: int = 3, gamma: float | None = None, coef: float = 1.0,
) -> tuple[float, float]:
    """KID (Binkowski et al. 2018) between real features (N, F) and fake (M, F): the unbiased
    squared MMD with kernel k(x, y) = (gamma x.y + coef)^degree (gamma = 1/F by default) on
    ``subsets`` pairs of random subsets of ``subset_size`` rows (without replacement within a
    subset), drawn with a generator seeded by ``seed``. Returns (mean, std) over the subsets,
    float64; std is the population std over subsets as in torchmetrics (a spread, not the
    standard error of the mean). ``subset_size`` defaults to min(1000, N, M) and must be in
    [2, min(N, M)]. Each MMD is torchmetrics' ``poly_mmd``. Unbiased: about 0, and possibly
    negative, for two samples of one distribution.
    """
    from torchmetrics.image.kid import poly_mmd

    _check_pair(real, fake, 2, "for KID")
    n, m = real.shape[0], fake.shape[0]
    size = min(1000, n, m) if subset_size is None else int(subset_size)
    if not 2 <= size <= min(n, m):
        raise ValueError(f"subset_size must be in [2, min(N, M) = {min(n, m)}], got {subset_size}")
    if subsets < 1:
        raise ValueError(f"subsets must be >= 1, got {subsets}")
    g = torch.Generator().manual_seed(int(seed))
    values = torch.empty(subsets, dtype=torch.float64)
    for s in range(subsets):
        r = real[torch.randperm(n, generator=g)[:size].to(real.device)].double()  # (size, F)
        f = fake[torch.randperm(m, generator=g)[:size].to(fake.device)].double().to(r.device)
        values[s] = poly_mmd(r, f, degree=degree, gamma=gamma, coef=coef).cpu()
    return float(values.mean()), float(values.std(unbiased=False))


def _blocks(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def _kth_nn_radii(x: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """Distance (N,) float64 from each row of x (N, F) to its k-th nearest other row (the
    (k+1)-th smallest distance counting the row itself), blocks of chunk x chunk distances."""
    radii = torch.empty(x.shape[0], dtype=torch.float64, device=x.device)
    for rb in _blocks(x.shape[0], chunk):
        q = x[rb].double()
        best: torch.Tensor | None = None  # (rows, <= k+1) running smallest distances
        for cb in _blocks(x.shape[0], chunk):
            d = torch.cdist(q, x[cb].double())  # (rows, cols)
            cand = d if best is None else torch.cat([best, d], dim=1)
            best = cand.topk(min(k + 1, cand.shape[1]), dim=1, largest=False).values
        radii[rb] = best.amax(dim=1)
    return radii


def _fraction_inside(points: torch.Tensor, centers: torch.Tensor, radii: torch.Tensor,
                     chunk: int) -> float:
    """Fraction of points (P, F) within distance radii[j] of some centers[j] (C, F)."""
    inside = 0
    for pb in _blocks(points.shape[0], chunk):
        p = points[pb].double()
        hit = torch.zeros(p.shape[0], dtype=torch.bool, device=p.device)
        for cb in _blocks(centers.shape[0], chunk):
            d = torch.cdist(p, centers[cb].double())  # (rows, cols)
            hit |= (d <= radii[cb][None, :]).any(dim=1)
            if bool(hit.all()):
                break
        inside += int(hit.sum())
    return inside / points.shape[0]


def precision_recall(
    real: torch.Tensor, fake: torch.Tensor, k: int = NEIGHBOURS_K, chunk_size: int = 2048
) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019) of fake features (M, F) against
    real features (N, F): each point's ball has radius the distance to its k-th nearest
    neighbour within its own set; precision = fraction of fake points inside the union of the
    real balls (fidelity), recall = fraction of real points inside the union of the fake balls
    (coverage). Swapping real and fake swaps the two. Requires k < N and k < M.

    Exact Euclidean distances in float64 (torch.cdist), on the features' device, streamed in
    blocks of ``chunk_size`` x ``chunk_size`` (default 2,048: 32 MiB), so memory is
    O(chunk_size^2 + N + M), never the (N x M) matrix. Cost O((N^2 + M^2 + NM) F).
    """
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    _check_pair(real, fake, k + 1, f"for k = {k} nearest neighbours (k < N and k < M)")
    fake = fake.to(real.device)
    real_radii = _kth_nn_radii(real, k, chunk_size)
    fake_radii = _kth_nn_radii(fake, k, chunk_size)
    precision = _fraction_inside(fake, real, real_radii, chunk_size)
    recall = _fraction_inside(real, fake, fake_radii, chunk_size)
    return precision, recall


def quality_report_from_features(
    real: torch.Tensor, fake: torch.Tensor, feature_space: str, *, k: int = NEIGHBOURS_K,
    kid_subsets: int = 100, kid_subset_size: int | None = None, seed: int = 0,
) -> dict[str, Any]:
    """All metrics of real features (N, F) against fake (M, F) in the feature space named
    ``feature_space``: {"feature_space", "fd", "kid_mean", "kid_std", "kid_subsets",
    "kid_subset_size", "precision", "recall", "k", "num_real", "num_fake", "feature_dim"}.
    Label the numbers with :func:`labelled_metrics` ("FD-<feature_space>", ...)."""
    n, m = real.shape[0], fake.shape[0]
    size = min(1000, n, m) if kid_subset_size is None else kid_subset_size
    kid_mean, kid_std = kernel_inception_distance(real, fake, kid_subsets, size, seed)
    precision, recall = precision_recall(real, fake, k=k)
    return {
        "feature_space": str(feature_space),
        "fd": frechet_distance(real, fake),
        "kid_mean": kid_mean,
        "kid_std": kid_std,
        "kid_subsets": int(kid_subsets),
        "kid_subset_size": int(size),
        "precision": precision,
        "recall": recall,
        "k": int(k),
        "num_real": int(n),
        "num_fake": int(m),
        "feature_dim": int(real.shape[1]),
    }


def quality_report(
    real_images: torch.Tensor, fake_images: torch.Tensor, extractor: nn.Module, *,
    k: int = NEIGHBOURS_K, kid_subsets: int = 100, kid_subset_size: int | None = None,
    seed: int = 0, batch_size: int = 256, progress: bool = False,
) -> dict[str, Any]:
    """FD, KID (mean, std), precision and recall of fake images (M, C, H, W) against real
    images (N, C, H, W), both in [-1, 1], on the features of ``extractor`` (see
    :func:`quality_report_from_features` for the keys); "feature_space" is extractor.name, so
    with the shipped digits classifier the numbers are FD-SmallCNN-digits,
    KID-SmallCNN-digits, ..., and FD-Inception (= FID) only with :class:`InceptionFeatures`."""
    name = getattr(extractor, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError("extractor must have a non-empty str attribute `name` (its feature space)")
    real = extract_features(real_images, extractor, batch_size, progress)
    fake = extract_features(fake_images, extractor, batch_size, progress)
    return quality_report_from_features(real, fake, name, k=k, kid_subsets=kid_subsets,
                                        kid_subset_size=kid_subset_size, seed=seed)


def labelled_metrics(report: dict[str, Any]) -> dict[str, float]:
    """The report's numbers under names that carry the feature space, e.g. for
    "SmallCNN-digits": {"FD-SmallCNN-digits", "KID-SmallCNN-digits", "KID-std-SmallCNN-digits",
    "Precision-SmallCNN-digits", "Recall-SmallCNN-digits"}."""
    space = report["feature_space"]
    return {
        f"FD-{space}": report["fd"],
        f"KID-{space}": report["kid_mean"],
        f"KID-std-{space}": report["kid_std"],
        f"Precision-{space}": report["precision"],
        f"Recall-{space}": report["recall"],
    }


# -- command line ------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """``train``: train the feature classifier of a dataset and save
    <out>/smallcnn_<dataset>.pt + .json. Returns the record."""
    p = argparse.ArgumentParser(prog="python -m experiments.common.features", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train and save a feature classifier")
    t.add_argument("--dataset", required=True, choices=sorted(SMALLCNN_CONFIGS))
    t.add_argument("--out", default=str(FEATURE_NETS_DIR), help="output folder")
    t.add_argument("--epochs", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--weight-decay", type=float)
    t.add_argument("--no-augment", action="store_true")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--data-root", default=None, help="dataset folder (cifar10)")
    t.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    model = ClassifierFeatures.train_classifier(
        args.dataset, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay, augment=not args.no_augment, seed=args.seed,
        data_root=args.data_root, device=args.device, progress=True,
    )
    pt, js = model.save(classifier_path(args.dataset, args.out))
    r = model.record
    print(f"{model.name}: test accuracy {r['test_accuracy']:.4f} on {r['num_test']} held-out "
          f"images, train accuracy {r['train_accuracy']:.4f}, {r['wall_time_s']:.1f} s -> "
          f"{pt} ({r['weights_bytes']} bytes), {js}")
    return r


if __name__ == "__main__":
    main()
