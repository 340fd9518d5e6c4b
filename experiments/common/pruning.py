"""Structured pruning of score networks: the suite's one pruning module (§6.2, App. D.1).

A model's prunable *groups* (hidden units of a score MLP's layers: ``HiddenUnits``;
attention heads and MLP channels of a DiT: ``AttentionHeads``, ``MlpChannels``) each get
a mask variable xi_h multiplying the group's output. One-shot pruning then follows the
paper's Algorithm 2:

1. importance: for batches x of the training set with t ~ Beta(0.8, 2) mapped onto
   [t0, T] (most mass at small t, where memorization lives), accumulate
   S(h) += |dL(x, t) / d xi_h| at xi = 1, L the DSM training loss (eq. 3.1);
2. normalize per layer, I(h) = S(h) / sqrt(sum_{h' in layer} S(h')^2);
3. remove the floor(eta * H) groups of lowest I(h), ranked globally over all layers;
4. fine-tune the smaller model with the shared training loop (experiments/common/training).

Beyond Alg. 2 (``criterion_scores``, issue "mitigation"): "generalization_gap" (groups whose
removal costs the training loss much more than a held-out loss: the memorizing groups) and
"oracle" (Gaussian mixtures: groups whose removal moves the network towards the true
score), from the same pass over shared (t, eps) draws (``mask_gradient_sums``); the time
law of that pass is an option (``importance_times``: "linear", "paper", "small_t").
Baselines: magnitude (weight norms of the group, normalized per layer the same way) and
random scores. ``prune`` removes the groups physically: the result is a smaller model
whose outputs equal those of the original with the removed groups masked to zero.

    groups = HiddenUnits(net)
    scores = importance(groups, "mask_gradient", data, batches=32, t0=1e-3, T=8.0)
    keep = select(scores, eta=0.2, min_keep=groups.min_keep)
    small = prune(groups, keep)            # == net with masks_from_keep(keep) applied
"""

from __future__ import annotations

import copy
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from experiments.common.dit import Attention, Mlp
from experiments.common.training import dsm_loss
from theory.networks import ScoreMLP
from theory.process import (
    BetaTimeSampler,
    DDPMBetaTimeSampler,
    LogUniformTimeSampler,
    alpha,
    sigma,
)

__all__ = [
    "DATA_METHODS",
    "IMPORTANCE_METHODS",
    "TIME_LAWS",
    "importance_times",
    "mask_gradient_sums",
    "criterion_scores",
    "live_groups",
    "Groups",
    "HiddenUnits",
    "AttentionHeads",
    "MlpChannels",
    "mask_gradients",
    "normalize_per_layer",
    "importance",
    "select",
    "groups_to_remove",
    "masks_from_keep",
    "prune",
]

DATA_METHODS = ("mask_gradient", "generalization_gap", "oracle")
IMPORTANCE_METHODS = (*DATA_METHODS, "magnitude", "random")
Scores = dict[str, torch.Tensor]  # layer name -> one value per group, shape (groups,)


class Groups(ABC):
    """The prunable groups of one model, layer by layer (layers in forward order).

    ``min_keep`` is the policy for emptying a layer: the fewest groups a layer keeps.
    """

    model: nn.Module
    min_keep: int = 0

    @abstractmethod
    def sizes(self) -> dict[str, int]:
        """Number of groups of each layer."""

    @abstractmethod
    @contextmanager
    def masked(self, masks: Scores) -> Iterator[None]:
        """Inside the block the model multiplies group h's output by masks[layer][h]."""

    @abstractmethod
    def magnitude(self) -> Scores:
        """A weight-norm score per group (the magnitude baseline), shape (groups,) per layer."""

    @abstractmethod
    def pruned(self, keep: dict[str, torch.Tensor]) -> nn.Module:
        """A new model without the groups where keep[layer] is False."""

    def check(self, scores: Scores, name: str) -> None:
        """Raise ValueError unless scores has one 1-D tensor of the right size per layer."""
        sizes = self.sizes()
        if set(scores) != set(sizes):
            raise ValueError(f"{name} must have the layers {sorted(sizes)}, got {sorted(scores)}")
        for layer, size in sizes.items():
            if tuple(scores[layer].shape) != (size,):
                raise ValueError(
                    f"{name}[{layer!r}] must have shape ({size},), got {tuple(scores[layer].shape)}"
                )


