"""Shared hypothesis strategies and helpers for the test suite.

The strategies live on one namespace, handed to tests by the session-scoped fixture
``strat`` and drawn inside a test with ``data.draw(strat.<name>(...))``. (A fixture
rather than ``from conftest import ...``: that import breaks as soon as another
directory under tests/ gets its own conftest.py.)

Tensors are generated from a drawn integer seed, so every example is reproducible from
the values hypothesis prints, and a failing example shrinks to small n, d and seed.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import pytest
import torch
from hypothesis import settings
from hypothesis import strategies as st

from theory.process import alpha, sigma

# In CI every run draws the same examples (no flaky red builds); locally hypothesis
# explores new ones each run.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


@dataclass(frozen=True)
class Case:
    """Training points (n, d), queries (batch, d) and a time t, all in one dtype."""

    points: torch.Tensor
    x: torch.Tensor
    t: float
    seed: int

    @property
    def n(self) -> int:
        return self.points.shape[0]

    @property
    def d(self) -> int:
        return self.points.shape[1]


def torch_gen(seed: int) -> torch.Generator:
    """A CPU torch.Generator seeded with ``seed``."""
    return torch.Generator().manual_seed(int(seed))


def randn(shape: tuple[int, ...], seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Standard normal tensor of ``shape`` from ``seed``."""
    return torch.randn(shape, generator=torch_gen(seed), dtype=dtype)


def queries_near_and_far(
    points: torch.Tensor, t: float, batch: int, seed: int, far: float = 0.0
) -> torch.Tensor:
    """batch queries: even rows are draws from P_hat_t (alpha_t x_i + sigma_t eps), odd
    rows are N(0, (s^2 + 1) I) with s the points' scale, shifted by ``far`` along a
    random unit direction when far > 0."""
    g = torch_gen(seed)
    n, d = points.shape
    dtype = points.dtype
    idx = torch.randint(n, (batch,), generator=g)
    eps = torch.randn((batch, d), generator=g, dtype=dtype)
    near = alpha(t) * points[idx] + sigma(t) * eps
    scale = float(points.square().mean().sqrt())
    wide = math.sqrt(scale**2 + 1.0) * torch.randn((batch, d), generator=g, dtype=dtype)
    if far > 0:
        u = torch.randn((1, d), generator=g, dtype=dtype)
        wide = wide + far * u / u.norm()
    x = near.clone()
    x[1::2] = wide[1::2]
    return x


class Strategies:
    """Hypothesis strategies shared by the tests (see the module docstring)."""

    seeds = st.integers(0, 2**31 - 1)

    @staticmethod
    def log_uniform(lo: float, hi: float) -> st.SearchStrategy[float]:
        """Floats spread evenly in log scale over [lo, hi]."""
        return st.floats(math.log(lo), math.log(hi)).map(lambda u: min(max(math.exp(u), lo), hi))

    @staticmethod
    def cases(
        n: tuple[int, int] = (1, 30),
        d: tuple[int, int] = (1, 8),
        batch: tuple[int, int] = (1, 6),
        t: tuple[float, float] = (1e-3, 10.0),
        scale: tuple[float, float] = (0.2, 3.0),
        dtype: torch.dtype = torch.float64,
        far: float = 0.0,
    ) -> st.SearchStrategy[Case]:
        """A random point set N(0, scale^2 I) and queries near it and around it."""

        @st.composite
        def build(draw) -> Case:
            n_ = draw(st.integers(*n))
            d_ = draw(st.integers(*d))
            batch_ = draw(st.integers(*batch))
            t_ = draw(Strategies.log_uniform(*t))
            scale_ = draw(st.floats(*scale))
            seed = draw(Strategies.seeds)
            points = scale_ * randn((n_, d_), seed, dtype)
            x = queries_near_and_far(points, t_, batch_, seed + 1, far)
            return Case(points, x, t_, seed)

        return build()

    @staticmethod
    def spd(d: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """A random symmetric positive definite (d, d) matrix, eigenvalues in about [0.1, 5]."""
        a = randn((d, d), seed, dtype) / math.sqrt(d)
        return a @ a.T + 0.1 * torch.eye(d, dtype=dtype)

    @staticmethod
    def covariances(d: int, seed: int, kind: str, dtype: torch.dtype = torch.float64):
        """cov argument of GaussianMixture: kind 'scalar' (float), 'diag' (d,) or 'full' (d, d)."""
        if kind == "scalar":
            return 0.1 + 2.0 * torch.rand((), generator=torch_gen(seed)).item()
        if kind == "diag":
            return 0.1 + 2.0 * torch.rand((d,), generator=torch_gen(seed), dtype=dtype)
        if kind == "full":
            return Strategies.spd(d, seed, dtype)
        raise ValueError(f"unknown covariance kind {kind!r}")

    cov_kinds = st.sampled_from(["scalar", "diag", "full"])

    # plain helpers, so that tests reach everything through the one fixture
    torch_gen = staticmethod(torch_gen)
    randn = staticmethod(randn)
    queries = staticmethod(queries_near_and_far)


@pytest.fixture(scope="session")
def strat() -> type[Strategies]:
    """The shared hypothesis strategies (class Strategies above)."""
    return Strategies


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """run(module) -> (out_dir, result): an experiment's smoke profile, run once per session."""
    import json

    from experiments.common.runs import main

    done: dict = {}

    def run(module):
        if module.NAME not in done:
            out = tmp_path_factory.mktemp(module.NAME)
            main(module, ["--profile", "smoke", "--out", str(out)])
            done[module.NAME] = out, json.loads((out / f"{module.NAME}.json").read_text())
        return done[module.NAME]

    return run
