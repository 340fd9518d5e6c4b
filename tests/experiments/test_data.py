"""Datasets: digits, CIFAR-10 in both formats, checksums, seeded subsets, the export CLI."""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from experiments.common import data
from experiments.common.data import (
    CIFAR10_TARBALL,
    DATA_ROOT_ENV,
    IMAGE_SHAPES,
    load_cifar10,
    load_dataset,
    load_digits,
    random_subset,
    save_subset,
)

SHARED = data.REPO_ROOT.parent / "shared" / "data" / "cifar10"


def fake_images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (n, 32, 32, 3) HWC random images and uint8 labels 0..9."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    return images, (np.arange(n) % 10).astype(np.uint8)


def write_npz(folder: Path, split: str, images: np.ndarray, labels: np.ndarray,
              digest: str | None = None) -> Path:
    """<folder>/<split>.npz in the decoded copy's format plus a SHA256SUMS line."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{split}.npz"
    np.savez_compressed(path, images=images, labels=labels,
                        classes=np.asarray(data.CIFAR10_CLASSES))
    digest = digest or hashlib.sha256(path.read_bytes()).hexdigest()
    (folder / "SHA256SUMS").write_text(f"{digest}  {split}.npz\n")
    return path


def write_tarball(folder: Path, batches: dict[str, np.ndarray], labels: dict[str, list[int]],
                  protocol: int = 2) -> Path:
    """An official-layout cifar-10-python.tar.gz: pickled dicts with CHW-flattened rows."""
    path = folder / CIFAR10_TARBALL
    with tarfile.open(path, "w:gz") as tar:
        members = {name: {b"batch_label": name.encode(), b"labels": labels[name],
                          b"data": batches[name]} for name in batches}
        members["batches.meta"] = {b"label_names": [c.encode() for c in data.CIFAR10_CLASSES]}
        for name, obj in members.items():
            raw = pickle.dumps(obj, protocol=protocol)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return path


# -- digits ---------------------------------------------------------------------------------


def test_digits_shape_range_labels():
    x, y = load_digits()
    assert x.shape == (1797, 1, 8, 8) and x.dtype == torch.float32
    assert x.shape[1:] == IMAGE_SHAPES["digits"]  # what configs are checked against
    assert x.min() == -1.0 and x.max() == 1.0
    assert y.shape == (1797,) and y.dtype == torch.int64
    assert set(y.tolist()) == set(range(10))
    # x / 8 - 1 of integer grey levels 0..16
    assert torch.equal((x + 1) * 8, ((x + 1) * 8).round())
    x2, _ = load_dataset("digits")
    assert torch.equal(x, x2)


@settings(deadline=None)  # the first call pays for torch's lazy initialisation
@given(side=st.sampled_from([1, 2, 4, 8, 16, 32]), seed=st.integers(0, 2**16))
def test_average_pool_is_the_block_mean(side, seed):
    """Against the mean over (H/side)^2 blocks written as a reshape; side = H is identity."""
    # float64: the two routes sum up to 1,024 values in different orders
    x = torch.rand((2, 3, 32, 32), generator=torch.Generator().manual_seed(seed),
                   dtype=torch.float64)
    k = 32 // side
    want = x.reshape(2, 3, side, k, side, k).mean(dim=(3, 5))
    torch.testing.assert_close(data.average_pool(x, side), want, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="side must be a positive integer dividing 32"):
        data.average_pool(x, 3)


def test_load_dataset_rejects_unknown_names_and_splits():
    with pytest.raises(ValueError, match=r"name must be one of \('digits', 'cifar10'\)"):
        load_dataset("mnist")
    with pytest.raises(ValueError, match="split must be 'train' for digits"):
        load_dataset("digits", "test")
    with pytest.raises(ValueError, match="split must be one of"):
        load_cifar10("val", root="unused")


# -- subsets --------------------------------------------------------------------------------


def test_random_subset_is_seeded_distinct_and_nested():
    x, y = load_digits()
    a = random_subset(x, y, 50, seed=3)
    b = random_subset(x, y, 50, seed=3)
    c = random_subset(x, y, 50, seed=4)
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    assert not torch.equal(a[2], c[2])
    assert len(set(a[2].tolist())) == 50
    assert not torch.equal(a[2], torch.arange(50))
    assert torch.equal(a[0], x[a[2]]) and torch.equal(a[1], y[a[2]])
    assert torch.equal(random_subset(x, y, 51, seed=3)[2][:50], a[2])
    assert len(set(random_subset(x, y, 1797, seed=0)[2].tolist())) == 1797


@pytest.mark.parametrize("n", [0, -1, 1798, 2.5, True])
def test_random_subset_rejects_n_out_of_range(n):
    x, y = load_digits()
    with pytest.raises(ValueError, match=r"n must be an integer with 1 <= n <= 1797"):
        random_subset(x, y, n, seed=0)


def test_random_subset_rejects_length_mismatch():
    with pytest.raises(ValueError, match="same length"):
        random_subset(torch.zeros(4, 2), torch.zeros(3), 2, seed=0)


# -- CIFAR-10 files -------------------------------------------------------------------------


def test_missing_dataset_says_what_to_put_where(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError) as err:
        load_cifar10("train", root=tmp_path)
    msg = str(err.value)
    for needle in (str(tmp_path), "train.npz", "test.npz", "SHA256SUMS", CIFAR10_TARBALL,
                   DATA_ROOT_ENV, "--data-root", "export-cifar10"):
        assert needle in msg, needle
    # the environment variable is used (alone) when no root is given
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path / "elsewhere"))
    with pytest.raises(FileNotFoundError, match=f"elsewhere.*\\${DATA_ROOT_ENV}"):
        load_cifar10("test")


def test_npz_round_trip_and_env_var(tmp_path, monkeypatch):
    images, labels = fake_images(6)
    write_npz(tmp_path / "cifar10", "test", images, labels)
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path))
    x, y = load_cifar10("test")
    assert x.shape == (6, 3, 32, 32) and x.dtype == torch.float32
    assert torch.equal(y, torch.from_numpy(labels.astype(np.int64)))
    expected = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    assert torch.equal(x, expected)
    assert x.min() >= -1 and x.max() <= 1


def test_checksum_mismatch_names_the_file(tmp_path):
    images, labels = fake_images(2)
    path = write_npz(tmp_path, "train", images, labels, digest="0" * 64)
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(ValueError, match="checksum mismatch") as err:
        load_cifar10("train", root=tmp_path)
    assert str(path) in str(err.value) and actual in str(err.value) and "0" * 64 in str(err.value)
    load_cifar10("train", root=tmp_path, verify=False)  # the arrays themselves are fine


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_official_tarball_layout_is_chw(tmp_path, protocol):
    images, labels = fake_images(12, seed=1)  # 5 train batches + test_batch, 2 images each
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    flat = images.transpose(0, 3, 1, 2).reshape(12, 3072)  # the official CHW-flattened rows
    batches = {name: flat[2 * k: 2 * k + 2] for k, name in enumerate(names)}
    labs = {name: labels[2 * k: 2 * k + 2].tolist() for k, name in enumerate(names)}
    write_tarball(tmp_path, batches, labs, protocol)
    x, y = load_cifar10("train", root=tmp_path, verify=False)
    assert x.shape == (10, 3, 32, 32) and y.dtype == torch.int64
    assert x.shape[1:] == IMAGE_SHAPES["cifar10"]
    # channel c of image i is the c-th 1024-block of its row, read row-major
    want = torch.from_numpy(flat[:10].reshape(10, 3, 32, 32)).float() / 127.5 - 1
    assert torch.equal(x, want)
    assert y.tolist() == labels[:10].tolist()
    # the same pixels through the npz format give the same tensor
    write_npz(tmp_path / "npz", "train", images[:10], labels[:10])
    assert torch.equal(load_cifar10("train", root=tmp_path / "npz")[0], x)
    x_test, y_test = load_cifar10("test", root=tmp_path, verify=False)
    want_test = torch.from_numpy(flat[10:].reshape(2, 3, 32, 32)).float() / 127.5 - 1
    assert torch.equal(x_test, want_test) and y_test.tolist() == labels[10:].tolist()
    with pytest.raises(ValueError, match="md5 is .* c58f30108f718f92721af3b95e74349a"):
        load_cifar10("test", root=tmp_path)


# -- export ---------------------------------------------------------------------------------


def test_export_cli_round_trip(tmp_path, capsys):
    images, labels = fake_images(20, seed=2)
    write_npz(tmp_path / "full", "train", images, labels)
    out = tmp_path / "sub"
    data.main(["export-cifar10", "--n", "5", "--seed", "7", "--out", str(out),
               "--data-root", str(tmp_path / "full")])
    assert "wrote" in capsys.readouterr().out
    x, y = load_cifar10("train", root=out)
    full_x, full_y = load_cifar10("train", root=tmp_path / "full")
    sx, sy, _ = random_subset(full_x, full_y, 5, seed=7)
    assert torch.equal(x, sx) and torch.equal(y, sy)
    # a second split adds its line to SHA256SUMS, keeping the first
    save_subset(out / "test.npz", x[:2], y[:2])
    assert torch.equal(load_cifar10("test", root=out)[0], x[:2])
    assert load_cifar10("train", root=out)[0].shape == (5, 3, 32, 32)
    with pytest.raises(ValueError, match="overwrite the source"):
        data.main(["export-cifar10", "--n", "2", "--out", str(out), "--data-root", str(out)])


def test_save_subset_rejects_out_of_range_floats(tmp_path):
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        save_subset(tmp_path / "train.npz", torch.full((1, 3, 32, 32), 1.5), torch.zeros(1))


# -- the real decoded copy ------------------------------------------------------------------


@pytest.mark.skipif(not (SHARED / "test.npz").is_file(), reason=f"no CIFAR-10 copy at {SHARED}")
def test_shared_cifar10_test_split():
    x, y = load_cifar10("test", root=SHARED)
    assert x.shape == (10000, 3, 32, 32) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    assert torch.bincount(y, minlength=10).tolist() == [1000] * 10
