"""The factorized space-time U-Net: shapes, identity-at-init temporal layers, masks, precision, checkpointing, saving."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from kinema import config as cfg
from kinema.errors import KinemaError
from kinema.models.checkpoint import load_model, save_model
from kinema.models.unet3d import UNet3D, UNetConfig, unet_shapes, unet_tiny


def perturb_(model: torch.nn.Module, *, temporal: bool = True, spatial: bool = True, std: float = 0.1) -> torch.nn.Module:
    """Add noise to the weights so zero-initialised branches do something (a stand-in for a trained model)."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if (".temporal." in name and temporal) or (".temporal." not in name and spatial):
                p.add_(torch.randn(p.shape, generator=gen) * std)
    return model


def inputs(config: UNetConfig, b: int = 2, t: int = 3, h: int = 8, w: int = 8, length: int = 6):
    x = torch.randn(b, config.in_channels, t, h, w)
    timestep = torch.rand(b) * 1000
    context = torch.randn(b, length, config.text_dim)
    mask = torch.ones(b, length, dtype=torch.bool)
    mask[0, length // 2 :] = False  # first prompt is shorter
    return x, timestep, context, mask


@pytest.mark.parametrize("b,t,h,w,length", [(1, 1, 8, 8, 4), (2, 5, 16, 16, 7), (1, 3, 8, 16, 1), (3, 2, 4, 4, 5)])
def test_output_shapes(b, t, h, w, length):
    config = unet_tiny()
    model = perturb_(UNet3D(config))
    x, timestep, context, mask = inputs(config, b, t, h, w, length)
    out = model(x, timestep, context, mask)
    assert out.shape == (b, config.out_channels, t, h, w)
    assert torch.isfinite(out).all()
    assert model(x, timestep, context, None).shape == out.shape  # no mask: every token is real


def test_three_levels_and_scalar_timestep():
    config = unet_tiny(channel_mult=(1, 2, 2), attention_levels=(0, 2), num_res_blocks=2)
    model = perturb_(UNet3D(config))
    x, timestep, context, mask = inputs(config, 1, 2, 8, 12)
    out = model(x, timestep[:1], context, mask)
    assert out.shape == (1, config.out_channels, 2, 8, 12)
    torch.testing.assert_close(model(x, timestep[0], context, mask), out)


def test_fresh_model_outputs_zeros():
    config = unet_tiny()
    out = UNet3D(config)(*inputs(config))
    assert torch.equal(out, torch.zeros_like(out))


def test_fresh_temporal_layers_are_the_identity():
    """An image U-Net inflated to video computes the image U-Net on each frame alone."""
    config = unet_tiny(temporal=False, channel_mult=(1, 2, 2), attention_levels=(1, 2))
    image = perturb_(UNet3D(config)).eval()
    video = UNet3D.inflate_from_image(image).eval()
    assert video.config.temporal and len(video.temporal_parameters()) > 0
    assert image.temporal_parameters() == []

    x, timestep, context, mask = inputs(config, b=2, t=4)
    out = video(x, timestep, context, mask)
    per_frame = torch.cat([image(x[:, :, i : i + 1], timestep, context, mask) for i in range(x.shape[2])], dim=2)
    assert out.abs().max() > 1e-2  # not the trivial all-zero output
    torch.testing.assert_close(out, per_frame, atol=1e-5, rtol=1e-5)

    # The equivalence comes from the zero init, not from temporal layers that never run.
    perturb_(video, spatial=False)
    assert not torch.allclose(video(x, timestep, context, mask), per_frame, atol=1e-3)


def test_temporal_layers_mix_frames_and_image_unet_does_not():
    config = unet_tiny()
    x, timestep, context, mask = inputs(config, b=1, t=4)
    x2 = x.clone()
    x2[:, :, 0] += 1.0  # change the first frame only
    for temporal, should_mix in [(True, True), (False, False)]:
        model = perturb_(UNet3D(dataclasses.replace(config, temporal=temporal)))
        changed = (model(x, timestep, context, mask) - model(x2, timestep, context, mask)).abs()
        assert (changed[:, :, 3].max() > 1e-4) == should_mix
        assert changed[:, :, 0].max() > 1e-4


def test_cross_attention_ignores_padded_tokens():
    config = unet_tiny()
    model = perturb_(UNet3D(config))
    x, timestep, context, mask = inputs(config, b=2, t=2, length=6)
    out = model(x, timestep, context, mask)
    changed = context.clone()
    changed[~mask] = torch.randn(int((~mask).sum()), config.text_dim) * 10
    torch.testing.assert_close(model(x, timestep, changed, mask), out, atol=1e-6, rtol=1e-6)
    # ... while a real token does matter.
    changed[0, 0] += 1.0
    assert not torch.allclose(model(x, timestep, changed, mask), out, atol=1e-4)


def test_bf16_autocast_close_to_fp32():
    config = unet_tiny()
    model = perturb_(UNet3D(config))
    args = inputs(config, b=2, t=3)
    ref = model(*args)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(*args)
    assert out.dtype == torch.float32  # returned in the input's dtype
    assert (out - ref).abs().max() <= 0.05 * ref.abs().max()


def test_gradient_checkpointing_gives_the_same_gradients():
    config = unet_tiny(dropout=0.1)
    plain = perturb_(UNet3D(config)).train()
    ckpt = UNet3D(dataclasses.replace(config, gradient_checkpointing=True)).train()
    ckpt.load_state_dict(plain.state_dict())
    args = inputs(config, b=2, t=3)
    grads = []
    for model in (plain, ckpt):
        torch.manual_seed(5)  # same dropout masks
        model.zero_grad()
        model(*args).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-6, rtol=1e-5, msg=name)