class HiddenUnits(Groups):
    """The hidden units of a ``ScoreMLP``, one layer per hidden layer ("hidden.0", ...).

    The mask multiplies a unit's pre-activation; for a 0/1 mask that equals masking its
    ReLU output, and at xi = 1 both have the same derivative relu(h), so the importance is
    that of the unit's output as in Alg. 2. Every layer keeps at least one unit
    (``min_keep = 1``): an empty layer would cut the network in two.
    """

    min_keep = 1

    def __init__(self, model: ScoreMLP) -> None:
        if not isinstance(model, ScoreMLP):
            raise TypeError(f"model must be a ScoreMLP, got {type(model).__name__}")
        self.model = model

    def sizes(self) -> dict[str, int]:
        return {f"hidden.{k}": w for k, w in enumerate(self.model.hidden_widths)}

    @contextmanager
    def masked(self, masks: Scores) -> Iterator[None]:
        self.check(masks, "masks")
        handles = [
            layer.register_forward_hook(lambda _m, _i, out, xi=masks[f"hidden.{k}"]: out * xi)
            for k, layer in enumerate(self.model.hidden)
        ]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def magnitude(self) -> Scores:
        # ||incoming weights and bias|| * ||outgoing weights||: the unit's size in both
        # directions (invariant to the ReLU's rescaling w_in -> c w_in, w_out -> w_out / c).
        nxt = [*self.model.hidden[1:], self.model.out]
        out = {}
        for k, (layer, after) in enumerate(zip(self.model.hidden, nxt, strict=True)):
            w_in = torch.cat([layer.weight, layer.bias[:, None]], dim=1).norm(dim=1)
            out[f"hidden.{k}"] = (w_in * after.weight.norm(dim=0)).detach()
        return out

    def pruned(self, keep: dict[str, torch.Tensor]) -> ScoreMLP:
        self.check(keep, "keep")
        m = self.model
        idx = [keep[f"hidden.{k}"].nonzero()[:, 0] for k in range(m.depth)]
        small = ScoreMLP(m.d, [len(i) for i in idx], emb_dim=m.embed.dim,
                         parametrization=m.parametrization)
        ref = m.out.weight
        small = small.to(device=ref.device, dtype=ref.dtype)
        prev = torch.arange(m.d + m.embed.dim, device=ref.device)  # inputs all kept
        with torch.no_grad():
            for k, (src, dst) in enumerate(zip(m.hidden, small.hidden, strict=True)):
                dst.weight.copy_(src.weight[idx[k]][:, prev])
                dst.bias.copy_(src.bias[idx[k]])
                prev = idx[k]
            small.out.weight.copy_(m.out.weight[:, prev])
            small.out.bias.copy_(m.out.bias)
        return small


