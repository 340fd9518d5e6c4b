"""Image datasets for the DiT experiments, scaled to [-1, 1] (DESIGN.md, "Data").

Every loader returns ``(images, labels)``: images a float32 tensor (N, C, H, W) with values
in [-1, 1], labels an int64 tensor (N,). Two datasets:

- ``"digits"``: scikit-learn's bundled 8x8 digits (1,797 images, one channel, values 0..16
  mapped by x / 8 - 1). Needs no file; the default of the smoke and quick profiles.
- ``"cifar10"``: CIFAR-10 (32x32 RGB, values 0..255 mapped by x / 127.5 - 1), read from a
  folder holding either the decoded copy ``train.npz`` / ``test.npz`` + ``SHA256SUMS``
  (format: shared/data/cifar10/README.md) or the official ``cifar-10-python.tar.gz``
  (read in place, never extracted). Checksums are verified once per process.

Where CIFAR-10 is looked for (first match wins, see ``cifar10_locations``):

1. the ``root`` argument (an experiment's ``--data-root``), only that folder;
2. else ``$MEMSEP_DATA_ROOT/cifar10`` (the variable names the folder *containing*
   ``cifar10/``), only that folder;
3. else ``<repo>/../shared/data/cifar10`` (the decoded copy on the development machines),
   then ``<repo>/data/cifar10`` (the repo's ignored data/ folder).

A folder given in 1. or 2. may also be the parent of ``cifar10/``. Subsets are drawn at
random with a seed (``random_subset``; the decoded copy is sorted by class), and a small
subset can be written for carrying to a GPU machine:

    python -m experiments.common.data export-cifar10 --n 10000 --seed 0 --out data/cifar10/
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import io
import os
import pickle
import sys
import tarfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from experiments.common.runs import REPO_ROOT, atomic_write_bytes

__all__ = [
    "DATASETS",
    "IMAGE_SHAPES",
    "average_pool",
    "CIFAR10_CLASSES",
    "CIFAR10_TARBALL",
    "CIFAR10_TARBALL_MD5",
    "DATA_ROOT_ENV",
    "load_digits",
    "load_cifar10",
    "load_dataset",
    "cifar10_locations",
    "random_subset",
    "save_subset",
    "main",
]

DATASETS = ("digits", "cifar10")
# (channels, height, width) of one image of each dataset, known before anything is loaded
# so that configs can be checked against it (e.g. a DiT patch size must divide the side).
IMAGE_SHAPES = {"digits": (1, 8, 8), "cifar10": (3, 32, 32)}
SPLITS = ("train", "test")
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
CIFAR10_TARBALL = "cifar-10-python.tar.gz"
CIFAR10_TARBALL_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_TARBALL_MD5 = "c58f30108f718f92721af3b95e74349a"  # the official value
CIFAR10_TAR_DIR = "cifar-10-batches-py"
CHECKSUM_FILE = "SHA256SUMS"
DATA_ROOT_ENV = "MEMSEP_DATA_ROOT"
EXPORT_COMMAND = (
    "python -m experiments.common.data export-cifar10 --n 10000 --seed 0 --out data/cifar10/"
)
_BLOCK = 1 << 20  # bytes hashed per read


# -- digits ---------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn import datasets

    bunch = datasets.load_digits()
    images = bunch.images.astype(np.float32)[:, None, :, :]  # (1797, 1, 8, 8), 0..16
    return images / 8.0 - 1.0, bunch.target.astype(np.int64)


def load_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled 8x8 digits, scaled to [-1, 1]; needs no file.

    Returns:
        images: float32 (1797, 1, 8, 8), x / 8 - 1 of the 0..16 grey levels.
        labels: int64 (1797,), the digit 0..9.
    """
    images, labels = _digits_arrays()
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.copy())


# -- checksums ------------------------------------------------------------------------------


