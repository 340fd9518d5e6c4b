"""Nothing silent: every bad input of the public API is refused with an error naming it.

One table: (id, call, expected exception, a pattern that the message must contain). The
pattern is the argument's name (or the file's), so a test passes only if the error says
*which* input was wrong, not merely that something failed deep inside torch or numpy.
Each case was a silent wrong result or an obscure error before it was listed here.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from experiments.common import dit as dit_module
from experiments.common.metrics import two_nearest
from experiments.common.sampling import sample
from experiments.common.score_nets import NetSpec, SamplerSpec
from experiments.common.training import TrainConfig
from theory.bounds import pairwise_sq_distance_range, small_t_gap
from theory.capacity import FitBudget
from theory.empirical import EmpiricalScore
from theory.loss_gap import Estimate, dsm_loss, integrated_loss_gap, loss_gap
from theory.mixtures import paper_mixture
from theory.networks import MLPEnsemble, ScoreMLP
from theory.process import alpha, forward_sample, log_time_grid, sigma, sigma2

NAN, INF = math.nan, math.inf


def _points(n: int = 6, d: int = 3) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def _with_nan(x: torch.Tensor) -> torch.Tensor:
    x = x.clone()
    x.view(-1)[1] = NAN
    return x


def _mixture():
    return paper_mixture(3, 2, 2.0, seed=0)


def _dit() -> dit_module.DiT:
    torch.manual_seed(0)
    return dit_module.DiT(input_size=4, patch_size=2, in_channels=1, hidden_size=32, depth=1,
                          num_heads=4, num_classes=0, learn_sigma=False)


def _score_dit() -> dit_module.ScoreDiT:
    return dit_module.ScoreDiT(_dit(), "denoiser")


def _image() -> torch.Tensor:
    return torch.randn(2, 1, 4, 4)


CASES = [
    # -- configurations: every field, range and finiteness -----------------------------------
    ("TrainConfig grad_clip<0", lambda: TrainConfig(grad_clip=-1.0), ValueError, "grad_clip"),
    ("TrainConfig grad_clip=0", lambda: TrainConfig(grad_clip=0.0), ValueError, "grad_clip"),
    ("TrainConfig grad_clip=nan", lambda: TrainConfig(grad_clip=NAN), ValueError, "grad_clip"),
    ("TrainConfig weight_decay=nan", lambda: TrainConfig(weight_decay=NAN), ValueError,
     "weight_decay"),
    ("TrainConfig weight_decay<0", lambda: TrainConfig(weight_decay=-0.1), ValueError,
     "weight_decay"),
    ("TrainConfig lr=inf", lambda: TrainConfig(lr=INF), ValueError, "lr"),
    ("TrainConfig lr=nan", lambda: TrainConfig(lr=NAN), ValueError, "lr"),
    ("TrainConfig T=inf", lambda: TrainConfig(T=INF), ValueError, "T"),
    ("TrainConfig t0=nan", lambda: TrainConfig(t0=NAN), ValueError, "t0"),
    ("TrainConfig steps=2.5", lambda: TrainConfig(steps=2.5), ValueError, "steps"),
    ("TrainConfig batch=True", lambda: TrainConfig(batch=True), ValueError, "batch"),
    ("TrainConfig seed<0", lambda: TrainConfig(seed=-1), ValueError, "seed"),
    ("TrainConfig beta_a=0", lambda: TrainConfig(beta_a=0.0), ValueError, "beta_a"),
    ("TrainConfig beta_b=nan", lambda: TrainConfig(beta_b=NAN), ValueError, "beta_b"),
    ("TrainConfig ema=1", lambda: TrainConfig(ema=1.0), ValueError, "ema"),
    ("TrainConfig ema=nan", lambda: TrainConfig(ema=NAN), ValueError, "ema"),
    ("TrainConfig checkpoint_every=0", lambda: TrainConfig(checkpoint_every=0), ValueError,
     "checkpoint_every"),
    ("FitBudget lrs=(nan,)", lambda: FitBudget(lrs=(NAN,)), ValueError, "lrs"),
    ("FitBudget weight_decay=inf", lambda: FitBudget(weight_decay=INF), ValueError,
     "weight_decay"),
    ("FitBudget steps=0", lambda: FitBudget(steps=0), ValueError, "steps"),
    ("FitBudget eval_draws=1.5", lambda: FitBudget(eval_draws=1.5), ValueError, "eval_draws"),
    ("SamplerSpec num=0", lambda: SamplerSpec(num=0), ValueError, "num"),
    ("SamplerSpec steps=0", lambda: SamplerSpec(steps=0), ValueError, "steps"),
    ("SamplerSpec t0>T", lambda: SamplerSpec(t0=9.0, T=8.0), ValueError, "T"),
    ("SamplerSpec t0=nan", lambda: SamplerSpec(t0=NAN), ValueError, "t0"),
    ("SamplerSpec method", lambda: SamplerSpec(method="rk4"), ValueError, "method"),
    ("NetSpec no widths", lambda: NetSpec(()), ValueError, "widths"),
    ("NetSpec width 0", lambda: NetSpec((8, 0)), ValueError, "widths"),
    ("NetSpec emb_dim odd", lambda: NetSpec((8,), emb_dim=3), ValueError, "emb_dim"),
    ("NetSpec parametrization", lambda: NetSpec((8,), parametrization="x0"), ValueError,
     "parametrization"),
    # -- non-finite inputs and times ---------------------------------------------------------
    ("sigma(-1)", lambda: sigma(-1.0), ValueError, "t"),
    ("sigma2(tensor -1)", lambda: sigma2(torch.tensor([0.5, -1.0])), ValueError, "t"),
    ("alpha(nan)", lambda: alpha(NAN), ValueError, "t"),
    ("alpha(tensor inf)", lambda: alpha(torch.tensor([INF])), ValueError, "t"),
    ("forward_sample NaN x0", lambda: forward_sample(_with_nan(_points()), 0.1), ValueError,
     "x0"),
    ("forward_sample t=0", lambda: forward_sample(_points(), 0.0), ValueError, "t"),
    ("log_time_grid t_max=inf", lambda: log_time_grid(1e-3, INF, 5), ValueError, "t_max"),
    ("log_time_grid num=2.5", lambda: log_time_grid(1e-3, 1.0, 2.5), ValueError, "num"),
    ("ScoreMLP NaN x", lambda: ScoreMLP(3, 8)(_with_nan(_points().float()), 0.1), ValueError,
     "x"),
    ("ScoreMLP NaN t", lambda: ScoreMLP(3, 8)(_points().float(), NAN), ValueError, "t"),
    ("ScoreMLP.raw inf x", lambda: ScoreMLP(3, 8).raw(_points().float() * INF, 0.1),
     ValueError, "x"),
    ("MLPEnsemble NaN x", lambda: MLPEnsemble(3, [4, 8], 1)(_with_nan(_points().float()), 0.1),
     ValueError, "x"),
    ("DiT NaN t", lambda: _dit()(_image(), torch.tensor([0.5, NAN])), ValueError, "t"),
    ("DiT NaN x", lambda: _dit()(_with_nan(_image()), torch.tensor([0.5, 1.0])), ValueError,
     "x"),
    ("ScoreDiT NaN x", lambda: _score_dit()(_with_nan(_image()), 0.5), ValueError, "x"),
    ("ScoreDiT NaN t", lambda: _score_dit()(_image(), NAN), ValueError, "t"),
    ("Estimate.from_draws NaN", lambda: Estimate.from_draws(torch.tensor([1.0, NAN, 2.0])),
     ValueError, "draws"),
    ("Estimate.from_draws inf", lambda: Estimate.from_draws(torch.tensor([1.0, INF])),
     ValueError, "draws"),
    ("sample of a NaN score", lambda: sample(lambda x, t: x * NAN, 4, 2, steps=3),
     FloatingPointError, "score"),
    ("probability flow of an inf score",
     lambda: sample(lambda x, t: x / 0.0, 4, 2, steps=3, method="heun_ode"),
     FloatingPointError, "score"),
    # -- sizes, chunks and batches -----------------------------------------------------------
    ("pairwise_sq_distance_range chunk_size<0",
     lambda: pairwise_sq_distance_range(_points(), chunk_size=-4), ValueError, "chunk_size"),
    ("small_t_gap no eigenvalues", lambda: small_t_gap(0.1, np.array([])), ValueError,
     "eigvals"),
    ("loss_gap batch_size=0",
     lambda: loss_gap(_mixture().score, _points(), 0.1, num=8, batch_size=0), ValueError,
     "batch_size"),
    ("dsm_loss batch_size=-1",
     lambda: dsm_loss(_mixture().score, _points(), 0.1, num=8, batch_size=-1), ValueError,
     "batch_size"),
    ("integrated_loss_gap T=inf",
     lambda: integrated_loss_gap(_mixture().score, _points(), 1e-3, INF), ValueError, "T"),
    ("integrated_loss_gap num_nodes=0",
     lambda: integrated_loss_gap(_mixture().score, _points(), 1e-3, 1.0, num_nodes=0),
     ValueError, "num_nodes"),
    ("two_nearest chunk_size<0", lambda: two_nearest(_points(), _points(), chunk_size=-3),
     ValueError, "chunk_size"),
    ("EmpiricalScore chunk_size=2.5", lambda: EmpiricalScore(_points(), chunk_size=2.5),
     (TypeError, ValueError), "chunk_size"),
    ("EmpiricalScore chunk_size=True", lambda: EmpiricalScore(_points(), chunk_size=True),
     (TypeError, ValueError), "chunk_size"),
    ("sample num=0", lambda: sample(lambda x, t: -x, 0, 2), ValueError, "num"),
]


@pytest.mark.parametrize(("call", "error", "pattern"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_bad_input_is_refused_with_an_error_naming_it(call, error, pattern):
    with pytest.raises(error) as info:
        call()
    # The name must appear as a word of the message ("t", not the t inside "must").
    assert re.search(rf"\b{re.escape(pattern)}\b", str(info.value)), (
        f"message does not name {pattern!r}: {info.value}")


def test_the_checks_do_not_refuse_good_input():
    """The same calls with the bad value replaced by a good one run (the table is not
    refusing everything)."""
    TrainConfig(grad_clip=None, ema=0.999, weight_decay=0.0)
    assert sigma(0.0) == 0.0 and alpha(0.0) == 1.0  # t = 0 is the data itself
    x, _ = forward_sample(_points(), 0.1)
    assert torch.isfinite(x).all()
    assert pairwise_sq_distance_range(_points(), chunk_size=4)[0] > 0
    assert small_t_gap(0.1, np.array([1.0, 2.0])) > 0
    assert math.isfinite(loss_gap(_mixture().score, _points(), 0.1, num=8, batch_size=3)
                         .fisher.value)
    ScoreMLP(3, 8)(_points().float(), 0.1)
    _score_dit()(_image(), 0.5)
    EmpiricalScore(_points(), chunk_size=4)
    SamplerSpec(num=2, steps=1)
