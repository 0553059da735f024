"""Samplers: pure functions that take noise to data along a list of noise levels.

    x = sample(denoise, x_T, sigmas, process=process, method="unipc", generator=g)

`denoise(x, sigma) -> x0_hat` (x: (B, ...), sigma: (B,)) is the one convention (see
`kinema.diffusion.processes`): every method is written in terms of the clean estimate,
in the unified parameterisation x_sigma = alpha(sigma) x0 + sigma eps, so the same
code samples flow-matching and VP models. `sigmas` descend from the start level to
the end level, usually 0 (`process.sigmas(n)` gives n steps); a step count is any
n >= 1. Nothing is stored between calls; the few values a multistep method carries
from one step to the next are passed explicitly (`memory`).

Methods (h = lambda_next - lambda, lambda = log(alpha / sigma) the half log-SNR):
  euler     The first-order step, exact when x0_hat is constant:
            x' = (sigma'/sigma) x + (alpha' - alpha sigma'/sigma) x0_hat.
            For flow matching this is x + (sigma' - sigma) v (FlowMatchEulerDiscreteScheduler);
            for VP it is DDIM with eta 0.
  ddim      DDIM with stochasticity eta in [0, 1]; eta 0 is euler, eta 1 is ddpm.
  ddpm      Ancestral sampling: draws x' from the forward process's posterior q(x' | x, x0_hat)
            (DDPMScheduler with fixed-small variance).
  heun      Heun's method (2 evaluations per step, 1 on the last): the euler step, a second estimate at
            its end, and the euler step again with the mean of the two estimates (the trapezoid rule on
            the ODE in x/sigma against alpha/sigma, whose slope is x0_hat).
  dpmpp_2m  DPM-Solver++(2M), the multistep second-order solver in data prediction with the midpoint
            rule; first order on the first step and on a last step to sigma 0.
  unipc     UniPC-2 with B(h) = e^h - 1 (bh2), as Wan uses: DPM-Solver++(2M) as predictor and a
            corrector that reuses each new evaluation; order 1 on the first and the last step.

A flow schedule may start at sigma = 1 exactly (alpha = 0, lambda = -inf): the steps are written
so that this case is exact, not a division by zero.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from kinema.diffusion.processes import Process, schedule_dtype
from kinema.errors import KinemaError

Callback = Callable[[int, int, Tensor, Tensor], None]
"""`callback(step, num_steps, x, x0_hat)` after each step: x is the new sample, x0_hat the step's estimate."""


@dataclass(frozen=True)
class Grid:
    """The noise levels of a run as Python floats (float64): sigma, alpha and lambda = log(alpha / sigma)."""

    sigma: tuple[float, ...]
    alpha: tuple[float, ...]
    lam: tuple[float, ...]

    @property
    def num_steps(self) -> int:
        return len(self.sigma) - 1

    def first_order(self, i: int) -> tuple[float, float]:
        """Coefficients (a, b) of x and x0_hat in the first-order step i -> i + 1."""
        ratio = self.sigma[i + 1] / self.sigma[i]
        return ratio, self.alpha[i + 1] - ratio * self.alpha[i]

    def step_ratio(self, i: int, j: int) -> float:
        """h_i / (lambda_i - lambda_j): this step's length over the distance back to level j (0 if j is pure noise)."""
        return (self.lam[i + 1] - self.lam[i]) / (self.lam[i] - self.lam[j])


def make_grid(sigmas: Tensor, process: Process) -> Grid:
    """Check `sigmas` (strictly descending, in [0, 1]) and tabulate alpha and lambda for them."""
    if not isinstance(sigmas, Tensor) or sigmas.ndim != 1 or len(sigmas) < 2:
        raise KinemaError("sigmas must be a 1-D tensor of at least 2 noise levels; use process.sigmas(num_steps)")
    s = sigmas.detach().to("cpu", torch.float64)
    if not bool(torch.all(s[1:] < s[:-1])) or s[-1] < 0 or s[0] > 1:
        raise KinemaError(
            f"sigmas must descend strictly within [0, 1], got {[round(v, 5) for v in s.tolist()[:6]]}...; "
            "use process.sigmas(num_steps)"
        )
    a = process.alpha(s)
    lam = [_log_snr(ai, si) for ai, si in zip(a.tolist(), s.tolist())]
    return Grid(sigma=tuple(s.tolist()), alpha=tuple(a.tolist()), lam=tuple(lam))


def _log_snr(alpha: float, sigma: float) -> float:
    if alpha <= 0.0:
        return -math.inf
    if sigma <= 0.0:
        return math.inf
    return math.log(alpha) - math.log(sigma)


