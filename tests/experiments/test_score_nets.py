"""The shared train/sample/measure recipe of the Gaussian-mixture studies (§6.1)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from experiments.common import score_nets as sn
from experiments.common.training import TrainConfig
from theory.mixtures import paper_mixture


@pytest.fixture(scope="module")
def d32():
    mixture = paper_mixture(32, 8, seed=0)
    return mixture, sn.training_set(mixture, 64, 0)


def test_exact_references_meet_their_thresholds(d32):
    # The reference runs at d = 32: the exact empirical score memorizes (>= 0.99),
    # the exact true score does not (<= 0.01) and reaches E log p(X) within its error.
    # The log-likelihood is checked with the second-order probability-flow sampler: the
    # first-order reverse SDE on log-spaced steps inflates the within-component variance by
    # O(1/steps) (about -0.27 nats at 400 steps, d = 32; paper_notes/gmm_memorization.md).
    mixture, points = d32
    sampler = sn.SamplerSpec(num=400, steps=100)
    emp = sn.reference("empirical", points, mixture, sampler, seed=0, device="cpu")
    true = sn.reference("true", points, mixture, sampler, seed=0, device="cpu")
    assert emp["memorization_ratio"] >= 0.99
    assert true["memorization_ratio"] <= 0.01
    ode = sn.SamplerSpec(num=400, steps=100, method="heun_ode")
    true = sn.reference("true", points, mixture, ode, seed=0, device="cpu")
    data = sn.data_log_likelihood(mixture, 4000, seed=0)
    z = (true["log_likelihood"] - data["value"]) / math.hypot(true["log_likelihood_se"],
                                                               data["stderr"])
    assert abs(z) < 4


def test_training_set_is_reproducible_and_n_checked(d32):
    mixture, points = d32
    assert torch.equal(sn.training_set(mixture, 64, 0), points)
    assert not torch.equal(sn.training_set(mixture, 64, 1), points)
    with pytest.raises(ValueError, match="n must be >= 2"):
        sn.training_set(mixture, 1, 0)


@given(hits=st.integers(0, 300), extra=st.integers(0, 300))
def test_wilson_interval_contains_the_proportion_and_shrinks_with_samples(hits, extra):
    total = hits + extra
    if total == 0:
        with pytest.raises(ValueError, match="total"):
            sn.wilson_interval(hits, total)
        return
    lo, hi = sn.wilson_interval(hits, total)
    assert 0 <= lo <= hits / total <= hi <= 1
    lo4, hi4 = sn.wilson_interval(4 * hits, 4 * total)
    assert hi4 - lo4 < hi - lo


def test_aggregate_uses_seeds_when_there_are_several():
    one = {"memorization_ratio": 0.5, "ci": [0.4, 0.6], "log_likelihood": -3.0,
           "log_likelihood_se": 0.1}
    a = sn.aggregate([one])
    assert (a["ratio_low"], a["ratio_high"], a["ll_err"]) == (0.4, 0.6, pytest.approx(0.196))
    b = sn.aggregate([one, {**one, "memorization_ratio": 0.7, "log_likelihood": -1.0}])
    assert b["ratio"] == pytest.approx(0.6) and b["ll"] == pytest.approx(-2.0)
    assert b["ratio_high"] - b["ratio"] == pytest.approx(math.sqrt(0.02))
    with pytest.raises(ValueError, match="reports"):
        sn.aggregate([])


def test_trained_network_is_cached_and_reused(tmp_path, d32):
    mixture, points = d32
    spec = sn.NetSpec.uniform(16, 2)
    config = TrainConfig(steps=10, batch=32, seed=3)
    a = sn.train_score_net(points[:, :4].contiguous(), spec, config, "cpu", tmp_path)
    assert len(list(tmp_path.glob("*.pt"))) == 1
    b = sn.train_score_net(points[:, :4].contiguous(), spec, config, "cpu", tmp_path)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)
    # fine-tuning from other weights is another run
    sn.train_score_net(points[:, :4].contiguous(), spec, config, "cpu", tmp_path, init=b)
    assert len(list(tmp_path.glob("*.pt"))) == 2
