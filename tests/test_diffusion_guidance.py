"""Classifier-free guidance: one batched forward, skipped at scale 1, rescale as diffusers, the interval."""

import pytest
import torch
from diffusers.guiders.guider_utils import rescale_noise_cfg

from kinema.diffusion.guidance import guided
from kinema.diffusion.processes import FlowMatching, VPDiffusion, model_to_denoiser
from kinema.diffusion.samplers import sample
from kinema.errors import KinemaError


class CountingNet:
    """A network whose output depends on the text context and the conditioning channels; counts its calls."""

    def __init__(self):
        self.batch_sizes = []

    def __call__(self, x_in, timestep, *, context):
        self.batch_sizes.append(x_in.shape[0])
        t = (timestep / 1000).view(-1, 1, 1, 1, 1)
        c = context.mean(dim=(1, 2)).view(-1, 1, 1, 1, 1)
        return torch.tanh(x_in[:, :2]) * (1 + c) + t * x_in[:, 2:3] - 0.3 * c


def inputs(batch=3):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 2, 2, 4, 4, generator=g)
    cond = {
        "context": torch.randn(batch, 5, 8, generator=g),
        "cond_channels": torch.randn(batch, 1, 2, 4, 4, generator=g),
    }
    uncond = {"context": torch.zeros(batch, 5, 8)}  # cond_channels shared
    return x, cond, uncond


@pytest.mark.parametrize("process", [FlowMatching(), VPDiffusion(prediction="v")], ids=["flow", "vp-v"])
def test_guidance_is_one_batched_forward_equal_to_two_passes(process):
    net = CountingNet()
    denoise = model_to_denoiser(net, process)
    x, cond, uncond = inputs()
    sigma = torch.full((3,), 0.7, dtype=torch.float64)
    out = guided(denoise, cond, uncond, 4.0)(x, sigma)
    assert net.batch_sizes == [6]
    x0_c = denoise(x, sigma, **cond)
    x0_u = denoise(x, sigma, context=uncond["context"], cond_channels=cond["cond_channels"])
    assert torch.allclose(out, x0_u + 4.0 * (x0_c - x0_u), atol=1e-5)
    # guidance is affine, so it is the same in the network's own output space
    out_c, out_u = (process.output_from_x0(x, sigma, d) for d in (x0_c, x0_u))
    assert torch.allclose(process.output_from_x0(x, sigma, out), out_u + 4.0 * (out_c - out_u), atol=1e-4)


def test_scale_one_runs_only_the_conditional_pass():
    net = CountingNet()
    denoise = model_to_denoiser(net, FlowMatching())
    x, cond, uncond = inputs()
    sigma = torch.full((3,), 0.5, dtype=torch.float64)
    out = guided(denoise, cond, uncond, 1.0)(x, sigma)
    assert net.batch_sizes == [3]
    assert torch.equal(out, denoise(x, sigma, **cond))
    net.batch_sizes.clear()
    process = FlowMatching()
    sample(guided(denoise, cond, uncond, 1.0), process.prior(x.shape), process.sigmas(5), process=process)
    assert net.batch_sizes == [3] * 5


def test_guidance_interval():
    net = CountingNet()
    process = FlowMatching()
    denoise = model_to_denoiser(net, process)
    x, cond, uncond = inputs()
    within = guided(denoise, cond, uncond, 3.0, interval=(0.2, 0.8))
    plain = guided(denoise, cond, uncond, 3.0)
    sample(within, process.prior(x.shape), process.sigmas(10), process=process)
    # sigmas 1.0 .. 0.1: only 0.8 .. 0.2 (7 levels) are guided, each as one batch of 6
    assert net.batch_sizes == [3, 3] + [6] * 7 + [3]
    inside = torch.full((3,), 0.5, dtype=torch.float64)
    outside = torch.full((3,), 0.9, dtype=torch.float64)
    assert torch.equal(within(x, inside), plain(x, inside))
    assert torch.equal(within(x, outside), denoise(x, outside, **cond))
    mixed = torch.tensor([0.5, 0.9, 0.1], dtype=torch.float64)  # per-sample levels: guided where inside
    out = within(x, mixed)
    assert torch.allclose(out[0], plain(x, mixed)[0]) and torch.allclose(out[1:], denoise(x, mixed, **cond)[1:])


@pytest.mark.parametrize("process", [VPDiffusion(prediction="eps"), FlowMatching()], ids=["vp-eps", "flow"])
def test_rescale_matches_diffusers_on_the_network_output(process):
    net = CountingNet()
    denoise = model_to_denoiser(net, process)
    x, cond, uncond = inputs()
    sigma = torch.tensor([0.3, 0.6, 0.9], dtype=torch.float64)
    out = guided(denoise, cond, uncond, 6.0, rescale=0.7, process=process)(x, sigma)
    # diffusers: noise_cfg = u + s (c - u), then rescale_noise_cfg(noise_cfg, c, 0.7) on the raw outputs
    t = process.timestep(sigma).float()
    raw_c = net(torch.cat([x, cond["cond_channels"]], 1), t, context=cond["context"])
    raw_u = net(torch.cat([x, cond["cond_channels"]], 1), t, context=uncond["context"])
    reference = rescale_noise_cfg(raw_u + 6.0 * (raw_c - raw_u), raw_c, guidance_rescale=0.7)
    assert torch.allclose(process.output_from_x0(x, sigma, out), reference, atol=1e-4)
    no_rescale = guided(denoise, cond, uncond, 6.0)(x, sigma)
    assert not torch.allclose(out, no_rescale, atol=1e-3)


def test_bad_inputs_name_the_fix():
    denoise = model_to_denoiser(CountingNet(), FlowMatching())
    x, cond, uncond = inputs()
    sigma = torch.full((3,), 0.5, dtype=torch.float64)
    with pytest.raises(KinemaError, match="uncond has keys \\['negative'\\]"):
        guided(denoise, cond, {**uncond, "negative": x}, 3.0)
    with pytest.raises(KinemaError, match="pad both to the same shape"):
        guided(denoise, cond, {"context": torch.zeros(3, 7, 8)}, 3.0)
    with pytest.raises(KinemaError, match="pass process="):
        guided(denoise, cond, uncond, 3.0, rescale=0.5)
    with pytest.raises(KinemaError, match="rescale must be in"):
        guided(denoise, cond, uncond, 3.0, rescale=1.5, process=FlowMatching())
    with pytest.raises(KinemaError, match="interval"):
        guided(denoise, cond, uncond, 3.0, interval=(0.8, 0.2))
    with_none = guided(lambda x, s, mask=None, **kw: denoise(x, s, **kw), {**cond, "mask": None}, uncond, 2.0)
    assert with_none(x, sigma).shape == x.shape