class _DiTGroups(Groups):
    """Groups held by every submodule of one type (dit.Attention or dit.Mlp) of a model, in
    module order; layer names are the modules' paths ("dit.blocks.0.attn", ...). A layer may
    lose all its groups (``min_keep = 0``): its branch then outputs only its output bias,
    exactly what masking all its groups gives."""

    kind: type[nn.Module]
    mask_attr: str

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.layers = {n: m for n, m in model.named_modules() if isinstance(m, self.kind)}
        if not self.layers:
            raise ValueError(f"model has no {self.kind.__name__} modules to prune")

    @contextmanager
    def masked(self, masks: Scores) -> Iterator[None]:
        self.check(masks, "masks")
        try:
            for name, module in self.layers.items():
                setattr(module, self.mask_attr, masks[name])
            yield
        finally:
            for module in self.layers.values():
                setattr(module, self.mask_attr, None)

    def pruned(self, keep: dict[str, torch.Tensor]) -> nn.Module:
        self.check(keep, "keep")
        small = copy.deepcopy(self.model)
        for name, module in self.layers.items():
            parent, _, child = name.rpartition(".")
            idx = keep[name].nonzero()[:, 0].to(next(module.parameters()).device)
            setattr(small.get_submodule(parent) if parent else small, child,
                    self._slice(module, idx))
        return small

    @abstractmethod
    def _slice(self, module: nn.Module, idx: torch.Tensor) -> nn.Module:
        """A new module keeping only the groups ``idx`` of ``module``."""


class AttentionHeads(_DiTGroups):
    """The attention heads of every dit.Attention of a model (the paper's groups, §6.2).

    A head h of a layer with H heads of size d_h owns rows part * H * d_h + h * d_h ...
    + d_h of qkv (part = q, k, v) and the same columns of proj; removing it leaves an
    Attention with fewer heads of the same d_h. The mask multiplies the head's attention
    output before the projection (``Attention.head_mask``).
    """

    kind, mask_attr = Attention, "head_mask"

    def sizes(self) -> dict[str, int]:
        return {n: m.num_heads for n, m in self.layers.items()}

    def magnitude(self) -> Scores:
        out = {}
        for name, m in self.layers.items():
            H, dh = m.num_heads, m.head_dim
            qkv = torch.cat([m.qkv.weight, m.qkv.bias[:, None]], 1).view(3, H, dh, -1)
            w_in = qkv.permute(1, 0, 2, 3).reshape(H, -1).norm(dim=1)  # (H,)
            w_out = m.proj.weight.view(m.dim, H, dh).permute(1, 0, 2).reshape(H, -1).norm(dim=1)
            out[name] = (w_in * w_out).detach()
        return out

    def _slice(self, m: Attention, idx: torch.Tensor) -> Attention:
        H, dh = m.num_heads, m.head_dim
        new = Attention(m.dim, len(idx), head_dim=dh, qkv_bias=m.qkv.bias is not None)
        new = new.to(device=m.proj.weight.device, dtype=m.proj.weight.dtype)
        cols = (idx[:, None] * dh + torch.arange(dh, device=idx.device)).flatten()  # (k d_h,)
        rows = torch.cat([part * H * dh + cols for part in range(3)])  # q, k, v blocks
        with torch.no_grad():
            new.qkv.weight.copy_(m.qkv.weight[rows])
            if m.qkv.bias is not None:
                new.qkv.bias.copy_(m.qkv.bias[rows])
            new.proj.weight.copy_(m.proj.weight[:, cols])
            new.proj.bias.copy_(m.proj.bias)
        return new


class MlpChannels(_DiTGroups):
    """The hidden channels of every dit.Mlp of a model (fc1 rows, fc2 columns); the mask
    multiplies the GELU output (``Mlp.channel_mask``). An option beside the heads."""

    kind, mask_attr = Mlp, "channel_mask"

    def sizes(self) -> dict[str, int]:
        return {n: m.hidden_features for n, m in self.layers.items()}

    def magnitude(self) -> Scores:
        out = {}
        for name, m in self.layers.items():
            w_in = torch.cat([m.fc1.weight, m.fc1.bias[:, None]], 1).norm(dim=1)
            out[name] = (w_in * m.fc2.weight.norm(dim=0)).detach()
        return out

    def _slice(self, m: Mlp, idx: torch.Tensor) -> Mlp:
        new = Mlp(m.fc2.out_features, len(idx))
        new = new.to(device=m.fc2.weight.device, dtype=m.fc2.weight.dtype)
        with torch.no_grad():
            new.fc1.weight.copy_(m.fc1.weight[idx])
            new.fc1.bias.copy_(m.fc1.bias[idx])
            new.fc2.weight.copy_(m.fc2.weight[:, idx])
            new.fc2.bias.copy_(m.fc2.bias)
        return new