@functools.cache  # = lru_cache(maxsize=None)
def _file_digest(path: str, algorithm: str, size: int, mtime_ns: int) -> str:
    """Hex digest of a file read in blocks; cached per (path, size, mtime) for the process."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            h.update(block)
    return h.hexdigest()


def _digest(path: Path, algorithm: str) -> str:
    st = path.stat()
    return _file_digest(str(path.resolve()), algorithm, st.st_size, st.st_mtime_ns)


def _read_sums(sums: Path) -> dict[str, str]:
    """file name -> sha256 from a ``sha256sum``-style file ("<hex>  <name>" per line)."""
    table: dict[str, str] = {}
    for line in sums.read_text().splitlines():
        parts = line.strip().split(maxsplit=1)
        if len(parts) == 2:
            table[parts[1].lstrip("*")] = parts[0].lower()
    return table


def _verify_sha256(path: Path) -> None:
    sums = path.parent / CHECKSUM_FILE
    if not sums.is_file():
        raise FileNotFoundError(
            f"{path} has no checksum file: expected {sums} listing its sha256 (the decoded "
            f"copy ships one; `{EXPORT_COMMAND}` writes one), or pass verify=False."
        )
    expected = _read_sums(sums).get(path.name)
    if expected is None:
        raise ValueError(f"{sums} has no entry for {path.name}; add its sha256 line.")
    actual = _digest(path, "sha256")
    if actual != expected:
        raise ValueError(
            f"checksum mismatch for {path}: sha256 is {actual}, {sums} expects {expected}. "
            "The file is corrupt or was replaced; copy it again."
        )


def _verify_md5(path: Path) -> None:
    actual = _digest(path, "md5")
    if actual != CIFAR10_TARBALL_MD5:
        raise ValueError(
            f"checksum mismatch for {path}: md5 is {actual}, the official "
            f"{CIFAR10_TARBALL} has {CIFAR10_TARBALL_MD5}. Download it again from "
            f"{CIFAR10_TARBALL_URL}."
        )


# -- locating CIFAR-10 ----------------------------------------------------------------------


def cifar10_locations(root: str | os.PathLike | None = None) -> list[tuple[Path, str]]:
    """The folders searched for CIFAR-10, in order, each with where it came from.

    ``root`` given: that folder and its ``cifar10/`` child only. Else ``$MEMSEP_DATA_ROOT``
    set: ``$MEMSEP_DATA_ROOT/cifar10`` and the folder itself only. Else the shared decoded
    copy ``<repo>/../shared/data/cifar10``, then ``<repo>/data/cifar10``.
    """
    if root is not None:
        p = Path(root).expanduser()
        return [(p, "root argument / --data-root"), (p / "cifar10", "root argument / --data-root")]
    env = os.environ.get(DATA_ROOT_ENV)
    if env:
        p = Path(env).expanduser()
        return [(p / "cifar10", f"${DATA_ROOT_ENV}"), (p, f"${DATA_ROOT_ENV}")]
    return [
        (REPO_ROOT.parent / "shared" / "data" / "cifar10", "shared decoded copy"),
        (REPO_ROOT / "data" / "cifar10", "repo data/ folder"),
    ]


def _find_cifar10(split: str, root: str | os.PathLike | None) -> Path:
    """The file to read for ``split``: ``<folder>/<split>.npz`` or the official tarball."""
    tried = []
    for folder, origin in cifar10_locations(root):
        for name in (f"{split}.npz", CIFAR10_TARBALL):
            if (folder / name).is_file():
                return folder / name
        tried.append(f"  - {folder}  ({origin}): no {split}.npz, no {CIFAR10_TARBALL}")
    raise FileNotFoundError(
        f"CIFAR-10 ({split} split) not found. Looked in:\n" + "\n".join(tried) + "\n"
        "Put one of these into a folder:\n"
        f"  (a) the decoded copy: train.npz and test.npz with their {CHECKSUM_FILE} (format in "
        "shared/data/cifar10/README.md), or a subset written by\n"
        f"      `{EXPORT_COMMAND}`;\n"
        f"  (b) the official {CIFAR10_TARBALL} ({CIFAR10_TARBALL_URL}, md5 "
        f"{CIFAR10_TARBALL_MD5}), as downloaded, not extracted.\n"
        "Then point to it: pass root=<folder> (an experiment's --data-root <folder>), or set "
        f"{DATA_ROOT_ENV}=<dir> with the files in <dir>/cifar10/, or place them in "
        f"{REPO_ROOT / 'data' / 'cifar10'}/."
    )


# -- reading the two formats ----------------------------------------------------------------


def _check_arrays(images: np.ndarray, labels: np.ndarray, source: str) -> None:
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (32, 32, 3):
        raise ValueError(
            f"{source}: images must be uint8 (N, 32, 32, 3) HWC, got {images.dtype} "
            f"{tuple(images.shape)}"
        )
    if labels.shape != (images.shape[0],):
        raise ValueError(
            f"{source}: labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}"
        )
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{source}: labels must lie in 0..9, got {labels.min()}..{labels.max()}")


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """images uint8 (N, 32, 32, 3) HWC, labels int64 (N,), class names."""
    with np.load(path, allow_pickle=False) as f:
        missing = {"images", "labels"} - set(f.files)
        if missing:
            raise ValueError(f"{path} lacks the array(s) {sorted(missing)}; it has {f.files}")
        images, labels = f["images"], f["labels"]
        classes = tuple(str(c) for c in f["classes"]) if "classes" in f.files else CIFAR10_CLASSES
    _check_arrays(images, labels, str(path))
    return images, labels.astype(np.int64), classes


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR batches (dicts, lists, bytes, NumPy arrays) and nothing else."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy._core.numeric", "_frombuffer"),  # arrays pickled with protocol >= 5
        ("numpy.core.numeric", "_frombuffer"),
        ("_codecs", "encode"),  # bytes pickled by Python 3 with protocol 2
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch")
        return super().find_class(module, name)


def _unpickle(data: bytes) -> dict:
    return _ArrayUnpickler(io.BytesIO(data), encoding="bytes").load()


def _read_tarball(path: Path, split: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """images uint8 (N, 32, 32, 3) HWC, labels int64 (N,), class names, from the tarball."""
    wanted = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    found: dict[str, dict] = {}
    with tarfile.open(path, "r:gz") as tar:
        for member in tar:
            parts = Path(member.name).parts
            if not member.isfile() or len(parts) < 2 or parts[-2] != CIFAR10_TAR_DIR:
                continue
            if parts[-1] in wanted or parts[-1] == "batches.meta":
                found[parts[-1]] = _unpickle(tar.extractfile(member).read())
    missing = [name for name in wanted if name not in found]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(f'{CIFAR10_TAR_DIR}/{m}' for m in missing)}")
    chunks, labels = [], []
    for name in wanted:
        batch = found[name]
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise ValueError(f"{path}: {name} data must be (n, 3072), got {tuple(data.shape)}")
        chunks.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))  # CHW -> HWC
        labels.append(np.asarray(batch[b"labels"], dtype=np.int64))
    meta = found.get("batches.meta", {})
    names = meta.get(b"label_names")
    classes = tuple(n.decode() for n in names) if names else CIFAR10_CLASSES
    images, labels_ = np.concatenate(chunks), np.concatenate(labels)
    _check_arrays(images, labels_, str(path))
    return np.ascontiguousarray(images), labels_, classes


def _read_cifar10_uint8(
    split: str, root: str | os.PathLike | None, verify: bool
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...], Path]:
    """images uint8 (N, 32, 32, 3) HWC, labels int64 (N,), class names, the file read."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    path = _find_cifar10(split, root)
    if path.name == CIFAR10_TARBALL:
        if verify:
            _verify_md5(path)
        return (*_read_tarball(path, split), path)
    if verify:
        _verify_sha256(path)
    return (*_read_npz(path), path)


