"""A Diffusion Transformer (DiT, Peebles & Xie 2023), the image model of the pruning study (§6.2).

The paper trains a DiT on a 5,000-image CIFAR-10 subset, prunes its attention heads
(Algorithm 2, App. D.1) and fine-tunes it. This file is the model, in the style of
facebookresearch/DiT ``models.py`` and with its parameter names (so an official
checkpoint loads with ``load_state_dict``):

    x (B, C, H, W) --PatchEmbed--> tokens (B, N, D) + fixed 2-D sin-cos position embedding
    c = TimestepEmbedder(t) [+ LabelEmbedder(y)]                               (B, D)
    depth x DiTBlock(tokens, c): adaLN-Zero attention + MLP                    (B, N, D)
    FinalLayer(tokens, c) -> (B, N, p*p*C_out) --unpatchify--> (B, C_out, H, W)

N = (H / p)^2 tokens of p x p patches, D = hidden_size. adaLN-Zero: every block
regresses shift, scale and a gate per branch from c, and the gate's regression starts at
zero, so at initialization every block is the identity and the model outputs zeros.

Additions for experiments/common/pruning.py (the same interface as for MLP score nets):

- ``Attention(dim, num_heads, head_dim)``: the inner width num_heads * head_dim may differ
  from dim (a pruned layer keeps fewer heads of the original head_dim), num_heads may be
  0 (the layer then outputs ``proj.bias``), and ``head_mask`` (num_heads,) multiplies each
  head's output before the output projection; masking a head to 0 equals removing it.
- ``Mlp(dim, hidden_features)`` with ``channel_mask`` (hidden_features,) on the GELU output.
- ``ScoreDiT``: a DiT read as a score of the OU process of §3 (theory/process.py), as
  ``theory.networks.ScoreMLP`` is for MLPs.

Sizes: ``DIT_MODELS["DiT-S/2"](**kwargs)`` etc. (the official zoo, plus tiny CPU presets
"DiT-T/p" and "DiT-N/p"). Runs on CPU and CUDA, under bf16 autocast, torch 2.11 to 2.13;
attention is ``torch.nn.functional.scaled_dot_product_attention``.

The official interface, for code written against facebookresearch/DiT: ``DiT_models``
(the 12 official names XL/L/B/S x patch 2/4/8 -> constructor), ``DiT_XL_2(**kwargs)`` ...
``DiT_S_8(**kwargs)``, and ``DiT.forward_with_cfg(x, t, y, cfg_scale)`` (classifier-free
guidance with the official semantics: guidance on the first 3 output channels only, by
default). A class-conditional model's ``state_dict()`` has exactly the official key names
and shapes (pos_embed, x_embedder.proj, t_embedder.mlp, y_embedder.embedding_table,
blocks.N.attn.qkv/proj, blocks.N.mlp.fc1/fc2, blocks.N.adaLN_modulation.1, final_layer.*),
so an official checkpoint loads with ``load_state_dict(strict=True)``, and forward and
forward_with_cfg give the official outputs (tests/experiments/test_dit.py holds both
against fixtures generated from the official code). One difference: num_classes=0 here
builds no label embedder (the official code always builds one, with a single null row).
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from theory._checks import check_finite
from theory.networks import PARAMETRIZATIONS, as_score
from theory.process import Time, check_time, time_column

__all__ = [
    "modulate",
    "get_1d_sincos_pos_embed",
    "get_2d_sincos_pos_embed",
    "PatchEmbed",
    "TimestepEmbedder",
    "LabelEmbedder",
    "Attention",
    "Mlp",
    "DiTBlock",
    "FinalLayer",
    "DiT",
    "DIT_SIZES",
    "DIT_MODELS",
    "OFFICIAL_SIZES",
    "PATCH_SIZES",
    "DiT_models",
    "DiT_XL_2", "DiT_XL_4", "DiT_XL_8",
    "DiT_L_2", "DiT_L_4", "DiT_L_8",
    "DiT_B_2", "DiT_B_4", "DiT_B_8",
    "DiT_S_2", "DiT_S_4", "DiT_S_8",
    "ScoreDiT",
]


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation x * (1 + scale) + shift; x (B, N, D), shift and scale (B, D)."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def _linear(in_features: int, out_features: int, bias: bool = True) -> nn.Linear:
    """nn.Linear that may have a zero dimension (a fully pruned layer), without the
    "zero-element tensor" warning torch's default initialization emits for it."""
    if in_features > 0 and out_features > 0:
        return nn.Linear(in_features, out_features, bias=bias)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
        return nn.Linear(in_features, out_features, bias=bias)