TIME_LAWS = ("linear", "paper", "small_t")
ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def importance_times(law: str, t0: float = 1e-3, T: float = 8.0,
                     beta: tuple[float, float] = (0.8, 2.0), small_t_max: float = 0.1):
    """The time law of the importance pass (Alg. 2, step 1), an object with ``sample``.

    "linear": t = t0 + (T - t0) u, u ~ Beta(beta) (median 1.85 on [1e-3, 8]; the suite's
    first reading of App. D.1); "paper": u ~ Beta(beta) on the normalized DDPM step index,
    mapped to OU time through DiT's linear beta schedule (``theory.process.
    DDPMBetaTimeSampler``, median 0.55); "small_t": log-uniform on [t0, small_t_max], where
    the empirical and the true score separate (Thm 4.3's small-time window).
    """
    if law == "linear":
        return BetaTimeSampler(*beta, t0, T)
    if law == "paper":
        return DDPMBetaTimeSampler(*beta)
    if law == "small_t":
        return LogUniformTimeSampler(t0, small_t_max)
    raise ValueError(f"times must be one of {TIME_LAWS}, got {law!r}")


def mask_gradient_sums(
    groups: Groups,
    data: torch.Tensor,
    batches: int,
    batch_size: int = 256,
    t0: float = 1e-3,
    T: float = 8.0,
    beta: tuple[float, float] = (0.8, 2.0),
    seed: int = 0,
    times: str = "linear",
    heldout: torch.Tensor | None = None,
    true_score: ScoreFn | None = None,
) -> dict[str, Scores]:
    """Mask gradients g_h = dL/d xi_h at xi = 1 of up to three losses, summed over ``batches``
    batches that share their (t, eps) draws (one pass for every criterion):

    - "train_abs": sum |dL_train/d xi_h| (Alg. 2, step 1) and "train": sum dL_train/d xi_h,
      L_train the DSM loss (eq. 3.1, sigma_t^2-weighted) of batch_size training points;
    - "heldout": sum dL_heldout/d xi_h, the same loss on held-out points (``heldout`` (M, ...):
      fresh draws from the data law, or images outside the training subset);
    - "oracle": sum dE/d xi_h, E = mean sigma_t^2 ||s(X_t, t) - true_score(X_t, t)||^2 at the
      training batch's X_t = alpha_t x_i + sigma_t eps, i.e. X_t ~ P_hat_t (Prop. 4.1's
      measure); true_score(x, t) is evaluated without gradient, in float64.

    Removing group h (xi_h: 1 -> 0) changes a loss by about -g_h (first order). Times by
    ``importance_times(times, t0, T, beta)``. The model's parameters are left unchanged.
    Returns {kind: (groups,) per layer}, only the kinds whose inputs were given.
    """
    if batches < 1 or batch_size < 1:
        raise ValueError(f"batches and batch_size must be >= 1, got {batches}, {batch_size}")
    if heldout is not None and tuple(heldout.shape[1:]) != tuple(data.shape[1:]):
        raise ValueError(f"heldout must have rows of the training data's shape "
                         f"{tuple(data.shape[1:])}, got {tuple(heldout.shape)}")
    ref = next(groups.model.parameters())
    dev, dtype = ref.device, ref.dtype
    data = data.to(dev, dtype)
    heldout = None if heldout is None else heldout.to(dev, dtype)
    g = torch.Generator().manual_seed(seed)  # CPU draws: the same numbers on any device
    sampler = importance_times(times, t0, T, beta)
    sizes = groups.sizes()
    masks = {k: torch.ones(s, device=dev, dtype=dtype, requires_grad=True)
             for k, s in sizes.items()}
    kinds = ["train_abs", "train"] + ["heldout"] * (heldout is not None) \
        + ["oracle"] * (true_score is not None)
    total = {kind: {k: torch.zeros(s, device=dev, dtype=torch.float64) for k, s in sizes.items()}
             for kind in kinds}
    params = list(masks.values())

    def accumulate(kind: str, loss: torch.Tensor) -> None:
        for k, gr in zip(masks, torch.autograd.grad(loss, params), strict=True):
            total[kind][k] += gr.double()
            if kind == "train":
                total["train_abs"][k] += gr.double().abs()

    was_training = groups.model.training
    groups.model.eval()
    try:
        with groups.masked(masks):
            for _ in range(batches):
                idx = torch.randint(data.shape[0], (batch_size,), generator=g)
                t = sampler.sample(batch_size, g, torch.float64).to(dev, dtype)
                eps = torch.randn((batch_size, *data.shape[1:]), generator=g, dtype=dtype).to(dev)
                x0 = data[idx.to(dev)]
                accumulate("train", dsm_loss(groups.model, x0, t, eps))
                if heldout is not None:
                    jdx = torch.randint(heldout.shape[0], (batch_size,), generator=g)
                    accumulate("heldout", dsm_loss(groups.model, heldout[jdx.to(dev)], t, eps))
                if true_score is not None:
                    shape = (-1,) + (1,) * (x0.ndim - 1)
                    a, s = alpha(t).view(shape), sigma(t).view(shape)
                    x_t = a * x0 + s * eps
                    with torch.no_grad():
                        target = true_score(x_t.double(), t.double()).to(dtype)
                    gap = (s * (groups.model(x_t, t) - target)).square().flatten(1).sum(1)
                    accumulate("oracle", gap.mean())
    finally:
        groups.model.train(was_training)
    return total


