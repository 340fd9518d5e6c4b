"""python -m experiments.measure: memorization (1/9 rule, pixel space) and FD/KID/P-R of any
image sets, read from .npz files or PNG folders, on the bundled 8x8 digits."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from experiments import measure as ms
from experiments.common.data import load_digits
from experiments.common.metrics import nearest_ratio

TRAIN = slice(0, 300)


@pytest.fixture(scope="module")
def digits_uint8() -> np.ndarray:
    """All 1,797 digits as uint8 (N, 8, 8, 1), 0..255 (as stored images are)."""
    x, _ = load_digits()  # (N, 1, 8, 8) in [-1, 1]
    return torch.round((x + 1) * 127.5).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _png_folder(folder: Path, images: np.ndarray) -> Path:
    folder.mkdir()
    for i, a in enumerate(images):
        Image.fromarray(a[:, :, 0], mode="L").save(folder / f"{i:05d}.png")
    return folder


def _numbers(result: dict) -> dict:
    return {"memorization": result["memorization"], "quality": result["quality"]}


def test_npz_and_png_folder_give_the_same_numbers(tmp_path, digits_uint8):
    """The same uint8 images as an npz (under "images", "x" or alone) and as a PNG folder
    give identical JSON numbers; float CHW in [-1, 1] gives the same up to float rounding."""
    train, ref, samples = digits_uint8[TRAIN], digits_uint8[1000:1100], digits_uint8[290:330]
    np.savez(tmp_path / "train.npz", images=train, labels=np.zeros(len(train)))
    np.savez(tmp_path / "ref.npz", x=ref)
    np.savez(tmp_path / "samples.npz", whatever=samples)
    as_float = samples.transpose(0, 3, 1, 2).astype(np.float64) / 127.5 - 1
    np.savez(tmp_path / "samples_float.npz", images=as_float)
    for name, a in (("train_png", train), ("ref_png", ref), ("samples_png", samples)):
        _png_folder(tmp_path / name, a)
    common = ["--dataset", "digits", "--no-progress", "--kid-subsets", "20"]
    runs = {}
    for tag, (s, t, r) in {
        "npz": ("samples.npz", "train.npz", "ref.npz"),
        "png": ("samples_png", "train_png", "ref_png"),
        "float": ("samples_float.npz", "train.npz", "ref_png"),
    }.items():
        out = tmp_path / f"{tag}.json"
        ms.main(["--samples", str(tmp_path / s), "--train", str(tmp_path / t),
                 "--reference", str(tmp_path / r), "--out", str(out), *common])
        runs[tag] = json.loads(out.read_text())
    assert _numbers(runs["npz"]) == _numbers(runs["png"])
    assert runs["npz"]["inputs"]["samples"]["format"] == "npz['whatever']"
    assert runs["png"]["inputs"]["train"]["format"] == "png folder"
    assert runs["npz"]["provenance"]["torch"] == torch.__version__
    mem = runs["npz"]["memorization"]
    assert mem["memorized"] == 10 and mem["ratio"] == 10 / 40  # samples 290..299 are copies
    q = runs["npz"]["quality"]
    assert q["feature_space"] == "SmallCNN-digits"
    assert set(q["reference"]["labelled"]) >= {"FD-SmallCNN-digits", "KID-SmallCNN-digits"}
    f = runs["float"]
    assert f["memorization"]["per_sample"]["nearest_index"] == mem["per_sample"]["nearest_index"]
    assert f["memorization"]["per_sample"]["memorized"] == mem["per_sample"]["memorized"]
    np.testing.assert_allclose(f["memorization"]["per_sample"]["ratio"],
                               mem["per_sample"]["ratio"], rtol=1e-5, atol=1e-12)
    assert f["quality"]["train"]["fd"] == pytest.approx(q["train"]["fd"], rel=1e-4, abs=1e-6)


@settings(max_examples=20, deadline=None)
@given(st.sampled_from(["float64-hwc", "int64", "uint8-chw", "float-range", "3d", "float-nan"]),
       st.floats(1.001, 255.0))
def test_wrong_layout_range_or_dtype_names_the_argument(kind, top):
    rng = np.random.default_rng(0)
    arrays = {
        "float64-hwc": rng.uniform(0, top, (10, 8, 8, 3)),
        "int64": rng.integers(0, 255, (10, 8, 8, 1)),
        "uint8-chw": rng.integers(0, 255, (10, 1, 8, 8)).astype(np.uint8),
        "float-range": np.full((10, 1, 8, 8), top, dtype=np.float32),
        "3d": rng.integers(0, 255, (10, 8, 8)).astype(np.uint8),
        "float-nan": np.full((10, 1, 8, 8), np.nan),
    }
    for arg in ("--samples", "--train", "--reference"):
        with pytest.raises(ValueError, match=f"^{arg}: ") as err:
            ms.to_model_range(arrays[kind], arg)
        if kind != "float-nan":
            assert ms.LAYOUT in str(err.value)
            assert str(arrays[kind].dtype) in str(err.value)


def test_message_reports_dtype_shape_and_max():
    bad = np.zeros((10, 32, 32, 3))
    bad[0, 0, 0, 0] = 255
    with pytest.raises(ValueError) as err:
        ms.to_model_range(bad, "--samples")
    assert str(err.value).startswith(
        "--samples: expected uint8 (N, H, W, C) or float (N, C, H, W) in [-1, 1], got float64 "
        "(10, 32, 32, 3) with max 255")


def test_command_line_errors_name_the_argument(tmp_path, digits_uint8, capsys):
    np.savez(tmp_path / "ok.npz", images=digits_uint8[:50])
    np.savez(tmp_path / "big.npz", images=np.zeros((5, 16, 16, 1), dtype=np.uint8))
    np.savez(tmp_path / "hwc_float.npz", images=np.full((5, 8, 8, 1), 255.0))
    np.savez(tmp_path / "two.npz", a=digits_uint8[:5], b=digits_uint8[:5])
    (tmp_path / "empty").mkdir()
    ok = str(tmp_path / "ok.npz")
    cases = [
        (["--samples", str(tmp_path / "big.npz"), "--train", ok], "--samples: images are"),
        (["--samples", ok, "--train", ok, "--reference", str(tmp_path / "big.npz")],
         "--reference: images are"),
        (["--samples", ok, "--train", str(tmp_path / "hwc_float.npz")], "--train: expected"),
        (["--samples", str(tmp_path / "two.npz"), "--train", ok], "--samples: .* 'images'"),
        (["--samples", ok, "--train", str(tmp_path / "empty")], "--train: the folder"),
        (["--samples", ok, "--train", str(tmp_path / "nope.npz")], "--train: .* neither"),
        (["--samples", ok, "--train", ok, "--features", "classifier"], "--dataset"),
        (["--samples", ok, "--train", ok, "--dataset", "cifar10"], "--train: the cifar10"),
    ]
    for argv, pattern in cases:
        with pytest.raises(SystemExit) as exit_:
            ms.main([*argv, "--out", str(tmp_path / "o.json"), "--no-progress"])
        assert exit_.value.code == 2
        assert re.search(pattern, capsys.readouterr().err), pattern
    assert not (tmp_path / "o.json").exists()


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(2, 60))
def test_exact_copies_are_memorized_and_fresh_draws_are_not(seed, m):
    """Copies of training digits: ratio 1, each one's nearest index its source. Digits not in
    the training subset: ratio ~0; uniform noise images far from every digit: ratio 0."""
    x, _ = load_digits()
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(x.shape[0], generator=g)
    train, held_out = x[perm[:400]], x[perm[400:]]
    pick = torch.randint(400, (m,), generator=g)
    copies = ms.memorization(train[pick], train)
    assert copies["ratio"] == 1.0 and copies["memorized"] == m
    assert copies["per_sample"]["nearest_index"].tolist() == pick.tolist()
    # Held-out digits: about 1 in 7,000 lies within a third of the distance of some training
    # digit to its next one (5 seeds: 1 of 6,985), so all 1,397 give a ratio near 0.
    fresh = ms.memorization(held_out, train)
    assert fresh["ratio"] <= 0.005 and fresh["num_samples"] == 1397
    noise = ms.memorization(torch.rand(m, 1, 8, 8, generator=g) * 2 - 1, train)
    assert noise["ratio"] == 0.0


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 80), st.integers(2, 300))
def test_nearest_index_and_ratio_equal_brute_force(seed, m, n):
    """Per-sample nearest index, d1, d2 and ratio against brute-force float64 distances (and
    the ratio against metrics.nearest_ratio); samples are digits, noisy digits and noise."""
    x, _ = load_digits()
    g = torch.Generator().manual_seed(seed)
    train = x[torch.randperm(x.shape[0], generator=g)[:n]]
    samples = x[torch.randint(x.shape[0], (m,), generator=g)]
    samples = (samples + 0.3 * torch.rand(m, 1, 1, 1, generator=g)
               * torch.randn(samples.shape, generator=g)).clamp(-1, 1)
    res = ms.memorization(samples, train)["per_sample"]
    dist = (samples.flatten(1).double()[:, None] - train.flatten(1).double()[None]).square()
    exact = dist.sum(-1).sort(dim=1)  # (m, n)
    torch.testing.assert_close(res["d1"], exact.values[:, 0], rtol=1e-12, atol=0)
    torch.testing.assert_close(res["d2"], exact.values[:, 1], rtol=1e-12, atol=0)
    untied = exact.values[:, 0] < exact.values[:, 1]
    assert torch.equal(res["nearest_index"][untied], exact.indices[untied, 0])
    ratio = nearest_ratio(samples.flatten(1), train.flatten(1))
    torch.testing.assert_close(res["ratio"], ratio, rtol=1e-12, atol=0)
    assert torch.equal(res["memorized"], ratio <= 1 / 9)


def test_help_states_the_layouts(capsys):
    with pytest.raises(SystemExit):
        ms.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "python -m experiments.measure" in text
    assert "uint8 (N, H, W, C)" in text and "float (N, C, H, W) in [-1, 1]" in text