def _apply_mask(h: torch.Tensor, mask: torch.Tensor | None, size: int, name: str, dim: int):
    """h times ``mask`` (size,) along dimension ``dim`` of h; h itself when mask is None."""
    if mask is None:
        return h
    if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != (size,):
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"{name} must be None or a tensor of shape ({size},), got {shape}")
    view = [1] * h.ndim
    view[dim] = size
    return h * mask.to(device=h.device, dtype=h.dtype).view(view)


def _positive_int(value: int, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


# --------------------------------------------------------------------------------------
# Fixed 2-D sin-cos position embedding (numpy, as in the official code)
# --------------------------------------------------------------------------------------


def get_1d_sincos_pos_embed(embed_dim: int, pos: np.ndarray) -> np.ndarray:
    """Sin-cos features of positions ``pos`` (any shape, M entries) -> (M, embed_dim).

    Column k < embed_dim/2 is sin(pos * omega_k), column embed_dim/2 + k is cos(pos *
    omega_k), with omega_k = 10000^(-2k / embed_dim) (Vaswani et al. 2017).
    """
    if embed_dim < 2 or embed_dim % 2:
        raise ValueError(f"embed_dim must be an even integer >= 2, got {embed_dim}")
    omega = 1.0 / 10000 ** (np.arange(embed_dim // 2, dtype=np.float64) / (embed_dim / 2))
    angles = np.outer(np.asarray(pos, dtype=np.float64).reshape(-1), omega)  # (M, D/2)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)  # (M, D)


def get_2d_sincos_pos_embed(embed_dim: int, grid_size: int) -> np.ndarray:
    """Position embedding of a grid_size x grid_size token grid -> (grid_size^2, embed_dim).

    Token k = row * grid_size + col (the order of ``PatchEmbed``'s flattening). The
    first embed_dim/2 columns encode col, the last embed_dim/2 encode row, each by
    ``get_1d_sincos_pos_embed``: numerically the official DiT/MAE embedding.
    """
    if embed_dim < 4 or embed_dim % 4:
        raise ValueError(f"embed_dim must be a multiple of 4, got {embed_dim}")
    grid_size = _positive_int(grid_size, "grid_size")
    rows, cols = np.meshgrid(np.arange(grid_size), np.arange(grid_size), indexing="ij")
    emb_col = get_1d_sincos_pos_embed(embed_dim // 2, cols)  # (G^2, D/2)
    emb_row = get_1d_sincos_pos_embed(embed_dim // 2, rows)  # (G^2, D/2)
    return np.concatenate([emb_col, emb_row], axis=1)  # (G^2, D)


# --------------------------------------------------------------------------------------
# Embedding layers: patches, timesteps, class labels
# --------------------------------------------------------------------------------------


class PatchEmbed(nn.Module):
    """Non-overlapping p x p patches of an image to tokens by a strided Conv2d.

    (B, C, S, S) -> (B, N, D) with N = (S / p)^2, tokens in row-major patch order.
    """

    def __init__(self, input_size: int, patch_size: int, in_channels: int, embed_dim: int):
        super().__init__()
        self.input_size, self.patch_size = input_size, patch_size
        self.grid_size = input_size // patch_size
        self.num_patches = self.grid_size**2
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)  # (B, D, S/p, S/p)
        return x.flatten(2).transpose(1, 2)  # (B, N, D)


class TimestepEmbedder(nn.Module):
    """Scalar times to vectors: sinusoidal frequency features, then Linear-SiLU-Linear.

    forward(t (B,)) -> (B, hidden_size). t is any real feature of the noise level (the
    official model feeds integer DDPM steps 0..999; ``ScoreDiT`` feeds 100 log t).
    """

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256) -> None:
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size),
        )

    @staticmethod
    def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0):
        """Features [cos(t f_k), sin(t f_k)], f_k = max_period^(-k / (dim/2)): (B,) -> (B, dim).

        Computed in float64 when t is float64, else in float32 (never in half precision:
        the arguments reach hundreds of radians); an odd dim gets a zero last column.
        """
        dtype = torch.float64 if t.dtype == torch.float64 else torch.float32
        half = dim // 2
        k = torch.arange(half, dtype=dtype, device=t.device)
        freqs = torch.exp(-math.log(max_period) * k / half)  # (dim/2,)
        args = t.to(dtype)[:, None] * freqs[None]  # (B, dim/2)
        embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, 2 (dim/2))
        if dim % 2:
            embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
        return embedding  # (B, dim)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        t_freq = self.timestep_embedding(t, self.frequency_embedding_size)  # (B, F)
        t_freq = t_freq.to(self.mlp[0].weight.dtype)  # (B, F), the parameters' dtype
        return self.mlp(t_freq)  # (B, D)