def mask_gradients(
    groups: Groups,
    data: torch.Tensor,
    batches: int,
    batch_size: int = 256,
    t0: float = 1e-3,
    T: float = 8.0,
    beta: tuple[float, float] = (0.8, 2.0),
    seed: int = 0,
    times: str = "linear",
) -> Scores:
    """S(h) = sum over ``batches`` batches of |dL/d xi_h| at xi = 1 (Alg. 2, step 1).

    data (N, ...): the training set; L: the DSM loss (eq. 3.1) of a batch of batch_size
    training points with times by ``importance_times(times, t0, T, beta)`` and fresh noise.
    The model's parameters get no gradient and are left unchanged. Returns (groups,) per layer.
    """
    sums = mask_gradient_sums(groups, data, batches, batch_size, t0, T, beta, seed, times)
    return {k: v.to(next(groups.model.parameters()).dtype) for k, v in sums["train_abs"].items()}


def normalize_per_layer(scores: Scores, signed: bool = False) -> Scores:
    """I(h) = S(h) / ||S(layer)||_2 (Alg. 2, step 2); a layer of zeros stays zero.

    signed=False (Alg. 2's scores) requires S >= 0; signed criteria keep their sign.
    """
    out = {}
    for k, s in scores.items():
        if not torch.isfinite(s).all() or (not signed and (s < 0).any()):
            raise ValueError(f"scores[{k!r}] must be finite" + ("" if signed else " and >= 0"))
        norm = s.norm()
        out[k] = s / norm if norm > 0 else s.clone()
    return out


