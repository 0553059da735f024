"""Noise processes: forward noise and schedules against diffusers, targets and their inverses, weights, configs."""

import dataclasses

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from kinema.config import from_dict, to_dict
from kinema.diffusion.processes import (
    FlowMatching,
    VPDiffusion,
    model_to_denoiser,
    process_from_dict,
    process_to_dict,
    training_loss,
)
from kinema.errors import KinemaError

SCHEDULES = {
    "linear": {"beta_schedule": "linear"},
    "scaled_linear": {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
    "cosine": {"beta_schedule": "squaredcos_cap_v2"},
}
PROCESSES = [
    FlowMatching(),
    FlowMatching(shift=3.0, training_sigmas="uniform"),
    VPDiffusion(prediction="eps"),
    VPDiffusion(schedule="scaled_linear", prediction="v"),
    VPDiffusion(schedule="cosine", prediction="x0"),
]


@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_vp_add_noise_matches_ddpm_scheduler(schedule):
    process = VPDiffusion(schedule=schedule)
    reference = DDPMScheduler(**SCHEDULES[schedule])
    x0, eps = torch.randn(6, 3, 2, 4, 4), torch.randn(6, 3, 2, 4, 4)
    t = torch.tensor([0, 1, 250, 500, 998, 999])
    ours = process.add_noise(x0, eps, process.sigma_from_timestep(t))
    assert (ours - reference.add_noise(x0, eps, t)).abs().max() < 1e-4
    assert torch.allclose(process.alphas_cumprod().float(), reference.alphas_cumprod, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
@pytest.mark.parametrize("num_steps", [1, 7, 50, 1000])
def test_vp_spacings_match_ddim_timesteps(spacing, num_steps):
    process = VPDiffusion()
    reference = DDIMScheduler(timestep_spacing=spacing)
    reference.set_timesteps(num_steps)
    t = process.timesteps(num_steps, spacing=spacing)
    assert t.tolist() == reference.timesteps.tolist()
    sigmas = process.sigmas(num_steps, spacing=spacing)
    expected = torch.sqrt(1 - reference.alphas_cumprod.double()[reference.timesteps])
    assert torch.allclose(sigmas[:-1], expected, atol=1e-6) and sigmas[-1] == 0


def test_flow_schedule_is_the_shifted_uniform_grid():
    process = FlowMatching(shift=3.0)
    s = torch.linspace(1, 0, 11, dtype=torch.float64)
    assert torch.allclose(process.sigmas(10), 3 * s / (1 + 2 * s))
    assert process.sigmas(10)[0] == 1 and process.sigmas(10)[-1] == 0
    assert process.sigmas(10)[5] > 0.5  # the shift spends more steps at high noise
    # a sampling shift replaces the process's (the training noise levels stay the process's)
    assert torch.equal(process.sigmas(10, shift=5.0), FlowMatching(shift=5.0).sigmas(10))
    assert torch.equal(process.sigmas(10, shift=3.0), process.sigmas(10))


def test_vp_flow_spacing_is_uniform_in_the_rectified_flow_noise_level():
    vp = VPDiffusion()
    sigmas = vp.sigmas(10)
    u = sigmas / (vp.alpha(sigmas) + sigmas)  # the flow-matching sigma of equal SNR
    assert torch.allclose(u, torch.linspace(u[0].item(), 0.0, 11, dtype=torch.float64))
    assert sigmas[0] == pytest.approx(torch.sqrt(1 - vp.alphas_cumprod()[-1]).item())  # the chain's top


@pytest.mark.parametrize("process", PROCESSES, ids=repr)
def test_target_and_x0_from_output_are_inverse(process):
    x0, eps = torch.randn(5, 4, 3, 2, 2), torch.randn(5, 4, 3, 2, 2)
    sigma = torch.tensor([0.05, 0.3, 0.6, 0.9, 0.99], dtype=torch.float64)
    x_t = process.add_noise(x0, eps, sigma)
    assert torch.allclose(process.x0_from_output(x_t, sigma, process.target(x0, eps, sigma)), x0, atol=1e-4)
    output = torch.randn_like(x0)
    roundtrip = process.output_from_x0(x_t, sigma, process.x0_from_output(x_t, sigma, output))
    assert torch.allclose(roundtrip, output, atol=1e-3)


def test_flow_matching_is_rectified_flow():
    process = FlowMatching()
    x0, eps = torch.randn(3, 2), torch.randn(3, 2)
    sigma = torch.tensor([0.0, 0.25, 1.0], dtype=torch.float64)
    x_t = process.add_noise(x0, eps, sigma)
    assert torch.allclose(x_t[0], x0[0]) and torch.allclose(x_t[2], eps[2])
    assert torch.allclose(x_t[1], 0.75 * x0[1] + 0.25 * eps[1])
    assert torch.equal(process.target(x0, eps, sigma), eps - x0)
    assert torch.allclose(process.timestep(sigma), torch.tensor([0.0, 250.0, 1000.0], dtype=torch.float64))


def test_vp_timestep_inverts_sigma_from_timestep():
    process = VPDiffusion(schedule="cosine")
    t = torch.tensor([0.0, 1.0, 17.0, 17.25, 500.5, 998.0, 999.0])
    assert torch.allclose(process.timestep(process.sigma_from_timestep(t)), t.double(), atol=1e-6)


def test_training_sigmas():
    g = torch.Generator().manual_seed(0)
    uniform = FlowMatching(training_sigmas="uniform").sample_training_sigmas(20000, generator=g)
    assert uniform.dtype == torch.float64 and 0 <= uniform.min() and uniform.max() <= 1
    assert uniform.mean().item() == pytest.approx(0.5, abs=0.01)
    logit = FlowMatching(logit_mean=1.0).sample_training_sigmas(20000, generator=g)
    assert torch.logit(logit).mean().item() == pytest.approx(1.0, abs=0.03)
    assert torch.logit(logit).std().item() == pytest.approx(1.0, abs=0.03)
    shifted = FlowMatching(shift=3.0, training_sigmas="uniform").sample_training_sigmas(20000, generator=g)
    assert shifted.median() > 0.7  # shift(0.5) = 0.75
    vp = VPDiffusion()
    sigma = vp.sample_training_sigmas(20000, generator=g)
    t = vp.timestep(sigma)
    assert torch.allclose(t, t.round(), atol=1e-6) and t.min() >= 0 and t.max() <= 999
    assert t.mean().item() == pytest.approx(499.5, abs=10)
    a = VPDiffusion().sample_training_sigmas(8, generator=torch.Generator().manual_seed(1))
    b = VPDiffusion().sample_training_sigmas(8, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


def test_min_snr_weights():
    sigma = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    snr = (1 - sigma**2) / sigma**2  # 99, 3, 0.23
    clipped = snr.clamp(max=5.0)
    for prediction, expected in [("eps", clipped / snr), ("v", clipped / (snr + 1)), ("x0", clipped)]:
        weights = VPDiffusion(prediction=prediction, min_snr_gamma=5.0).loss_weight(sigma)
        assert torch.allclose(weights, expected)
    assert torch.equal(VPDiffusion().loss_weight(sigma), torch.ones(3, dtype=torch.float64))
    assert torch.equal(FlowMatching().loss_weight(sigma), torch.ones(3, dtype=torch.float64))
    # in eps units the weight is 1 up to SNR gamma, then gamma / SNR
    eps_weights = VPDiffusion(min_snr_gamma=5.0).loss_weight(sigma)
    assert eps_weights[1:].tolist() == [1.0, 1.0] and eps_weights[0].item() == pytest.approx(5 / 99)


def test_model_to_denoiser_concatenates_conditioning_and_passes_the_timestep():
    process = VPDiffusion(prediction="x0")
    seen = {}

    def model(x_in, timestep, *, context):
        seen.update(shape=tuple(x_in.shape), timestep=timestep, context=context)
        return x_in[:, :2] * 0.5

    denoise = model_to_denoiser(model, process)
    x, cond = torch.randn(2, 2, 3, 4, 4), torch.ones(2, 3, 3, 4, 4)
    sigma = process.sigma_from_timestep(torch.tensor([10.0, 700.0]))
    out = denoise(x, sigma, cond_channels=cond, context="text")
    assert seen["shape"] == (2, 5, 3, 4, 4) and seen["context"] == "text"
    assert seen["timestep"].dtype == torch.float32 and torch.allclose(seen["timestep"], torch.tensor([10.0, 700.0]))
    assert torch.allclose(out, 0.5 * x)


def test_training_loss_is_zero_for_the_exact_target_and_masks():
    process = FlowMatching()
    x0 = torch.randn(4, 2, 3, 4, 4)

    def oracle(x_in, timestep):
        # recovers eps - x0 from x_t, knowing x0: the loss of the perfect network is 0
        sigma = (timestep.double() / 1000).view(-1, 1, 1, 1, 1)
        return ((x_in - x0) / sigma).float()

    assert training_loss(oracle, process, x0, generator=torch.Generator().manual_seed(0)) < 1e-6
    zero = lambda x_in, timestep: torch.zeros_like(x_in)  # noqa: E731
    full = training_loss(zero, process, x0, generator=torch.Generator().manual_seed(0))
    assert full.item() == pytest.approx(2.0, rel=0.2)  # E|eps - x0|^2 = 2
    mask = torch.zeros(4, 1, 3, 4, 4)
    mask[:, :, 0] = 1
    masked = training_loss(zero, process, x0, generator=torch.Generator().manual_seed(0), loss_mask=mask)
    g = torch.Generator().manual_seed(0)
    sigma = process.sample_training_sigmas(4, generator=g)
    eps = torch.randn(x0.shape, generator=g)
    expected = ((eps - x0)[:, :, 0] ** 2).mean()
    assert masked.item() == pytest.approx(expected.item(), rel=1e-5)
    assert sigma.shape == (4,)


def test_configs_check_fields_and_round_trip():
    with pytest.raises(ValueError, match="FlowMatching.shift must be > 0"):
        FlowMatching(shift=0.0)
    with pytest.raises(ValueError, match="training_sigmas must be 'uniform' or 'logit_normal'"):
        FlowMatching(training_sigmas="cosine")
    with pytest.raises(ValueError, match="VPDiffusion.schedule must be"):
        VPDiffusion(schedule="sigmoid")
    with pytest.raises(ValueError, match="VPDiffusion.prediction must be 'eps', 'v' or 'x0'"):
        VPDiffusion(prediction="epsilon")
    with pytest.raises(ValueError, match="beta_range"):
        VPDiffusion(beta_range=(0.02, 0.0001))
    with pytest.raises(TypeError):
        FlowMatching(3.0)  # keyword-only
    for process in PROCESSES + [VPDiffusion(beta_range=(1e-4, 0.03), min_snr_gamma=5.0)]:
        assert from_dict(type(process), to_dict(process)) == process
        assert process_from_dict(process_to_dict(process)) == process
    assert process_to_dict(FlowMatching())["kind"] == "flow_matching"
    with pytest.raises(KinemaError, match="unknown process kind"):
        process_from_dict({"kind": "edm"})
    assert dataclasses.replace(FlowMatching(), shift=5.0).shift == 5.0


def test_step_counts_are_checked():
    with pytest.raises(KinemaError, match="num_steps must be an integer >= 1"):
        FlowMatching().sigmas(0)
    with pytest.raises(KinemaError, match="at most num_train_timesteps=1000"):
        VPDiffusion().sigmas(1001, spacing="trailing")
    with pytest.raises(KinemaError, match="unknown timestep spacing"):
        VPDiffusion().sigmas(10, spacing="karras")
    assert len(VPDiffusion().sigmas(1500)) == 1501  # the flow grid is not tied to the chain