class LabelEmbedder(nn.Module):
    """Class labels to vectors, with label dropout for classifier-free guidance.

    With dropout_prob > 0 the table has one extra row, the "null class" with index
    num_classes; in training each label is replaced by it with probability
    dropout_prob (or where force_drop_ids == 1). forward(labels (B,), train) -> (B, D).
    """

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float) -> None:
        super().__init__()
        self.use_cfg_embedding = dropout_prob > 0
        self.embedding_table = nn.Embedding(num_classes + int(self.use_cfg_embedding), hidden_size)
        self.num_classes, self.dropout_prob = num_classes, dropout_prob

    def token_drop(
        self, labels: torch.Tensor, force_drop_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Labels (B,) with the dropped ones set to the null class num_classes."""
        if force_drop_ids is None:
            drop = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
        else:
            drop = force_drop_ids == 1
        return torch.where(drop, self.num_classes, labels)

    def forward(
        self, labels: torch.Tensor, train: bool, force_drop_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        if (train and self.use_cfg_embedding) or force_drop_ids is not None:
            labels = self.token_drop(labels, force_drop_ids)  # (B,)
        return self.embedding_table(labels)  # (B, D)


# --------------------------------------------------------------------------------------
# Transformer layers
# --------------------------------------------------------------------------------------


class Attention(nn.Module):
    """Multi-head self-attention with prunable heads (§6.2: the paper prunes heads).

    dim: token width D; num_heads: H >= 0; head_dim: d_h, default D // H (then H must
    divide D). The inner width H d_h may differ from D (a pruned layer keeps fewer
    heads of the original d_h). Layout:

        qkv  = nn.Linear(D, 3 H d_h), output read as (B, N, 3, H, d_h): [q heads, k heads, v heads]
        proj = nn.Linear(H d_h, D),   input = the heads' outputs concatenated, head-major

    ``head_mask``: None or a tensor (H,) (a plain attribute set from outside, not a
    parameter; it may require grad) multiplying head h's attention output (B, h, N, d_h)
    before the projection. With H = 0 there is no attention and the output is
    ``proj.bias`` at every token, exactly what masking all heads to 0 gives.
    forward(x (B, N, D)) -> (B, N, D).
    """

    def __init__(
        self, dim: int, num_heads: int, head_dim: int | None = None, qkv_bias: bool = True
    ) -> None:
        super().__init__()
        dim = _positive_int(dim, "dim")
        num_heads = _positive_int(num_heads, "num_heads", minimum=0)
        if head_dim is None:
            if num_heads == 0 or dim % num_heads:
                raise ValueError(
                    f"num_heads must divide dim={dim} when head_dim is not given, "
                    f"got num_heads={num_heads}"
                )
            head_dim = dim // num_heads
        head_dim = _positive_int(head_dim, "head_dim")
        self.dim, self.num_heads, self.head_dim = dim, num_heads, head_dim
        inner = num_heads * head_dim
        self.qkv = _linear(dim, 3 * inner, bias=qkv_bias)
        self.proj = _linear(inner, dim)
        self.head_mask: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        H, d_h = self.num_heads, self.head_dim
        if H == 0:
            _apply_mask(x, self.head_mask, 0, "head_mask", -1)  # only checks its shape
            return self.proj(x.new_zeros(B, N, 0))  # (B, N, D): proj.bias at every token
        qkv = self.qkv(x).reshape(B, N, 3, H, d_h).permute(2, 0, 3, 1, 4)  # (3, B, H, N, d_h)
        q, k, v = qkv.unbind(0)  # each (B, H, N, d_h)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, H, N, d_h)
        out = _apply_mask(out, self.head_mask, H, "head_mask", 1)  # (B, H, N, d_h)
        out = out.transpose(1, 2).reshape(B, N, H * d_h)  # (B, N, H d_h), heads concatenated
        return self.proj(out)  # (B, N, D)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, head_dim={self.head_dim}"


class Mlp(nn.Module):
    """Token-wise MLP fc1 -> GELU (tanh approximation) -> fc2 with prunable channels.

    dim: D; hidden_features: M >= 0 (M = 0: the output is fc2.bias). ``channel_mask``:
    None or a tensor (M,) (a plain attribute) multiplying the GELU output.
    forward(x (B, N, D)) -> (B, N, D).
    """

    def __init__(self, dim: int, hidden_features: int) -> None:
        super().__init__()
        dim = _positive_int(dim, "dim")
        hidden_features = _positive_int(hidden_features, "hidden_features", minimum=0)
        self.dim, self.hidden_features = dim, hidden_features
        self.fc1 = _linear(dim, hidden_features)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = _linear(hidden_features, dim)
        self.channel_mask: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.fc1(x))  # (B, N, M)
        h = _apply_mask(h, self.channel_mask, self.hidden_features, "channel_mask", -1)  # (B, N, M)
        return self.fc2(h)  # (B, N, D)


class DiTBlock(nn.Module):
    """A DiT block with adaLN-Zero conditioning (Peebles & Xie 2023, §3.2).

    From c (B, D) it regresses (shift, scale, gate) for the attention and the MLP branch;
    each branch adds gate * branch(modulate(LayerNorm(x), shift, scale)) to x. head_dim
    and mlp_hidden (default D // num_heads and int(D * mlp_ratio)) let a pruned block
    keep fewer heads or channels. forward(x (B, N, D), c (B, D)) -> (B, N, D).
    """

    def __init__(
        self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0,
        head_dim: int | None = None, mlp_hidden: int | None = None,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads, head_dim=head_dim, qkv_bias=True)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        mlp_hidden = int(hidden_size * mlp_ratio) if mlp_hidden is None else mlp_hidden
        self.mlp = Mlp(hidden_size, mlp_hidden)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        mod = self.adaLN_modulation(c).chunk(6, dim=1)  # 6 x (B, D)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod
        h = self.attn(modulate(self.norm1(x), shift_msa, scale_msa))  # (B, N, D)
        x = x + gate_msa.unsqueeze(1) * h  # (B, N, D)
        h = self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))  # (B, N, D)
        return x + gate_mlp.unsqueeze(1) * h  # (B, N, D)


class FinalLayer(nn.Module):
    """adaLN-modulated LayerNorm and a linear map of each token to its patch's pixels.

    forward(x (B, N, D), c (B, D)) -> (B, N, p * p * out_channels).
    """

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)  # 2 x (B, D)
        x = modulate(self.norm_final(x), shift, scale)  # (B, N, D)
        return self.linear(x)  # (B, N, p * p * C_out)


# --------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------


class DiT(nn.Module):
    """Diffusion Transformer on square images (Peebles & Xie 2023; paper §6.2).

    input_size S (divisible by patch_size p), in_channels C, hidden_size D (a multiple
    of 4 and of num_heads), depth blocks of num_heads heads. num_classes = 0: an
    unconditional model (no label embedder, y must be None); otherwise labels 0..K-1 and,
    when class_dropout_prob > 0, the null class K. learn_sigma doubles the output
    channels (the official model also predicts the variance).

    forward(x (B, C, S, S), t (B,) real noise-level feature, y (B,) long or None)
        -> (B, out_channels, S, S), out_channels = 2 C if learn_sigma else C.

    ``pos_embed`` is a frozen nn.Parameter (requires_grad=False) as in the official
    code, so parameter counts match the official ones (DiT-XL/2: 675,129,632).
    Construct under ``with torch.device("meta"):`` to count parameters without memory.
    """

    def __init__(
        self, input_size: int = 32, patch_size: int = 2, in_channels: int = 4,
        hidden_size: int = 1152, depth: int = 28, num_heads: int = 16, mlp_ratio: float = 4.0,
        class_dropout_prob: float = 0.1, num_classes: int = 1000, learn_sigma: bool = True,
    ) -> None:
        super().__init__()
        input_size = _positive_int(input_size, "input_size")
        patch_size = _positive_int(patch_size, "patch_size")
        in_channels = _positive_int(in_channels, "in_channels")
        hidden_size = _positive_int(hidden_size, "hidden_size")
        depth = _positive_int(depth, "depth")
        num_heads = _positive_int(num_heads, "num_heads")
        num_classes = _positive_int(num_classes, "num_classes", minimum=0)
        if input_size % patch_size:
            raise ValueError(
                f"input_size={input_size} must be divisible by patch_size={patch_size}"
            )
        if hidden_size % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide hidden_size={hidden_size}")
        if hidden_size % 4:
            raise ValueError(
                f"hidden_size must be a multiple of 4 (2-D sin-cos position embedding), "
                f"got {hidden_size}"
            )
        if not 0 <= class_dropout_prob < 1:
            raise ValueError(f"class_dropout_prob must be in [0, 1), got {class_dropout_prob}")
        if not mlp_ratio > 0:
            raise ValueError(f"mlp_ratio must be > 0, got {mlp_ratio}")
        self.input_size, self.patch_size = input_size, patch_size
        self.in_channels, self.learn_sigma = in_channels, bool(learn_sigma)
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.hidden_size, self.depth, self.num_heads = hidden_size, depth, num_heads
        self.num_classes = num_classes

        self.x_embedder = PatchEmbed(input_size, patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = (
            LabelEmbedder(num_classes, hidden_size, class_dropout_prob) if num_classes else None
        )
        num_patches = self.x_embedder.num_patches
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches, hidden_size), requires_grad=False)
        self.blocks = nn.ModuleList(
            DiTBlock(hidden_size, num_heads, mlp_ratio=mlp_ratio) for _ in range(depth)
        )
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """The official adaLN-Zero initialization (works on the meta device too).

        Linear layers xavier-uniform with zero bias; the patch embedding like a linear map
        of the flattened patch; fixed sin-cos position embedding; embedders N(0, 0.02^2);
        every adaLN modulation and the final linear layer zero, so that each block
        starts as the identity and the model outputs zeros.
        """

        def basic_init(module: nn.Module) -> None:
            if isinstance(module, nn.Linear):
                if module.weight.numel():
                    nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

        self.apply(basic_init)
        pos = get_2d_sincos_pos_embed(self.hidden_size, self.x_embedder.grid_size)  # (N, D)
        with torch.no_grad():  # copy_ from a CPU tensor is a no-op on the meta device
            self.pos_embed.copy_(torch.from_numpy(pos).unsqueeze(0))
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise TypeError/ValueError unless x is a finite tensor of shape (B, C, S, S)."""
        S, C = self.input_size, self.in_channels
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        want = f"(batch, {C}, {S}, {S})"
        if x.ndim != 4:
            raise ValueError(f"x must have shape {want}, got {tuple(x.shape)}")
        if x.shape[1] != C:
            raise ValueError(f"x must have in_channels={C} channels: shape {want}, "
                             f"got {tuple(x.shape)}")
        if x.shape[2] != x.shape[3]:
            raise ValueError(f"x must be square (H == W): shape {want}, got {tuple(x.shape)}")
        if x.shape[2] != S:
            raise ValueError(
                f"x must be {S}x{S} (input_size; the position embedding is fixed, and "
                f"input_size must be divisible by patch_size={self.patch_size}): "
                f"shape {want}, got {tuple(x.shape)}"
            )
        check_finite(x, "x")

    def _check_labels(self, y: torch.Tensor | None, batch: int) -> None:
        if self.y_embedder is None:
            if y is not None:
                raise ValueError("y must be None for an unconditional DiT (num_classes=0)")
            return
        if not isinstance(y, torch.Tensor):
            raise ValueError(
                f"y must be a tensor of class labels, shape (batch,) = ({batch},), for a "
                f"class-conditional DiT (num_classes={self.num_classes}), got {y!r}"
            )
        if y.shape != (batch,) or y.dtype.is_floating_point or y.dtype == torch.bool:
            raise ValueError(
                f"y must be an integer tensor of shape ({batch},), "
                f"got dtype {y.dtype} and shape {tuple(y.shape)}"
            )
        top = self.num_classes + int(self.y_embedder.use_cfg_embedding)
        if batch and (y.min() < 0 or y.max() >= top):
            raise ValueError(f"y must hold labels in [0, {top}), got min {int(y.min())} "
                             f"and max {int(y.max())}")

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens (B, N, p * p * C_out) back to images (B, C_out, S, S)."""
        c, p, g = self.out_channels, self.patch_size, self.x_embedder.grid_size
        x = x.reshape(x.shape[0], g, g, p, p, c)  # (B, row, col, p, p, C_out)
        x = torch.einsum("nhwpqc->nchpwq", x)  # (B, C_out, row, p, col, p)
        return x.reshape(x.shape[0], c, g * p, g * p)  # (B, C_out, S, S)

    def forward(
        self, x: torch.Tensor, t: torch.Tensor | float, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x (B, C, S, S), t (B,) (or a scalar, for every image), y (B,) or None
        -> (B, out_channels, S, S)."""
        self.check_input(x)
        B = x.shape[0]
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(B)
        if t.shape != (B,):
            raise ValueError(f"t must be a scalar or of shape (batch,) = ({B},), "
                             f"got shape {tuple(t.shape)}")
        check_finite(t, "t")
        self._check_labels(y, B)
        x = self.x_embedder(x) + self.pos_embed  # (B, N, D)
        c = self.t_embedder(t)  # (B, D)
        if self.y_embedder is not None:
            c = c + self.y_embedder(y, self.training)  # (B, D)
        for block in self.blocks:
            x = block(x, c)  # (B, N, D)
        x = self.final_layer(x, c)  # (B, N, p * p * C_out)
        return self.unpatchify(x)  # (B, C_out, S, S)

    def forward_with_cfg(
        self, x: torch.Tensor, t: torch.Tensor | float, y: torch.Tensor, cfg_scale: float,
        *, guided_channels: int = 3,
    ) -> torch.Tensor:
        """Classifier-free guidance (Ho & Salimans 2022) in one batched pass, with the
        semantics of the official DiT ``forward_with_cfg`` (the sampler's model function).

        The batch is 2B rows: y[:B] the class labels, y[B:] normally the null class
        ``num_classes`` (the official sample.py doubles the noise, z = cat([z, z]), and
        the labels, y = cat([y, null])). Only the first half x[:B] is read: it is run
        twice, as cat([x[:B], x[:B]]) with times t and labels y, giving cond = rows :B and
        uncond = rows B:. Output channels c < guided_channels become

            uncond + cfg_scale * (cond - uncond)        (the same in both halves)

        and channels c >= guided_channels are the raw outputs (rows :B conditional, rows B:
        unconditional), e.g. with learn_sigma the variance channels C..2C-1 (the official
        sampler keeps only the first half of its samples, so the conditional variance).
        guided_channels = 3 is the official default, kept there for exact reproducibility
        of the DiT paper's samples: on its 4-channel latents the 4th eps channel is *not*
        guided. guided_channels = in_channels is the standard guidance of every eps
        channel. cfg_scale = 1 gives the conditional model, 0 the unconditional one.

        x (2B, C, S, S), t (2B,) or a scalar, y (2B,) labels -> (2B, C_out, S, S).
        """
        self.check_input(x)
        if self.y_embedder is None:
            raise ValueError("forward_with_cfg needs a class-conditional DiT (num_classes > 0)")
        if x.shape[0] % 2:
            raise ValueError(f"x must have an even batch 2B (B images, each run with its label "
                             f"and with the null label), got batch {x.shape[0]}")
        if isinstance(cfg_scale, bool) or not isinstance(cfg_scale, numbers.Real) or not (
            math.isfinite(cfg_scale)
        ):
            raise ValueError(f"cfg_scale must be a finite number, got {cfg_scale!r}")
        k = _positive_int(guided_channels, "guided_channels", minimum=0)
        half = x[: x.shape[0] // 2]  # (B, C, S, S); x[B:] is never read
        out = self(torch.cat([half, half], dim=0), t, y)  # (2B, C_out, S, S)
        cond, uncond = out[:, :k].split(half.shape[0], dim=0)  # 2 x (B, k', S, S)
        guided = uncond + cfg_scale * (cond - uncond)  # (B, k', S, S)
        return torch.cat([torch.cat([guided, guided], dim=0), out[:, k:]], dim=1)


# --------------------------------------------------------------------------------------
# Size zoo
# --------------------------------------------------------------------------------------

# name -> (depth, hidden_size, num_heads). XL, L, B, S are the official sizes; T (tiny)
# and N (nano) are CPU sizes of this suite, for tests and the quick profile.
DIT_SIZES: dict[str, tuple[int, int, int]] = {
    "XL": (28, 1152, 16),
    "L": (24, 1024, 16),
    "B": (12, 768, 12),
    "S": (12, 384, 6),
    "T": (4, 128, 4),
    "N": (2, 64, 4),
}


OFFICIAL_SIZES: tuple[str, ...] = ("XL", "L", "B", "S")  # facebookresearch/DiT models.py
PATCH_SIZES: tuple[int, ...] = (2, 4, 8)


def _preset(size: str, patch_size: int) -> Callable[..., DiT]:
    depth, hidden_size, num_heads = DIT_SIZES[size]

    def build(**kwargs: Any) -> DiT:
        return DiT(depth=depth, hidden_size=hidden_size, num_heads=num_heads,
                   patch_size=patch_size, **kwargs)

    build.__name__ = build.__qualname__ = f"DiT_{size}_{patch_size}"
    build.__doc__ = (
        f"DiT-{size}/{patch_size}: depth {depth}, hidden size {hidden_size}, {num_heads} "
        f"heads, patch {patch_size}; kwargs (input_size, in_channels, num_classes, "
        f"learn_sigma, ...) go to DiT. The model maps x (B, C, S, S), t (B,), y (B,) "
        f"to (B, C_out, S, S)."
    )
    return build


# Every size of DIT_SIZES at patch 2, 4 and 8: "DiT-S/2" -> DiT_S_2.
DIT_MODELS: dict[str, Callable[..., DiT]] = {
    f"DiT-{size}/{p}": _preset(size, p) for size in DIT_SIZES for p in PATCH_SIZES
}

# The official names (facebookresearch/DiT models.py), for code written against it:
# ``DiT_models["DiT-XL/2"](input_size=32, num_classes=1000)`` or ``DiT_XL_2(...)``. The
# same constructor objects as in DIT_MODELS, restricted to the official sizes (no T, N).
DiT_models: dict[str, Callable[..., DiT]] = {
    f"DiT-{size}/{p}": DIT_MODELS[f"DiT-{size}/{p}"] for size in OFFICIAL_SIZES for p in PATCH_SIZES
}
DiT_XL_2, DiT_XL_4, DiT_XL_8 = (DiT_models[f"DiT-XL/{p}"] for p in PATCH_SIZES)
DiT_L_2, DiT_L_4, DiT_L_8 = (DiT_models[f"DiT-L/{p}"] for p in PATCH_SIZES)
DiT_B_2, DiT_B_4, DiT_B_8 = (DiT_models[f"DiT-B/{p}"] for p in PATCH_SIZES)
DiT_S_2, DiT_S_4, DiT_S_8 = (DiT_models[f"DiT-S/{p}"] for p in PATCH_SIZES)


# --------------------------------------------------------------------------------------
# The DiT as a score model of the OU process
# --------------------------------------------------------------------------------------


class ScoreDiT(nn.Module):
    """A DiT read as the score of X_t, the paper's OU process (§3), for images.

    dit: a DiT with learn_sigma=False (its in_channels = the images' channels).
    The network output net(x, t) is read as a score by ``parametrization`` exactly as
    ``theory.networks.ScoreMLP`` does (theory.networks.as_score):

        "score": net;  "denoiser": -(x - alpha_t net) / sigma_t^2;  "eps": -net / sigma_t

    Time feature: the DiT's timestep embedder gets c(t) = 100 log t. Its frequencies
    span 1 down to 1e-4 per unit, made for DDPM step indices 0..999; 100 log t puts the
    decades 1e-4 .. 10 of OU time (where a DSM loss samples t, most of it small) on
    about the same range (-921 .. 230), so that the small times where memorization lives
    get as much resolution as the large ones (a ratio of 1% in t is one unit), whereas
    t itself would squeeze all t < 0.01 into a fraction of one unit.

    forward(x (B, C, S, S), t float or (B,) with t > 0, y (B,) or None) -> score (B, C, S, S).
    """

    TIME_SCALE = 100.0

    def __init__(self, dit: DiT, parametrization: str = "eps") -> None:
        super().__init__()
        if not isinstance(dit, DiT):
            raise TypeError(f"dit must be a DiT, got {type(dit).__name__}")
        if dit.learn_sigma:
            raise ValueError("dit must be built with learn_sigma=False (a score has C channels)")
        if parametrization not in PARAMETRIZATIONS:
            raise ValueError(
                f"parametrization must be one of {PARAMETRIZATIONS}, got {parametrization!r}"
            )
        self.dit, self.parametrization = dit, parametrization

    def extra_repr(self) -> str:
        # In repr(net), hence in the training-checkpoint key: DiTs that differ only in how
        # their output is read must not share a checkpoint (see theory/networks.py).
        return f"parametrization={self.parametrization!r}"

    @classmethod
    def from_preset(
        cls, name: str, *, input_size: int, in_channels: int, num_classes: int = 0,
        parametrization: str = "eps", **kwargs,
    ) -> ScoreDiT:
        """ScoreDiT around DIT_MODELS[name](input_size=..., in_channels=..., num_classes=...,
        learn_sigma=False, **kwargs)."""
        if name not in DIT_MODELS:
            raise ValueError(f"name must be one of {sorted(DIT_MODELS)}, got {name!r}")
        dit = DIT_MODELS[name](input_size=input_size, in_channels=in_channels,
                               num_classes=num_classes, learn_sigma=False, **kwargs)
        return cls(dit, parametrization)

    @classmethod
    def time_feature(cls, t: torch.Tensor) -> torch.Tensor:
        """c(t) = 100 log t, the DiT's time input (class docstring). (B,) -> (B,)."""
        return cls.TIME_SCALE * torch.log(t)

    def _times(self, x: torch.Tensor, t: Time) -> torch.Tensor:
        """t as a (B,) tensor in x's dtype, after checking x's shape and t > 0."""
        self.dit.check_input(x)
        check_time(t)
        return time_column(t, x).expand(x.shape[0], 1)[:, 0]  # (B,)

    def raw(self, x: torch.Tensor, t: Time, y: torch.Tensor | None = None) -> torch.Tensor:
        """The DiT's output before the parametrization, (B, C, S, S)."""
        return self.dit(x, self.time_feature(self._times(x, t)), y)

    def forward(self, x: torch.Tensor, t: Time, y: torch.Tensor | None = None) -> torch.Tensor:
        tt = self._times(x, t)  # (B,)
        out = self.dit(x, self.time_feature(tt), y)  # (B, C, S, S)
        return as_score(out, x, tt[:, None, None, None], self.parametrization)  # (B, C, S, S)