def criterion_scores(method: str, sums: dict[str, Scores]) -> Scores:
    """Per-layer normalized importance (higher = keep; ``select`` removes the lowest) of a
    data-driven criterion from ``mask_gradient_sums`` output g (summed over batches):

    - "mask_gradient" (Alg. 2): I = sum |g_train|;
    - "generalization_gap": I = g_train - g_heldout = c_heldout - c_train with c = -g the
      first-order cost of removing h; lowest = removal costs the training loss much more
      than the held-out loss: the memorizing groups;
    - "oracle": I = -g_oracle, the first-order increase of the distance to the true score
      when h goes; lowest = removal moves the network most towards the true score.
    """
    if method == "mask_gradient":
        return normalize_per_layer(sums["train_abs"])
    needs = {"generalization_gap": "heldout", "oracle": "oracle"}
    if method not in needs:
        raise ValueError(f"method must be one of {DATA_METHODS}, got {method!r}")
    if needs[method] not in sums:
        raise ValueError(f"method {method!r} needs the {needs[method]!r} mask gradients: pass "
                         + ("heldout" if method == "generalization_gap" else "true_score"))
    if method == "generalization_gap":
        raw = {k: sums["train"][k] - sums["heldout"][k] for k in sums["train"]}
    else:
        raw = {k: -v for k, v in sums["oracle"].items()}
    return normalize_per_layer(raw, signed=True)


def live_groups(*passes: dict[str, Scores]) -> dict[str, torch.Tensor]:
    """bool (groups,) per layer: False where every training-loss mask gradient of every pass
    (``mask_gradient_sums`` outputs) was exactly 0 (a dead ReLU unit, a silenced head):
    removing such a group changes nothing."""
    if not passes:
        raise ValueError("live_groups needs at least one mask_gradient_sums output")
    return {k: torch.stack([p["train_abs"][k] > 0 for p in passes]).any(0)
            for k in passes[0]["train_abs"]}


def importance(
    groups: Groups, method: str, data: torch.Tensor | None = None, batches: int = 32,
    batch_size: int = 256, t0: float = 1e-3, T: float = 8.0, beta: tuple[float, float] = (0.8, 2.0),
    seed: int = 0, times: str = "linear", heldout: torch.Tensor | None = None,
    true_score: ScoreFn | None = None,
) -> Scores:
    """Per-layer normalized importance of every group by ``method`` (higher = keep).

    "mask_gradient" (Alg. 2), "generalization_gap" (needs ``heldout``), "oracle" (needs
    ``true_score``): from ``mask_gradient_sums`` on the training set ``data``, see
    ``criterion_scores``; "magnitude": weight norms; "random": uniform scores from ``seed``.
    Returns (groups,) per layer, compared globally.
    """
    if method not in IMPORTANCE_METHODS:
        raise ValueError(f"method must be one of {IMPORTANCE_METHODS}, got {method!r}")
    if method in DATA_METHODS:
        if data is None:
            raise ValueError(f"method {method!r} needs the training set: pass data")
        if method == "generalization_gap" and heldout is None:
            raise ValueError("method 'generalization_gap' needs held-out data: pass heldout")
        if method == "oracle" and true_score is None:
            raise ValueError("method 'oracle' needs the true score: pass true_score")
        sums = mask_gradient_sums(groups, data, batches, batch_size, t0, T, beta, seed, times,
                                  heldout if method == "generalization_gap" else None,
                                  true_score if method == "oracle" else None)
        return criterion_scores(method, sums)
    if method == "magnitude":
        return normalize_per_layer(groups.magnitude())
    g = torch.Generator().manual_seed(seed)
    return normalize_per_layer({k: torch.rand(s, generator=g, dtype=torch.float64)
                                for k, s in groups.sizes().items()})


def groups_to_remove(sizes: Sequence[int], eta: float, min_keep: int = 0) -> int:
    """floor(eta * H), the number of groups ``select`` removes from layers of ``sizes``
    groups (H their sum); ValueError naming eta when that many cannot go while every layer
    keeps ``min_keep`` (so a config can be checked before any training)."""
    if not (isinstance(eta, int | float) and 0 <= eta < 1):
        raise ValueError(f"eta (pruning ratio) must be in [0, 1), got {eta!r}")
    if min_keep < 0:
        raise ValueError(f"min_keep must be >= 0, got {min_keep}")
    total = sum(sizes)
    remove = math.floor(eta * total)
    removable = sum(max(0, s - min_keep) for s in sizes)
    if remove > removable:
        raise ValueError(f"eta={eta} removes {remove} of {total} groups, but only {removable} "
                         f"can go while every layer keeps min_keep={min_keep}")
    return remove


