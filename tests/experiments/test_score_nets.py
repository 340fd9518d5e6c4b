"""The shared train/sample/measure recipe of the Gaussian-mixture studies (§6.1)."""

from __future__ import annotations

import math

import pytest
import torch

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


def test_aggregate_of_one_seed_is_its_sampling_interval():
    """One seed: the bars are that network's own sampling intervals (Wilson, 1.96 SE)."""
    one = {"seed": 0, "memorization_ratio": 0.5, "ci": [0.4, 0.6], "log_likelihood": -3.0,
           "log_likelihood_se": 0.1}
    a = sn.aggregate([one])
    assert (a["ratio_low"], a["ratio_high"]) == pytest.approx((0.4, 0.6))
    assert (a["ll_low"], a["ll_high"]) == pytest.approx((-3.0 - 0.196, -3.0 + 0.196), abs=1e-4)
    assert a["seeds"] == 1 and "1 seed" in a["method"]
    with pytest.raises(ValueError, match="reports"):
        sn.aggregate([])


def test_aggregate_over_seeds_uses_the_seed_spread_by_hand():
    """Three seeds: mean +- t_2 * sqrt(max(sample variance, mean se^2) / 3), by hand."""
    from scipy import stats as sps

    reports = [{"seed": s, "memorization_ratio": p, "ci": [p - 0.01, p + 0.01],
                "log_likelihood": ll, "log_likelihood_se": 0.5}
               for s, (p, ll) in enumerate([(0.5, -3.0), (0.6, -2.0), (0.7, -4.0)])]
    a = sn.aggregate(reports)
    q = sps.t.ppf(0.975, 2)
    assert a["ratio"] == pytest.approx(0.6)
    assert a["ratio_high"] - a["ratio"] == pytest.approx(q * math.sqrt(0.01 / 3))
    assert a["ll"] - a["ll_low"] == pytest.approx(q * math.sqrt(1.0 / 3))
    # a sampling error larger than the seed spread sets the width instead
    wide = [{**r, "log_likelihood": -3.0, "log_likelihood_se": 2.0} for r in reports]
    assert sn.aggregate(wide)["ll_high"] + 3.0 == pytest.approx(q * 2.0 / math.sqrt(3))


def test_paired_effect_pairs_by_seed_not_by_order():
    a = [{"seed": s, "memorization_ratio": v} for s, v in ((2, 0.9), (0, 0.5), (1, 0.7))]
    b = [{"seed": s, "memorization_ratio": v} for s, v in ((0, 0.4), (1, 0.6), (2, 0.8))]
    e = sn.paired_effect(a, b)
    assert e["diffs"] == pytest.approx((0.1, 0.1, 0.1)) and e["positive"] == 3
    with pytest.raises(ValueError, match="same seeds"):
        sn.paired_effect(a[:2], b)


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