def test_save_load_round_trip(tmp_path):
    config = unet_tiny(attention_levels=(0, 1))
    model = perturb_(UNet3D(config))
    save_model(model, tmp_path, "denoiser")
    loaded = load_model(tmp_path, "denoiser")
    assert isinstance(loaded, UNet3D) and loaded.config == config
    args = inputs(config)
    torch.testing.assert_close(loaded(*args), model(*args), atol=0, rtol=0)


def test_config_json_round_trip_and_presets():
    for config in (unet_tiny(), unet_shapes(), unet_shapes(latent_channels=8, text_dim=128), UNetConfig()):
        assert cfg.from_dict(UNetConfig, cfg.to_dict(config)) == config
    shapes = unet_shapes(latent_channels=8)
    assert (shapes.in_channels, shapes.out_channels) == (17, 8)


@pytest.mark.parametrize(
    "field,value",
    [("channel_mult", ()), ("attention_levels", (3,)), ("num_groups", 7), ("head_dim", 12), ("temporal_kernel", 2),
     ("dropout", 1.0), ("num_res_blocks", 0), ("in_channels", 0)],
)  # fmt: skip
def test_config_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        unet_tiny(**{field: value})


def test_bad_inputs_raise_kinema_errors():
    config = unet_tiny()
    model = UNet3D(config)
    x, timestep, context, mask = inputs(config)
    with pytest.raises(KinemaError, match="multiples of 2"):
        model(x[..., :7], timestep, context, mask)
    with pytest.raises(KinemaError, match="in_channels|C_in|9"):
        model(x[:, :3], timestep, context, mask)
    with pytest.raises(KinemaError, match="text_dim"):
        model(x, timestep, context[..., :5], mask)
    with pytest.raises(KinemaError, match="bool"):
        model(x, timestep, context, mask.float())
    with pytest.raises(KinemaError, match="already temporal"):
        UNet3D.inflate_from_image(model)


def test_num_params_and_flops():
    config = unet_tiny()
    model = UNet3D(config)
    assert model.num_params() == sum(p.numel() for p in model.parameters()) > 0
    one = model.flops((1, config.in_channels, 3, 8, 8), 6)
    assert one > 0
    assert model.flops((2, config.in_channels, 3, 8, 8), 6) == 2 * one
    assert model.flops((1, config.in_channels, 3, 8, 8), 12) > one
    # Every conv is counted: the input conv alone is 2 * (H*W*T) * C_in * C * 9.
    assert one > 2 * 3 * 8 * 8 * config.in_channels * config.channels * 9