@dataclass(frozen=True)
class Context:
    """What a step may use besides the current sample: another evaluation, and the randomness."""

    denoise_at: Callable[[Tensor, int], Tensor]
    eta: float
    generator: torch.Generator | None


# Each step: (x_i, x0_hat at x_i, i, grid, memory, context) -> (x_{i+1}, memory for step i + 1).
# Every step is linear in its tensors: the coefficients are Python floats, the sum is `combine`.
Step = Callable[[Tensor, Tensor, int, Grid, Any, Context], tuple[Tensor, Any]]


def combine(*terms: tuple[float, Tensor | None]) -> Tensor:
    """sum(c * t for c, t in terms), building one new tensor (a step costs one allocation)."""
    (c0, t0), *rest = terms
    out = t0 * c0
    for c, t in rest:
        if c != 0.0:
            out.add_(t, alpha=c)
    return out


def euler_step(x: Tensor, d: Tensor, i: int, g: Grid, memory: Any, ctx: Context) -> tuple[Tensor, Any]:
    a, b = g.first_order(i)
    return combine((a, x), (b, d)), None


def ancestral_step(x: Tensor, d: Tensor, i: int, g: Grid, eta: float, generator: torch.Generator | None) -> Tensor:
    """DDIM's step with noise eta: x' = alpha' x0_hat + sqrt(sigma'^2 - c^2) eps_hat + c z.

    c = eta sigma' sqrt(1 - e^(-2h)) is the forward posterior's standard deviation times eta.
    """
    s, s_next, alpha, alpha_next = g.sigma[i], g.sigma[i + 1], g.alpha[i], g.alpha[i + 1]
    decay = alpha * s_next / (alpha_next * s)  # e^(-h)
    c = eta * s_next * math.sqrt(max(1.0 - decay * decay, 0.0))
    if c == 0.0:
        a, b = g.first_order(i)
        return combine((a, x), (b, d))
    a = math.sqrt(s_next * s_next - c * c) / s
    z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return combine((a, x), (alpha_next - a * alpha, d), (c, z))


def ddim_step(x: Tensor, d: Tensor, i: int, g: Grid, memory: Any, ctx: Context) -> tuple[Tensor, Any]:
    return ancestral_step(x, d, i, g, ctx.eta, ctx.generator), None


def ddpm_step(x: Tensor, d: Tensor, i: int, g: Grid, memory: Any, ctx: Context) -> tuple[Tensor, Any]:
    return ancestral_step(x, d, i, g, 1.0, ctx.generator), None


def heun_step(x: Tensor, d: Tensor, i: int, g: Grid, memory: Any, ctx: Context) -> tuple[Tensor, Any]:
    a, b = g.first_order(i)
    x_euler = combine((a, x), (b, d))
    if g.sigma[i + 1] == 0.0:  # the slope at sigma 0 is not defined: end with euler
        return x_euler, None
    d_end = ctx.denoise_at(x_euler, i + 1)
    return combine((a, x), (0.5 * b, d), (0.5 * b, d_end)), None


def multistep_step(x: Tensor, d: Tensor, d_prev: Tensor | None, i: int, g: Grid, second_order: bool) -> Tensor:
    """DPM-Solver++(2M): the first-order step with x0_hat extrapolated from steps i - 1 and i (midpoint rule)."""
    a, b = g.first_order(i)
    if not second_order:
        return combine((a, x), (b, d))
    half_r = 0.5 * g.step_ratio(i, i - 1)  # x0 estimate: d + (h_i / 2 h_{i-1}) (d - d_prev)
    return combine((a, x), (b * (1.0 + half_r), d), (-b * half_r, d_prev))


def dpmpp_2m_step(x: Tensor, d: Tensor, i: int, g: Grid, memory: Any, ctx: Context) -> tuple[Tensor, Any]:
    second_order = memory is not None and g.sigma[i + 1] > 0.0  # a last step to sigma 0 is first order
    return multistep_step(x, d, memory, i, g, second_order), d


def unipc_step(x: Tensor, d: Tensor, i: int, g: Grid, memory: Any, ctx: Context) -> tuple[Tensor, Any]:
    """UniPC-2 (bh2): correct x_i with the new estimate d, then predict x_{i+1} as DPM-Solver++(2M)."""
    d_prev = None
    if memory is not None:
        x_prev, d_prev, d_prev2 = memory
        x = unic(x_prev, d_prev, d_prev2, d, i, g)
    second_order = d_prev is not None and i < g.num_steps - 1  # order 1 on the first and the last step
    return multistep_step(x, d, d_prev, i, g, second_order), (x, d, d_prev)


