"""Image-quality metrics on pluggable features (experiments/common/features.py).

Pinned: FD's identities and its closed form for Gaussians, KID about 0 within its spread for
one distribution and clearly positive for a shifted one, improved precision/recall's limits,
role swap and permutation invariance (and a brute-force reference), the shipped digits
classifier and the extractors' shapes and errors.
"""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from experiments.common.features import (
    INCEPTION_ENV,
    INCEPTION_FILENAME,
    ClassifierFeatures,
    InceptionFeatures,
    classifier_path,
    extract_features,
    feature_extractor,
    frechet_distance,
    kernel_inception_distance,
    labelled_metrics,
    precision_recall,
    quality_report,
)


def _randn(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# -- Fréchet distance ---------------------------------------------------------------------------


@settings(max_examples=15, deadline=None)
@given(n=st.integers(2, 40), m=st.integers(2, 40), d=st.integers(1, 6),
       seed=st.integers(0, 2**31 - 1))
def test_fd_zero_on_itself_and_symmetric(n: int, m: int, d: int, seed: int) -> None:
    x, y = _randn((n, d), seed), 2.0 + 0.5 * _randn((m, d), seed + 1)
    scale = float(x.square().sum(1).mean() + y.square().sum(1).mean())
    assert abs(frechet_distance(x, x)) <= 1e-6 * scale
    assert frechet_distance(x, y) == pytest.approx(frechet_distance(y, x), rel=1e-6, abs=1e-6)
    assert frechet_distance(x, y.float()) == pytest.approx(frechet_distance(x, y), rel=1e-5)


def _gaussian(n: int, mu: np.ndarray, cov: np.ndarray, seed: int) -> torch.Tensor:
    chol = torch.from_numpy(np.linalg.cholesky(cov))
    return torch.from_numpy(mu) + _randn((n, len(mu)), seed) @ chol.T


def test_fd_matches_gaussian_closed_form() -> None:
    d, n, reps = 3, 4000, 10
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    s1, s2 = a @ a.T / d + 0.2 * np.eye(d), b @ b.T / d + 0.2 * np.eye(d)
    mu1, mu2 = np.zeros(d), np.full(d, 0.5)
    exact = float(np.sum((mu1 - mu2) ** 2)
                  + np.trace(s1 + s2 - 2 * np.real(scipy.linalg.sqrtm(s1 @ s2))))
    est = [frechet_distance(_gaussian(n, mu1, s1, 2 * r), _gaussian(n, mu2, s2, 2 * r + 1))
           for r in range(reps)]
    # Tolerance from the estimator: 4 standard errors of the mean over reps, plus its O(1/n)
    # bias (the mean term alone has bias (tr S1 + tr S2) / n; the covariance term is alike).
    se = float(np.std(est, ddof=1)) / math.sqrt(reps)
    bias = 2 * (np.trace(s1) + np.trace(s2)) / n
    assert abs(np.mean(est) - exact) <= 4 * se + bias, (np.mean(est), exact, se, bias)


@settings(max_examples=20, deadline=None)
@given(d=st.integers(1, 4), extra=st.integers(0, 6), extra2=st.integers(0, 6),
       seed=st.integers(0, 2**31 - 1))
def test_fd_equals_numpy_scipy_reference_on_few_rows(d: int, extra: int, extra2: int,
                                                     seed: int) -> None:
    """FD of small samples equals ||mu_r - mu_f||^2 + tr(S_r + S_f - 2 sqrtm(S_r S_f)) with
    np.cov's unbiased (ddof=1) covariances and scipy.linalg.sqrtm. With n = d + 2 rows the
    1/n and 1/(n-1) covariances differ by a factor up to 3/2, so a biased covariance fails."""
    n, m = d + 2 + extra, d + 2 + extra2
    x = _randn((n, d), seed)
    y = 0.5 + 1.5 * _randn((m, d), seed + 1)
    xn, yn = x.numpy(), y.numpy()
    sx, sy = np.atleast_2d(np.cov(xn, rowvar=False)), np.atleast_2d(np.cov(yn, rowvar=False))
    ref = float(np.sum((xn.mean(0) - yn.mean(0)) ** 2)
                + np.trace(sx + sy - 2 * np.real(scipy.linalg.sqrtm(sx @ sy))))
    assert frechet_distance(x, y) == pytest.approx(ref, rel=1e-7, abs=1e-9)


def test_fd_rejects_bad_input() -> None:
    x = _randn((10, 3), 0)
    with pytest.raises(ValueError, match="fake"):
        frechet_distance(x, _randn((10, 4), 1))
    with pytest.raises(ValueError, match="real must hold at least 2"):
        frechet_distance(x[:1], x)
    with pytest.raises(ValueError, match="finite"):
        frechet_distance(x, x * float("nan"))


# -- KID ------------------------------------------------------------------------------------------


def test_kid_near_zero_for_one_distribution_and_positive_when_shifted() -> None:
    d, n = 8, 600
    x, x2 = _randn((n, d), 0), _randn((n, d), 1)
    mean, std = kernel_inception_distance(x, x2, subsets=20, subset_size=200, seed=0)
    # Each subset's MMD^2 is unbiased with spread std; their mean deviates from 0 by less
    # than 3 std (the subsets overlap, so std/sqrt(subsets) would be too optimistic).
    assert std > 0 and abs(mean) <= 3 * std
    shifted_mean, shifted_std = kernel_inception_distance(x, x2 + 1.0, 20, 200, seed=0)
    assert shifted_mean > 0 and shifted_mean > 3 * std + 3 * shifted_std
    again = kernel_inception_distance(x, x2, subsets=20, subset_size=200, seed=0)
    assert again == (mean, std)  # seeded
    with pytest.raises(ValueError, match="subset_size"):
        kernel_inception_distance(x, x2[:50], subset_size=100)


def _unbiased_poly_mmd(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with k(a, b) = (a.b / F + 1)^3 (Binkowski et al. 2018), by the formula."""
    m, f = x.shape
    kxx, kyy, kxy = ((u @ v.T / f + 1) ** 3 for u, v in ((x, x), (y, y), (x, y)))
    off = ~np.eye(m, dtype=bool)
    return float(kxx[off].sum() / (m * (m - 1)) + kyy[off].sum() / (m * (m - 1))
                 - 2 * kxy.sum() / m**2)


def test_kid_is_mean_and_population_std_of_subset_mmds(monkeypatch) -> None:
    """Each subset's value is the unbiased polynomial-kernel MMD^2 (numpy, from its formula) of
    distinct rows of real and fake, and KID = (mean, population std (ddof=0)) of those values,
    the torchmetrics convention; one subset has std 0, not NaN."""
    import torchmetrics.image.kid as tm_kid

    seen: list[tuple[torch.Tensor, torch.Tensor, float]] = []
    real_mmd = tm_kid.poly_mmd

    def spy(f_real, f_fake, **kwargs):
        value = real_mmd(f_real, f_fake, **kwargs)
        seen.append((f_real.clone(), f_fake.clone(), float(value)))
        return value

    monkeypatch.setattr(tm_kid, "poly_mmd", spy)
    x, y = _randn((40, 3), 0), 0.3 + _randn((30, 3), 1)
    mean, std = kernel_inception_distance(x, y, subsets=5, subset_size=12, seed=3)
    assert len(seen) == 5
    for r, f, value in seen:
        assert r.shape == f.shape == (12, 3)
        assert len({tuple(row) for row in r.tolist()}) == 12  # without replacement
        assert all(any(torch.equal(row, z) for z in x) for row in r)
        assert all(any(torch.equal(row, z) for z in y) for row in f)
        assert value == pytest.approx(_unbiased_poly_mmd(r.numpy(), f.numpy()), rel=1e-9)
    values = np.array([v for _, _, v in seen])
    assert mean == pytest.approx(values.mean(), rel=1e-12)
    assert std == pytest.approx(values.std(ddof=0), rel=1e-12)
    one = kernel_inception_distance(x, y, subsets=1, subset_size=12, seed=3)
    assert one[1] == 0.0


# -- precision and recall ---------------------------------------------------------------------


def _reference_pr(real: torch.Tensor, fake: torch.Tensor, k: int) -> tuple[float, float]:
    """Full distance matrices, as in Kynkaanniemi et al.'s reference code."""
    def radii(x):
        return torch.cdist(x, x).sort(dim=1).values[:, k]

    d = torch.cdist(fake, real)  # (M, N)
    precision = (d <= radii(real)[None, :]).any(1).double().mean()
    recall = (d.T <= radii(fake)[None, :]).any(1).double().mean()
    return float(precision), float(recall)


def test_pr_identical_sets_and_far_apart_sets() -> None:
    x = _randn((50, 4), 0)
    assert precision_recall(x, x.clone(), k=3) == (1.0, 1.0)
    assert precision_recall(x, _randn((40, 4), 1) + 100.0, k=3) == (0.0, 0.0)
    with pytest.raises(ValueError, match="k"):
        precision_recall(x, x[:3], k=3)


@settings(max_examples=20, deadline=None)
@given(n=st.integers(4, 40), m=st.integers(4, 40), d=st.integers(1, 5), k=st.integers(1, 3),
       shift=st.floats(0.0, 3.0), chunk=st.integers(1, 16), seed=st.integers(0, 2**31 - 1))
def test_pr_swap_permutation_and_reference(
    n: int, m: int, d: int, k: int, shift: float, chunk: int, seed: int
) -> None:
    real, fake = _randn((n, d), seed), shift + 1.5 * _randn((m, d), seed + 1)
    p, r = precision_recall(real, fake, k=k)
    assert precision_recall(fake, real, k=k) == (r, p)  # swapping roles swaps the two
    g = torch.Generator().manual_seed(seed)
    perm_r, perm_f = torch.randperm(n, generator=g), torch.randperm(m, generator=g)
    assert precision_recall(real[perm_r], fake[perm_f], k=k) == (p, r)
    assert precision_recall(real, fake, k=k, chunk_size=chunk) == (p, r)  # blocking is exact
    assert (p, r) == _reference_pr(real, fake, k)


def test_pr_point_on_a_ball_boundary_is_inside() -> None:
    """Kynkaanniemi et al. count phi inside the ball of phi' when ||phi - phi'|| <= its radius
    (a closed ball). Real 0, 1, 2, 3 on a line have k = 1 radius 1; fake -1 and 4 lie exactly
    on the boundaries of the balls of 0 and 3 (inside), fake 10 outside: precision 2/3.
    Swapping the roles gives recall 2/3 (exact in float64: integer coordinates)."""
    real = torch.tensor([[0.0], [1.0], [2.0], [3.0]], dtype=torch.float64)
    fake = torch.tensor([[-1.0], [4.0], [10.0]], dtype=torch.float64)
    p, r = precision_recall(real, fake, k=1)
    assert p == pytest.approx(2 / 3) and r == 1.0
    assert precision_recall(fake, real, k=1) == (r, p)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(3, 15), m=st.integers(3, 15), d=st.integers(1, 3), k=st.integers(1, 2),
       seed=st.integers(0, 2**31 - 1))
def test_pr_on_a_lattice_with_ties_equals_reference(n, m, d, k, seed) -> None:
    """Points on the integer lattice {0..3}^d: many distances tie exactly with radii, and the
    streamed computation agrees with the full-matrix reference's closed balls."""
    g = torch.Generator().manual_seed(seed)
    real = torch.randint(0, 4, (n, d), generator=g).double()
    fake = torch.randint(0, 4, (m, d), generator=g).double()
    assert precision_recall(real, fake, k=k, chunk_size=4) == _reference_pr(real, fake, k)


# -- extractors -------------------------------------------------------------------------------


def _digits_held_out(record: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The digits the shipped classifier was not trained on, rebuilt from its record: the
    first num_test entries of torch.randperm(1797) under the training seed (the split
    ClassifierFeatures.train_classifier documents and the record names)."""
    from experiments.common.data import load_digits

    images, labels = load_digits()
    seed = record["train_settings"]["seed"]
    split = f"seeded 80/20 split of the 1797 sklearn digits (torch.randperm, seed {seed})"
    assert record["split"] == split
    assert record["num_train"] + record["num_test"] == images.shape[0]
    perm = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed))
    test = perm[: record["num_test"]]
    return images[test], labels[test]


def test_shipped_digits_classifier() -> None:
    """The shipped digits classifier, measured here on the 359 held-out digits: its accuracy
    (argmax of the logits) reproduces the recorded test accuracy (up to one image, for
    rounding across machines) and is >= 0.95, 5 binomial standard errors below the recorded
    0.983; the features have the documented shape and dtype."""
    path = classifier_path("digits")
    assert path.stat().st_size < 1_000_000
    record = json.loads(path.with_suffix(".json").read_text())
    assert record["dataset"] == "digits" and record["arch"] == "SmallCNN"
    net = feature_extractor("classifier", "digits")
    assert isinstance(net, ClassifierFeatures) and net.name == "SmallCNN-digits"
    images, labels = _digits_held_out(record)
    with torch.no_grad():
        measured = float((net.logits(images).argmax(dim=1) == labels).double().mean())
    assert abs(measured - record["test_accuracy"]) <= 1 / len(labels) + 1e-12
    assert measured >= 0.95
    assert net.accuracy(images, labels, batch_size=100) == pytest.approx(measured, abs=1e-12)

    feats = extract_features(images[:300], net, batch_size=128)
    assert feats.shape == (300, 128) and feats.dtype == torch.float64
    assert net(images[:5]).shape == (5, net.feature_dim)
    with pytest.raises(ValueError, match="images"):
        net(torch.zeros(2, 3, 8, 8))


def test_quality_report_on_digits() -> None:
    from experiments.common.data import load_digits

    images, _ = load_digits()
    net = feature_extractor("classifier", "digits")
    perm = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(0))
    a, b = images[perm[:400]], images[perm[400:800]]
    same = quality_report(a, b, net, kid_subsets=10, kid_subset_size=100)
    noise = quality_report(a, torch.rand(400, 1, 8, 8) * 2 - 1, net, kid_subsets=10,
                           kid_subset_size=100)
    assert same["feature_space"] == "SmallCNN-digits"
    assert same["num_real"] == same["num_fake"] == 400
    assert set(labelled_metrics(same)) >= {"FD-SmallCNN-digits", "KID-SmallCNN-digits",
                                           "Precision-SmallCNN-digits", "Recall-SmallCNN-digits"}
    assert noise["fd"] > 5 * same["fd"] and noise["kid_mean"] > 5 * abs(same["kid_mean"])
    assert same["precision"] > 0.5 and same["recall"] > 0.5
    assert noise["precision"] < same["precision"]


def test_classifier_train_save_load_roundtrip(tmp_path) -> None:
    net = ClassifierFeatures.train_classifier("digits", epochs=1, limit=128, seed=3)
    assert 0 <= net.record["test_accuracy"] <= 1 and net.record["num_train"] == 128
    twin = ClassifierFeatures.train_classifier("digits", epochs=1, limit=128, seed=3)
    for a, b in zip(net.state_dict().values(), twin.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # same seed, same weights on CPU
    pt, js = net.save(tmp_path / "smallcnn_digits.pt")
    loaded = feature_extractor("classifier", "digits", path=pt)
    x = torch.rand(6, 1, 8, 8) * 2 - 1
    torch.testing.assert_close(loaded(x), net.eval()(x))
    assert json.loads(js.read_text())["train_settings"]["seed"] == 3


def test_missing_classifier_names_train_command(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="features train --dataset cifar10"):
        feature_extractor("classifier", "cifar10", path=tmp_path / "smallcnn_cifar10.pt")


def test_missing_inception_file_says_where(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv(INCEPTION_ENV, raising=False)
    with pytest.raises(FileNotFoundError, match=INCEPTION_ENV):
        InceptionFeatures()
    missing = tmp_path / INCEPTION_FILENAME
    monkeypatch.setenv(INCEPTION_ENV, str(missing))
    with pytest.raises(FileNotFoundError, match=str(missing)) as err:
        feature_extractor("inception")
    assert INCEPTION_FILENAME in str(err.value)


class _FakeInception(torch.nn.Module):
    """Stands in for the TorchScript file: reports what it was fed (min, max, C, H, W)."""

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        b = x.shape[0]
        lo, hi = x.amin(dim=(1, 2, 3)), x.amax(dim=(1, 2, 3))
        shape = torch.tensor([x.shape[1], x.shape[2], x.shape[3]], dtype=x.dtype).expand(b, 3)
        return torch.cat([lo[:, None], hi[:, None], shape, torch.zeros(b, 2043, dtype=x.dtype)],
                         dim=1)


def test_inception_input_pipeline(tmp_path, monkeypatch) -> None:
    path = tmp_path / INCEPTION_FILENAME
    with warnings.catch_warnings():  # torch.jit is deprecated, but it is the file's format
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(_FakeInception()).save(str(path))
    monkeypatch.setenv(INCEPTION_ENV, str(path))
    net = feature_extractor("inception")
    assert net.name == "Inception"
    x = torch.linspace(-1, 1, 2 * 64).reshape(2, 1, 8, 8)
    out = extract_features(x, net)
    assert out.shape == (2, 2048)
    lo, hi, c, h, w = out[:, :5].T
    assert torch.all(c == 3) and torch.all(h == 299) and torch.all(w == 299)
    assert lo.min() >= 0 and hi.max() <= 255 + 1e-3 and hi.max() > 200  # uint8 range
    raw = InceptionFeatures(path, quantize=False)(torch.zeros(1, 3, 299, 299))
    assert raw[0, 0] == raw[0, 1] == 127.5  # (x + 1) * 127.5, not rounded


def test_shipped_cifar10_classifier() -> None:
    """The gpu/paper profiles' feature space when no Inception file is available, measured
    here on 1,000 random images of the official CIFAR-10 test split (never trained on): the
    accuracy is within Z = 4 standard errors (binomial, finite-population corrected) of the
    recorded test accuracy on all 10,000 and above 0.75. Skipped without the data."""
    from experiments.common.data import load_cifar10

    path = classifier_path("cifar10")
    record = json.loads(path.with_suffix(".json").read_text())
    assert record["dataset"] == "cifar10" and record["num_test"] == 10_000
    assert record["split"] == "official cifar10 train/test split"
    net = feature_extractor("classifier", "cifar10")
    assert net.name == "SmallCNN-cifar10"
    try:
        images, labels = load_cifar10("test")
    except FileNotFoundError as err:
        pytest.skip(f"CIFAR-10 test split not found (see shared/data/cifar10/README.md): {err}")
    n, total = 1000, images.shape[0]
    idx = torch.randperm(total, generator=torch.Generator().manual_seed(0))[:n]
    with torch.no_grad():
        measured = float((net.logits(images[idx]).argmax(dim=1) == labels[idx]).double().mean())
    p = record["test_accuracy"]
    se = math.sqrt(p * (1 - p) / n * (total - n) / (total - 1))
    assert abs(measured - p) <= 4 * se, (measured, p, se)
    assert measured > 0.75
    assert extract_features(images[idx[:4]], net).shape == (4, 128)


def test_a_damaged_shipped_feature_net_is_refused_naming_it(tmp_path):
    """The shipped weights are verified against the SHA-256 in their JSON record."""
    import shutil

    from experiments.common.features import FEATURE_NETS_DIR, ClassifierFeatures
    from experiments.common.runs import CorruptFileError

    for suffix in (".pt", ".json"):
        shutil.copy(FEATURE_NETS_DIR / f"smallcnn_digits{suffix}", tmp_path)
    ClassifierFeatures.load(tmp_path / "smallcnn_digits.pt")  # intact: loads
    raw = bytearray((tmp_path / "smallcnn_digits.pt").read_bytes())
    raw[len(raw) // 2] ^= 0x01  # one bit, in the middle of the weights
    (tmp_path / "smallcnn_digits.pt").write_bytes(bytes(raw))
    with pytest.raises(CorruptFileError, match=r"smallcnn_digits\.pt.*SHA-256"):
        ClassifierFeatures.load(tmp_path / "smallcnn_digits.pt")
