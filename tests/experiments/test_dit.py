"""The DiT of the pruning study (§6.2): shapes, adaLN-Zero, prunable heads and channels,
official parameter counts, the official interface (DiT_models, DiT_XL_2 ..., forward_with_cfg,
state-dict format, against fixtures generated from the official code), and the score
parametrizations of ScoreDiT."""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from experiments.common import dit as D

SMALL = settings(max_examples=8, deadline=None)


def tiny_dit(**kwargs) -> D.DiT:
    """A one-block DiT of width 16 on 4x4 images (kwargs override)."""
    cfg = dict(input_size=4, patch_size=2, in_channels=2, hidden_size=16, depth=1,
               num_heads=2, num_classes=0, learn_sigma=False)
    cfg.update(kwargs)
    return D.DiT(**cfg)


def randomize(model: torch.nn.Module, seed: int, std: float = 0.3) -> torch.nn.Module:
    """Overwrite every trainable parameter with N(0, std^2) draws (the adaLN-Zero init
    makes most outputs zero, which would make the identities below trivial)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(std * torch.randn(p.shape, generator=g, dtype=torch.float64))
    return model


def randn(shape, seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# --------------------------------------------------------------------------------------
# Shapes and the adaLN-Zero initialization
# --------------------------------------------------------------------------------------


@SMALL
@given(patch=st.sampled_from([1, 2, 4]), grid=st.integers(1, 3), channels=st.integers(1, 3),
       learn_sigma=st.booleans(), num_classes=st.sampled_from([0, 3]), batch=st.integers(1, 3))
def test_output_shape(patch, grid, channels, learn_sigma, num_classes, batch):
    size = patch * grid
    model = tiny_dit(input_size=size, patch_size=patch, in_channels=channels,
                     learn_sigma=learn_sigma, num_classes=num_classes)
    randomize(model, seed=grid)
    x = torch.randn(batch, channels, size, size)
    y = torch.randint(num_classes, (batch,)) if num_classes else None
    out = model(x, torch.rand(batch) * 1000, y)
    assert out.shape == (batch, (2 if learn_sigma else 1) * channels, size, size)
    assert out.dtype == x.dtype and torch.isfinite(out).all()
    assert model.x_embedder.num_patches == grid**2


def test_unpatchify_inverts_patch_order():
    # A token's p*p*C values land in its own patch: unpatchify(patchify(x)) == x.
    model = tiny_dit(input_size=6, patch_size=3, in_channels=2, learn_sigma=False)
    x = randn((2, 2, 6, 6), 0)
    tokens = x.reshape(2, 2, 2, 3, 2, 3).permute(0, 2, 4, 3, 5, 1).reshape(2, 4, 18)
    assert torch.equal(model.unpatchify(tokens), x)


@SMALL
@given(seed=st.integers(0, 2**16), num_classes=st.sampled_from([0, 5]), depth=st.integers(1, 3))
def test_blocks_are_identity_and_output_zero_at_init(seed, num_classes, depth):
    torch.manual_seed(seed)
    model = tiny_dit(depth=depth, num_classes=num_classes, learn_sigma=True).double()
    x = randn((3, 16, 16), seed)
    c = randn((3, 16), seed + 1)
    for block in model.blocks:
        assert torch.equal(block(x, c), x)
    images = randn((3, 2, 4, 4), seed + 2)
    y = torch.tensor([0, 1, 4]) if num_classes else None
    assert torch.equal(model(images, randn((3,), seed + 3), y), torch.zeros(3, 4, 4, 4))
    # the embedders are not zero: the identity comes from the zero gates alone
    assert model.t_embedder.mlp[0].weight.abs().sum() > 0
    assert model.blocks[0].attn.qkv.weight.abs().sum() > 0


def test_position_embedding_is_fixed_and_separable():
    model = tiny_dit(input_size=8, patch_size=2, hidden_size=16)
    pos = model.pos_embed[0].detach().double()  # (16 tokens, 16)
    assert not model.pos_embed.requires_grad
    expected = torch.from_numpy(D.get_2d_sincos_pos_embed(16, 4))
    torch.testing.assert_close(pos, expected, rtol=0, atol=1e-7)
    grid = expected.reshape(4, 4, 16)  # (row, col, D)
    # first half depends only on the column, second half only on the row
    assert torch.equal(grid[:, :, :8], grid[:1, :, :8].expand(4, 4, 8))
    assert torch.equal(grid[:, :, 8:], grid[:, :1, 8:].expand(4, 4, 8))
    # position 0 is (sin 0, cos 0) = (0, 1) and every token is distinct
    np.testing.assert_array_equal(expected[0].numpy(), np.repeat([0.0, 1.0, 0.0, 1.0], 4))
    assert torch.cdist(expected, expected).add(torch.eye(16)).min() > 0.1


@pytest.mark.parametrize("embed_dim", [2, 4, 16, 64])
def test_1d_sincos_embedding_is_the_transformer_formula(embed_dim):
    """Element by element (math.sin/cos): column k < D/2 is sin(p / 10000^(2k/D)), column
    D/2 + k is cos(p / 10000^(2k/D)) (Vaswani et al. 2017; official DiT/MAE
    get_1d_sincos_pos_embed). The slowest column of D = 64 has period 2 pi 10000^(31/32)."""
    pos = np.array([0.0, 1.0, 2.0, 5.0, 17.0, 250.0])
    emb = D.get_1d_sincos_pos_embed(embed_dim, pos)
    half = embed_dim // 2
    assert emb.shape == (len(pos), embed_dim)
    for i, p in enumerate(pos):
        for k in range(half):
            angle = p / 10000 ** (2 * k / embed_dim)
            assert emb[i, k] == pytest.approx(math.sin(angle), abs=1e-12)
            assert emb[i, half + k] == pytest.approx(math.cos(angle), abs=1e-12)


def test_2d_sincos_embedding_elementwise():
    """Token row * G + col: the first D/2 columns are the 1-D formula of width D/2 at col, the
    last D/2 the same at row (official get_2d_sincos_pos_embed), checked element by element
    for a 3 x 3 grid and D = 8."""
    G, Dm = 3, 8
    emb = D.get_2d_sincos_pos_embed(Dm, G)
    q = Dm // 4  # frequencies per coordinate
    for row in range(G):
        for col in range(G):
            tok = emb[row * G + col]
            for half, p in ((0, col), (Dm // 2, row)):
                for k in range(q):
                    angle = p / 10000 ** (2 * k / (Dm // 2))
                    assert tok[half + k] == pytest.approx(math.sin(angle), abs=1e-12)
                    assert tok[half + q + k] == pytest.approx(math.cos(angle), abs=1e-12)


def _reference_block(block: D.DiTBlock, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """adaLN-Zero DiT block written from the official description (facebookresearch/DiT
    models.py), with explicit softmax attention and layer norm:
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = adaLN(c).chunk(6)
    x = x + gate_msa * attn(modulate(norm1(x), shift_msa, scale_msa))
    x = x + gate_mlp * mlp(modulate(norm2(x), shift_mlp, scale_mlp))."""
    lin = block.adaLN_modulation[1]
    mod = (c * torch.sigmoid(c)) @ lin.weight.T + lin.bias  # SiLU, then Linear: (B, 6D)
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.chunk(6, dim=1)

    def norm(z):
        mu = z.mean(-1, keepdim=True)
        var = (z - mu).square().mean(-1, keepdim=True)
        return (z - mu) / torch.sqrt(var + 1e-6)

    def modulate(z, shift, scale):
        return z * (1 + scale[:, None]) + shift[:, None]

    def attn(z):
        a = block.attn
        B, N, _ = z.shape
        H, dh = a.num_heads, a.head_dim
        qkv = z @ a.qkv.weight.T + a.qkv.bias  # (B, N, 3 H dh): q heads, k heads, v heads
        q, k, v = (qkv[..., i * H * dh : (i + 1) * H * dh].reshape(B, N, H, dh).transpose(1, 2)
                   for i in range(3))
        w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dh), dim=-1)  # (B, H, N, N)
        out = (w @ v).transpose(1, 2).reshape(B, N, H * dh)
        return out @ a.proj.weight.T + a.proj.bias

    def mlp(z):
        m = block.mlp
        h = z @ m.fc1.weight.T + m.fc1.bias
        h = 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h**3)))
        return h @ m.fc2.weight.T + m.fc2.bias

    x = x + gate_msa[:, None] * attn(modulate(norm(x), shift_msa, scale_msa))
    return x + gate_mlp[:, None] * mlp(modulate(norm(x), shift_mlp, scale_mlp))


@SMALL
@given(seed=st.integers(0, 2**16), heads=st.sampled_from([1, 2, 4]))
def test_block_equals_the_official_adaln_zero_block(seed, heads):
    """A DiTBlock with random (non-zero) weights, gates included, equals the reference above:
    guards the order of the six modulation chunks, which gate multiplies which branch, the
    modulation (1 + scale), the head layout and the tanh-GELU."""
    block = randomize(D.DiTBlock(16, heads, mlp_ratio=2.0).double(), seed)
    x, c = randn((2, 5, 16), seed + 1), randn((2, 16), seed + 2)
    with torch.no_grad():
        torch.testing.assert_close(block(x, c), _reference_block(block, x, c),
                                   rtol=1e-10, atol=1e-10)


def test_timestep_embedding_features():
    t = torch.tensor([0.0, 3.0, -250.0], dtype=torch.float64)
    emb = D.TimestepEmbedder.timestep_embedding(t, 9)
    assert emb.shape == (3, 9) and emb.dtype == torch.float64
    assert torch.equal(emb[0, :4], torch.ones(4, dtype=torch.float64))
    assert torch.equal(emb[:, 8], torch.zeros(3, dtype=torch.float64))
    torch.testing.assert_close(emb[:, :8].square().sum(1), torch.full((3,), 4.0, dtype=t.dtype))
    assert emb[:, 0].tolist() == pytest.approx([1.0, math.cos(3.0), math.cos(-250.0)])


def test_label_dropout_uses_the_null_class():
    emb = D.LabelEmbedder(num_classes=3, hidden_size=8, dropout_prob=0.5)
    labels = torch.tensor([0, 1, 2, 2])
    dropped = emb.token_drop(labels, force_drop_ids=torch.tensor([1, 0, 1, 0]))
    assert dropped.tolist() == [3, 1, 3, 2]
    assert torch.equal(emb(labels, train=False), emb.embedding_table.weight[labels])
    torch.manual_seed(0)
    drawn = emb.token_drop(torch.zeros(4000, dtype=torch.long))
    frac = (drawn == 3).double().mean().item()
    assert abs(frac - 0.5) < 5 * math.sqrt(0.25 / 4000)  # 5 standard errors
    assert D.LabelEmbedder(3, 8, 0.0).embedding_table.num_embeddings == 3


# --------------------------------------------------------------------------------------
# Prunable heads and channels
# --------------------------------------------------------------------------------------


def attention(dim: int, heads: int, seed: int, head_dim: int | None = None) -> D.Attention:
    return randomize(D.Attention(dim, heads, head_dim=head_dim).double(), seed)


@SMALL
@given(seed=st.integers(0, 2**16), heads=st.integers(1, 4), hidden=st.integers(0, 9))
def test_all_ones_masks_change_nothing(seed, heads, hidden):
    attn = attention(12, heads, seed)
    x = randn((2, 5, 12), seed)
    plain = attn(x)
    attn.head_mask = torch.ones(heads, dtype=torch.float64)
    assert torch.equal(attn(x), plain)
    mlp = randomize(D.Mlp(12, hidden).double(), seed)
    plain = mlp(x)
    mlp.channel_mask = torch.ones(hidden)
    assert torch.equal(mlp(x), plain)


def _keep_heads(attn: D.Attention, keep: list[int]) -> D.Attention:
    """An Attention with only heads ``keep`` of ``attn`` (the layout the pruning uses)."""
    H, d_h, dim = attn.num_heads, attn.head_dim, attn.dim
    small = D.Attention(dim, len(keep), head_dim=d_h).double()
    idx = torch.tensor(keep, dtype=torch.long)
    with torch.no_grad():
        small.qkv.weight.copy_(attn.qkv.weight.view(3, H, d_h, dim)[:, idx].reshape(-1, dim))
        small.qkv.bias.copy_(attn.qkv.bias.view(3, H, d_h)[:, idx].reshape(-1))
        small.proj.weight.copy_(attn.proj.weight.view(dim, H, d_h)[:, idx].reshape(dim, -1))
        small.proj.bias.copy_(attn.proj.bias)
    return small


@SMALL
@given(seed=st.integers(0, 2**16), mask=st.lists(st.booleans(), min_size=4, max_size=4))
def test_masking_heads_equals_removing_them(seed, mask):
    attn = attention(8, 4, seed, head_dim=3)  # inner width 12 != dim 8
    keep = [h for h in range(4) if mask[h]]
    attn.head_mask = torch.tensor(mask, dtype=torch.float64)
    x = randn((2, 6, 8), seed)
    small = _keep_heads(attn, keep)
    torch.testing.assert_close(small(x), attn(x), rtol=1e-12, atol=1e-12)


def test_zero_heads_equal_all_heads_masked_exactly():
    attn = attention(8, 4, seed=1)
    attn.head_mask = torch.zeros(4, dtype=torch.float64)
    empty = D.Attention(8, 0, head_dim=2).double()
    assert empty.qkv.weight.shape == (0, 8) and empty.proj.weight.shape == (8, 0)
    with torch.no_grad():
        empty.proj.bias.copy_(attn.proj.bias)
    x = randn((3, 5, 8), 2)
    assert torch.equal(empty(x), attn(x))
    assert torch.equal(empty(x), attn.proj.bias.expand(3, 5, 8))
    # the same in a whole block (adaLN gates random, so the attention branch counts)
    block = randomize(D.DiTBlock(8, 4).double(), seed=3)
    c = randn((3, 8), 4)
    block.attn.head_mask = torch.zeros(4, dtype=torch.float64)
    masked = block(x, c)
    pruned_bias = block.attn.proj.bias.detach().clone()
    block.attn = D.Attention(8, 0, head_dim=2).double()
    with torch.no_grad():
        block.attn.proj.bias.copy_(pruned_bias)
    assert torch.equal(block(x, c), masked)


@SMALL
@given(seed=st.integers(0, 2**16), mask=st.lists(st.booleans(), min_size=6, max_size=6))
def test_masking_channels_equals_removing_them(seed, mask):
    mlp = randomize(D.Mlp(5, 6).double(), seed)
    keep = torch.tensor([i for i in range(6) if mask[i]], dtype=torch.long)
    small = D.Mlp(5, len(keep)).double()
    with torch.no_grad():
        small.fc1.weight.copy_(mlp.fc1.weight[keep])
        small.fc1.bias.copy_(mlp.fc1.bias[keep])
        small.fc2.weight.copy_(mlp.fc2.weight[:, keep])
        small.fc2.bias.copy_(mlp.fc2.bias)
    mlp.channel_mask = torch.tensor(mask, dtype=torch.float64)
    x = randn((2, 3, 5), seed)
    torch.testing.assert_close(small(x), mlp(x), rtol=1e-12, atol=1e-12)


def test_head_mask_gradient_reaches_the_mask():
    attn = attention(8, 2, seed=0)
    attn.head_mask = torch.ones(2, dtype=torch.float64, requires_grad=True)
    attn(randn((2, 3, 8), 1)).square().sum().backward()
    assert attn.head_mask.grad is not None and attn.head_mask.grad.abs().min() > 0
    assert not any(name.endswith("head_mask") for name, _ in attn.named_parameters())


# --------------------------------------------------------------------------------------
# Official parameter counts
# --------------------------------------------------------------------------------------


def official_count(depth: int, hidden: int, patch: int, input_size: int = 32,
                   channels: int = 4, num_classes: int = 1000) -> int:
    """Parameters of the official DiT (learn_sigma, class dropout > 0), pos_embed included."""
    D_ = hidden
    attn = (3 * D_ * D_ + 3 * D_) + (D_ * D_ + D_)  # qkv, proj
    mlp = (4 * D_ * D_ + 4 * D_) + (4 * D_ * D_ + D_)  # fc1, fc2
    block = attn + mlp + (6 * D_ * D_ + 6 * D_)  # + adaLN modulation
    patch_embed = channels * patch * patch * D_ + D_
    t_embed = 256 * D_ + D_ + D_ * D_ + D_
    y_embed = (num_classes + 1) * D_
    out = patch * patch * 2 * channels
    final = (2 * D_ * D_ + 2 * D_) + (D_ * out + out)
    pos = (input_size // patch) ** 2 * D_
    return depth * block + patch_embed + t_embed + y_embed + final + pos


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ["DiT-S/2", "DiT-B/2", "DiT-XL/2", "DiT-L/4", "DiT-S/8"])
def test_official_parameter_counts_on_meta(name):
    size, patch = name[4:].split("/")
    depth, hidden, _ = D.DIT_SIZES[size]
    with torch.device("meta"):
        model = D.DIT_MODELS[name]()
    assert model.pos_embed.is_meta
    assert count(model) == official_count(depth, hidden, int(patch))


def test_pinned_counts_and_formula_on_a_real_model():
    with torch.device("meta"):
        assert count(D.DIT_MODELS["DiT-XL/2"]()) == 675_129_632  # the official DiT-XL/2
        assert count(D.DIT_MODELS["DiT-B/2"]()) == 130_512_416
        assert count(D.DIT_MODELS["DiT-S/2"]()) == 32_963_360
    small = D.DIT_MODELS["DiT-N/2"](input_size=8)  # built for real on CPU
    assert count(small) == official_count(2, 64, 2, input_size=8)


# --------------------------------------------------------------------------------------
# The official interface: DiT_models, DiT_XL_2 ..., forward_with_cfg, state-dict format
# --------------------------------------------------------------------------------------

DATA = Path(__file__).resolve().parent / "data"  # fixtures from the official code

# The official table (facebookresearch/DiT models.py, "DiT Configs"), written out:
# name -> (depth, hidden_size, patch_size, num_heads)
OFFICIAL_CONFIGS = {
    "DiT-XL/2": (28, 1152, 2, 16), "DiT-XL/4": (28, 1152, 4, 16), "DiT-XL/8": (28, 1152, 8, 16),
    "DiT-L/2": (24, 1024, 2, 16), "DiT-L/4": (24, 1024, 4, 16), "DiT-L/8": (24, 1024, 8, 16),
    "DiT-B/2": (12, 768, 2, 12), "DiT-B/4": (12, 768, 4, 12), "DiT-B/8": (12, 768, 8, 12),
    "DiT-S/2": (12, 384, 2, 6), "DiT-S/4": (12, 384, 4, 6), "DiT-S/8": (12, 384, 8, 6),
}


@pytest.mark.parametrize("name", sorted(OFFICIAL_CONFIGS))
def test_official_constructors_give_the_official_hyperparameters(name):
    depth, hidden, patch, heads = OFFICIAL_CONFIGS[name]
    fn = getattr(D, name.replace("-", "_").replace("/", "_"))  # "DiT-XL/2" -> DiT_XL_2
    assert fn is D.DiT_models[name] is D.DIT_MODELS[name]  # one table, no second copy
    assert fn.__name__ == name.replace("-", "_").replace("/", "_")
    with torch.device("meta"):
        model = fn()
    assert (model.depth, model.hidden_size, model.patch_size, model.num_heads) == (
        depth, hidden, patch, heads)
    assert len(model.blocks) == depth
    assert model.x_embedder.proj.kernel_size == (patch, patch)
    assert model.x_embedder.proj.out_channels == hidden
    assert all(b.attn.num_heads == heads and b.attn.head_dim == hidden // heads
               and b.mlp.hidden_features == 4 * hidden for b in model.blocks)
    # the official DiT defaults: 4 latent channels, 1000 classes (+ null), learn_sigma
    assert model.in_channels == 4 and model.out_channels == 8
    assert model.y_embedder.embedding_table.weight.shape == (1001, hidden)
    assert model.pos_embed.shape == (1, (32 // patch) ** 2, hidden)


def test_dit_models_is_exactly_the_official_zoo():
    assert list(D.DiT_models) == list(OFFICIAL_CONFIGS)  # the official order, XL first
    assert set(D.DIT_MODELS) == set(OFFICIAL_CONFIGS) | {
        f"DiT-{s}/{p}" for s in ("T", "N") for p in (2, 4, 8)}


def test_official_constructors_pass_kwargs_to_the_model():
    with torch.device("meta"):
        model = D.DiT_S_8(input_size=16, in_channels=3, num_classes=10, learn_sigma=False)
    assert model.pos_embed.shape == (1, 4, 384)
    assert model.x_embedder.proj.in_channels == 3 and model.out_channels == 3
    assert model.y_embedder.embedding_table.num_embeddings == 11
    with pytest.raises(TypeError, match="depth"):  # as the official: fixed by the name
        D.DiT_S_8(depth=2)


def cond_dit(seed: int, in_channels: int = 2, learn_sigma: bool = True) -> D.DiT:
    """A random class-conditional tiny DiT (3 classes + the null class 3), float64, eval."""
    model = tiny_dit(num_classes=3, class_dropout_prob=0.1, in_channels=in_channels,
                     learn_sigma=learn_sigma).double()
    return randomize(model, seed).eval()


def cfg_batch(seed: int, B: int, C: int):
    """x (2B, C, 4, 4), t (2B,), y (2B,) = [labels, null class] as the official sample.py."""
    x = randn((2 * B, C, 4, 4), seed)
    t = 500 * randn((2 * B,), seed + 1).abs()
    labels = torch.randint(3, (B,), generator=torch.Generator().manual_seed(seed))
    return x, t, torch.cat([labels, torch.full((B,), 3)])


@SMALL
@given(seed=st.integers(0, 2**16), B=st.integers(1, 3), C=st.integers(1, 4),
       learn_sigma=st.booleans())
def test_forward_with_cfg_at_scale_one_is_the_conditional_forward(seed, B, C, learn_sigma):
    model = cond_dit(seed, C, learn_sigma)
    x, t, y = cfg_batch(seed, B, C)
    with torch.no_grad():
        out = model.forward_with_cfg(x, t, y, 1.0)
        cond = model(x[:B], t[:B], y[:B])  # the first half, with the class labels
        uncond = model(x[:B], t[B:], y[B:])
    k = min(3, model.out_channels)  # the official default: guidance on 3 channels
    torch.testing.assert_close(out[:B], cond, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out[B:, :k], cond[:, :k], rtol=1e-12, atol=1e-12)
    # unguided channels: the raw outputs (equal up to rounding: one batched pass of 2B
    # images vs two passes of B)
    torch.testing.assert_close(out[B:, k:], uncond[:, k:], rtol=1e-12, atol=1e-12)


@SMALL
@given(seed=st.integers(0, 2**16), B=st.integers(1, 3), C=st.integers(1, 4),
       learn_sigma=st.booleans(), scale=st.floats(-3.0, 10.0),
       guided=st.sampled_from([None, 0, 1, 2, 4, 9]))
def test_forward_with_cfg_is_uncond_plus_scale_times_the_difference(
        seed, B, C, learn_sigma, scale, guided):
    model = cond_dit(seed, C, learn_sigma)
    x, t, y = cfg_batch(seed, B, C)
    kwargs = {} if guided is None else {"guided_channels": guided}
    with torch.no_grad():
        out = model.forward_with_cfg(x, t, y, scale, **kwargs)
        cond = model(x[:B], t[:B], y[:B])  # two plain forwards: (B, C_out, 4, 4) each
        uncond = model(x[:B], t[B:], y[B:])
        other = x.clone()
        other[B:] = randn((B, C, 4, 4), seed + 7)  # x[B:] must never be read
        assert torch.equal(model.forward_with_cfg(other, t, y, scale, **kwargs), out)
    k = 3 if guided is None else guided
    assert out.shape == (2 * B, model.out_channels, 4, 4)
    for c in range(model.out_channels):
        if c < k:  # guided, the same in both halves: (1 - s) uncond + s cond
            want = (1 - scale) * uncond[:, c] + scale * cond[:, c]
            torch.testing.assert_close(out[:B, c], want, rtol=1e-10, atol=1e-10)
            torch.testing.assert_close(out[B:, c], want, rtol=1e-10, atol=1e-10)
        else:  # raw: conditional in the first half, unconditional in the second
            torch.testing.assert_close(out[:B, c], cond[:, c], rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(out[B:, c], uncond[:, c], rtol=1e-12, atol=1e-12)


def formula_values(name: str, shape) -> torch.Tensor:
    """0.3 sin(0.731 j + phase(name)) at flat index j, float32: the deterministic weights
    of tests/experiments/data/make_official_dit_fixtures.py (written out again here)."""
    phase = (zlib.crc32(name.encode()) % 997) / 97.0
    j = np.arange(int(np.prod(shape, dtype=np.int64)), dtype=np.float64)
    return torch.from_numpy((0.3 * np.sin(0.731 * j + phase)).astype(np.float32).reshape(shape))


def test_forward_and_forward_with_cfg_match_the_official_outputs():
    """Outputs of the official facebookresearch/DiT code (fixture official_dit_cfg.json) on a
    tiny DiT whose official-format state dict is loaded strictly: the guidance touches
    channels 0..2 only, channel 3 and the variance channels 4..7 stay raw."""
    ref = json.loads((DATA / "official_dit_cfg.json").read_text())
    model = D.DiT(**ref["config"]).eval()
    state = {k: (torch.tensor(ref["pos_embed"]) if k == "pos_embed" else formula_values(k, s))
             for k, s in ref["state_dict"].items()}
    model.load_state_dict(state, strict=True)
    x = 3 * formula_values("x", (4, 4, 4, 4))
    t, y = torch.tensor(ref["t"]), torch.tensor(ref["y"])
    with torch.no_grad():
        plain = model(x, t, y)
        guided = model.forward_with_cfg(x, t, y, ref["cfg_scale"])
    torch.testing.assert_close(plain, torch.tensor(ref["forward"]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(guided, torch.tensor(ref["forward_with_cfg"]),
                               rtol=1e-5, atol=1e-5)


def test_forward_with_cfg_rejects_bad_input():
    model, x, t, y = cond_dit(0), *cfg_batch(0, 2, 2)
    with pytest.raises(ValueError, match="even batch"):
        model.forward_with_cfg(x[:3], t[:3], y[:3], 4.0)
    with pytest.raises(ValueError, match="class-conditional"):
        tiny_dit().forward_with_cfg(x, t, None, 4.0)
    for bad in (float("nan"), float("inf"), "4", True, None):
        with pytest.raises(ValueError, match="cfg_scale"):
            model.forward_with_cfg(x, t, y, bad)
    with pytest.raises(ValueError, match="guided_channels"):
        model.forward_with_cfg(x, t, y, 4.0, guided_channels=-1)
    with pytest.raises(ValueError, match="^y must"):
        model.forward_with_cfg(x, t, y[:2], 4.0)


def official_keys() -> dict:
    return json.loads((DATA / "official_dit_keys.json").read_text())


def test_state_dict_has_the_official_keys_and_shapes():
    ref = official_keys()
    cfg = {k: v for k, v in ref["config"].items() if k != "model"}
    with torch.device("meta"):
        model = D.DiT_models[ref["config"]["model"]](**cfg)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert list(ours.items()) == list(ref["state_dict"].items())  # names, shapes and order
    assert count(model) == ref["num_parameters"]


def test_official_format_state_dict_loads_strictly_and_round_trips():
    ref = official_keys()
    model = D.DiT_S_2(input_size=32, num_classes=10, learn_sigma=True)
    g = torch.Generator().manual_seed(0)
    state = {k: torch.randn(s, generator=g) for k, s in ref["state_dict"].items()}
    result = model.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    back = model.state_dict()
    assert list(back) == list(state)
    assert all(torch.equal(back[k], v) for k, v in state.items())
    assert not model.pos_embed.requires_grad  # still the frozen official parameter
    # strict loading bites: a missing key, an extra key, a wrong shape
    for broken, match in (
        ({k: v for k, v in state.items() if k != "blocks.11.attn.qkv.bias"}, "Missing key"),
        ({**state, "blocks.12.attn.qkv.bias": state["blocks.11.attn.qkv.bias"]}, "Unexpected key"),
        ({**state, "y_embedder.embedding_table.weight": torch.zeros(10, 384)}, "size mismatch"),
    ):
        with pytest.raises(RuntimeError, match=match):
            model.load_state_dict(broken, strict=True)


# --------------------------------------------------------------------------------------
# ScoreDiT
# --------------------------------------------------------------------------------------


@SMALL
@given(seed=st.integers(0, 2**16), t=st.floats(1e-4, 10.0), conditional=st.booleans())
def test_score_dit_parametrizations(seed, t, conditional):
    torch.manual_seed(seed)
    dit = tiny_dit(num_classes=3 if conditional else 0).double()
    randomize(dit, seed).eval()
    x = randn((3, 2, 4, 4), seed)
    y = torch.tensor([0, 2, 1]) if conditional else None
    times = torch.tensor([t, 2 * t, 0.5 * t], dtype=torch.float64)
    net = {p: D.ScoreDiT(dit, p) for p in ("score", "denoiser", "eps")}
    raw = net["eps"].raw(x, times, y)
    torch.testing.assert_close(raw, dit(x, 100 * torch.log(times), y), rtol=0, atol=0)
    col = times[:, None, None, None]
    a, s2 = torch.exp(-col / 2), -torch.expm1(-col)
    torch.testing.assert_close(net["score"](x, times, y), raw)
    torch.testing.assert_close(net["denoiser"](x, times, y), (a * raw - x) / s2)
    torch.testing.assert_close(net["eps"](x, times, y), -raw / s2.sqrt())
    # a float t is every image's time
    same = torch.full((3,), t, dtype=torch.float64)
    torch.testing.assert_close(net["eps"](x, t, y), net["eps"](x, same, y))


def test_score_dit_presets_and_defaults():
    net = D.ScoreDiT.from_preset("DiT-N/2", input_size=8, in_channels=1)
    assert net.parametrization == "eps" and not net.dit.learn_sigma
    out = net(torch.randn(2, 1, 8, 8), torch.tensor([0.1, 1.0]))
    assert out.shape == (2, 1, 8, 8) and torch.equal(out, torch.zeros_like(out))  # zero init
    with pytest.raises(ValueError, match="name"):
        D.ScoreDiT.from_preset("DiT-Q/2", input_size=8, in_channels=1)
    with pytest.raises(ValueError, match="learn_sigma"):
        D.ScoreDiT(tiny_dit(learn_sigma=True))
    with pytest.raises(ValueError, match="parametrization"):
        D.ScoreDiT(tiny_dit(), "velocity")
    with pytest.raises(TypeError, match="dit"):
        D.ScoreDiT(torch.nn.Linear(2, 2))


def test_score_dit_parametrizations_never_share_a_checkpoint(tmp_path):
    # The same DiT read three ways has the same weights: only the repr tells the training-
    # checkpoint keys apart (the ScoreMLP cache bug of the "nothing silent" issue).
    from experiments.common.training import TrainConfig, checkpoint_path

    dit, data = tiny_dit(), torch.randn(4, 2, 4, 4)
    keys = {checkpoint_path(tmp_path, D.ScoreDiT(dit, p), data, TrainConfig(steps=1))
            for p in D.PARAMETRIZATIONS}
    assert len(keys) == len(D.PARAMETRIZATIONS)


@pytest.mark.parametrize("t", [0.0, -1.0, float("nan"), float("inf")])
def test_score_dit_rejects_bad_times(t):
    net = D.ScoreDiT(tiny_dit())
    with pytest.raises(ValueError, match="t must"):
        net(torch.randn(2, 2, 4, 4), t)
    with pytest.raises(ValueError, match="t must"):
        net(torch.randn(2, 2, 4, 4), torch.tensor([0.5, t]))


def test_score_dit_rejects_time_of_wrong_shape():
    with pytest.raises(ValueError, match=r"t must .*\(batch,\)"):
        D.ScoreDiT(tiny_dit())(torch.randn(2, 2, 4, 4), torch.ones(3))


# --------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape, what", [
    ((2, 2, 4), "shape"), ((2, 3, 4, 4), "in_channels"), ((2, 2, 4, 6), "square"),
    ((2, 2, 6, 6), "input_size"),
])
def test_dit_rejects_bad_images(shape, what):
    model = tiny_dit()
    with pytest.raises(ValueError, match=f"^x must.*{what}"):
        model(torch.randn(shape), torch.ones(2))
    with pytest.raises(ValueError, match="^x must"):
        D.ScoreDiT(model)(torch.randn(shape), 0.5)


def test_dit_rejects_bad_times_and_labels():
    x = torch.randn(2, 2, 4, 4)
    with pytest.raises(ValueError, match="^t must"):
        tiny_dit()(x, torch.ones(2, 1))
    with pytest.raises(ValueError, match="^y must be None"):
        tiny_dit()(x, torch.ones(2), torch.zeros(2, dtype=torch.long))
    cond = tiny_dit(num_classes=3)
    for bad in (None, torch.zeros(2), torch.zeros(3, dtype=torch.long), torch.tensor([0, 4])):
        with pytest.raises(ValueError, match="^y must"):
            cond(x, torch.ones(2), bad)
    cond(x, torch.ones(2), torch.tensor([0, 3]))  # the null class of classifier-free guidance
    with pytest.raises(ValueError, match="^y must"):
        tiny_dit(num_classes=3, class_dropout_prob=0.0)(x, torch.ones(2), torch.tensor([0, 3]))


@pytest.mark.parametrize("kwargs, name", [
    (dict(input_size=6, patch_size=4), "input_size"), (dict(num_heads=3), "num_heads"),
    (dict(hidden_size=6, num_heads=2), "hidden_size"), (dict(class_dropout_prob=1.0),
    "class_dropout_prob"), (dict(depth=0), "depth"), (dict(num_classes=-1), "num_classes"),
])
def test_dit_rejects_bad_config(kwargs, name):
    with pytest.raises(ValueError, match=name):
        tiny_dit(**kwargs)


def test_layers_reject_bad_config_and_masks():
    with pytest.raises(ValueError, match="num_heads"):
        D.Attention(8, 3)
    with pytest.raises(ValueError, match="num_heads"):
        D.Attention(8, 0)
    with pytest.raises(ValueError, match="head_dim"):
        D.Attention(8, 2, head_dim=0)
    with pytest.raises(ValueError, match="hidden_features"):
        D.Mlp(8, -1)
    attn, mlp = D.Attention(8, 2), D.Mlp(8, 4)
    attn.head_mask, mlp.channel_mask = torch.ones(3), torch.ones(5)
    x = torch.randn(1, 2, 8)
    with pytest.raises(ValueError, match=r"head_mask must .*\(2,\)"):
        attn(x)
    with pytest.raises(ValueError, match=r"channel_mask must .*\(4,\)"):
        mlp(x)


# --------------------------------------------------------------------------------------
# Mixed precision
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_classes", [0, 3])
def test_trains_one_step_under_bf16_autocast(num_classes):
    torch.manual_seed(0)
    net = D.ScoreDiT.from_preset("DiT-N/2", input_size=8, in_channels=1,
                                 num_classes=num_classes, class_dropout_prob=0.5)
    net.dit.blocks[0].attn.head_mask = torch.ones(4, requires_grad=True)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)  # no decay: unchanged = zero grads
    x0, eps = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8)
    t = torch.tensor([1e-3, 0.1, 1.0, 5.0])
    col = t[:, None, None, None]
    xt = torch.exp(-col / 2) * x0 + (-torch.expm1(-col)).sqrt() * eps
    y = torch.randint(num_classes, (4,)) if num_classes else None
    before = [p.detach().clone() for p in net.parameters()]
    # adaLN-Zero: step 1 moves the final linear layer, step 2 the gates and modulations,
    # step 3 everything (the attention and MLP weights only see gradients through gates)
    for _ in range(3):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = (net.raw(xt, t, y).float() - eps).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.isfinite(loss)
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in net.parameters())
    changed = [not torch.equal(b, p) for b, p in zip(before, net.parameters(), strict=True)]
    assert sum(changed) == sum(p.requires_grad for p in net.parameters())
    assert net.dit.blocks[0].attn.head_mask.grad is not None
