"""End to end on a 2-D mixture of Gaussians: train a tiny MLP with each process and prediction, then sample."""

import math

import pytest
import torch
from torch import nn

from kinema.diffusion.processes import FlowMatching, VPDiffusion, model_to_denoiser, training_loss
from kinema.diffusion.samplers import sample

MEANS = torch.tensor([[-2.0, -1.0], [2.0, -1.0], [0.0, 2.0]])
STD = 0.4


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def mixture(n: int, generator: torch.Generator) -> torch.Tensor:
    """n points from three equally likely Gaussians (std 0.4) around MEANS, (n, 2)."""
    component = torch.randint(0, len(MEANS), (n,), generator=generator)
    return MEANS[component] + STD * torch.randn(n, 2, generator=generator)


class TinyDenoiser(nn.Module):
    """x (B, 2) and timestep (B,) -> the process's target (B, 2)."""

    def __init__(self, width: int = 128):
        super().__init__()
        self.register_buffer("freqs", torch.exp(torch.linspace(0, math.log(100), 8)))
        self.net = nn.Sequential(
            nn.Linear(2 + 16, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
            nn.Linear(width, width), nn.SiLU(), nn.Linear(width, 2),
        )

    def forward(self, x: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        angle = (timestep / 1000)[:, None] * self.freqs
        return self.net(torch.cat([x, angle.sin(), angle.cos()], dim=1))


def moments_error(samples: torch.Tensor, reference: torch.Tensor) -> tuple[float, float, list[float]]:
    """(max abs mean error, relative covariance error, share of samples nearest each mode)."""
    mean_err = (samples.mean(0) - reference.mean(0)).abs().max().item()
    cov_ref = torch.cov(reference.T)
    cov_err = ((torch.cov(samples.T) - cov_ref).norm() / cov_ref.norm()).item()
    nearest = torch.cdist(samples, MEANS).argmin(1)
    return mean_err, cov_err, [(nearest == k).float().mean().item() for k in range(len(MEANS))]


@pytest.mark.parametrize(
    "process",
    [
        FlowMatching(),
        VPDiffusion(prediction="eps", min_snr_gamma=5.0),
        VPDiffusion(prediction="v", schedule="scaled_linear"),
        VPDiffusion(prediction="x0", schedule="cosine", min_snr_gamma=5.0),
    ],
    ids=["flow", "vp-eps", "vp-v", "vp-x0"],
)
def test_trained_model_samples_the_mixture(process):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = TinyDenoiser()
    steps = 400
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    for _ in range(steps):
        loss = training_loss(model, process, mixture(512, g), generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()

    reference = mixture(100_000, g)
    noise = process.prior((4000, 2), generator=g)
    mean_err, cov_err, shares = moments_error(noise, reference)
    assert cov_err > 0.5  # the check can fail: the noise itself is far off
    with torch.no_grad():
        denoise = model_to_denoiser(model, process)
        samples = sample(denoise, noise, process.sigmas(20), process=process, method="dpmpp_2m")
    mean_err, cov_err, shares = moments_error(samples, reference)
    assert mean_err < 0.15, mean_err  # the data's std is about 1.6 per axis
    assert cov_err < 0.15, cov_err
    assert all(abs(share - 1 / 3) < 0.07 for share in shares), shares
