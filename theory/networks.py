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

``MLPEnsemble`` holds G such networks of different widths (same depth) in one set of
batched tensors, padded to the largest width, so that a whole width sweep trains as
one model: member g's outputs and gradients equal those of ``ScoreMLP`` with the same
weights, and padded units are masked to zero so nothing passes between members.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from theory.process import Time, alpha, check_time, sigma, sigma2, time_column

__all__ = [
    "PARAMETRIZATIONS",
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


def _as_score(out: torch.Tensor, x: torch.Tensor, t: torch.Tensor, parametrization: str):
    """Read a network output as a score; t is a (batch, 1) column broadcast against out."""
    if parametrization == "score":
        return out
    if parametrization == "denoiser":
        return (alpha(t) * out - x) / sigma2(t)
    return -out / sigma(t)


def _time_input(x: torch.Tensor, t: Time) -> torch.Tensor:
    """t as a (batch,) tensor for x of shape (batch, d), after checking t > 0."""
    check_time(t)
    return time_column(t, x).expand(x.shape[0], 1)[:, 0]


class ScoreMLP(nn.Module):
    """A member of F(W, L, N): time-conditioned ReLU MLP read as a score (§5).

    d: data dimension; width W; depth L = number of hidden layers; emb_dim: size of the
    log-t embedding. forward(x (batch, d), t float or (batch,)) -> score (batch, d).
    """

    def __init__(
        self, d: int, width: int, depth: int = 1, emb_dim: int = 16,
        parametrization: str = "denoiser",
    ) -> None:
        super().__init__()
        _check_parametrization(parametrization)
        if min(d, width, depth) < 1:
            raise ValueError(f"d, width, depth must be >= 1, got {d}, {width}, {depth}")
        self.d, self.width, self.depth, self.parametrization = d, width, depth, parametrization
        self.embed = LogTimeEmbedding(emb_dim)
        dims = [d + emb_dim] + [width] * depth
        pairs = zip(dims[:-1], dims[1:], strict=True)
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in pairs)
        self.out = nn.Linear(width, d)

    @property
    def num_params(self) -> int:
        """N: the number of parameters (all trainable)."""
        return sum(p.numel() for p in self.parameters())

    def raw(self, x: torch.Tensor, t: Time) -> torch.Tensor:
        """The network output before the parametrization, shape (batch, d)."""
        return self._raw(x, _time_input(x, t))

    def _raw(self, x: torch.Tensor, tt: torch.Tensor) -> torch.Tensor:
        h = torch.cat([x, self.embed(tt)], dim=1)  # (batch, d + emb)
        for layer in self.hidden:
            h = torch.relu(layer(h))  # (batch, width)
        return self.out(h)  # (batch, d)

    def forward(self, x: torch.Tensor, t: Time) -> torch.Tensor:
        tt = _time_input(x, t)
        return _as_score(self._raw(x, tt), x, tt[:, None], self.parametrization)


def width_groups(
    widths: Sequence[int], waste: float = 0.3, small: int = 256
) -> list[list[int]]:
    """Split member indices into groups whose hidden-to-hidden layers share one matmul.

    A group's block-diagonal (S x S) matrix, S = sum of its widths, costs S^2 where its
    members need sum w^2; members (largest first) join a group while S <= small (small
    matmuls are bound by call overhead, not by flops) or S^2 <= (1 + waste) sum w^2.
    """
    order = sorted(range(len(widths)), key=lambda g: -widths[g])
    groups: list[list[int]] = []
    for g in order:
        if groups:
            cand = groups[-1] + [g]
            total = sum(widths[i] for i in cand)
            if total <= small or total**2 <= (1 + waste) * sum(widths[i] ** 2 for i in cand):
                groups[-1] = cand
                continue
        groups.append([g])
    return groups


