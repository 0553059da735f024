"""AdaLN-Zero modulation with named outputs.

A conditioning vector (the timestep embedding) sets, per block, a shift and a
scale applied after a parameter-free norm, and a gate on the residual branch:

    x = x + gate * branch(modulate(norm(x), shift, scale))

Zero-initialised, every gate starts at 0 so each block starts as the identity.

The rows are taken as slices (`modulation_rows`), never with `split` or `chunk`, for
`torch.compile`: see `modulation_rows`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn


class Modulation(NamedTuple):
    """One residual branch's modulation; each tensor broadcasts against x, e.g. (B, 1, dim)."""

    shift: torch.Tensor
    scale: torch.Tensor
    gate: torch.Tensor


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x * (1 + scale) + shift."""
    return torch.addcmul(shift, x, 1 + scale)


def modulation_rows(params: torch.Tensor) -> list[torch.Tensor]:
    """(..., R, dim) -> R rows (..., 1, dim), each a slice of `params` (same values as `params.split(1, -2)`).

    Slices rather than `split`/`chunk` because of torch.compile. The backward of `split`
    concatenates the rows' gradients, and inductor writes each row's gradient (a sum over
    the tokens the row broadcasts over) straight into a view of the concatenated buffer.
    On CUDA, torch 2.10-2.13's mix-order reduction (a Triton-only fusion, for long token
    sequences) fuses those sums with the norm's backward and drops such writes: silently
    wrong modulation gradients (pytorch/pytorch#193061). Most likely the same fusion also
    misshaped a sum it returned in the crash seen training the DiT at Wan2.1-1.3B's shape at
    batch 1 under bf16 autocast ("CompiledFunctionBackward returned an invalid gradient ...
    got [1536] but expected shape compatible with [1, 1, 1536]"; compare pytorch/pytorch#178080),
    which CPU inductor cannot show (it has no such fusion). A slice's backward pads
    with zeros instead, so each sum stays a buffer of its own. Eager values and gradients
    are the same.
    """
    return [params.narrow(-2, i, 1) for i in range(params.shape[-2])]


def split_modulation(params: torch.Tensor, num: int) -> tuple[Modulation, ...]:
    """(B, 3 * num, dim) -> `num` Modulations of (B, 1, dim), in the order shift, scale, gate."""
    if params.shape[-2] != 3 * num:
        raise ValueError(f"expected {3 * num} modulation rows, got shape {tuple(params.shape)}")
    rows = modulation_rows(params)
    return tuple(Modulation(*rows[3 * i : 3 * i + 3]) for i in range(num))


class AdaLNZero(nn.Module):
    """SiLU -> Linear(cond_dim, 3 * num * dim), zero-initialised: `num` (shift, scale, gate) triples.

    c: (B, cond_dim) -> tuple of `num` Modulation, each tensor (B, 1, dim).
    """

    def __init__(self, cond_dim: int, dim: int, num: int = 2) -> None:
        super().__init__()
        self.num = num
        self.act = nn.SiLU()
        self.linear = nn.Linear(cond_dim, 3 * num * dim)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, c: torch.Tensor) -> tuple[Modulation, ...]:
        params = self.linear(self.act(c)).unflatten(-1, (3 * self.num, -1))
        return split_modulation(params, self.num)