def select(scores: Scores, eta: float, min_keep: int = 0,
           live: dict[str, torch.Tensor] | None = None,
           count: int | None = None) -> dict[str, torch.Tensor]:
    """keep masks (bool, (groups,) per layer) without the floor(eta * H) lowest groups overall.

    H = all groups of all layers; ranking is global (Alg. 2, step 3); ties go to the earlier
    layer and group. A group whose removal would leave its layer with fewer than
    ``min_keep`` groups is skipped and the next lowest is taken instead.

    live (bool per group, e.g. ``live_groups``): eta then counts over the live groups only:
    every dead group goes first (it changes nothing) and floor(eta * live groups) live ones
    after it, so that every criterion removes the same number of working groups.
    count: remove exactly this many live groups instead of floor(eta * live groups) (eta is
    then ignored; for iterative pruning, whose rounds remove fixed numbers).
    """
    layers = list(scores)
    sizes = [scores[k].numel() for k in layers]
    total = sum(sizes)
    flat = torch.cat([scores[k].detach().double().cpu() for k in layers])
    if live is None:
        if count is not None:
            raise ValueError("count needs live (the groups it counts over)")
        remove = groups_to_remove(sizes, eta, min_keep)
    else:
        if set(live) != set(layers) or any(live[k].shape != scores[k].shape for k in layers):
            raise ValueError("live must have one bool tensor per layer of scores, same shapes")
        alive = torch.cat([live[k].cpu() for k in layers]).bool()
        dead = int((~alive).sum())
        if count is not None and (isinstance(count, bool) or not isinstance(count, int)
                                  or not 0 <= count <= total - dead):
            raise ValueError(f"count must be an int in [0, {total - dead}] (the live groups), "
                             f"got {count!r}")
        remove = dead + (groups_to_remove([total - dead], eta) if count is None else count)
        removable = sum(max(0, s - min_keep) for s in sizes)
        if remove > removable:
            raise ValueError(f"eta={eta} removes {remove} of {total} groups ({dead} dead), but "
                             f"only {removable} can go while every layer keeps "
                             f"min_keep={min_keep}")
        flat = torch.where(alive, flat, torch.tensor(-math.inf, dtype=flat.dtype))
    owner = torch.cat([torch.full((s,), i) for i, s in enumerate(sizes)])
    order = torch.argsort(flat, stable=True)
    keep = torch.ones(total, dtype=torch.bool)
    left = list(sizes)
    removed = 0
    for j in order.tolist():
        if removed == remove:
            break
        if left[owner[j]] > min_keep:
            keep[j] = False
            left[owner[j]] -= 1
            removed += 1
    return dict(zip(layers, keep.split(sizes), strict=True))


def masks_from_keep(keep: dict[str, torch.Tensor], like: torch.Tensor) -> Scores:
    """0/1 masks in the dtype and device of ``like`` from keep masks (for ``Groups.masked``)."""
    return {k: v.to(device=like.device, dtype=like.dtype) for k, v in keep.items()}


def prune(groups: Groups, keep: dict[str, torch.Tensor]) -> nn.Module:
    """The physically smaller model without the groups where keep is False (Alg. 2, step 3).

    Its outputs equal the original's under ``groups.masked(masks_from_keep(keep, ...))``.
    """
    groups.check(keep, "keep")
    for k, v in keep.items():
        if v.dtype != torch.bool:
            raise TypeError(f"keep[{k!r}] must be a bool tensor, got {v.dtype}")
        if int(v.sum()) < groups.min_keep:
            raise ValueError(f"keep[{k!r}] keeps {int(v.sum())} groups, fewer than "
                             f"min_keep={groups.min_keep}")
    return groups.pruned(keep)
