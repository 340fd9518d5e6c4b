"""The paper's network class F(W, L, N) as time-conditioned ReLU MLPs (§5).

F(W, L, N) holds ReLU networks of width <= W, depth L and <= N nonzero parameters.
Thm 5.1 compares the sizes needed to approximate the empirical score (W ~ n) and the
true score (W independent of n). Here a member of the class is ``ScoreMLP``: input x
(batch, d) and a fixed sinusoidal embedding of log t, ``depth`` hidden ReLU layers of
``width`` units, output in R^d, read as a score through one of three parametrizations:

    "score":    s(x, t) = net(x, t)
    "denoiser": s(x, t) = -(x - alpha_t net(x, t)) / sigma_t^2     (net ~ E[X_0 | X_t = x])
    "eps":      s(x, t) = -net(x, t) / sigma_t                      (net ~ the noise)

The denoiser form is what practical diffusion models learn; at small t the raw score
is dominated by its -x/sigma_t^2 part, which the parametrization supplies exactly.

The parametrization is part of a network's identity: ``extra_repr`` names it, so it is in
``repr(net)`` and hence in the training-checkpoint key (experiments.common.training.
checkpoint_path hashes the repr with the starting weights, which one seed makes equal for
every parametrization). Without it a cached "denoiser" network was loaded and read as
"eps", and its samples landed far from the data; trained for real, every parametrization
samples like the true score (tests/experiments/test_parametrizations.py).

All three are sound for the reverse-SDE samplers when trained enough; they differ at large
t, where p_t ~ N(0, I) and the score is ~ -x. "denoiser" supplies -x/sigma_t^2 exactly and
the network adds only alpha_t net / sigma_t^2; "score" and "eps" must learn that linear
map. The reverse drift x/2 + s expands unless s supplies it (s = -x gives -x/2), so an
under-fitted linear part pushes trajectories outward at large t, where the network has
never seen them. Hence "denoiser" is the default here and in
experiments.common.score_nets.NetSpec.

``MLPEnsemble`` holds G such networks of different widths (same depth) in one flat
parameter, run as a few batched matmuls over buckets of members padded to a common
width, so that a whole width sweep trains as one model: member g's outputs and
gradients equal those of ``ScoreMLP`` with the same weights; padded units stay exactly
zero and members share no weight, so nothing passes between members.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from theory._checks import check_matrix
from theory.process import Time, alpha, check_time, sigma, sigma2, time_column

__all__ = [
    "PARAMETRIZATIONS",
    "as_score",
    "LogTimeEmbedding",
    "mlp_param_count",
    "ScoreMLP",
    "MLPEnsemble",
]

PARAMETRIZATIONS = ("score", "denoiser", "eps")


class LogTimeEmbedding(nn.Module):
    """Fixed sinusoidal features of u = log t: [sin(f_k u), cos(f_k u)], shape (batch, dim).

    Frequencies f_k are geometric in [1/8, 4], so the features resolve t over the many
    decades (1e-4 .. 10) a diffusion model sees; there are no parameters.
    """

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        if dim < 2 or dim % 2:
            raise ValueError(f"dim must be an even integer >= 2, got {dim}")
        self.dim = dim
        self.register_buffer("freqs", torch.logspace(math.log10(1 / 8), math.log10(4), dim // 2))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        u = torch.log(t)[:, None] * self.freqs.to(t.dtype)  # (batch, dim/2)
        return torch.cat([torch.sin(u), torch.cos(u)], dim=1)


def mlp_param_count(d_in: int, width: int, depth: int, d_out: int) -> int:
    """Parameters of a ReLU MLP d_in -> [width] * depth -> d_out with biases (N of F(W, L, N))."""
    if min(d_in, width, depth, d_out) < 1:
        raise ValueError(
            f"d_in, width, depth, d_out must be >= 1, got {d_in}, {width}, {depth}, {d_out}"
        )
    return (d_in + 1) * width + (depth - 1) * (width + 1) * width + (width + 1) * d_out


def _check_parametrization(parametrization: str) -> None:
    if parametrization not in PARAMETRIZATIONS:
        raise ValueError(
            f"parametrization must be one of {PARAMETRIZATIONS}, got {parametrization!r}"
        )


def as_score(
    out: torch.Tensor, x: torch.Tensor, t: torch.Tensor, parametrization: str
) -> torch.Tensor:
    """Read a network output ``out`` (shaped like x) as a score (module docstring, §3).

    t holds the times shaped to broadcast against out: a (batch, 1) column for vectors,
    (batch, 1, 1, 1) for images. parametrization is one of PARAMETRIZATIONS.
    """
    if parametrization == "score":
        return out
    if parametrization == "denoiser":
        return (alpha(t) * out - x) / sigma2(t)
    return -out / sigma(t)


def _time_input(x: torch.Tensor, t: Time, d: int) -> torch.Tensor:
    """t as a (batch,) tensor for x of shape (batch, d), after checking that x is a finite
    (batch, d) matrix and t finite and > 0."""
    check_matrix(x, "x", cols=d, allow_empty=True)
    check_time(t)
    return time_column(t, x).expand(x.shape[0], 1)[:, 0]


class ScoreMLP(nn.Module):
    """A member of F(W, L, N): time-conditioned ReLU MLP read as a score (§5).

    d: data dimension; width W (an int: every hidden layer; or one width per hidden layer,
    as a pruned network has); depth L = number of hidden layers; emb_dim: size of the
    log-t embedding. forward(x (batch, d), t float or (batch,)) -> score (batch, d).
    ``width`` is then W = the largest hidden width, ``hidden_widths`` the per-layer ones.
    """

    def __init__(
        self, d: int, width: int | Sequence[int], depth: int | None = None, emb_dim: int = 16,
        parametrization: str = "denoiser",
    ) -> None:
        super().__init__()
        _check_parametrization(parametrization)
        if isinstance(width, int):
            widths = [width] * (1 if depth is None else depth)
        else:
            widths = [int(w) for w in width]
            if depth is not None and depth != len(widths):
                raise ValueError(f"depth={depth} disagrees with {len(widths)} widths {widths}")
        if d < 1 or not widths or min(widths) < 1:
            raise ValueError(f"need d >= 1 and depth >= 1 widths >= 1, got d={d}, widths={widths}")
        self.d, self.parametrization = d, parametrization
        self.hidden_widths = tuple(widths)
        self.width, self.depth = max(widths), len(widths)
        self.embed = LogTimeEmbedding(emb_dim)
        dims = [d + emb_dim, *widths]
        pairs = zip(dims[:-1], dims[1:], strict=True)
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in pairs)
        self.out = nn.Linear(widths[-1], d)

    @property
    def num_params(self) -> int:
        """N: the number of parameters (all trainable)."""
        return sum(p.numel() for p in self.parameters())

    def extra_repr(self) -> str:
        # In repr(net), hence in the checkpoint key: nets that differ only in how their
        # output is read must not share a checkpoint (module docstring).
        return f"d={self.d}, parametrization={self.parametrization!r}"

    def raw(self, x: torch.Tensor, t: Time) -> torch.Tensor:
        """The network output before the parametrization, shape (batch, d)."""
        return self._raw(x, _time_input(x, t, self.d))

    def _raw(self, x: torch.Tensor, tt: torch.Tensor) -> torch.Tensor:
        h = torch.cat([x, self.embed(tt)], dim=1)  # (batch, d + emb)
        for layer in self.hidden:
            h = torch.relu(layer(h))  # (batch, width)
        return self.out(h)  # (batch, d)

    def forward(self, x: torch.Tensor, t: Time) -> torch.Tensor:
        tt = _time_input(x, t, self.d)
        return as_score(self._raw(x, tt), x, tt[:, None], self.parametrization)


# Cost of one more bucket (its extra kernel calls in forward and backward), in the units
# of ``width_groups``' cost model: parameters, each of which costs about 6 * batch flops
# per training step. Measured on CPU at batch 256: a bucket's calls take about as long as
# the matmuls of ~8k parameters.
BUCKET_OVERHEAD = 8192
# Most units (k * P) in one bucket. Measured on CPU (glibc malloc): activations of more
# than about 1 MB (batch 256 x 1024 float32) are allocated fresh from the OS at every step
# and page-faulted in, which made a bucket of two width-1024 members 3.7x slower than one.
BUCKET_UNITS = 1024


def width_groups(
    widths: Sequence[int], depth: int = 1, io: int = 32,
    overhead: int = BUCKET_OVERHEAD, max_units: int = BUCKET_UNITS,
) -> list[list[int]]:
    """Split member indices into buckets that share one batched matmul per layer.

    A bucket of k members is padded to its largest width P and costs ``overhead`` plus
    its padded parameter count k P (io + (depth - 1)(P + 1)), io = input + output size
    per unit (d + emb + 1 + d); it holds at most ``max_units`` units k P unless it is a
    single member. Buckets are runs of the widths sorted in decreasing order, and the split
    minimises the total cost (dynamic programming, optimal for that order), so equal
    widths share a bucket at no waste and small widths are padded together.
    Returns the buckets, each a list of member indices, widest bucket first.
    """
    order = sorted(range(len(widths)), key=lambda g: -widths[g])
    w = [widths[g] for g in order]

    def cost(i: int, j: int) -> float:  # members order[i:j] padded to w[i]
        if j - i > 1 and (j - i) * w[i] > max_units:
            return math.inf
        return overhead + (j - i) * w[i] * (io + (depth - 1) * (w[i] + 1))

    best: list[float] = [0.0] * (len(w) + 1)  # best[j]: cheapest split of order[:j]
    cut = [0] * (len(w) + 1)
    for j in range(1, len(w) + 1):
        best[j], cut[j] = min((best[i] + cost(i, j), i) for i in range(j))
    buckets, j = [], len(w)
    while j > 0:
        buckets.append(order[cut[j] : j])
        j = cut[j]
    return buckets[::-1]


class MLPEnsemble(nn.Module):
    """G ScoreMLPs of widths ``widths`` (same d, depth, embedding) trained as one model (§5).

    Layout (chosen by measurement, see experiments/benchmarks/ensemble.py): members are split
    into buckets (``width_groups``); a bucket of k members is padded to its widest member
    P and runs as one batched matmul per layer: (k, P, d + emb + 1) @ (d + emb + 1, batch)
    at the input (the input bias is the last column, multiplying a constant 1),
    (k, P, P) @ (k, P, batch) per hidden-to-hidden layer and (k, d, P) @ (k, P, batch) at
    the output. Activations are feature-major, (k, P, batch). All weights live in one flat
    parameter, so an optimizer step is a few kernels however many members there are.

    Padded units have zero weights and bias, hence pre-activation exactly 0, output
    relu(0) = 0 and gradient relu'(0) = 0: every weight touching them gets an exactly
    zero gradient, so they stay zero under AdamW (with weight decay) and no signal reaches
    a member from outside it; members never share a weight.

    forward(x (batch, d), t float or (batch,)) -> scores (G, batch, d). Member g equals
    ``member(g)``, a separate ScoreMLP with its weights (outputs and gradients).
    """

    def __init__(
        self, d: int, widths: Sequence[int], depth: int = 1, emb_dim: int = 16,
        parametrization: str = "denoiser", seed: int = 0,
    ) -> None:
        super().__init__()
        widths = [int(w) for w in widths]
        if not widths or min(widths) < 1:
            raise ValueError(f"widths must be a non-empty list of positive integers, got {widths}")
        members = []
        for g, w in enumerate(widths):
            torch.manual_seed(seed * 1_000_003 + g)  # member g is ScoreMLP built under this seed
            members.append(ScoreMLP(d, w, depth, emb_dim, parametrization))
        self._load(members)

    @classmethod
    def from_members(cls, members: Sequence[ScoreMLP]) -> MLPEnsemble:
        """An ensemble whose member g has exactly the weights of members[g]."""
        if not members:
            raise ValueError("members must not be empty")
        first = members[0]
        for m in members:
            if (m.d, m.depth, m.embed.dim, m.parametrization) != (
                first.d, first.depth, first.embed.dim, first.parametrization
            ):
                raise ValueError("members must share d, depth, emb_dim and parametrization")
            if len(set(m.hidden_widths)) > 1:
                raise ValueError(f"members need one width per network, got {m.hidden_widths}")
        ens = cls.__new__(cls)
        nn.Module.__init__(ens)
        ens._load(list(members))
        return ens

    def _load(self, members: list[ScoreMLP]) -> None:
        first = members[0]
        d, depth = first.d, first.depth
        self.d, self.depth, self.parametrization = d, depth, first.parametrization
        self.widths = [m.width for m in members]
        self.embed = LogTimeEmbedding(first.embed.dim)
        d_in = d + first.embed.dim + 1  # x, embedding, constant 1 (carries the input bias)
        self.buckets = width_groups(self.widths, depth, io=d_in + d)
        self.pads = [max(self.widths[g] for g in bucket) for bucket in self.buckets]
        self.slot = {g: (j, i) for j, b in enumerate(self.buckets) for i, g in enumerate(b)}
        order = [g for bucket in self.buckets for g in bucket]
        self.register_buffer("_unsort", torch.argsort(torch.tensor(order)), persistent=False)
        # The flat parameter's pieces, bucket by bucket: input weight (k, P, d_in), then per
        # hidden-to-hidden layer weight (k, P, P) and bias (k, P, 1), then output weight
        # (k, d, P); last the output biases of all members (G, d, 1) in bucket order.
        shapes: list[tuple[int, ...]] = []
        for b, p in zip(self.buckets, self.pads, strict=True):
            shapes.append((len(b), p, d_in))
            for _ in range(depth - 1):
                shapes += [(len(b), p, p), (len(b), p, 1)]
            shapes.append((len(b), d, p))
        shapes.append((len(members), d, 1))
        self._shapes = shapes
        self._sizes = [math.prod(s) for s in shapes]
        self.flat = nn.Parameter(torch.zeros(sum(self._sizes), dtype=first.out.weight.dtype))
        with torch.no_grad():
            for g, m in enumerate(members):
                for view, src in zip(self.member_views(g), _member_tensors(m), strict=True):
                    view.copy_(src)

    def _pieces(self, tensor: torch.Tensor) -> list[list[torch.Tensor]]:
        """``tensor`` (the flat parameter or its gradient) cut into the layout's shapes:
        one list per bucket [W_in, (W_k, b_k) per hidden layer..., W_out], then [b_out]."""
        flat = [p.view(s) for p, s in zip(tensor.split(self._sizes), self._shapes, strict=True)]
        n = 2 * self.depth  # pieces per bucket
        return [flat[j * n : (j + 1) * n] for j in range(len(self.buckets))] + [flat[-1:]]

    def member_views(self, g: int, tensor: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Views of member g's part of ``tensor`` (default the flat parameter; also its
        gradient or any tensor shaped like it) in the order of ``_member_tensors``:
        [W_in (w, d_in), b_in (w,)] + [W_k (w, w), b_k (w,)] per hidden layer
        + [W_out (d, w), b_out (d,)], weights as nn.Linear stores them (out, in)."""
        pieces = self._pieces(self.flat if tensor is None else tensor)
        j, i = self.slot[g]
        w, mine = self.widths[g], pieces[j]
        views = [mine[0][i, :w, :-1], mine[0][i, :w, -1]]
        for k in range(self.depth - 1):
            views += [mine[1 + 2 * k][i, :w, :w], mine[2 + 2 * k][i, :w, 0]]
        pos = sum(len(b) for b in self.buckets[:j]) + i  # member's row in bucket order
        return views + [mine[-1][i, :, :w], pieces[-1][0][pos, :, 0]]

    def extra_repr(self) -> str:
        return f"d={self.d}, widths={self.widths}, parametrization={self.parametrization!r}"

    @property
    def G(self) -> int:
        """The number of members."""
        return len(self.widths)

    def num_params(self) -> list[int]:
        """N of each member (its own parameter count, without the padding)."""
        d_in = self.d + self.embed.dim
        return [mlp_param_count(d_in, w, self.depth, self.d) for w in self.widths]

    def member(self, g: int) -> ScoreMLP:
        """A separate ScoreMLP with member g's current weights."""
        m = ScoreMLP(self.d, self.widths[g], self.depth, self.embed.dim, self.parametrization)
        m = m.to(device=self.flat.device, dtype=self.flat.dtype)
        with torch.no_grad():
            for dst, src in zip(_member_tensors(m), self.member_views(g), strict=True):
                dst.copy_(src)
        return m

    def raw(
        self, x: torch.Tensor, t: torch.Tensor, active: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Outputs before the parametrization: x (batch, d), t (batch,) -> (G, batch, d).

        active (G,) bool, optional: buckets without an active member are not computed
        (their members' outputs are the output bias alone, with no gradient to their
        weights), so members that stopped training cost nothing."""
        pieces = self._pieces(self.flat)
        ones = torch.ones_like(x[:, :1])
        h0t = torch.cat([x, self.embed(t), ones], dim=1).T  # (d_in, batch)
        outs = []
        for bucket, mine in zip(self.buckets, pieces[:-1], strict=True):
            if active is not None and not bool(active[bucket].any()):
                outs.append(h0t.new_zeros(len(bucket), self.d, h0t.shape[1]))
                continue
            # Feature-major activations (k, P, batch): measured faster than (k, batch, P)
            # for these skinny matmuls. relu_ in place saves a pass over the activation
            # (the matmul's backward does not need its output).
            h = torch.relu_(torch.matmul(mine[0], h0t))
            for k in range(self.depth - 1):
                h = torch.relu_(torch.baddbmm(mine[2 + 2 * k], mine[1 + 2 * k], h))
            outs.append(torch.bmm(mine[-1], h))  # (k, d, batch)
        out = torch.cat(outs) + pieces[-1][0]  # (G, d, batch), bucket order
        return out[self._unsort].transpose(1, 2)  # (G, batch, d), member order

    def forward(self, x: torch.Tensor, t: Time) -> torch.Tensor:
        """Scores of all members: x (batch, d), t float or (batch,) -> (G, batch, d)."""
        tt = _time_input(x, t, self.d)
        out = self.raw(x, tt)
        return as_score(out, x[None], tt[None, :, None], self.parametrization)


def _member_tensors(m: ScoreMLP) -> list[torch.Tensor]:
    """A ScoreMLP's tensors in the order of ``MLPEnsemble.member_views``."""
    tensors = []
    for layer in m.hidden:
        tensors += [layer.weight, layer.bias]
    return tensors + [m.out.weight, m.out.bias]
