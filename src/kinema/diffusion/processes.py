"""Noise processes: how data becomes noise, what the network learns, and the noise levels to sample at.

Every process in kinema is a Gaussian path written in one parameterisation,

    x_sigma = alpha(sigma) * x0 + sigma * eps,        eps ~ N(0, I),

where `sigma` in [0, 1] is the standard deviation of the noise in `x_sigma` and each
process defines `alpha` as a function of it:

    FlowMatching   alpha = 1 - sigma                (rectified flow, as SD3 and Wan)
    VPDiffusion    alpha = sqrt(1 - sigma^2)        (DDPM's variance-preserving chain)

The convention shared by every sampler: a denoiser is a function
`denoise(x, sigma) -> x0_hat` that returns the clean estimate for `x: (B, ...)` at
noise level `sigma: (B,)`. `model_to_denoiser` builds one from a network and its
process (the network outputs the process's training `target`; `x0_from_output`
turns that into x0_hat), so samplers and guidance never see a prediction type.

Noise levels (`sigmas`) are float64: near pure noise a VP sigma is 0.99998 and
`1 - sigma^2` would keep only three digits in float32. Coefficients are computed in
float64 and cast to the tensor's dtype.

Processes are frozen configs with pure methods; `process_to_dict` / `process_from_dict`
give their JSON form (with the kind), so a pipeline can save the one it was trained with.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol

import numpy as np
import torch
from torch import Tensor

from kinema.errors import KinemaError

Denoiser = Callable[..., Tensor]
"""`denoise(x, sigma, **kwargs) -> x0_hat`: x (B, ...), sigma (B,) float, x0_hat like x."""


class Process(Protocol):
    """What samplers, guidance and training need from a noise process (x0, eps, x: (B, ...); sigma: (B,))."""

    num_train_timesteps: int

    def alpha(self, sigma: Tensor) -> Tensor:
        """The signal scale at noise level sigma."""

    def add_noise(self, x0: Tensor, eps: Tensor, sigma: Tensor | float) -> Tensor:
        """x_sigma = alpha(sigma) x0 + sigma eps."""

    def target(self, x0: Tensor, eps: Tensor, sigma: Tensor | float) -> Tensor:
        """What the network is trained to output."""

    def x0_from_output(self, x: Tensor, sigma: Tensor | float, output: Tensor) -> Tensor:
        """The clean estimate from the network's output at (x, sigma)."""

    def output_from_x0(self, x: Tensor, sigma: Tensor | float, x0: Tensor) -> Tensor:
        """The network output that gives x0 at (x, sigma), sigma > 0: the inverse of `x0_from_output`."""

    def timestep(self, sigma: Tensor) -> Tensor:
        """What the network is conditioned on for noise level sigma."""

    def sigma_from_timestep(self, timestep: Tensor) -> Tensor:
        """The inverse of `timestep`."""

    def sigmas(self, num_steps: int) -> Tensor:
        """num_steps + 1 descending noise levels for sampling, ending at 0, float64."""

    def sample_training_sigmas(
        self, n: int, *, generator: torch.Generator | None = None, device: torch.device | str | None = None
    ) -> Tensor:
        """n noise levels for a training batch."""

    def prior(
        self,
        shape: tuple[int, ...],
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """Where sampling starts."""

    def loss_weight(self, sigma: Tensor) -> Tensor:
        """Per-sample weights of the training loss."""


def schedule_dtype(device: torch.device | str | None) -> torch.dtype:
    """The dtype of noise levels on `device`: float64, except on MPS (which has none)."""
    return torch.float32 if torch.device(device or "cpu").type == "mps" else torch.float64


def _as_sigma(sigma: Tensor | float, device: torch.device | str | None) -> Tensor:
    return torch.as_tensor(sigma, device=device).to(schedule_dtype(device))


def _per_sample(value: Tensor, like: Tensor) -> Tensor:
    """A scalar or per-sample coefficient `(B,)` in `like`'s dtype, shaped to broadcast over `like: (B, ...)`."""
    value = value.to(device=like.device, dtype=like.dtype)
    return value.reshape(-1, *([1] * (like.ndim - 1))) if value.ndim else value


class _GaussianPath:
    """The parts every process shares once `alpha(sigma)` is known."""

    def alpha(self, sigma: Tensor) -> Tensor:
        raise NotImplementedError

    def add_noise(self, x0: Tensor, eps: Tensor, sigma: Tensor | float) -> Tensor:
        """x_sigma = alpha * x0 + sigma * eps.  x0, eps: (B, ...); sigma: (B,) or a scalar."""
        sigma = _as_sigma(sigma, x0.device)
        return _per_sample(self.alpha(sigma), x0) * x0 + _per_sample(sigma, x0) * eps

    def prior(
        self,
        shape: tuple[int, ...],
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """Where sampling starts: N(0, I) of `shape`."""
        return torch.randn(shape, generator=generator, device=device, dtype=dtype)


# ----------------------------------------------------------------------------------------------
# Flow matching


@dataclass(frozen=True, kw_only=True)
class FlowMatching(_GaussianPath):
    """Rectified flow: x_s = (1 - s) x0 + s eps; the network predicts the velocity eps - x0."""

    shift: float = 1.0
    """Shift s' = shift * s / (1 + (shift - 1) * s) (SD3, Wan) of training and sampling levels; > 1: more noise."""
    training_sigmas: Literal["uniform", "logit_normal"] = "logit_normal"
    """How training draws noise levels before the shift: uniform in [0, 1], or sigmoid of a normal (SD3)."""
    logit_mean: float = 0.0
    """Mean of the normal under the sigmoid, for logit_normal."""
    logit_std: float = 1.0
    """Standard deviation of the normal under the sigmoid, for logit_normal."""
    num_train_timesteps: int = 1000
    """The network is conditioned on timestep = sigma * num_train_timesteps."""

    def __post_init__(self) -> None:
        if not self.shift > 0:
            raise ValueError(f"FlowMatching.shift must be > 0, got {self.shift}")
        if self.training_sigmas not in ("uniform", "logit_normal"):
            raise ValueError(
                f"FlowMatching.training_sigmas must be 'uniform' or 'logit_normal', got {self.training_sigmas!r}"
            )
        if not self.logit_std > 0:
            raise ValueError(f"FlowMatching.logit_std must be > 0, got {self.logit_std}")
        if self.num_train_timesteps < 1:
            raise ValueError(f"FlowMatching.num_train_timesteps must be >= 1, got {self.num_train_timesteps}")

    def alpha(self, sigma: Tensor) -> Tensor:
        return 1.0 - sigma

    def shifted(self, s: Tensor) -> Tensor:
        """The shift applied to noise levels s in [0, 1]; keeps 0 and 1 fixed."""
        return self.shift * s / (1.0 + (self.shift - 1.0) * s)

    def target(self, x0: Tensor, eps: Tensor, sigma: Tensor | float) -> Tensor:
        """The velocity d x_sigma / d sigma = eps - x0."""
        return eps - x0

    def x0_from_output(self, x: Tensor, sigma: Tensor | float, output: Tensor) -> Tensor:
        """x0_hat = x - sigma * v."""
        return x - _per_sample(_as_sigma(sigma, x.device), x) * output.to(x.dtype)

    def output_from_x0(self, x: Tensor, sigma: Tensor | float, x0: Tensor) -> Tensor:
        """The velocity that gives x0: v = (x - x0) / sigma (sigma > 0)."""
        return (x - x0) / _per_sample(_as_sigma(sigma, x.device), x)

    def timestep(self, sigma: Tensor) -> Tensor:
        return sigma * self.num_train_timesteps

    def sigma_from_timestep(self, timestep: Tensor) -> Tensor:
        return timestep.to(schedule_dtype(timestep.device)) / self.num_train_timesteps

    def sigmas(self, num_steps: int, *, shift: float | None = None) -> Tensor:
        """num_steps + 1 noise levels from 1 (pure noise) to 0: uniform in s, then shifted. float64 (num_steps + 1,).

        shift: the sampling schedule's own shift instead of the process's (Wan's sample_shift); higher
        spends more of the steps at high noise, where a clip's layout and motion are decided.
        """
        _check_steps(num_steps)
        process = self if shift is None else replace(self, shift=shift)
        return process.shifted(torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64))

    def sample_training_sigmas(
        self, n: int, *, generator: torch.Generator | None = None, device: torch.device | str | None = None
    ) -> Tensor:
        """n noise levels for a training batch, (n,) on `device`."""
        gen_device = generator.device if generator is not None else device
        if self.training_sigmas == "uniform":
            s = torch.rand(n, generator=generator, device=gen_device, dtype=torch.float64)
        else:
            z = torch.randn(n, generator=generator, device=gen_device, dtype=torch.float64)
            s = torch.sigmoid(self.logit_mean + self.logit_std * z)
        return self.shifted(s).to(device=device, dtype=schedule_dtype(device))

    def loss_weight(self, sigma: Tensor) -> Tensor:
        return torch.ones_like(sigma)


# ----------------------------------------------------------------------------------------------
# Variance-preserving diffusion (DDPM)

_STANDARD_BETAS = {"linear": (1e-4, 0.02), "scaled_linear": (0.00085, 0.012)}


@dataclass(frozen=True, kw_only=True)
class VPDiffusion(_GaussianPath):
    """DDPM's variance-preserving chain over discrete timesteps, with eps, v or x0 prediction.

    The chain's last timestep is not pure noise (alpha = 0.006 for linear, 0.068 for scaled_linear),
    while sampling starts from N(0, I): the small mismatch Lin et al. 2023 describe (mean brightness).
    The cosine chain ends at alpha = 5e-5, where x0 = (x - sigma eps) / alpha amplifies any error in
    eps 20,000 times: with cosine, predict v or x0.
    """

    schedule: Literal["linear", "scaled_linear", "cosine"] = "linear"
    """Beta schedule: linear (DDPM), scaled_linear (Stable Diffusion: linear in sqrt(beta)), cosine (improved DDPM)."""
    prediction: Literal["eps", "v", "x0"] = "eps"
    """What the network outputs: the noise, the velocity v = alpha * eps - sigma * x0, or the clean sample."""
    num_train_timesteps: int = 1000
    """Discrete timesteps of the chain; the network is conditioned on the timestep index t in [0, T - 1]."""
    beta_range: tuple[float, float] | None = None
    """(beta_start, beta_end) for linear and scaled_linear; None uses the standard (1e-4, 0.02) and (0.00085, 0.012)."""
    min_snr_gamma: float | None = None
    """Min-SNR-gamma loss weights (Hang et al. 2023; 5 is usual): SNR above gamma counts as gamma; None: equal."""

    def __post_init__(self) -> None:
        if self.schedule not in ("linear", "scaled_linear", "cosine"):
            raise ValueError(
                f"VPDiffusion.schedule must be 'linear', 'scaled_linear' or 'cosine', got {self.schedule!r}"
            )
        if self.prediction not in ("eps", "v", "x0"):
            raise ValueError(f"VPDiffusion.prediction must be 'eps', 'v' or 'x0', got {self.prediction!r}")
        if self.num_train_timesteps < 2:
            raise ValueError(f"VPDiffusion.num_train_timesteps must be >= 2, got {self.num_train_timesteps}")
        if self.beta_range is not None:
            start, end = self.beta_range
            if not 0 < start < end < 1:
                raise ValueError(f"VPDiffusion.beta_range must satisfy 0 < start < end < 1, got {self.beta_range}")
        if self.min_snr_gamma is not None and not self.min_snr_gamma > 0:
            raise ValueError(f"VPDiffusion.min_snr_gamma must be > 0 or None, got {self.min_snr_gamma}")

    # The chain, as tables over the discrete timesteps t = 0 .. T-1 (float64, CPU).

    def alphas_cumprod(self) -> Tensor:
        """alpha_bar_t = prod_{s <= t} (1 - beta_s), (T,) float64."""
        return _alphas_cumprod(self.schedule, self.beta_range, self.num_train_timesteps)

    def _log_snr_table(self, device: torch.device | str | None) -> Tensor:
        abar = self.alphas_cumprod()
        return (0.5 * (torch.log(abar) - torch.log1p(-abar))).to(device=device, dtype=schedule_dtype(device))

    def alpha(self, sigma: Tensor) -> Tensor:
        return torch.sqrt((1.0 - sigma * sigma).clamp_min(0.0))

    def target(self, x0: Tensor, eps: Tensor, sigma: Tensor | float) -> Tensor:
        if self.prediction == "eps":
            return eps
        if self.prediction == "x0":
            return x0
        sigma = _as_sigma(sigma, x0.device)
        return _per_sample(self.alpha(sigma), x0) * eps - _per_sample(sigma, x0) * x0

    def x0_from_output(self, x: Tensor, sigma: Tensor | float, output: Tensor) -> Tensor:
        output = output.to(x.dtype)
        if self.prediction == "x0":
            return output
        sigma = _as_sigma(sigma, x.device)
        alpha, s = self.alpha(sigma), _per_sample(sigma, x)
        if self.prediction == "eps":
            return (x - s * output) / _per_sample(alpha, x)
        return _per_sample(alpha, x) * x - s * output

    def output_from_x0(self, x: Tensor, sigma: Tensor | float, x0: Tensor) -> Tensor:
        """The network output that gives x0 at (x, sigma): the inverse of `x0_from_output` (sigma > 0)."""
        if self.prediction == "x0":
            return x0
        sigma = _as_sigma(sigma, x.device)
        alpha, s = _per_sample(self.alpha(sigma), x), _per_sample(sigma, x)
        if self.prediction == "eps":
            return (x - alpha * x0) / s
        return (alpha * x - x0) / s

    def timestep(self, sigma: Tensor) -> Tensor:
        """The (fractional) timestep index t whose noise level is sigma; exact integers on the chain's own levels."""
        sigma = sigma.to(schedule_dtype(sigma.device))
        alpha = self.alpha(sigma)
        log_snr = torch.log(alpha) - torch.log(sigma)  # decreasing in t
        table = self._log_snr_table(sigma.device).flip(0)  # increasing, index T-1-t
        hi = torch.searchsorted(table, log_snr.contiguous()).clamp(1, len(table) - 1)
        lo = hi - 1
        w = ((log_snr - table[lo]) / (table[hi] - table[lo])).clamp(0.0, 1.0)
        return (len(table) - 1) - (lo + w)

    def sigma_from_timestep(self, timestep: Tensor) -> Tensor:
        """The noise level of timestep t in [0, T-1]; fractional t interpolates the log-SNR."""
        t = timestep.to(schedule_dtype(timestep.device)).clamp(0, self.num_train_timesteps - 1)
        table = self._log_snr_table(t.device)
        lo = t.floor().long().clamp(max=len(table) - 2)
        w = t - lo
        log_snr = table[lo] * (1 - w) + table[lo + 1] * w
        return torch.sqrt(torch.sigmoid(-2.0 * log_snr))

    def sigmas(self, num_steps: int, *, spacing: Literal["flow", "linspace", "leading", "trailing"] = "flow") -> Tensor:
        """num_steps noise levels from the top of the chain down, then 0. float64 (num_steps + 1,).

        flow (default): uniform in sigma / (alpha + sigma) = sigmoid(-lambda), the rectified-flow noise
            level of equal SNR, from the chain's last timestep to 0 (fractional timesteps): the grid of
            `FlowMatching(shift=1).sigmas`, which starts at pure noise instead. It keeps steps at low
            noise, which few-step multistep solvers (dpmpp_2m, unipc) need.
        linspace, leading, trailing: integer timesteps as in Lin et al. 2023, Table 2 (diffusers'
            `timestep_spacing` for DDIM and DDPM): round(linspace(0, T-1, n)), arange(n) * (T // n),
            round(arange(T, 0, -T/n)) - 1. Only trailing starts at the last timestep.
        """
        _check_steps(num_steps, None if spacing == "flow" else self.num_train_timesteps)
        if spacing == "flow":
            top = math.sqrt(1.0 - self.alphas_cumprod()[-1].item())
            u = torch.linspace(top / (math.sqrt(1.0 - top * top) + top), 0.0, num_steps + 1, dtype=torch.float64)
            return u / torch.sqrt(u * u + (1.0 - u) ** 2)
        t = torch.from_numpy(self.timesteps(num_steps, spacing=spacing))
        return torch.cat([torch.sqrt(1.0 - self.alphas_cumprod()[t]), torch.zeros(1, dtype=torch.float64)])

    def timesteps(self, num_steps: int, *, spacing: Literal["linspace", "leading", "trailing"]) -> np.ndarray:
        """The integer timesteps (descending) that `sigmas` visits with a chain spacing, int64 (num_steps,)."""
        _check_steps(num_steps, self.num_train_timesteps)
        T, n = self.num_train_timesteps, num_steps
        if spacing == "linspace":
            t = np.round(np.linspace(0, T - 1, n))[::-1]
        elif spacing == "leading":
            t = (np.arange(n) * (T // n))[::-1]
        elif spacing == "trailing":
            t = np.round(T - np.arange(n) * (T / n)) - 1
        else:
            raise KinemaError(f"unknown timestep spacing {spacing!r}; use 'linspace', 'leading' or 'trailing'")
        return t.astype(np.int64).copy()

    def sample_training_sigmas(
        self, n: int, *, generator: torch.Generator | None = None, device: torch.device | str | None = None
    ) -> Tensor:
        """The noise levels of n timesteps drawn uniformly from [0, T-1], (n,) on `device`."""
        gen_device = generator.device if generator is not None else device
        t = torch.randint(0, self.num_train_timesteps, (n,), generator=generator, device=gen_device)
        sigma = torch.sqrt(1.0 - self.alphas_cumprod().to(t.device)[t])  # no host round trip on a GPU
        return sigma.to(device=device, dtype=schedule_dtype(device))

    def loss_weight(self, sigma: Tensor) -> Tensor:
        """Min-SNR-gamma weights min(SNR, gamma) / SNR in eps units, adjusted for v and x0 outputs; ones if off."""
        if self.min_snr_gamma is None:
            return torch.ones_like(sigma)
        sigma = sigma.to(schedule_dtype(sigma.device))
        snr = (1.0 - sigma * sigma) / (sigma * sigma)
        clipped = snr.clamp(max=self.min_snr_gamma)
        if self.prediction == "eps":
            return clipped / snr
        if self.prediction == "v":
            return clipped / (snr + 1.0)
        return clipped


@functools.lru_cache(maxsize=16)
def _alphas_cumprod(schedule: str, beta_range: tuple[float, float] | None, steps: int) -> Tensor:
    if schedule == "cosine":
        # Nichol & Dhariwal 2021: alpha_bar(t) = cos^2((t + 0.008) / 1.008 * pi / 2), betas capped at 0.999.
        f = [math.cos((i / steps + 0.008) / 1.008 * math.pi / 2) ** 2 for i in range(steps + 1)]
        betas = torch.tensor([min(1 - f[i + 1] / f[i], 0.999) for i in range(steps)], dtype=torch.float64)
    else:
        start, end = beta_range or _STANDARD_BETAS[schedule]
        if schedule == "linear":
            betas = torch.linspace(start, end, steps, dtype=torch.float64)
        else:
            betas = torch.linspace(start**0.5, end**0.5, steps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def _check_steps(num_steps: int, most: int | None = None) -> None:
    if not isinstance(num_steps, int) or num_steps < 1 or (most is not None and num_steps > most):
        limit = f" and at most num_train_timesteps={most}" if most is not None else ""
        raise KinemaError(f"num_steps must be an integer >= 1{limit}, got {num_steps!r}")


# ----------------------------------------------------------------------------------------------
# From a network to a denoiser, and the training loss


def model_to_denoiser(model: Callable[..., Tensor], process: Process) -> Denoiser:
    """`model(x_in, timestep, **kwargs) -> output` as `denoise(x, sigma, *, cond_channels=None, **kwargs) -> x0_hat`.

    x: (B, C, ...) the noisy latents; sigma: (B,). `cond_channels` (B, C', ...), e.g. the conditioning
    timeline's `channels(cond)`, is concatenated to x along dim 1 to form the network input. The network
    sees `process.timestep(sigma)` as float32 and outputs the process's training target.
    """

    def denoise(x: Tensor, sigma: Tensor, *, cond_channels: Tensor | None = None, **kwargs: Any) -> Tensor:
        x_in = x if cond_channels is None else torch.cat([x, cond_channels.to(x.dtype)], dim=1)
        output = model(x_in, process.timestep(sigma).float(), **kwargs)
        return process.x0_from_output(x, sigma, output)

    return denoise


def training_loss(
    model: Callable[..., Tensor],
    process: Process,
    x0: Tensor,
    *,
    generator: torch.Generator | None = None,
    cond_channels: Tensor | None = None,
    loss_mask: Tensor | None = None,
    **kwargs: Any,
) -> Tensor:
    """The diffusion loss of one batch: weighted MSE between `model`'s output and the process's target.

    x0: (B, C, ...) clean latents. Draws the noise levels and the noise from `generator` (torch's global
    generator when None). `loss_mask` (broadcastable to x0, 1 where the loss counts) restricts the loss,
    e.g. to the frames the conditioning timeline did not give: `1 - cond.mask`.
    """
    sigma = process.sample_training_sigmas(x0.shape[0], generator=generator, device=x0.device)
    gen_device = generator.device if generator is not None else x0.device
    eps = torch.randn(x0.shape, generator=generator, device=gen_device, dtype=x0.dtype).to(x0.device)
    x_t = process.add_noise(x0, eps, sigma)
    x_in = x_t if cond_channels is None else torch.cat([x_t, cond_channels.to(x_t.dtype)], dim=1)
    output = model(x_in, process.timestep(sigma).float(), **kwargs)
    err = (output.float() - process.target(x0, eps, sigma).float()) ** 2
    if loss_mask is None:
        per_sample = err.flatten(1).mean(1)
    else:
        mask = loss_mask.to(err.dtype).expand_as(err)
        per_sample = (err * mask).flatten(1).sum(1) / mask.flatten(1).sum(1).clamp_min(1.0)
    return (process.loss_weight(sigma).to(per_sample.dtype) * per_sample).mean()


# ----------------------------------------------------------------------------------------------
# JSON form

_KINDS: dict[str, type] = {"flow_matching": FlowMatching, "vp": VPDiffusion}


def process_to_dict(process: Process) -> dict[str, Any]:
    """A process as JSON-ready data, with its kind: {"kind": "flow_matching", "shift": 3.0, ...}."""
    from kinema.config import to_dict

    kind = next((k for k, cls in _KINDS.items() if type(process) is cls), None)
    if kind is None:
        raise TypeError(f"not a kinema process: {type(process).__name__}")
    return {"kind": kind, **to_dict(process)}


def process_from_dict(data: dict[str, Any]) -> Process:
    """The process that `process_to_dict` wrote."""
    from kinema.config import from_dict

    data = dict(data)
    kind = data.pop("kind", None)
    if kind not in _KINDS:
        raise KinemaError(f"unknown process kind {kind!r}; expected one of {sorted(_KINDS)}")
    return from_dict(_KINDS[kind], data)


__all__ = [
    "Denoiser",
    "FlowMatching",
    "Process",
    "VPDiffusion",
    "model_to_denoiser",
    "process_from_dict",
    "process_to_dict",
    "schedule_dtype",
    "training_loss",
]