def _to_unit_range(images_hwc: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, C) -> float32 (N, C, H, W) in [-1, 1] by x / 127.5 - 1."""
    x = torch.from_numpy(np.ascontiguousarray(images_hwc)).permute(0, 3, 1, 2)
    return x.to(torch.float32).div_(127.5).sub_(1.0).contiguous()


def load_cifar10(
    split: str = "train", root: str | os.PathLike | None = None, *, verify: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10 scaled to [-1, 1], from the decoded npz copy or the official tarball.

    Args:
        split: "train" (50,000 images, or the exported subset) or "test" (10,000).
        root: folder holding ``<split>.npz`` + ``SHA256SUMS`` or ``cifar-10-python.tar.gz``
            (or the parent of such a ``cifar10/`` folder). None: ``$MEMSEP_DATA_ROOT/cifar10``,
            else the shared copy, else ``<repo>/data/cifar10`` (see ``cifar10_locations``).
        verify: check the npz against ``SHA256SUMS`` / the tarball against its official
            md5 (hashed once per process and file). Only skip for files you made yourself.

    Returns:
        images: float32 (N, 3, 32, 32), x / 127.5 - 1 of the 0..255 pixel values.
        labels: int64 (N,), class index 0..9 (``CIFAR10_CLASSES``).

    Raises:
        FileNotFoundError: no dataset in any location (the message lists them and what to
            put where).
        ValueError: bad split, checksum mismatch, or arrays of the wrong shape or type.
    """
    images, labels, _, _ = _read_cifar10_uint8(split, root, verify)
    return _to_unit_range(images), torch.from_numpy(labels)


