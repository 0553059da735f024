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
"""

from __future__ import annotations

import functools

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


@functools.lru_cache(maxsize=64)
def _rope_3d(head_dim: int, grid: tuple[int, int, int], theta: float, device: torch.device) -> torch.Tensor:
    # Cached tensors must be ordinary tensors even if first asked for under inference mode.
    with torch.inference_mode(False), torch.no_grad():
        parts = []
        for axis, (dim, n) in enumerate(zip(axis_dims(head_dim), grid)):
            a = _angles(dim, torch.arange(n, dtype=torch.float64, device=device), theta)  # (n, dim/2)
            shape = [1, 1, 1, dim // 2]
            shape[axis] = n
            parts.append(a.view(shape).expand(*grid, dim // 2))
        return _table(torch.cat(parts, dim=-1).reshape(-1, head_dim // 2))


@functools.lru_cache(maxsize=64)
def _rope_1d(head_dim: int, length: int, offset: int, theta: float, device: torch.device) -> torch.Tensor:
    with torch.inference_mode(False), torch.no_grad():
        positions = torch.arange(offset, offset + length, dtype=torch.float64, device=device)
        return _table(_angles(head_dim, positions, theta))


def rope_frequencies(
    head_dim: int, grid: tuple[int, int, int], *, theta: float = 10000.0, device: torch.device | str | None = None
) -> torch.Tensor:
    """Rotations for a (T, H, W) token grid: complex64 (T * H * W, head_dim // 2)."""
    if len(grid) != 3 or min(grid) < 1:
        raise ValueError(f"grid must be three positive sizes (T, H, W), got {grid}")
    return _rope_3d(head_dim, tuple(int(n) for n in grid), float(theta), torch.device(device or "cpu"))


def rope_frequencies_1d(
    head_dim: int, length: int, *, offset: int = 0, theta: float = 10000.0, device: torch.device | str | None = None
) -> torch.Tensor:
    """Rotations for positions offset, ..., offset + length - 1 over the whole head dim: (length, head_dim // 2)."""
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head_dim, got {head_dim}")
    return _rope_1d(head_dim, int(length), int(offset), float(theta), torch.device(device or "cpu"))


def apply_rope(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (2i, 2i+1) of x by the angles of `freqs`; computed in fp32, returned in x's dtype.

    x: (B, heads, L, head_dim) (any leading dims; L second to last); freqs: complex (L, head_dim // 2).
    """
    pairs = x.float().unflatten(-1, (-1, 2))
    if any(s % 2 for s in pairs.stride()[:-1]) or pairs.stride(-1) != 1 or pairs.storage_offset() % 2:
        pairs = pairs.contiguous()  # view_as_complex needs (real, imag) adjacent and aligned
    return torch.view_as_real(torch.view_as_complex(pairs) * freqs).flatten(-2).to(x.dtype)
