"""kinema.models.dit: shapes, zero init, diffusers parity both ways, masks, bf16, factorized attention,
gradient checkpointing, FLOP count, save/load."""

import dataclasses

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from kinema import config as cfg
from kinema.errors import KinemaError
from kinema.models.checkpoint import load_model, save_model
from kinema.models.dit import DiT, DiTConfig, SelfAttention, config_to_diffusers, dit_small, dit_tiny, wan_1_3b
from kinema.nn import rope_frequencies


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny models gain nothing from threads, and on a busy machine OpenMP's spinning threads cost ~100x.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def randomize(model: torch.nn.Module, std: float = 0.2) -> torch.nn.Module:
    """Random weights everywhere (a fresh DiT's zero head would make every comparison trivial)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


def inputs(config: DiTConfig, batch: int = 2, size: tuple[int, int, int] = (3, 8, 6), context_len: int = 5):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(batch, config.in_channels, *size, generator=g)
    t = torch.rand(batch, generator=g) * 1000
    ctx = torch.randn(batch, context_len, config.text_dim, generator=g)
    return x, t, ctx


@pytest.mark.parametrize("size", [(1, 4, 4), (3, 8, 6), (5, 4, 8), (1, 6, 2)])
def test_output_shapes_and_one_frame(size):
    config = dit_tiny()
    model = randomize(DiT(config))
    x, t, ctx = inputs(config, size=size)
    out = model(x, t, ctx)
    assert out.shape == (2, config.out_channels, *size)
    assert torch.isfinite(out).all()


def test_temporal_patches_and_scalar_timestep():
    config = dit_tiny(patch_size=(2, 2, 2))
    model = randomize(DiT(config))
    x, t, ctx = inputs(config, size=(4, 4, 4))
    assert model(x, t, ctx).shape == (2, config.out_channels, 4, 4, 4)
    same_t = torch.full((2,), 250.0)
    torch.testing.assert_close(model(x, torch.tensor(250.0), ctx), model(x, same_t, ctx))


def test_fresh_model_outputs_zeros():
    config = dit_tiny()
    x, t, ctx = inputs(config)
    out = DiT(config)(x, t, ctx)
    assert out.shape == (2, config.out_channels, 3, 8, 6)
    assert (out == 0).all()


def reference_wan(config: DiTConfig):
    from diffusers import WanTransformer3DModel

    return randomize(WanTransformer3DModel(**config_to_diffusers(config))).eval()


@pytest.mark.parametrize("size", [(3, 8, 6), (1, 4, 4)])
def test_from_diffusers_parity(size):
    config = dit_tiny()
    ref = reference_wan(config)
    model = DiT.from_diffusers(ref).eval()
    assert model.config == config
    x, t, ctx = inputs(config, size=size)
    with torch.no_grad():
        expected = ref(x, t, ctx, return_dict=False)[0]
        out = model(x, t, ctx)
    assert expected.abs().max() > 1  # a real signal, not a zero head
    assert (out - expected).abs().max() < 1e-4


def test_to_diffusers_parity_and_round_trip():
    config = dit_tiny(cross_attn_norm=False, patch_size=(1, 2, 2))
    model = randomize(DiT(config)).eval()
    ref = model.to_diffusers().eval()
    x, t, ctx = inputs(config)
    with torch.no_grad():
        assert (ref(x, t, ctx, return_dict=False)[0] - model(x, t, ctx)).abs().max() < 1e-4
    back = DiT.from_diffusers(ref)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, back.state_dict()[name]), name


def test_from_diffusers_fused_projections():
    config = dit_tiny()
    ref = reference_wan(config)
    x, t, ctx = inputs(config)
    with torch.no_grad():
        expected = ref(x, t, ctx, return_dict=False)[0]
        ref.fuse_qkv_projections()
        out = DiT.from_diffusers(ref)(x, t, ctx)
    assert (out - expected).abs().max() < 1e-4


def test_parameter_count_matches_diffusers_for_wan_1_3b():
    from diffusers import WanTransformer3DModel

    with torch.device("meta"):
        ours = DiT(wan_1_3b())
        theirs = WanTransformer3DModel(**config_to_diffusers(wan_1_3b()))
    assert ours.num_params() == sum(p.numel() for p in theirs.parameters())
    assert 1.3e9 < ours.num_params() < 1.5e9


def test_cross_attention_ignores_padded_tokens():
    config = dit_tiny()
    model = randomize(DiT(config))
    x, t, ctx = inputs(config, context_len=6)
    mask = torch.tensor([[True] * 4 + [False] * 2, [True] * 6])
    out = model(x, t, ctx, mask)
    changed = ctx.clone()
    changed[0, 4:] = torch.randn(2, config.text_dim) * 10
    torch.testing.assert_close(model(x, t, changed, mask), out)
    # The padding really is ignored: the same as the unpadded prompt alone.
    torch.testing.assert_close(model(x[:1], t[:1], ctx[:1, :4]), out[:1], atol=1e-5, rtol=1e-5)
    # An all-True mask is the same as no mask; without the mask, padding does change the output.
    torch.testing.assert_close(model(x, t, ctx, torch.ones(2, 6, dtype=torch.bool)), model(x, t, ctx))
    assert not torch.allclose(model(x, t, changed), model(x, t, ctx))


def test_empty_prompt_mask_gives_finite_output():
    config = dit_tiny()
    model = randomize(DiT(config))
    x, t, ctx = inputs(config, context_len=3)
    out = model(x, t, ctx, torch.zeros(2, 3, dtype=torch.bool))
    assert torch.isfinite(out).all()


def test_bf16_autocast_close_to_fp32():
    config = dit_tiny()
    model = randomize(DiT(config), std=0.05)
    x, t, ctx = inputs(config)
    with torch.no_grad():
        ref = model(x, t, ctx)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x, t, ctx)
    assert low.dtype == torch.float32  # returned in the input's dtype
    rel = (low - ref).norm() / ref.norm()
    assert rel < 0.02, rel  # measured 0.004


def test_bf16_weights_without_autocast():
    # As under FSDP mixed precision: low-precision weights, fp32 inputs; the residual stream stays fp32.
    config = dit_tiny()
    model = randomize(DiT(config), std=0.05)
    x, t, ctx = inputs(config)
    with torch.no_grad():
        ref = model(x, t, ctx)
        low = model.to(torch.bfloat16)(x, t, ctx)
    assert low.dtype == torch.float32
    assert (low - ref).norm() / ref.norm() < 0.03


def test_factorized_attention_runs_and_differs_from_full():
    full = randomize(DiT(dit_tiny()))
    factorized = DiT(dit_tiny(attention="factorized"))
    factorized.load_state_dict(full.state_dict())  # same weights, only the token grouping differs
    x, t, ctx = inputs(full.config)
    out = factorized(x, t, ctx)
    assert out.shape == full(x, t, ctx).shape and torch.isfinite(out).all()
    assert not torch.allclose(out, full(x, t, ctx), atol=1e-3)


def test_spatial_block_does_not_mix_frames():
    config = dit_tiny(attention="factorized", num_layers=1)  # block 0 attends within each frame
    model = randomize(DiT(config))
    x, t, ctx = inputs(config, size=(3, 4, 4))
    changed = x.clone()
    changed[:, :, 2] += 1.0
    a, b = model(x, t, ctx), model(changed, t, ctx)
    torch.testing.assert_close(a[:, :, :2], b[:, :, :2])
    assert not torch.allclose(a[:, :, 2], b[:, :, 2])


def test_temporal_attention_stays_at_one_position():
    attn = randomize(SelfAttention(dim=32, num_heads=2, eps=1e-6))
    grid = (3, 2, 2)
    rope = rope_frequencies(16, grid)
    x = torch.randn(1, 12, 32)
    changed = x.clone()
    changed[0, 1::4] += 1.0  # spatial position 1 in every frame
    a, b = attn(x, rope, "temporal", grid), attn(changed, rope, "temporal", grid)
    others = [i for i in range(12) if i % 4 != 1]
    torch.testing.assert_close(a[0, others], b[0, others])
    assert not torch.allclose(a[0, 1::4], b[0, 1::4])


def test_gradient_checkpointing_same_gradients():
    plain = randomize(DiT(dit_tiny()), std=0.1)
    ckpt = DiT(dit_tiny(gradient_checkpointing=True))
    ckpt.load_state_dict(plain.state_dict())
    x, t, ctx = inputs(plain.config)
    for model in (plain, ckpt):
        model(x, t, ctx).square().mean().backward()
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=1e-5, msg=name)


def test_flops_match_torch_flop_counter():
    for config in (dit_tiny(), dit_tiny(attention="factorized", num_layers=3)):
        model = DiT(config)
        x, t, ctx = inputs(config, size=(3, 8, 6), context_len=7)
        counter = FlopCounterMode(display=False)
        # Under bf16 on CPU, attention over few tokens runs as matmuls, which the counter sees.
        with counter, torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            model(x, t, ctx)
        assert counter.get_flop_counts()["Global"][torch.ops.aten.bmm] > 0
        assert model.flops(tuple(x.shape), 7) == counter.get_total_flops()


def test_save_load_round_trip(tmp_path):
    model = randomize(DiT(dit_tiny(attention="factorized")))
    save_model(model, tmp_path, "denoiser")
    loaded = load_model(tmp_path, "denoiser")
    assert isinstance(loaded, DiT) and loaded.config == model.config
    x, t, ctx = inputs(model.config)
    torch.testing.assert_close(loaded(x, t, ctx), model(x, t, ctx))


def test_config_validation_and_json_round_trip():
    with pytest.raises(ValueError, match="attention"):
        DiTConfig(attention="sparse")
    with pytest.raises(ValueError, match="num_heads"):
        DiTConfig(dim=100, num_heads=3)
    with pytest.raises(ValueError, match="head dim"):
        DiTConfig(dim=16, num_heads=4)
    with pytest.raises(ValueError, match="patch_size"):
        DiTConfig(patch_size=(1, 0, 2))
    with pytest.raises(TypeError):
        DiTConfig(256)  # keyword-only
    for config in (dit_tiny(), dit_small(latent_channels=16), wan_1_3b()):
        assert cfg.from_dict(DiTConfig, cfg.to_dict(config)) == config
    assert dit_small().in_channels == 17 and dit_small(latent_channels=16).in_channels == 33
    assert dataclasses.replace(dit_small(), dim=384, num_heads=6).head_dim == 64


def test_bad_inputs_raise_kinema_error():
    config = dit_tiny()
    model = DiT(config)
    x, t, ctx = inputs(config)
    with pytest.raises(KinemaError, match="in_channels"):
        model(x[:, :3], t, ctx)
    with pytest.raises(KinemaError, match="multiples of the patch size"):
        model(x[..., :5], t, ctx)
    with pytest.raises(KinemaError, match="text_dim"):
        model(x, t, ctx[..., :7])
    with pytest.raises(KinemaError, match="context_mask"):
        model(x, t, ctx, torch.ones(2, 5))
    with pytest.raises(KinemaError, match="timestep"):
        model(x, t[:1], ctx)
