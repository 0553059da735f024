"""Timestep embeddings: the sinusoidal features and the MLP that turns them into a vector."""

from __future__ import annotations

import math

import torch
from torch import nn


def timestep_embedding(
    t: torch.Tensor, dim: int, *, max_period: float = 10000.0, flip_sin_to_cos: bool = True
) -> torch.Tensor:
    """Sinusoidal features of (possibly fractional) timesteps, in fp32.

    t: (B,) -> (B, dim). Frequencies are max_period^(-i / (dim // 2)), i < dim // 2;
    the order is [cos, sin] when `flip_sin_to_cos` (Wan, diffusers' `flip_sin_to_cos=True,
    downscale_freq_shift=0`), else [sin, cos]. An odd `dim` gets a zero last column.
    """
    if t.ndim != 1:
        raise ValueError(f"timesteps must be 1-D (B,), got shape {tuple(t.shape)}")
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    angles = t.float()[:, None] * freqs[None, :]
    parts = (angles.cos(), angles.sin()) if flip_sin_to_cos else (angles.sin(), angles.cos())
    emb = torch.cat(parts, dim=-1)
    if dim % 2:
        emb = nn.functional.pad(emb, (0, 1))
    return emb


class TimestepEmbedder(nn.Module):
    """Sinusoidal features -> Linear -> SiLU -> Linear.

    t: (B,) float -> (B, dim)
    """

    def __init__(self, freq_dim: int, dim: int, *, max_period: float = 10000.0, flip_sin_to_cos: bool = True) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.max_period = max_period
        self.flip_sin_to_cos = flip_sin_to_cos
        self.linear_1 = nn.Linear(freq_dim, dim)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        features = timestep_embedding(
            t, self.freq_dim, max_period=self.max_period, flip_sin_to_cos=self.flip_sin_to_cos
        )
        return self.linear_2(self.act(self.linear_1(features.to(self.linear_1.weight.dtype))))