def unic(x_prev: Tensor, d_prev: Tensor, d_prev2: Tensor | None, d: Tensor, i: int, g: Grid) -> Tensor:
    """UniC-p with B(h) = e^h - 1: redo step i - 1 -> i with the estimate d now known at its end.

    x_i = a x_{i-1} + b (d_prev + rho0 D1 + rho1 (d - d_prev)), D1 = (d_prev2 - d_prev) / r1, where
    p, the order of the predictor that made step i - 1, is 1 after the first step (rho = (0, 1/2))
    and 2 after (rho solves [[1, 1], [r1, 1]] rho = (b1, b2), the B(h) conditions of UniPC).
    """
    a, b = g.first_order(i - 1)  # b = alpha_i (1 - e^(-h)) = -alpha_i B(h)
    if d_prev2 is None:
        rho0_over_r1, rho1 = 0.0, 0.5
    else:
        h = g.lam[i] - g.lam[i - 1]
        phi1 = math.expm1(-h)  # = B(h) for bh2
        k1 = phi1 / -h - 1.0
        k2 = k1 / -h - 0.5
        b1, b2 = k1 / phi1, 2.0 * k2 / phi1
        inv_r1 = -g.step_ratio(i - 1, i - 2)  # 1 / r1, r1 = (lambda_{i-2} - lambda_{i-1}) / h; 0 after pure noise
        rho0 = (b1 - b2) * inv_r1 / (inv_r1 - 1.0)  # = (b1 - b2) / (1 - r1), exact when r1 = -inf
        rho0_over_r1, rho1 = rho0 * inv_r1, b1 - rho0
    return combine(
        (a, x_prev), (b * (1.0 - rho0_over_r1 - rho1), d_prev), (b * rho0_over_r1, d_prev2), (b * rho1, d)
    )


STEPS: dict[str, Step] = {
    "euler": euler_step,
    "heun": heun_step,
    "dpmpp_2m": dpmpp_2m_step,
    "ddim": ddim_step,
    "ddpm": ddpm_step,
    "unipc": unipc_step,
}
STOCHASTIC = ("ddpm",)  # and ddim with eta > 0


def sample(
    denoise: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    sigmas: Tensor,
    *,
    process: Process,
    method: str = "euler",
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """Integrate from `x` at noise level sigmas[0] to sigmas[-1] with `method`; returns the final sample.

    denoise: `denoise(x, sigma) -> x0_hat`, sigma (B,) float64 (float32 on MPS); bind conditioning with
        `guided(...)` or `functools.partial`.
    x: (B, ...) the start, e.g. `process.prior(shape, generator=g)` for sigmas[0] = the top noise level.
    sigmas: (N + 1,) strictly descending in [0, 1], e.g. `process.sigmas(N)`: N steps, N or more evaluations.
    process: the noise process the denoiser was trained with (gives alpha(sigma)).
    eta: stochasticity of ddim in [0, 1].
    generator: the only source of randomness (required by ddpm and ddim with eta > 0).
    callback: `callback(step, num_steps, x, x0_hat)` after each step, e.g. to update a progress bar.
    """
    if method not in STEPS:
        raise KinemaError(f"unknown sampler method {method!r}; choose one of {', '.join(STEPS)}")
    if not 0.0 <= eta <= 1.0:
        raise KinemaError(f"eta must be in [0, 1], got {eta}")
    if eta != 0.0 and method != "ddim":
        raise KinemaError(f"eta applies to method='ddim' only, got method={method!r} with eta={eta}")
    if generator is None and (method in STOCHASTIC or eta > 0.0):
        raise KinemaError(
            f"method {method!r} draws noise: pass generator=torch.Generator(device).manual_seed(seed)"
        )
    grid = make_grid(sigmas, process)
    sigma_dtype = schedule_dtype(x.device)

    def denoise_at(x: Tensor, i: int) -> Tensor:
        sigma = torch.full((x.shape[0],), grid.sigma[i], dtype=sigma_dtype, device=x.device)
        return denoise(x, sigma).to(x.dtype)

    step, ctx, memory = STEPS[method], Context(denoise_at, eta, generator), None
    for i in range(grid.num_steps):
        d = denoise_at(x, i)
        x, memory = step(x, d, i, grid, memory, ctx)
        if callback is not None:
            callback(i, grid.num_steps, x, d)
    return x


__all__ = ["STEPS", "Callback", "Grid", "make_grid", "sample"]
