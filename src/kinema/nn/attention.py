"""The one attention function of kinema, over `F.scaled_dot_product_attention`.

Every model (DiT, U-Net, VAE) calls `attention`; masks are booleans where True
means "may attend". A query whose keys are all masked out gets a zero output
instead of the NaN that a softmax over nothing would give.

One measured exception to SDPA: on CPU, in bf16/fp16, for short sequences, torch's
flash kernel is 1.5-3.5x slower than two matmuls around a softmax (forward and
backward; torch 2.13, 320 tokens: 14.4 ms vs 4.9 ms forward+backward). There the
scores are formed by a matmul (bf16 logits, softmax accumulated in fp32) as most eager
implementations do; above `CPU_MATMUL_MAX_SCORES` query-key pairs per head, where
the score matrix gets large, SDPA is used again.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CPU_MATMUL_MAX_SCORES = 512 * 512
"""Largest Lq * Lk for which low-precision attention on CPU uses explicit matmuls instead of SDPA."""


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax attention with scale 1/sqrt(head_dim).

    q: (B, heads, Lq, D); k, v: (B, heads, Lk, D).
    mask: None, a key padding mask (B, Lk) bool (True = attend), or a bool mask
      broadcastable to (B, heads, Lq, Lk).
    Returns (B, heads, Lq, D).
    """
    empty = None
    if mask is not None:
        if mask.dtype != torch.bool:
            raise TypeError(f"attention mask must be bool (True = attend), got {mask.dtype}")
        if mask.ndim == 2:
            mask = mask[:, None, None, :]  # (B, 1, 1, Lk)
        elif mask.ndim != 4:
            raise ValueError(f"attention mask must be (B, Lk) or (B, 1|heads, Lq|1, Lk), got shape {tuple(mask.shape)}")
        # Rows with no key to attend to: let them attend everywhere (finite), then zero them.
        empty = ~mask.any(dim=-1, keepdim=True)  # (B, 1|h, Lq|1, 1)
        mask = mask | empty
    if _use_matmul(q, k):
        out = matmul_attention(q, k, v, mask=mask)
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out if empty is None else out.masked_fill(empty, 0.0)


def _use_matmul(q: torch.Tensor, k: torch.Tensor) -> bool:
    low_precision = q.dtype in (torch.bfloat16, torch.float16)
    return q.device.type == "cpu" and low_precision and q.shape[-2] * k.shape[-2] <= CPU_MATMUL_MAX_SCORES


def matmul_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """softmax(q k^T / sqrt(D)) v as two matmuls; mask bool (B, 1|heads, Lq|1, Lk), True = attend.

    Every query row must have at least one key to attend to (`attention` ensures it).
    """
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)  # (B, heads, Lq, Lk)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(dim=-1) @ v  # low-precision softmax accumulates in fp32: same as fp32 then round