def load_dataset(
    name: str, split: str = "train", root: str | os.PathLike | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``load_digits()`` or ``load_cifar10(split, root)`` by name: images (N, C, H, W) in
    [-1, 1] float32 and labels (N,) int64. Digits has one split, "train" (all 1,797 images);
    ``root`` is ignored for it."""
    if name == "digits":
        if split != "train":
            raise ValueError(
                f"split must be 'train' for digits (one set of 1,797 images), got {split!r}; "
                "hold images out with random_subset"
            )
        return load_digits()
    if name == "cifar10":
        return load_cifar10(split, root)
    raise ValueError(f"name must be one of {DATASETS}, got {name!r}")


def average_pool(images: torch.Tensor, side: int) -> torch.Tensor:
    """images (N, C, H, H) averaged over (H/side)^2 blocks to (N, C, side, side), e.g.
    CIFAR-10 at 16 x 16 (d = 768) for a DiT that memorizes on a CPU budget; side must
    divide H. Returns images itself when side == H."""
    if images.ndim != 4 or images.shape[-1] != images.shape[-2]:
        raise ValueError(f"images must have shape (N, C, H, H), got {tuple(images.shape)}")
    native = images.shape[-1]
    if isinstance(side, bool) or not isinstance(side, int) or side < 1 or native % side:
        raise ValueError(f"side must be a positive integer dividing {native}, got {side!r}")
    if side == native:
        return images
    return torch.nn.functional.avg_pool2d(images, native // side)


# -- subsets --------------------------------------------------------------------------------


def _subset_indices(N: int, n: int, seed: int) -> torch.Tensor:
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or not 1 <= n <= N:
        raise ValueError(
            f"n must be an integer with 1 <= n <= {N} (the number of images), got {n!r}"
        )
    g = torch.Generator().manual_seed(int(seed))
    return torch.randperm(N, generator=g)[: int(n)]


def random_subset(
    images: torch.Tensor, labels: torch.Tensor, n: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n distinct rows drawn uniformly at random (never the first n: the copy is sorted).

    The rows are the first n of ``torch.randperm(N)`` under ``seed``, so for one seed the
    subset of size n is contained in the subset of size n + 1 (nested n-sweeps).

    Args:
        images: (N, ...) any dtype.
        labels: (N,).
        n: subset size, 1 <= n <= N.
        seed: seed of the CPU torch.Generator.

    Returns:
        images[idx] (n, ...), labels[idx] (n,), idx int64 (n,) the rows taken.
    """
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"images and labels must have the same length, got {images.shape[0]} and "
            f"{labels.shape[0]}"
        )
    idx = _subset_indices(int(images.shape[0]), n, seed)
    return images[idx], labels[idx], idx


def _update_sums(sums: Path, name: str, digest: str) -> None:
    table = _read_sums(sums) if sums.is_file() else {}
    table[name] = digest
    text = "".join(f"{h}  {f}\n" for f, h in sorted(table.items()))
    atomic_write_bytes(sums, text.encode())