class MLPEnsemble(nn.Module):
    """G ScoreMLPs of widths ``widths`` (same d, depth, embedding) in shared tensors (§5).

    All members read the same input, so their hidden units are laid side by side in one
    layer of S = sum_g w_g units: the input layer is one (d + emb) x S matmul and the
    output layer one S x (G d) matmul with each member's rows in its own column block.
    Hidden-to-hidden layers are block-diagonal; members are grouped (``width_groups``)
    so that each group is one dense matmul with at most 30% wasted work, and weights
    outside the diagonal blocks are masked in the forward pass, so they get zero
    gradient and no signal passes between members.

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
        ens = cls.__new__(cls)
        nn.Module.__init__(ens)
        ens._load(list(members))
        return ens

    def _load(self, members: list[ScoreMLP]) -> None:
        first = members[0]
        self.d, self.depth, self.parametrization = first.d, first.depth, first.parametrization
        self.widths = [m.width for m in members]
        self.embed = LogTimeEmbedding(first.embed.dim)
        # Units are laid out group by group; offsets[g] is member g's first unit.
        self.groups = width_groups(self.widths)
        order = [g for group in self.groups for g in group]
        self.offsets = [0] * len(members)
        pos = 0
        for g in order:
            self.offsets[g], pos = pos, pos + self.widths[g]
        S, G = pos, len(members)
        self.group_slices = [
            (self.offsets[group[0]], self.offsets[group[0]] + sum(self.widths[g] for g in group))
            for group in self.groups
        ]
        dtype = first.out.weight.dtype
        owner = torch.empty(S, dtype=torch.long)  # member of each unit
        for g in range(G):
            owner[self.offsets[g] : self.offsets[g] + self.widths[g]] = g
        self.register_buffer("owner_onehot", nn.functional.one_hot(owner, G).to(dtype))  # (S, G)
        with torch.no_grad():
            w_in = torch.cat([members[g].hidden[0].weight.T for g in order], dim=1)  # (d_in, S)
            b_in = torch.cat([members[g].hidden[0].bias for g in order])
            w_out = torch.cat([members[g].out.weight.T for g in order], dim=0)  # (S, d)
            b_out = torch.stack([m.out.bias for m in members])  # (G, d)
        self.w_in, self.b_in = nn.Parameter(w_in.clone()), nn.Parameter(b_in.clone())
        self.w_out, self.b_out = nn.Parameter(w_out.clone()), nn.Parameter(b_out.clone())
        # Hidden-to-hidden layers: one block-diagonal matrix per (layer, group).
        self.w_hidden = nn.ParameterList()
        self.b_hidden = nn.ParameterList()
        for k in range(self.depth - 1):
            bias = torch.cat([members[g].hidden[k + 1].bias.detach() for g in order])
            self.b_hidden.append(nn.Parameter(bias.clone()))
            for j, group in enumerate(self.groups):
                lo, hi = self.group_slices[j]
                block = torch.zeros(hi - lo, hi - lo, dtype=dtype)
                for g in group:
                    a, w = self.offsets[g] - lo, self.widths[g]
                    block[a : a + w, a : a + w] = members[g].hidden[k + 1].weight.detach().T
                self.w_hidden.append(nn.Parameter(block))
        for j, (lo, hi) in enumerate(self.group_slices):
            same = self.owner_onehot[lo:hi] @ self.owner_onehot[lo:hi].T  # (size, size) 0/1
            self.register_buffer(f"block_mask_{j}", same)

    @property
    def G(self) -> int:
        return len(self.widths)

    def num_params(self) -> list[int]:
        """N of each member (its own parameter count, without the zeros between blocks)."""
        d_in = self.w_in.shape[0]
        return [mlp_param_count(d_in, w, self.depth, self.d) for w in self.widths]

    def member(self, g: int) -> ScoreMLP:
        """A separate ScoreMLP with member g's current weights."""
        w, lo = self.widths[g], self.offsets[g]
        j = next(j for j, group in enumerate(self.groups) if g in group)
        a = lo - self.group_slices[j][0]
        m = ScoreMLP(self.d, w, self.depth, self.embed.dim, self.parametrization)
        m = m.to(device=self.w_out.device, dtype=self.w_out.dtype)
        with torch.no_grad():
            m.hidden[0].weight.copy_(self.w_in[:, lo : lo + w].T)
            m.hidden[0].bias.copy_(self.b_in[lo : lo + w])
            for k, layer in enumerate(m.hidden[1:]):
                block = self.w_hidden[k * len(self.groups) + j]
                layer.weight.copy_(block[a : a + w, a : a + w].T)
                layer.bias.copy_(self.b_hidden[k][lo : lo + w])
            m.out.weight.copy_(self.w_out[lo : lo + w].T)
            m.out.bias.copy_(self.b_out[g])
        return m

    def raw(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Outputs before the parametrization: x (batch, d), t (batch,) -> (G, batch, d)."""
        h = torch.cat([x, self.embed(t)], dim=1)  # (batch, d + emb)
        h = torch.relu(torch.addmm(self.b_in, h, self.w_in))  # (batch, S)
        n_groups = len(self.groups)
        for k in range(self.depth - 1):
            parts = [
                h[:, lo:hi] @ (self.w_hidden[k * n_groups + j] * getattr(self, f"block_mask_{j}"))
                for j, (lo, hi) in enumerate(self.group_slices)
            ]
            h = torch.relu(torch.cat(parts, dim=1) + self.b_hidden[k])  # (batch, S)
        # Member g's output reads only its own units: an (S, G d) block matrix.
        w_out = (self.owner_onehot[:, :, None] * self.w_out[:, None, :]).reshape(h.shape[1], -1)
        out = (h @ w_out).reshape(x.shape[0], self.G, self.d) + self.b_out  # (batch, G, d)
        return out.transpose(0, 1)  # (G, batch, d)

    def forward(self, x: torch.Tensor, t: Time) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.d:
            raise ValueError(f"x must have shape (batch, {self.d}), got {tuple(x.shape)}")
        tt = _time_input(x, t)
        out = self.raw(x, tt)
        return _as_score(out, x[None], tt[None, :, None], self.parametrization)
