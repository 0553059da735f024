"""kinema.nn: attention against a naive softmax, RoPE (Wan layout, relative positions), embeddings, modulation,
norms."""

import math

import pytest
import torch
import torch.nn.functional as F

from kinema.nn import (
    MLP,
    AdaLNZero,
    LayerNorm32,
    RMSNorm,
    apply_rope,
    attention,
    axis_dims,
    modulate,
    rope_frequencies,
    rope_frequencies_1d,
    split_modulation,
    timestep_embedding,
)
from kinema.nn.attention import matmul_attention


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny models gain nothing from threads, and on a busy machine OpenMP's spinning threads cost ~100x.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def naive_attention(q, k, v, allowed=None):
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    return scores.softmax(dim=-1) @ v


def test_attention_matches_naive_softmax():
    q, k, v = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 7, 8), torch.randn(2, 3, 7, 8)
    torch.testing.assert_close(attention(q, k, v), naive_attention(q, k, v), atol=1e-5, rtol=1e-5)


def test_attention_key_padding_mask_matches_naive():
    q, k, v = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 7, 8), torch.randn(2, 3, 7, 8)
    mask = torch.tensor([[True] * 4 + [False] * 3, [True] * 7])
    expected = naive_attention(q, k, v, mask[:, None, None, :])
    torch.testing.assert_close(attention(q, k, v, mask=mask), expected, atol=1e-5, rtol=1e-5)
    # Changing masked keys and values changes nothing.
    k2, v2 = k.clone(), v.clone()
    k2[0, :, 4:] = 100.0
    v2[0, :, 4:] = -100.0
    torch.testing.assert_close(attention(q, k2, v2, mask=mask), attention(q, k, v, mask=mask))


def test_attention_full_mask_4d_matches_naive():
    q, k, v = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 5, 8), torch.randn(2, 3, 5, 8)
    causal = torch.ones(5, 5, dtype=torch.bool).tril()[None, None]
    torch.testing.assert_close(attention(q, k, v, mask=causal), naive_attention(q, k, v, causal), atol=1e-5, rtol=1e-5)


def test_attention_fully_masked_rows_are_zero_not_nan():
    q, k, v = torch.randn(2, 2, 4, 8), torch.randn(2, 2, 6, 8), torch.randn(2, 2, 6, 8)
    mask = torch.tensor([[False] * 6, [True] * 2 + [False] * 4])
    out = attention(q, k, v, mask=mask)
    assert torch.isfinite(out).all()
    assert (out[0] == 0).all()
    torch.testing.assert_close(out[1], naive_attention(q, k, v, mask[:, None, None, :])[1], atol=1e-5, rtol=1e-5)
    # gradients stay finite too
    q.requires_grad_(True)
    attention(q, k, v, mask=mask).sum().backward()
    assert torch.isfinite(q.grad).all()


def test_low_precision_cpu_attention_matches_reference():
    # bf16 on CPU with few tokens takes the matmul path; it must agree with SDPA and the naive softmax.
    q, k, v = (torch.randn(2, 3, 40, 16) for _ in range(3))
    mask = torch.ones(2, 40, dtype=torch.bool)
    mask[0, 25:] = False
    mask[1] = False  # a fully masked row
    qb, kb, vb = q.bfloat16(), k.bfloat16(), v.bfloat16()
    out = attention(qb, kb, vb, mask=mask)
    assert out.dtype == torch.bfloat16
    expected = naive_attention(qb.float(), kb.float(), vb.float(), mask[:, None, None, :])
    torch.testing.assert_close(out[0].float(), expected[0], atol=2e-2, rtol=2e-2)
    assert (out[1] == 0).all()
    sdpa = F.scaled_dot_product_attention(qb, kb, vb)
    torch.testing.assert_close(matmul_attention(qb, kb, vb).float(), sdpa.float(), atol=2e-2, rtol=2e-2)