def save_subset(
    path: str | os.PathLike,
    images: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray,
    classes: Sequence[str] = CIFAR10_CLASSES,
) -> Path:
    """Write CIFAR-format images as a compressed npz and record its sha256 in ``SHA256SUMS``.

    The file has the decoded copy's format (``images`` uint8 (n, 32, 32, 3) HWC, ``labels``
    uint8 (n,), ``classes``), so name it ``train.npz`` or ``test.npz`` and
    ``load_cifar10(split, root=path.parent)`` reads it. Written atomically; other lines of
    an existing ``SHA256SUMS`` are kept.

    Args:
        path: the npz file to write.
        images: uint8 (n, 32, 32, 3) HWC as stored, or floating (n, 3, 32, 32) in [-1, 1]
            as ``load_cifar10`` returns (mapped back by round((x + 1) * 127.5), exact).
        labels: (n,) integers 0..9.
        classes: the class names, index = label.

    Returns:
        The path written.
    """
    path = Path(path)
    x = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    y = labels.numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if np.issubdtype(x.dtype, np.floating):
        if x.ndim != 4 or x.shape[1:] != (3, 32, 32):
            raise ValueError(f"images must be (n, 3, 32, 32) when floating, got {x.shape}")
        if not np.isfinite(x).all() or x.min() < -1 or x.max() > 1:
            raise ValueError("floating images must be finite and lie in [-1, 1]")
        x = np.rint((x.transpose(0, 2, 3, 1) + 1.0) * 127.5).astype(np.uint8)
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integers 0..9, got dtype {y.dtype}")
    _check_arrays(x, y, "save_subset")
    if x.shape[0] == 0:
        raise ValueError("images must hold at least one image")
    if len(classes) != 10:
        raise ValueError(f"classes must name the 10 classes, got {len(classes)}")
    buf = io.BytesIO()
    np.savez_compressed(
        buf, images=np.ascontiguousarray(x), labels=y.astype(np.uint8), classes=np.asarray(classes)
    )
    data = buf.getvalue()
    atomic_write_bytes(path, data)
    _update_sums(path.parent / CHECKSUM_FILE, path.name, hashlib.sha256(data).hexdigest())
    return path


# -- command line ---------------------------------------------------------------------------


def _export_cifar10(args: argparse.Namespace) -> Path:
    images, labels, classes, source = _read_cifar10_uint8(args.split, args.data_root, True)
    out = Path(args.out) / f"{args.split}.npz"
    if out.resolve() == source.resolve():
        raise ValueError(f"--out would overwrite the source {source}; choose another folder")
    idx = _subset_indices(images.shape[0], args.n, args.seed).numpy()
    save_subset(out, images[idx], labels[idx], classes)
    size_mb = out.stat().st_size / 1e6
    print(
        f"wrote {out} ({len(idx)} of {images.shape[0]} {args.split} images, seed {args.seed}, "
        f"{size_mb:.1f} MB) from {source}\n"
        f"updated {out.parent / CHECKSUM_FILE}\n"
        f"read it with load_cifar10({args.split!r}, root={str(out.parent)!r})"
    )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m experiments.common.data export-cifar10 [--n N --seed S --out DIR]``."""
    parser = argparse.ArgumentParser(prog="python -m experiments.common.data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    exp = sub.add_parser(
        "export-cifar10",
        help="write a random CIFAR-10 subset (uint8 npz + SHA256SUMS) for a GPU machine",
    )
    exp.add_argument("--n", type=int, default=10_000, help="number of images (default 10000)")
    exp.add_argument("--seed", type=int, default=0, help="seed of the random subset")
    exp.add_argument("--split", choices=SPLITS, default="train")
    exp.add_argument("--out", default=str(REPO_ROOT / "data" / "cifar10"),
                     help="folder to write <split>.npz and SHA256SUMS into (default: <repo>/data/"
                          "cifar10, ignored by git)")
    exp.add_argument("--data-root", default=None,
                     help=f"where the full CIFAR-10 is (default: ${DATA_ROOT_ENV}, then the "
                          "shared copy)")
    args = parser.parse_args(argv)
    if args.command == "export-cifar10":
        _export_cifar10(args)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
