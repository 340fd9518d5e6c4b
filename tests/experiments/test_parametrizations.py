"""Every score parametrization, trained by the Gaussian-mixture recipe, samples sensibly.

The issue: a NetSpec with the then-default parametrization "eps" at d = 32, n = 32,
width 512 x 3 sampled ~525 away from the data. The cause was not the -net/sigma_t read-out
but the checkpoint cache: the parametrization was not in the network's repr, hence not in
its checkpoint key, and one seed gives every parametrization the same starting weights, so
the figures' cached "denoiser" network was loaded and read as "eps" (theory/networks.py's
docstring). Here the three parametrizations train one after another
into one cache, denoiser first, as the figures' cache and then the issue's run did: each
must get its own checkpoint and sample like the true score.
"""

from __future__ import annotations

import inspect

import pytest
import torch

from experiments.common import score_nets as sn
from experiments.common.training import checkpoint_path
from theory.mixtures import paper_mixture
from theory.networks import PARAMETRIZATIONS, ScoreMLP

# The quick profile's recipe (experiments/gmm_sweeps.py: batch, lr, t0, T) on a problem that
# trains in about a second per network: d = 4, n = 16, width 64 x 2, 1,000 steps, 100
# sampler steps. Seed 3 is one where the "denoiser" network read as "eps" (the old cache
# collision) samples far below the true score, so the test would catch the collision.
D, N, WIDTH, DEPTH, SEED = 4, 16, 64, 2, 3
RECIPE = {"steps": 1000, "batch": 128, "lr": 2e-3, "weight_decay": 0.0, "t0": 1e-3, "T": 8.0,
          "samples": 256, "sampler_steps": 100}
LL_SLACK = 1.5  # nats below the true-score sampler's mean log-likelihood


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The mixture, D, the true-score sampler's report, the shared cache and the three nets."""
    cache = tmp_path_factory.mktemp("checkpoints")
    mixture = paper_mixture(D, 8, 2.0, seed=0)
    points = sn.training_set(mixture, N, SEED)
    config = sn.train_config(RECIPE, SEED)
    nets = {p: sn.train_score_net(points, sn.NetSpec.uniform(WIDTH, DEPTH, parametrization=p),
                                  config, "cpu", cache)
            for p in ("denoiser", "score", "eps")}  # denoiser first: the figures' cache
    true = sn.reference("true", points, mixture, sn.sampler_spec(RECIPE), SEED, "cpu")
    return mixture, points, true, cache, nets


@pytest.mark.parametrize("parametrization", PARAMETRIZATIONS)
def test_every_parametrization_samples_like_the_true_score(trained, parametrization):
    mixture, points, true, _, nets = trained
    net = nets[parametrization]
    assert net.parametrization == parametrization
    report = sn.measure(net, points, mixture, sn.sampler_spec(RECIPE), SEED, "cpu")
    assert report["log_likelihood"] >= true["log_likelihood"] - LL_SLACK, (
        f"{parametrization}: mean log-likelihood {report['log_likelihood']:.2f} vs "
        f"{true['log_likelihood']:.2f} for the true score")


def test_parametrizations_never_share_a_checkpoint(trained):
    _, points, _, cache, nets = trained
    assert len(list(cache.glob("*.pt"))) == len(PARAMETRIZATIONS)
    # same seed, same starting weights: only the parametrization tells the keys apart
    config = sn.train_config(RECIPE, SEED)
    fresh = {p: sn.build_net(D, sn.NetSpec.uniform(WIDTH, DEPTH, parametrization=p), SEED)
             for p in PARAMETRIZATIONS}
    for p, q in zip(fresh["denoiser"].parameters(), fresh["eps"].parameters(), strict=True):
        assert torch.equal(p, q)
    keys = {checkpoint_path(cache, net, points.float(), config) for net in fresh.values()}
    assert len(keys) == len(PARAMETRIZATIONS)
    # and a second run of a spec reuses its own checkpoint
    again = sn.train_score_net(points, sn.NetSpec.uniform(WIDTH, DEPTH, parametrization="eps"),
                               config, "cpu", cache)
    for p, q in zip(again.parameters(), nets["eps"].parameters(), strict=True):
        assert torch.equal(p, q)
    assert len(list(cache.glob("*.pt"))) == len(PARAMETRIZATIONS)


def test_netspec_default_is_the_denoiser_as_for_score_mlp():
    default = inspect.signature(ScoreMLP).parameters["parametrization"].default
    assert sn.NetSpec((8,)).parametrization == default == "denoiser"
    assert sn.build_net(3, sn.NetSpec((8,)), 0).parametrization == "denoiser"
    assert "parametrization='eps'" in repr(ScoreMLP(3, 8, parametrization="eps"))
