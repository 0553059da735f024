"""The learning-rate schedule: a pure function of the step (linear warmup, then cosine or constant).

Being a function of the step alone, the schedule needs no state of its own: a
resumed run sets the same LR as a straight one from the step it restored.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer


def lr_at(step: int, *, lr: float, warmup_steps: int, total_steps: int, schedule: str, min_lr_ratio: float) -> float:
    """The LR for optimiser step `step` (0-based).

    Warmup rises linearly from lr / (warmup_steps + 1) to lr; after it, `schedule="cosine"`
    decays to min_lr_ratio * lr at the last step, `schedule="constant"` holds lr.
    """
    if step < warmup_steps:
        return lr * (step + 1) / (warmup_steps + 1)
    if schedule == "constant":
        return lr
    decay_steps = max(1, total_steps - 1 - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    min_lr = lr * min_lr_ratio
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: Optimizer, value: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = value