def test_attention_rejects_float_mask():
    q = torch.randn(1, 1, 2, 4)
    with pytest.raises(TypeError, match="bool"):
        attention(q, q, q, mask=torch.ones(1, 2))


def test_rope_split_is_wans():
    assert axis_dims(128) == (44, 42, 42)
    assert axis_dims(64) == (24, 20, 20)
    assert sum(axis_dims(12)) == 12
    with pytest.raises(ValueError, match="head_dim"):
        axis_dims(7)


def test_rope_matches_diffusers_wan_rope():
    from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

    head_dim, grid = 24, (3, 4, 5)
    ref = WanRotaryPosEmbed(head_dim, (1, 2, 2), max_seq_len=64)
    cos_ref, sin_ref = ref(torch.zeros(1, 1, grid[0], 2 * grid[1], 2 * grid[2]))  # (1, L, 1, head_dim) interleaved
    rope = rope_frequencies(head_dim, grid)
    assert rope.shape == (grid[0] * grid[1] * grid[2], head_dim // 2) and rope.dtype == torch.complex64
    torch.testing.assert_close(rope.real, cos_ref[0, :, 0, 0::2])
    torch.testing.assert_close(rope.imag, sin_ref[0, :, 0, 0::2])
    # ...and rotates as diffusers' Wan attention does (interleaved pairs).
    x = torch.randn(2, 3, rope.shape[0], head_dim)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    cos, sin = cos_ref[0, :, 0, 0::2], sin_ref[0, :, 0, 1::2]
    expected = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)
    torch.testing.assert_close(apply_rope(x, rope), expected)


def test_rope_preserves_norm_and_position_zero_is_identity():
    rope = rope_frequencies(12, (2, 3, 3))
    x = torch.randn(2, 3, 18, 12)
    y = apply_rope(x, rope)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))
    torch.testing.assert_close(y[:, :, 0], x[:, :, 0])


def test_rope_3d_depends_only_on_relative_position():
    head_dim, grid = 24, (6, 6, 6)
    rope = rope_frequencies(head_dim, grid)
    q, k = torch.randn(head_dim), torch.randn(head_dim)
    L = grid[0] * grid[1] * grid[2]
    rq = apply_rope(q.expand(1, 1, L, head_dim), rope)[0, 0]
    rk = apply_rope(k.expand(1, 1, L, head_dim), rope)[0, 0]

    def index(t, h, w):
        return (t * grid[1] + h) * grid[2] + w

    for (a, b, shift) in [((0, 1, 2), (3, 0, 1), (2, 3, 1)), ((1, 1, 1), (0, 2, 0), (1, 0, 3))]:
        dot = rq[index(*a)] @ rk[index(*b)]
        a2 = tuple(p + s for p, s in zip(a, shift))
        b2 = tuple(p + s for p, s in zip(b, shift))
        dot_shifted = rq[index(*a2)] @ rk[index(*b2)]
        torch.testing.assert_close(dot, dot_shifted, atol=1e-5, rtol=1e-5)
    # ...and does depend on the relative position itself.
    assert not torch.allclose(rq[index(0, 0, 0)] @ rk[index(0, 0, 1)], rq[index(0, 0, 0)] @ rk[index(0, 0, 2)])


def test_rope_1d_relative_and_offset():
    head_dim = 16
    q, k = torch.randn(head_dim), torch.randn(head_dim)
    rope = rope_frequencies_1d(head_dim, 10)
    rq = apply_rope(q.expand(1, 10, head_dim), rope)
    rk = apply_rope(k.expand(1, 10, head_dim), rope)
    torch.testing.assert_close(rq[0, 2] @ rk[0, 5], rq[0, 6] @ rk[0, 9], atol=1e-5, rtol=1e-5)
    shifted = rope_frequencies_1d(head_dim, 4, offset=3)
    torch.testing.assert_close(shifted, rope[3:7])


