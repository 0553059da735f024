"""Classifier-free guidance as a denoiser transform.

    denoise = guided(model_denoise, cond={"context": text, ...}, uncond={"context": null_text, ...}, scale=5.0)
    x = sample(denoise, x_T, sigmas, process=process)

The conditional and unconditional inputs run as ONE batched forward (concatenated along
dim 0), and the guided estimate is x0_u + scale * (x0_c - x0_u). Guidance is affine, so
combining x0 estimates is the same as combining eps, v or velocity outputs. With scale 1,
and outside the guidance interval, only the conditional half runs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from kinema.diffusion.processes import Denoiser, Process
from kinema.errors import KinemaError


def guided(
    denoise: Denoiser,
    cond: Mapping[str, Any],
    uncond: Mapping[str, Any],
    scale: float,
    *,
    rescale: float = 0.0,
    interval: tuple[float, float] | None = None,
    process: Process | None = None,
) -> Callable[[Tensor, Tensor], Tensor]:
    """`denoise(x, sigma)` with classifier-free guidance at `scale`.

    denoise: `denoise(x, sigma, **kwargs) -> x0_hat` taking batch-first keyword inputs, e.g. from
        `model_to_denoiser` (context, context_mask, cond_channels).
    cond, uncond: the keyword inputs of the conditional and unconditional passes, each value a tensor
        (B, ...) or None. A key missing from `uncond` is shared (e.g. the conditioning timeline's
        channels when only the text is dropped).
    scale: guidance scale; 1 runs the conditional pass alone.
    rescale: guidance rescale phi in [0, 1] (Lin et al. 2023, Sec. 3.4): the guided network output is
        scaled towards the per-sample standard deviation of the conditional one. It acts on the
        network's own output (eps, v or velocity, as diffusers does), so it needs `process`.
    interval: (sigma_lo, sigma_hi): guide only where sigma_lo <= sigma <= sigma_hi (Kynkaanniemi et
        al. 2024); elsewhere the conditional pass alone runs.
    """
    extra = sorted(set(uncond) - set(cond))
    if extra:
        raise KinemaError(f"uncond has keys {extra} that cond lacks; give every input in cond")
    if not 0.0 <= rescale <= 1.0:
        raise KinemaError(f"guidance rescale must be in [0, 1], got {rescale}")
    if rescale > 0.0 and process is None:
        raise KinemaError("guidance rescale acts on the network's output: pass process=the model's process")
    if interval is not None and not 0.0 <= interval[0] <= interval[1]:
        raise KinemaError(f"guidance interval must be (sigma_lo, sigma_hi) with 0 <= lo <= hi, got {interval}")
    both = None if scale == 1.0 else _concat(cond, uncond)

    def guided_denoise(x: Tensor, sigma: Tensor) -> Tensor:
        if both is None:
            return denoise(x, sigma, **cond)
        inside = None if interval is None else (sigma >= interval[0]) & (sigma <= interval[1])
        if inside is not None and not bool(inside.any()):
            return denoise(x, sigma, **cond)
        x0_cond, x0_uncond = denoise(torch.cat([x, x]), torch.cat([sigma, sigma]), **both).chunk(2)
        x0 = torch.lerp(x0_uncond, x0_cond, scale)  # x0_u + scale * (x0_c - x0_u)
        if rescale > 0.0:
            x0 = _rescale(x, sigma, x0, x0_cond, rescale, process)
        if inside is not None and not bool(inside.all()):
            x0 = torch.where(inside.reshape(-1, *([1] * (x.ndim - 1))), x0, x0_cond)
        return x0

    return guided_denoise


def _concat(cond: Mapping[str, Any], uncond: Mapping[str, Any]) -> dict[str, Any]:
    """The inputs of the batched pass: cond then uncond along dim 0."""
    out = {}
    for key, c in cond.items():
        u = uncond.get(key, c)
        if c is None and u is None:
            out[key] = None
        elif isinstance(c, Tensor) and isinstance(u, Tensor):
            if c.shape != u.shape:
                raise KinemaError(
                    f"guidance input {key!r}: cond has shape {tuple(c.shape)} but uncond {tuple(u.shape)}; "
                    "pad both to the same shape (e.g. the same text length)"
                )
            out[key] = torch.cat([c, u])
        else:
            raise KinemaError(f"guidance input {key!r} must be a tensor (or None in both), got {type(c).__name__}")
    return out


def _rescale(x: Tensor, sigma: Tensor, x0: Tensor, x0_cond: Tensor, phi: float, process: Process) -> Tensor:
    """Match the guided output's per-sample std to the conditional output's, blended by phi."""
    out = process.output_from_x0(x, sigma, x0)
    out_cond = process.output_from_x0(x, sigma, x0_cond)
    dims = list(range(1, x.ndim))
    factor = out_cond.std(dim=dims, keepdim=True) / out.std(dim=dims, keepdim=True)
    out = out * (phi * factor + (1.0 - phi))
    return process.x0_from_output(x, sigma, out)


__all__ = ["guided"]
