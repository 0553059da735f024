"""The denoisers' shared input contract, checked once for every model that takes it.

    model(x (B, C_in, T, H, W), timestep (B,) or (), context (B, L, text_dim), context_mask (B, L) bool | None)
"""

from __future__ import annotations

import torch

from kinema.errors import KinemaError


def check_conditioning(
    model: str, batch: int, timestep: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None, text_dim: int
) -> None:
    """Raise KinemaError naming `model` and the expected shape when timestep, context or its mask do not fit."""
    if timestep.shape not in ((batch,), ()):
        raise KinemaError(f"{model} timestep must be (B,) = ({batch},) or a scalar, got {tuple(timestep.shape)}")
    if context.ndim != 3 or context.shape[0] != batch or context.shape[2] != text_dim:
        raise KinemaError(
            f"{model} context must be (B, L, text_dim) = ({batch}, L, {text_dim}), got {tuple(context.shape)}; "
            "check that the text encoder's width matches the config's text_dim"
        )
    if context_mask is not None and (context_mask.dtype != torch.bool or context_mask.shape != context.shape[:2]):
        raise KinemaError(
            f"{model} context_mask must be bool (B, L) = {tuple(context.shape[:2])}, "
            f"got {context_mask.dtype} {tuple(context_mask.shape)}"
        )
