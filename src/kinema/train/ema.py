"""Exponential moving average of a model's weights, kept as a full model copy.

The copy is what samples are drawn from and what the exported pipeline holds,
so it is an ordinary module: `save_model(ema.model, ...)` writes it.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """ema = decay_t * ema + (1 - decay_t) * weights, with decay_t = min(decay, (1 + n) / (10 + n)).

    The warmup (`n` = number of updates so far) lets the average follow the fast early
    changes instead of holding on to the random initialisation. Buffers are copied.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.updates = 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        for p in self.model.parameters():  # the average is kept in fp32 whatever the training dtype
            p.data = p.data.float()

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module, *, skip: torch.Tensor | None = None) -> None:
        """Move the average toward `model`'s weights (same architecture, unwrapped); not where `skip` (a 0-dim
        bool tensor, e.g. a non-finite step) is true, decided on the device without waiting for it."""
        weight: float | torch.Tensor = 1.0 - self.current_decay()
        ema_params = list(self.model.parameters())
        params = [p.detach().float() for p in model.parameters()]
        if skip is not None:
            weight = torch.where(skip, 0.0, weight).to(ema_params[0].device)
        torch._foreach_lerp_(ema_params, params, weight)
        for b_ema, b in zip(self.model.buffers(), model.buffers()):
            b_ema.copy_(b)
        self.updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor], updates: int) -> None:
        self.model.load_state_dict(state)
        self.updates = updates
