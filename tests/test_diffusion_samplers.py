"""Samplers: equal to diffusers' schedulers step for step, exact on Gaussian data, and their contract."""

import math

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    UniPCMultistepScheduler,
)

from kinema.diffusion.processes import FlowMatching, VPDiffusion, model_to_denoiser
from kinema.diffusion.samplers import STEPS, sample
from kinema.errors import KinemaError

SHAPE = (2, 3, 2, 4, 4)  # (B, C, T, H, W)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are tiny: a second thread only adds contention on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
DIFFUSERS_PREDICTION = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}


def diffusers_schedule(schedule: str) -> dict:
    """diffusers' config for our beta schedule (its scaled_linear defaults to DDPM's beta range)."""
    if schedule == "cosine":
        return {"beta_schedule": "squaredcos_cap_v2"}
    if schedule == "scaled_linear":
        return {"beta_schedule": schedule, "beta_start": 0.00085, "beta_end": 0.012}
    return {"beta_schedule": schedule}


def smooth_x0(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A bounded, nonlinear stand-in for a network's clean estimate, depending on x and the timestep."""
    w = torch.tensor([[0.9, -0.3, 0.2], [0.1, 0.7, -0.4], [-0.2, 0.5, 0.8]])
    tt = (t.float() / 1000).view(-1, 1, 1, 1, 1)
    return torch.tanh(torch.einsum("ij,bj...->bi...", w, x)) * (0.8 + 0.4 * tt) + 0.1 * torch.sin(6 * tt)


def vp_network(prediction: str, alphas_cumprod: torch.Tensor):
    """The raw output a VP network with clean estimate `smooth_x0` gives, built on diffusers' own table."""

    def net(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        abar = alphas_cumprod[t.round().long()].view(-1, 1, 1, 1, 1)
        alpha, sigma, x0 = abar.sqrt(), (1 - abar).sqrt(), smooth_x0(x, t)
        return {"eps": (x - alpha * x0) / sigma, "v": (alpha * x - x0) / sigma, "x0": x0}[prediction]

    return net


def flow_network(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The velocity a flow network with clean estimate `smooth_x0` gives (t = 1000 sigma)."""
    return (x - smooth_x0(x, t)) / (t.float() / 1000).view(-1, 1, 1, 1, 1)


def start() -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))


def run_diffusers(scheduler, net, num_steps: int, *, flow_time: bool = False, **step_kwargs) -> torch.Tensor:
    """diffusers' denoising loop. flow_time feeds the network 1000 * sigma (DPM and UniPC round timesteps to ints)."""
    x = start()
    for i, t in enumerate(scheduler.timesteps):
        t_net = scheduler.sigmas[i] * 1000 if flow_time else t
        x = scheduler.step(net(x, t_net.expand(SHAPE[0])), t, x, **step_kwargs).prev_sample
    return x


def vp_sigmas_of(scheduler) -> torch.Tensor:
    """diffusers' DPM/UniPC sigmas are sqrt((1 - abar) / abar); ours are sqrt(1 - abar)."""
    s = scheduler.sigmas.double()
    return s / torch.sqrt(1 + s * s)


# ----------------------------------------------------------------------------------------------
# diffusers as the reference: max abs difference < 1e-4 over whole 20-step trajectories, fp32


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_euler_matches_flow_match_euler(shift):
    process = FlowMatching(shift=shift)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    scheduler.set_timesteps(sigmas=torch.linspace(1, 0, 21)[:-1].numpy())  # diffusers shifts them
    assert torch.allclose(scheduler.sigmas.double(), process.sigmas(20), atol=1e-6)
    reference = run_diffusers(scheduler, flow_network, 20)
    ours = sample(model_to_denoiser(flow_network, process), start(), process.sigmas(20), process=process)
    assert (ours - reference).abs().max() < 1e-4


@pytest.mark.parametrize(
    "prediction, schedule, eta",
    [("eps", "linear", 0.0), ("v", "scaled_linear", 0.0), ("x0", "cosine", 0.0), ("eps", "linear", 0.5)],
)
def test_ddim_matches_ddim_scheduler(prediction, schedule, eta):
    process = VPDiffusion(schedule=schedule, prediction=prediction)
    scheduler = DDIMScheduler(
        **diffusers_schedule(schedule),
        prediction_type=DIFFUSERS_PREDICTION[prediction],
        clip_sample=False,
        timestep_spacing="leading",  # DDIMScheduler steps to t - T // n, consistent only with leading
    )
    scheduler.set_timesteps(20)
    net = vp_network(prediction, scheduler.alphas_cumprod)
    reference = run_diffusers(scheduler, net, 20, eta=eta, generator=torch.Generator().manual_seed(7))
    ours = sample(
        model_to_denoiser(net, process),
        start(),
        process.sigmas(20, spacing="leading"),
        process=process,
        method="ddim",
        eta=eta,
        generator=torch.Generator().manual_seed(7),
    )
    assert (ours - reference).abs().max() < 1e-4


def test_ddpm_matches_ddpm_scheduler():
    process = VPDiffusion(prediction="eps")
    scheduler = DDPMScheduler(clip_sample=False, timestep_spacing="leading")
    scheduler.set_timesteps(20)
    net = vp_network("eps", scheduler.alphas_cumprod)
    reference = run_diffusers(scheduler, net, 20, generator=torch.Generator().manual_seed(3))
    ours = sample(
        model_to_denoiser(net, process),
        start(),
        process.sigmas(20, spacing="leading"),
        process=process,
        method="ddpm",
        generator=torch.Generator().manual_seed(3),
    )
    assert (ours - reference).abs().max() < 1e-4


def _multistep_case(scheduler_cls, case, **extra):
    """(diffusers scheduler, our process, our sigmas, network, flow_time) for a VP or a flow configuration."""
    if case == "flow":
        process = FlowMatching(shift=3.0)
        scheduler = scheduler_cls(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=3.0, **extra)
        scheduler.set_timesteps(20)
        return scheduler, process, scheduler.sigmas.double(), flow_network, True
    prediction, schedule = case
    process = VPDiffusion(schedule=schedule, prediction=prediction)
    scheduler = scheduler_cls(
        **diffusers_schedule(schedule),
        prediction_type=DIFFUSERS_PREDICTION[prediction],
        timestep_spacing="trailing",
        **extra,
    )
    scheduler.set_timesteps(20)
    sigmas = process.sigmas(20, spacing="trailing")
    assert torch.allclose(vp_sigmas_of(scheduler), sigmas, atol=1e-6)
    return scheduler, process, sigmas, vp_network(prediction, scheduler.alphas_cumprod), False


CASES = [("eps", "linear"), ("v", "scaled_linear"), "flow"]


@pytest.mark.parametrize("case", CASES, ids=["vp-eps", "vp-v", "flow"])
def test_dpmpp_2m_matches_dpm_solver_multistep(case):
    scheduler, process, sigmas, net, flow_time = _multistep_case(
        DPMSolverMultistepScheduler, case, algorithm_type="dpmsolver++", solver_order=2
    )
    reference = run_diffusers(scheduler, net, 20, flow_time=flow_time)
    ours = sample(model_to_denoiser(net, process), start(), sigmas, process=process, method="dpmpp_2m")
    assert (ours - reference).abs().max() < 1e-4


@pytest.mark.parametrize("case", CASES, ids=["vp-eps", "vp-v", "flow"])
def test_unipc_matches_unipc_multistep(case):
    scheduler, process, sigmas, net, flow_time = _multistep_case(UniPCMultistepScheduler, case, solver_type="bh2")
    reference = run_diffusers(scheduler, net, 20, flow_time=flow_time)
    ours = sample(model_to_denoiser(net, process), start(), sigmas, process=process, method="unipc")
    assert (ours - reference).abs().max() < 1e-4


# ----------------------------------------------------------------------------------------------
# The exact denoiser of Gaussian data: x0 ~ N(mu, s^2)

MU, S = 1.0, 0.5
PROCESSES = {
    "flow": FlowMatching(),
    "flow-shift3": FlowMatching(shift=3.0),
    "vp-linear": VPDiffusion(),
    "vp-cosine": VPDiffusion(schedule="cosine"),
    "vp-scaled": VPDiffusion(schedule="scaled_linear"),
}


def gaussian_denoiser(process):
    """E[x0 | x_sigma] for x0 ~ N(MU, S^2): MU + alpha S^2 / (alpha^2 S^2 + sigma^2) (x - alpha MU)."""

    def denoise(x, sigma):
        sigma = sigma.double().view(-1, 1)
        alpha = process.alpha(sigma)
        return (MU + alpha * S**2 / (alpha**2 * S**2 + sigma**2) * (x.double() - alpha * MU)).to(x.dtype)

    return denoise


def gaussian_start(process, sigma0: float, n: int = 10000, seed: int = 0) -> torch.Tensor:
    """Samples of the exact marginal at sigma0.

    A VP chain's top is not quite N(0, I): that is the schedule's error, not the sampler's.
    """
    alpha0 = process.alpha(torch.tensor(sigma0, dtype=torch.float64)).item()
    z = torch.randn(n, 8, generator=torch.Generator().manual_seed(seed))
    return alpha0 * MU + math.sqrt(alpha0**2 * S**2 + sigma0**2) * z


def run_gaussian(process, method, num_steps, **kwargs):
    sigmas = process.sigmas(num_steps)
    x = gaussian_start(process, sigmas[0].item())
    return sample(gaussian_denoiser(process), x, sigmas, process=process, method=method, **kwargs)


def assert_moments(y, tolerance):
    assert abs(y.mean().item() - MU) < tolerance * MU, y.mean().item()
    assert abs(y.std().item() - S) < tolerance * S, y.std().item()


@pytest.mark.parametrize("method", ["heun", "dpmpp_2m", "unipc"])
@pytest.mark.parametrize("name", list(PROCESSES))
def test_second_order_samplers_reach_the_data_in_50_steps(name, method):
    assert_moments(run_gaussian(PROCESSES[name], method, 50), 0.02)


@pytest.mark.parametrize("method", ["dpmpp_2m", "unipc"])
@pytest.mark.parametrize("name", ["flow", "vp-linear", "vp-cosine", "vp-scaled"])
def test_multistep_samplers_reach_the_data_in_10_steps(name, method):
    assert_moments(run_gaussian(PROCESSES[name], method, 10), 0.02)


@pytest.mark.parametrize("method", ["euler", "ddim"])
@pytest.mark.parametrize("name", list(PROCESSES))
def test_first_order_step_contracts_exactly_as_predicted(name, method):
    """On Gaussian data one euler/ddim step scales the spread by cos(angle between (sigma, alpha S) and
    (sigma', alpha' S)), so N steps lose at least pi^2 / (8 N) of the std: 2.5% at 50 steps whatever the
    schedule. Check the product exactly at 50 steps, and that 100 steps (200 with a shift, which moves
    steps away from the data) are within 2%."""
    process = PROCESSES[name]
    sigmas = process.sigmas(50)
    x = gaussian_start(process, sigmas[0].item())
    y = sample(gaussian_denoiser(process), x, sigmas, process=process, method=method)
    alphas = process.alpha(sigmas)
    var = alphas**2 * S**2 + sigmas**2
    predicted = torch.prod((sigmas[:-1] * sigmas[1:] + alphas[:-1] * alphas[1:] * S**2) / var[:-1]).item()
    assert y.std().item() / x.std().item() == pytest.approx(predicted, rel=1e-4)
    assert predicted < 1 - math.pi**2 / (8 * 50) + 1e-3
    assert_moments(run_gaussian(process, method, 200 if name == "flow-shift3" else 100), 0.02)


@pytest.mark.parametrize("method, eta", [("ddpm", 0.0), ("ddim", 0.5)])
@pytest.mark.parametrize("name", ["flow", "vp-linear"])
def test_ancestral_samplers_reach_the_data(name, method, eta):
    y = run_gaussian(PROCESSES[name], method, 500, eta=eta, generator=torch.Generator().manual_seed(0))
    assert_moments(y, 0.02)


@pytest.mark.parametrize("method", list(STEPS))
def test_flow_and_vp_give_the_same_samples_on_the_same_log_snr_grid(method):
    """One formulation serves both processes: at equal alpha/sigma the two are the same ODE up to scale."""
    flow, vp = FlowMatching(), VPDiffusion()
    flow_sigmas = torch.linspace(0.95, 0.0, 13, dtype=torch.float64)
    vp_sigmas = flow_sigmas / torch.sqrt(flow_sigmas**2 + (1 - flow_sigmas) ** 2)  # same SNR
    x_flow = gaussian_start(flow, 0.95)
    x_vp = x_flow * (vp_sigmas[0] / flow_sigmas[0]).item()
    kwargs = dict(method=method, eta=0.0)
    outs = [
        sample(gaussian_denoiser(p), x, s, process=p, generator=torch.Generator().manual_seed(5), **kwargs)
        for p, x, s in [(flow, x_flow, flow_sigmas), (vp, x_vp, vp_sigmas)]
    ]
    assert (outs[0] - outs[1]).abs().max() < 1e-4


@pytest.mark.parametrize("method", list(STEPS))
@pytest.mark.parametrize("num_steps", [1, 2, 3, 1000])
def test_any_step_count(method, num_steps):
    process = FlowMatching(shift=2.0)
    x = process.prior((4, 8), generator=torch.Generator().manual_seed(0))
    y = sample(
        gaussian_denoiser(process), x, process.sigmas(num_steps), process=process, method=method,
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.isfinite(y).all()
    if num_steps == 1:  # one step from pure noise lands on the data mean, E[x0 | noise]
        assert torch.allclose(y, torch.full_like(y, MU))
    if num_steps == 1000:
        assert abs(y.mean().item() - MU) < 0.5


def test_vp_accepts_every_step_count_up_to_its_chain():
    process = VPDiffusion()
    for spacing in ("flow", "linspace", "leading", "trailing"):
        for n in (1, 999, 1000):
            sigmas = process.sigmas(n, spacing=spacing)
            assert len(sigmas) == n + 1 and bool(torch.all(sigmas[1:] < sigmas[:-1])) and sigmas[-1] == 0


# ----------------------------------------------------------------------------------------------
# The contract: callbacks, evaluations, randomness, errors


def counting(denoise):
    calls = []

    def wrapped(x, sigma):
        calls.append(sigma[0].item())
        return denoise(x, sigma)

    return wrapped, calls


@pytest.mark.parametrize("method", list(STEPS))
def test_callback_per_step_and_evaluations(method):
    process = FlowMatching()
    denoise, calls = counting(gaussian_denoiser(process))
    seen = []
    sample(
        denoise, process.prior((3, 2)), process.sigmas(6), process=process, method=method,
        generator=torch.Generator().manual_seed(0), callback=lambda i, n, x, d: seen.append((i, n, x.shape, d.shape)),
    )
    assert seen == [(i, 6, (3, 2), (3, 2)) for i in range(6)]
    assert len(calls) == (11 if method == "heun" else 6)  # heun: 2 per step, 1 on the last
    assert calls[0] == 1.0


@pytest.mark.parametrize("method", ["ddpm", "ddim"])
def test_randomness_only_from_the_generator(method):
    process = VPDiffusion()
    x = process.prior((4, 8), generator=torch.Generator().manual_seed(0))
    eta = 1.0 if method == "ddim" else 0.0

    def run(seed):
        torch.manual_seed(seed)  # the global generator must not matter
        return sample(
            gaussian_denoiser(process), x, process.sigmas(10), process=process, method=method, eta=eta,
            generator=torch.Generator().manual_seed(11),
        )

    assert torch.equal(run(0), run(1))
    other = sample(
        gaussian_denoiser(process), x, process.sigmas(10), process=process, method=method, eta=eta,
        generator=torch.Generator().manual_seed(12),
    )
    assert not torch.equal(run(0), other)
    with pytest.raises(KinemaError, match="generator"):
        sample(gaussian_denoiser(process), x, process.sigmas(10), process=process, method=method, eta=eta)


def test_input_is_not_modified():
    process = FlowMatching()
    x = process.prior((4, 8))
    before = x.clone()
    sample(gaussian_denoiser(process), x, process.sigmas(5), process=process, method="unipc")
    assert torch.equal(x, before)


def test_bad_arguments_name_the_fix():
    process = FlowMatching()
    x, denoise = process.prior((2, 2)), gaussian_denoiser(process)
    with pytest.raises(KinemaError, match="unknown sampler method 'plms'.*euler"):
        sample(denoise, x, process.sigmas(4), process=process, method="plms")
    with pytest.raises(KinemaError, match="eta applies to method='ddim'"):
        sample(denoise, x, process.sigmas(4), process=process, method="euler", eta=0.5)
    with pytest.raises(KinemaError, match=r"eta must be in \[0, 1\]"):
        sample(denoise, x, process.sigmas(4), process=process, method="ddim", eta=1.5)
    with pytest.raises(KinemaError, match="descend strictly"):
        sample(denoise, x, process.sigmas(4).flip(0), process=process)
    with pytest.raises(KinemaError, match="descend strictly"):
        sample(denoise, x, torch.tensor([2.0, 1.0, 0.0]), process=process)
    with pytest.raises(KinemaError, match="1-D tensor"):
        sample(denoise, x, torch.tensor([1.0]), process=process)


def test_bf16_autocast_model_leaves_the_sampler_in_fp32():
    process = FlowMatching()
    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 4)

    def net(x, t):
        return layer(x.movedim(1, -1)).movedim(-1, 1) * (t / 1000).view(-1, 1, 1, 1, 1)

    x = process.prior(SHAPE[:1] + (4,) + SHAPE[2:], generator=torch.Generator().manual_seed(0))
    denoise = model_to_denoiser(net, process)
    reference = sample(denoise, x, process.sigmas(8), process=process, method="unipc")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert denoise(x, torch.full((2,), 0.5, dtype=torch.float64)).dtype == torch.float32
        mixed = sample(denoise, x, process.sigmas(8), process=process, method="unipc")
    assert mixed.dtype == torch.float32
    assert (mixed - reference).abs().max() < 0.05