def test_rope_tables_are_cached_and_usable_under_autograd_after_inference_mode():
    with torch.inference_mode():
        a = rope_frequencies(12, (1, 2, 2))
    b = rope_frequencies(12, (1, 2, 2))
    assert a is b
    x = torch.randn(1, 1, 4, 12, requires_grad=True)
    apply_rope(x, b).sum().backward()
    assert x.grad is not None


def test_rope_bf16_input_keeps_dtype():
    x = torch.randn(1, 2, 4, 12, dtype=torch.bfloat16)
    assert apply_rope(x, rope_frequencies(12, (1, 2, 2))).dtype == torch.bfloat16


def test_rope_on_strided_views_matches_contiguous():
    rope = rope_frequencies(12, (1, 2, 3))
    qkv = torch.randn(2, 6, 3 * 24)
    for part in qkv.chunk(3, dim=-1):  # (B, L, heads * head_dim) views at odd offsets
        heads = part.unflatten(-1, (2, 12)).transpose(1, 2)
        torch.testing.assert_close(apply_rope(heads, rope), apply_rope(heads.contiguous(), rope))
    odd = torch.randn(1, 1, 6, 13)[..., 1:]  # storage offset 1: cannot be viewed as complex in place
    torch.testing.assert_close(apply_rope(odd, rope), apply_rope(odd.contiguous(), rope))


def test_timestep_embedding_matches_diffusers():
    from diffusers.models.embeddings import get_timestep_embedding

    t = torch.tensor([0.0, 1.5, 999.0])
    ours = timestep_embedding(t, 32)
    ref = get_timestep_embedding(t, 32, flip_sin_to_cos=True, downscale_freq_shift=0)
    torch.testing.assert_close(ours, ref)
    ours_sin_first = timestep_embedding(t, 32, flip_sin_to_cos=False)
    torch.testing.assert_close(ours_sin_first, torch.cat([ref[:, 16:], ref[:, :16]], dim=-1))
    assert timestep_embedding(t, 7).shape == (3, 7)


def test_modulation_named_and_zero_init():
    mod = AdaLNZero(cond_dim=6, dim=4, num=2)
    msa, mlp = mod(torch.randn(3, 6))
    assert msa.shift.shape == msa.scale.shape == mlp.gate.shape == (3, 1, 4)
    assert all((t == 0).all() for t in (*msa, *mlp))
    x = torch.randn(3, 5, 4)
    torch.testing.assert_close(modulate(x, msa.shift, msa.scale), x)
    params = torch.arange(6 * 4, dtype=torch.float32).view(1, 6, 4)
    a, b = split_modulation(params, 2)
    assert a.scale[0, 0, 0] == 4 and b.gate[0, 0, 0] == 20
    x, shift, scale = torch.randn(2, 3, 4), torch.randn(2, 1, 4), torch.randn(2, 1, 4)
    torch.testing.assert_close(modulate(x, shift, scale), x * (1 + scale) + shift)


def test_rmsnorm_matches_torch_and_computes_in_fp32():
    x = torch.randn(2, 5, 8)
    ours = RMSNorm(8, eps=1e-6)
    ours.weight.data.normal_()
    ref = torch.nn.RMSNorm(8, eps=1e-6)
    ref.weight.data.copy_(ours.weight.data)
    torch.testing.assert_close(ours(x), ref(x))
    assert RMSNorm(8, elementwise_affine=False).weight is None
    y = ours(x.bfloat16())
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), ours(x.bfloat16().float()), atol=1e-2, rtol=1e-2)


def test_layernorm32_matches_layer_norm():
    x = torch.randn(2, 5, 8)
    ln = LayerNorm32(8, eps=1e-6, elementwise_affine=False)
    torch.testing.assert_close(ln(x), F.layer_norm(x, (8,), eps=1e-6))
    assert ln(x.bfloat16()).dtype == torch.bfloat16


def test_mlp_shapes_and_bad_activation():
    assert MLP(4, 16, 6)(torch.randn(2, 3, 4)).shape == (2, 3, 6)
    with pytest.raises(ValueError, match="activation"):
        MLP(4, 8, activation="relu6")
