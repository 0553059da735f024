"""Rotary position embeddings: factorized 3D (time, height, width) as in Wan2.1, and 1-D.

The head dim is cut into three parts, one per axis, exactly as Wan2.1 does:
height and width get 2 * (head_dim // 6) channels each and time the rest. Each
part rotates consecutive channel pairs (2i, 2i+1) by position * theta^(-2i / part).
Tokens are ordered time-major, then height, then width (a (T, H, W) grid
flattened), which is the order of `x.flatten(2)` on a (B, C, T, H, W) tensor.

The tables are complex64 (L, head_dim // 2) unit numbers exp(i * angle), angles
computed in float64; applying them is one complex multiply over channel pairs
(several times faster on CPU than real cos/sin arithmetic). Tables are cached
per (head_dim, grid, theta, device).

With `real=True` the tables come as `torch.view_as_real` of that: float32
(L, head_dim // 2, 2), (cos, sin) pairs, which `apply_rope` takes as well. The models
use that form, so that a compiled block has no complex tensor in it: inductor
generates no code for complex tensors and falls back to eager for every op on one.

Under `torch.compile` (`torch.compiler.is_compiling()`) the cache is bypassed, since
dynamo cannot trace `functools.lru_cache`: the table is built in the graph from the
same float64 angles (the same float32 values), and `apply_rope` rotates with real
cos/sin arithmetic, which inductor fuses into the surrounding kernels and which needs
no Python-side check of strides (that would be a graph break). Eager results are
unchanged.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch


def axis_dims(head_dim: int) -> tuple[int, int, int]:
    """Wan2.1's split of the head dim over (time, height, width)."""
    if head_dim % 2 or head_dim < 6:
        raise ValueError(f"3D RoPE needs an even head_dim >= 6, got {head_dim}")
    hw = 2 * (head_dim // 6)
    return head_dim - 2 * hw, hw, hw


def _angles(dim: int, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """positions (L,) float64 -> angles (L, dim // 2) float64."""
    inv_freq = theta ** (-torch.arange(0, dim, 2, dtype=torch.float64, device=positions.device) / dim)
    return positions[:, None] * inv_freq[None, :]


def _table(angles: torch.Tensor) -> torch.Tensor:
    return torch.polar(torch.ones_like(angles), angles).to(torch.complex64)


def _cos_sin(angles: torch.Tensor) -> torch.Tensor:
    """The real form of `_table(angles)`, built without complex tensors: float32 (..., 2)."""
    return torch.stack((angles.cos(), angles.sin()), dim=-1).float()


def _angles_3d(head_dim: int, grid: tuple[int, int, int], theta: float, device: torch.device) -> torch.Tensor:
    """float64 (T * H * W, head_dim // 2)."""
    parts = []
    for axis, (dim, n) in enumerate(zip(axis_dims(head_dim), grid)):
        a = _angles(dim, torch.arange(n, dtype=torch.float64, device=device), theta)  # (n, dim/2)
        shape = [1, 1, 1, dim // 2]
        shape[axis] = n
        parts.append(a.view(shape).expand(*grid, dim // 2))
    return torch.cat(parts, dim=-1).reshape(-1, head_dim // 2)


def _angles_1d(head_dim: int, length: int, offset: int, theta: float, device: torch.device) -> torch.Tensor:
    positions = torch.arange(offset, offset + length, dtype=torch.float64, device=device)
    return _angles(head_dim, positions, theta)


@functools.lru_cache(maxsize=64)
def _rope_3d(head_dim: int, grid: tuple[int, int, int], theta: float, device: torch.device) -> torch.Tensor:
    # Cached tensors must be ordinary tensors even if first asked for under inference mode.
    with torch.inference_mode(False), torch.no_grad():
        return _table(_angles_3d(head_dim, grid, theta, device))


@functools.lru_cache(maxsize=64)
def _rope_1d(head_dim: int, length: int, offset: int, theta: float, device: torch.device) -> torch.Tensor:
    with torch.inference_mode(False), torch.no_grad():
        return _table(_angles_1d(head_dim, length, offset, theta, device))


def _lookup(
    cached: Callable[..., torch.Tensor], angles: Callable[..., torch.Tensor], key: tuple[Any, ...], real: bool
) -> torch.Tensor:
    if torch.compiler.is_compiling():  # lru_cache is opaque to dynamo: build the table in the graph
        table = _cos_sin(angles(*key))
        return table if real else torch.view_as_complex(table)
    table = cached(*key)
    return torch.view_as_real(table) if real else table


def rope_frequencies(
    head_dim: int,
    grid: tuple[int, int, int],
    *,
    theta: float = 10000.0,
    device: torch.device | str | None = None,
    real: bool = False,
) -> torch.Tensor:
    """Rotations for a (T, H, W) token grid: complex64 (T * H * W, head_dim // 2); real: float32 (..., 2)."""
    if len(grid) != 3 or min(grid) < 1:
        raise ValueError(f"grid must be three positive sizes (T, H, W), got {grid}")
    key = (head_dim, tuple(int(n) for n in grid), float(theta), torch.device(device or "cpu"))
    return _lookup(_rope_3d, _angles_3d, key, real)


def rope_frequencies_1d(
    head_dim: int,
    length: int,
    *,
    offset: int = 0,
    theta: float = 10000.0,
    device: torch.device | str | None = None,
    real: bool = False,
) -> torch.Tensor:
    """Rotations for positions offset, ..., offset + length - 1 over the whole head dim: (length, head_dim // 2).

    real: as float32 (length, head_dim // 2, 2) (cos, sin) pairs, `torch.view_as_real` of the complex table.
    """
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head_dim, got {head_dim}")
    key = (head_dim, int(length), int(offset), float(theta), torch.device(device or "cpu"))
    return _lookup(_rope_1d, _angles_1d, key, real)


def apply_rope(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (2i, 2i+1) of x by the angles of `freqs`; computed in fp32, returned in x's dtype.

    x: (B, heads, L, head_dim) (any leading dims; L second to last); freqs: complex (L, head_dim // 2), or
    its `torch.view_as_real`, float (L, head_dim // 2, 2).
    """
    pairs = x.float().unflatten(-1, (-1, 2))
    if torch.compiler.is_compiling():
        # (a + ib)(c + id) in real arithmetic: fused by inductor, and no stride checks (a graph break).
        cos, sin = (torch.view_as_real(freqs) if freqs.is_complex() else freqs).unbind(-1)  # (L, head_dim // 2)
        a, b = pairs.unbind(-1)
        return torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2).to(x.dtype)
    if not freqs.is_complex():
        freqs = torch.view_as_complex(freqs)
    if any(s % 2 for s in pairs.stride()[:-1]) or pairs.stride(-1) != 1 or pairs.storage_offset() % 2:
        pairs = pairs.contiguous()  # view_as_complex needs (real, imag) adjacent and aligned
    return torch.view_as_real(torch.view_as_complex(pairs) * freqs).flatten(-2).to(x.dtype)
