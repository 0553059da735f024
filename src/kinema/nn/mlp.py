"""The feed-forward MLP shared by the transformer blocks and the embedders."""

from __future__ import annotations

import torch
from torch import nn

ACTIVATIONS = {
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
    "gelu": nn.GELU,
    "silu": nn.SiLU,
}


class MLP(nn.Module):
    """Linear -> activation -> Linear.

    x: (..., in_dim) -> (..., out_dim); `activation` is one of "gelu_tanh", "gelu", "silu".
    """

    def __init__(
        self, in_dim: int, hidden_dim: int, out_dim: int | None = None, *, activation: str = "gelu_tanh"
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.act = ACTIVATIONS[activation]()
        self.fc2 = nn.Linear(hidden_dim, out_dim or in_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))
