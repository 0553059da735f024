"""Causal 3D convolution: frame t sees frames <= t only, so an image is a one-frame video.

Time is padded on the past side only; with a `cache` of the previous chunk's last
input frames, a clip can be processed chunk by chunk and give the same result as
the whole clip at once (the VAE's bounded-memory encode and decode rely on this).

The past before frame 0 is zeros (Wan's convention) or, with `past="replicate"`, frame 0
itself: the clip as if it had stood still before it began. Zeros make a deep causal
stack see less and less signal towards frame 0, so its first frames come out weaker
than the rest; replicating frame 0 makes a still clip's every frame alike.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _triple(v: int | tuple[int, int, int]) -> tuple[int, int, int]:
    return (v, v, v) if isinstance(v, int) else tuple(v)  # type: ignore[return-value]


PAST_PADDINGS = ("zeros", "replicate")


class CausalConv3d(nn.Conv3d):
    """A Conv3d that pads time only on the past side (`past`: zeros or frame 0), space symmetrically (zeros).

    `padding` follows `nn.Conv3d` for space; in time it means "p frames each side" in the
    non-causal layer, which becomes 2p frames on the past side here (Wan's convention, so
    weights transfer). By default the padding keeps the size: kernel // 2 in every axis.

    x: (B, C, T, H, W) -> (B, C_out, T', H', W')
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int, int] = 3,
        *,
        stride: int | tuple[int, int, int] = 1,
        padding: int | tuple[int, int, int] | None = None,
        bias: bool = True,
        past: str = "zeros",
    ) -> None:
        if past not in PAST_PADDINGS:
            raise ValueError(f"past must be one of {PAST_PADDINGS}, got {past!r}")
        kernel_size = _triple(kernel_size)
        padding = tuple(k // 2 for k in kernel_size) if padding is None else _triple(padding)
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0, bias=bias)
        pt, ph, pw = padding
        self.time_pad = 2 * pt
        self.space_pad = (pw, pw, ph, ph)
        self.past = past

    @property
    def cache_frames(self) -> int:
        """How many past input frames the next chunk needs from this one."""
        return self.time_pad

    def forward(self, x: torch.Tensor, cache: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, C, T, H, W); cache: (B, C, k <= time_pad, H, W) last input frames of the previous chunk."""
        time_pad = self.time_pad
        if cache is not None and time_pad > 0:
            cache = cache[:, :, -time_pad:]
            x = torch.cat([cache.to(x), x], dim=2)
            time_pad -= cache.shape[2]
        if self.past == "replicate" and time_pad > 0:
            x = torch.cat([x[:, :, :1].expand(-1, -1, time_pad, -1, -1), x], dim=2)
            time_pad = 0
        x = F.pad(x, (*self.space_pad, time_pad, 0))
        return super().forward(x)
