"""kinema.models.vae: shapes, causality, chunked == whole, tiling, latent stats, diffusers parity, training."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from kinema import config as cfg
from kinema.errors import KinemaError
from kinema.models.checkpoint import load_model, save_model
from kinema.models.vae import (
    VAEConfig,
    VideoVAE,
    measure_latent_stats,
    run_tiles,
    tile_starts,
    vae_shapes,
    vae_tiny,
    vae_wan21,
)
from kinema.models.vae_loss import VAELossConfig, kl_divergence, vae_loss
from kinema.precision import autocast, resolve


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_vae(**overrides) -> VideoVAE:
    return VideoVAE(vae_tiny(**overrides)).eval()


def video(frames: int, size: int = 16, batch: int = 1) -> torch.Tensor:
    return torch.rand(batch, 3, frames, size, size) * 2 - 1


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return 10 * math.log10(4.0 / F.mse_loss(a.float(), b.float()).item())  # peak-to-peak 2 in [-1, 1]


# -- config


def test_config_validates_with_messages_naming_the_field():
    with pytest.raises(ValueError, match=r"channel_mult.*spatial factors are \(4, 8, 16\)"):
        VAEConfig(channel_mult=(1, 2), temporal_downsample=(True,))
    with pytest.raises(ValueError, match="temporal_downsample must be 3 bools"):
        VAEConfig(temporal_downsample=(True, True))
    with pytest.raises(ValueError, match=r"temporal factors are \(1, 2, 4\)"):
        VAEConfig(temporal_downsample=(True, True, True))
    with pytest.raises(ValueError, match="latent_mean must have latent_channels = 16"):
        VAEConfig(latent_mean=(0.0, 1.0))
    with pytest.raises(ValueError, match="latent_std must be all > 0"):
        VAEConfig(latent_channels=2, latent_std=(1.0, 0.0))
    with pytest.raises(ValueError, match="base_channels must be a positive int"):
        VAEConfig(base_channels=0)


@pytest.mark.parametrize("spatial", [4, 8, 16])
@pytest.mark.parametrize("temporal", [1, 2, 4])
def test_presets_reach_each_factor(spatial, temporal):
    c = vae_tiny(spatial_factor=spatial, temporal_factor=temporal)
    assert (c.spatial_factor, c.temporal_factor) == (spatial, temporal)
    assert vae_shapes(spatial_factor=spatial, temporal_factor=temporal).spatial_factor == spatial


def test_config_json_round_trip():
    c = vae_wan21()
    assert cfg.from_dict(VAEConfig, cfg.to_dict(c)) == c
    assert c.latent_mean is not None and len(c.latent_mean) == 16


def test_latent_shape_and_frame_errors_name_the_nearest_valid_sizes():
    c = vae_tiny()  # 4x spatial, 4x temporal, 4 channels
    assert c.latent_shape((2, 3, 17, 64, 32)) == (2, 4, 5, 16, 8)
    assert c.latent_shape((3, 1, 16, 16)) == (4, 1, 4, 4)
    assert c.frames_for_latents(5) == 17
    with pytest.raises(KinemaError, match="18 frames.*use 17 or 21"):
        c.latent_shape((1, 3, 18, 16, 16))
    with pytest.raises(KinemaError, match="use 1 or 5"):
        c.latent_shape((1, 3, 0, 16, 16))
    with pytest.raises(KinemaError, match="multiples of 4: height 16 or 20"):
        c.latent_shape((1, 3, 5, 18, 16))
    with pytest.raises(KinemaError, match="4 channels; this VAE takes 3"):
        c.latent_shape((1, 4, 5, 16, 16))


# -- shapes, causality, chunking


@pytest.mark.parametrize("frames", [1, 5, 17, 33])
def test_encode_decode_shapes(frames):
    vae = tiny_vae()
    x = video(frames, batch=2)
    with torch.no_grad():
        z = vae.encode(x)
        assert z.shape == (2, 4, 1 + (frames - 1) // 4, 4, 4)
        out = vae.decode(z)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert out.abs().max() <= 1.0


@pytest.mark.parametrize("spatial,temporal", [(8, 2), (16, 1)])
def test_shapes_for_other_factors(spatial, temporal):
    vae = tiny_vae(spatial_factor=spatial, temporal_factor=temporal)
    x = video(1 + 2 * temporal, size=2 * spatial)
    with torch.no_grad():
        z = vae.encode(x)
        assert z.shape == (1, 4, 3, 2, 2)
        assert vae.decode(z).shape == x.shape


def test_encoder_and_decoder_are_causal():
    vae = tiny_vae()
    x = video(17)
    changed = x.clone()
    changed[:, :, 9] = -changed[:, :, 9]  # frame 9 lies in latent frame 1 + (9 - 1) // 4 = 3
    with torch.no_grad():
        z, z2 = vae.encode(x), vae.encode(changed)
        assert torch.equal(z[:, :, :3], z2[:, :, :3])
        assert not torch.allclose(z[:, :, 3], z2[:, :, 3])
        z3 = z.clone()
        z3[:, :, 2] += 1.0  # latent frame 2 decodes to frames 5..8
        out, out3 = vae.decode(z), vae.decode(z3)
    assert torch.equal(out[:, :, :5], out3[:, :, :5])
    assert not torch.allclose(out[:, :, 5:9], out3[:, :, 5:9])


def test_first_frame_is_encoded_on_its_own():
    vae = tiny_vae()
    x = video(17)
    with torch.no_grad():
        assert torch.allclose(vae.encode(x)[:, :, :1], vae.encode(x[:, :, :1]), atol=1e-6)


@pytest.mark.parametrize("padding", ["zeros", "replicate"])
def test_replicate_padding_encodes_a_still_clip_alike_in_every_latent_frame(padding):
    vae = tiny_vae(causal_padding=padding)
    still, x = video(1).expand(-1, -1, 17, -1, -1), video(17)
    with torch.no_grad():
        z = vae.encode(still)
        causal = vae.encode(x)[:, :, :2], vae.encode(x[:, :, :5])
    torch.testing.assert_close(*causal, atol=1e-6, rtol=0)  # still causal: later frames do not reach back
    spread = (z - z[:, :, -1:]).abs().amax(dim=(0, 1, 3, 4))  # each latent frame against the last one
    if padding == "replicate":
        assert spread.max() < 1e-5, spread
    else:  # zeros: the first latent frames see zeros for a past and come out unlike the rest
        assert spread[0] > 1e-3, spread


def test_causal_padding_is_checked():
    with pytest.raises(ValueError, match="causal_padding must be one of"):
        tiny_vae(causal_padding="reflect")


@pytest.mark.parametrize("padding", ["zeros", "replicate"])
@pytest.mark.parametrize("spatial,temporal", [(4, 4), (8, 2), (4, 1)])
def test_chunked_equals_whole_clip(spatial, temporal, padding):
    vae = tiny_vae(spatial_factor=spatial, temporal_factor=temporal, causal_padding=padding)
    x = video(1 + 6 * temporal, size=2 * spatial)  # 7 latent frames
    with torch.no_grad():
        mean, logvar = vae.encode_posterior(x, chunked=False)
        z = vae.encode(x, chunked=False)
        whole = vae.decode(z, chunked=False)
        for chunk in (1, 2, 3):
            m, lv = vae.encode_posterior(x, chunk_latents=chunk)
            torch.testing.assert_close(m, mean, atol=1e-5, rtol=0)
            torch.testing.assert_close(lv, logvar, atol=1e-5, rtol=0)
            torch.testing.assert_close(vae.decode(z, chunk_latents=chunk), whole, atol=1e-5, rtol=0)
        recon, m, _ = vae(x, sample=False)  # the training pass is the same function
    torch.testing.assert_close(m, mean, atol=1e-5, rtol=0)
    torch.testing.assert_close(recon.clamp(-1, 1), whole, atol=1e-5, rtol=0)


# -- tiling


def test_tiles_cover_with_the_overlap():
    assert tile_starts(16, 16, 4) == [0]
    assert tile_starts(16, 8, 2) == [0, 6, 8]
    assert tile_starts(20, 8, 2) == [0, 6, 12]
    for size, tile, overlap in [(16, 8, 2), (37, 10, 3), (9, 4, 1)]:
        starts = tile_starts(size, tile, overlap)
        assert starts[0] == 0 and starts[-1] + tile == size
        assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))


def test_blending_is_exact_for_a_position_independent_function():
    # For an op that does not care where it is (per-pixel, or per aligned block), the weights average
    # identical tile outputs, so any gap or double count in the blend would show.
    x = torch.randn(1, 3, 2, 24, 40)
    down = lambda t: F.avg_pool3d(t, (1, 4, 4)) * 2 + 1  # noqa: E731
    out = run_tiles(down, x, tile=4, overlap=1, scale_in=4, scale_out=1)
    torch.testing.assert_close(out, down(x), atol=1e-6, rtol=0)
    up = lambda t: F.interpolate(t, scale_factor=(1, 4, 4)).square()  # noqa: E731
    z = torch.randn(1, 3, 2, 6, 10)
    torch.testing.assert_close(run_tiles(up, z, tile=3, overlap=1, scale_in=1, scale_out=4), up(z), atol=1e-6, rtol=0)


def test_blending_hides_tile_edges():
    # A zero-padded blur darkens near every tile's edge, as a VAE's padding does. Cut into tiles with no
    # overlap, those edges show as seams (steps larger than any in the untiled output); blended across
    # an overlap, no step is larger than the untiled output's own.
    x = F.interpolate(torch.rand(1, 3, 2, 8, 8), size=(2, 48, 48), mode="trilinear")
    blur = lambda t: F.avg_pool3d(t, (1, 7, 7), stride=1, padding=(0, 3, 3))  # noqa: E731
    whole = blur(x)
    hard = run_tiles(blur, x, tile=16, overlap=0, scale_in=1, scale_out=1)
    soft = run_tiles(blur, x, tile=16, overlap=6, scale_in=1, scale_out=1)
    biggest_step = lambda y: (y[..., 1:] - y[..., :-1]).abs().max()  # noqa: E731
    assert biggest_step(hard) > 1.3 * biggest_step(whole)
    assert biggest_step(soft) <= biggest_step(whole)
    assert (soft - whole).abs().mean() < 0.5 * (hard - whole).abs().mean()


def test_tiled_encode_and_decode():
    vae = tiny_vae()
    x = F.interpolate(video(5, size=8), size=(5, 32, 32), mode="trilinear")
    with torch.no_grad():
        z = vae.encode(x)
        assert torch.allclose(vae.encode(x, tile=32), z, atol=1e-6)  # one tile covering the frame = no tiling
        assert torch.allclose(vae.decode(z, tile=32), vae.decode(z), atol=1e-6)
        tiled_z = vae.encode(x, tile=16, chunk_latents=1)
        tiled = vae.decode(z, tile=16)
    assert tiled_z.shape == z.shape and tiled.shape == x.shape
    assert torch.isfinite(tiled).all() and tiled.abs().max() <= 1.0
    # How close tiles come to the whole frame depends on a trained model: see the slow overfit test.


# -- latent statistics


def test_latent_normalisation_round_trip():
    vae = tiny_vae()
    batches = [video(5, batch=2) for _ in range(3)]
    mean, std = measure_latent_stats(vae, batches)
    assert len(mean) == len(std) == 4 and all(s > 0 for s in std)
    normed = vae.with_latent_stats(mean, std)
    assert normed.config.latent_mean == mean and normed.config.latent_std == std
    with torch.no_grad():
        z = torch.cat([normed.encode(b) for b in batches])
        flat = z.transpose(0, 1).flatten(1)
        torch.testing.assert_close(flat.mean(1), torch.zeros(4), atol=1e-5, rtol=0)
        torch.testing.assert_close(flat.std(1, correction=0), torch.ones(4), atol=1e-4, rtol=0)
        # encode normalises and decode undoes it: the reconstruction does not change.
        x = batches[0]
        torch.testing.assert_close(normed.decode(normed.encode(x)), vae.decode(vae.encode(x)), atol=1e-5, rtol=0)
        m, _ = normed.encode_posterior(x)
        expected = (m - torch.tensor(mean).view(1, 4, 1, 1, 1)) / torch.tensor(std).view(1, 4, 1, 1, 1)
        torch.testing.assert_close(normed.encode(x), expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(KinemaError, match="no batches"):
        measure_latent_stats(vae, [])


def test_sampling_the_posterior_follows_the_generator():
    vae = tiny_vae()
    x = video(5)
    with torch.no_grad():
        a = vae.encode(x, sample=True, generator=torch.Generator().manual_seed(1))
        b = vae.encode(x, sample=True, generator=torch.Generator().manual_seed(1))
        c = vae.encode(x, sample=True, generator=torch.Generator().manual_seed(2))
        assert torch.equal(a, b) and not torch.allclose(a, c)
        assert not torch.allclose(a, vae.encode(x))


# -- diffusers parity


def _random_wan_vae(temperal_downsample):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    model = diffusers.AutoencoderKLWan(
        base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1, temperal_downsample=temperal_downsample,
        latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[1.5, 0.5, 2.0, 1.0],
    ).eval()
    with torch.no_grad():  # make the norms and biases non-trivial, so a wrong mapping would show
        for name, p in model.named_parameters():
            if name.endswith("gamma") or name.endswith("bias"):
                p.add_(0.2 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("temperal_downsample", [[False, True, True], [False, False, True], [False, False, False]])
def test_matches_diffusers_autoencoder_kl_wan(temperal_downsample):
    theirs = _random_wan_vae(temperal_downsample)
    ours = VideoVAE.from_diffusers(theirs).eval()
    assert ours.config.latent_std == (1.5, 0.5, 2.0, 1.0)
    assert ours.config.temporal_factor == 2 ** sum(temperal_downsample)
    x = video(9, size=32, batch=2)
    with torch.no_grad():
        posterior = theirs.encode(x).latent_dist
        mean, logvar = ours.encode_posterior(x)
        torch.testing.assert_close(mean, posterior.mean, atol=1e-4, rtol=0)
        torch.testing.assert_close(logvar, posterior.logvar, atol=1e-4, rtol=0)
        expected = theirs.decode(posterior.mean).sample
        recon = ours.decode(ours.encode(x))
    torch.testing.assert_close(recon, expected, atol=1e-4, rtol=0)
    assert expected.std() > 0.05  # not a degenerate (saturated or flat) output


def test_to_diffusers_round_trip_and_unsupported_options():
    diffusers = pytest.importorskip("diffusers")
    ours = tiny_vae(spatial_factor=8)
    theirs = ours.to_diffusers()
    back = VideoVAE.from_diffusers(theirs)
    assert back.config == dataclasses.replace(ours.config, latent_mean=(0.0,) * 4, latent_std=(1.0,) * 4)
    for name, tensor in ours.state_dict().items():
        assert torch.equal(back.state_dict()[name], tensor), name
    residual = diffusers.AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], is_residual=True,
                                          latents_mean=[0.0] * 4, latents_std=[1.0] * 4)
    with pytest.raises(KinemaError, match="is_residual"):
        VideoVAE.from_diffusers(residual)


# -- saving, precision, cost


def test_save_load_round_trip(tmp_path):
    vae = VideoVAE(vae_tiny(latent_mean=(0.0, 1.0, 2.0, 3.0), latent_std=(1.0, 2.0, 3.0, 4.0))).eval()
    save_model(vae, tmp_path, "vae")
    loaded = load_model(tmp_path, "vae").eval()
    assert isinstance(loaded, VideoVAE) and loaded.config == vae.config
    x = video(5)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode(x), vae.encode(x), atol=0, rtol=0)


def test_bf16_autocast_is_close_to_fp32():
    vae = tiny_vae()
    x = video(9, size=32)
    with torch.no_grad():
        z32 = vae.encode(x)
        out32 = vae.decode(z32)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            z16 = vae.encode(x)
            out16 = vae.decode(z32)
    assert z16.dtype == out16.dtype == torch.float32  # outputs are widened back
    assert (z16 - z32).abs().max() < 0.05 * z32.abs().max()
    assert (out16 - out32).abs().mean() < 0.02 * out32.abs().mean() + 1e-3
    vae.to(torch.bfloat16)  # bf16 weights too: inputs are cast to them
    with torch.no_grad():
        zb = vae.encode(x)
        assert zb.dtype == torch.float32 and (zb - z32).abs().max() < 0.05 * z32.abs().max()
        assert vae.decode(z32).shape == x.shape


def test_num_params_and_flops():
    vae = tiny_vae()
    assert vae.num_params() == sum(p.numel() for p in vae.parameters()) > 0
    one, two = vae.flops((1, 3, 17, 32, 32)), vae.flops((2, 3, 17, 32, 32))
    assert two["encode"] == 2 * one["encode"] and two["decode"] == 2 * one["decode"]
    assert one["forward"] == one["encode"] + one["decode"]
    # conv_in alone: 2 * (3 * 27) * 8 multiply-adds for every output voxel.
    assert one["encode"] > 2 * 3 * 27 * 8 * 17 * 32 * 32
    longer = vae.flops((1, 3, 33, 32, 32))
    assert 1.8 < longer["decode"] / one["decode"] < 2.0  # 33 frames ~ twice 17


def test_bad_inputs_raise_kinema_errors():
    vae = tiny_vae()
    with pytest.raises(KinemaError, match="use 5 or 9"):
        vae.encode(video(6))
    with pytest.raises(KinemaError, match=r"\(B, C, T, H, W\)"):
        vae.encode(torch.zeros(3, 5, 16, 16))
    with pytest.raises(KinemaError, match=r"latents \(B, 4, t, h, w\)"):
        vae.decode(torch.zeros(1, 3, 2, 4, 4))
    with pytest.raises(KinemaError, match="tile must be a multiple of the spatial factor 4"):
        vae.decode(torch.zeros(1, 4, 2, 4, 4), tile=6)


# -- the training objective


def test_vae_loss_terms():
    x = video(5)
    zeros = torch.zeros(1, 4, 2, 4, 4)
    w = VAELossConfig(temporal_weight=0.5)
    perfect = vae_loss(x, x.clone(), zeros, zeros, weights=w)
    assert all(perfect[k].item() == 0 for k in ("loss", "l1", "mse", "kl", "temporal"))
    shifted = vae_loss(x, x + 0.1, zeros, zeros, weights=w)  # the same error on every frame: no flicker
    assert shifted["l1"].item() == pytest.approx(0.1, abs=1e-6) and shifted["temporal"].item() < 1e-6
    flicker = x + 0.1 * torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0]).view(1, 1, 5, 1, 1)
    assert vae_loss(x, flicker, zeros, zeros, weights=w)["temporal"].item() == pytest.approx(0.2, abs=1e-6)
    mean, logvar = torch.full_like(zeros, 2.0), torch.full_like(zeros, math.log(3.0))
    assert kl_divergence(mean, logvar).mean().item() == pytest.approx(0.5 * (4 + 3 - 1 - math.log(3)), rel=1e-6)
    out = vae_loss(x, flicker, mean, logvar, weights=w)
    expected = 0.1 * out["l1"] + out["mse"] + 1e-6 * out["kl"] + 0.5 * out["temporal"]
    torch.testing.assert_close(out["loss"], expected)
    with pytest.raises(ValueError, match="l1_weight and mse_weight are both 0"):
        VAELossConfig(l1_weight=0, mse_weight=0)


def test_a_retired_field_reads_at_its_no_op_value_only():
    from kinema import config as cfg

    assert cfg.from_dict(VAELossConfig, {"mse_weight": 1.0, "adversarial_weight": 0.0}) == VAELossConfig()
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['adversarial_weight'\]"):
        cfg.from_dict(VAELossConfig, {"adversarial_weight": 0.1})


# -- overfitting a few shapes clips


def _overfit(steps: int) -> tuple[VideoVAE, torch.Tensor]:
    """A small VAE trained on 4 shapes clips (32x32, 5 frames) with the default objective, and the clips."""
    from kinema.data.shapes import ShapesDataset

    torch.manual_seed(0)
    data = ShapesDataset(size=32, frames=5, length=4, seed=0)
    x = torch.stack([data[i]["video"] for i in range(4)])
    vae = VideoVAE(vae_tiny(base_channels=16, latent_channels=8))
    opt = torch.optim.Adam(vae.parameters(), lr=2e-3)
    warmup = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / 20))
    weights = VAELossConfig()
    precision = resolve("auto", "cpu")  # as training picks it: bf16 only where it is fast
    for _ in range(steps):
        with autocast(precision, "cpu"):
            recon, mean, logvar = vae(x)  # a posterior sample, as in training
        loss = vae_loss(x, recon, mean, logvar, weights=weights)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        warmup.step()
    return vae.eval(), x


def test_overfits_four_shapes_clips_quickly():
    vae, x = _overfit(steps=200)  # ~26-30 dB across seeds; the start ("background everywhere") is slowest
    with torch.no_grad():
        assert psnr(vae.decode(vae.encode(x)), x) > 22.0  # "background everywhere" scores 16 dB


@pytest.mark.slow
def test_overfits_four_shapes_clips_to_30db_and_tiles_cleanly():
    vae, x = _overfit(steps=400)
    with torch.no_grad():
        z = vae.encode(x)
        whole = psnr(vae.decode(z), x)
        tiled = psnr(vae.decode(z, tile=24), x)  # 24 px tiles on 32 px frames: every tile has inner edges
    assert whole > 30.0
    assert tiled > 25.0
