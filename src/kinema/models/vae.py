"""The causal 3D video VAE, in the layout of Wan2.1's VAE.

    video (B, 3, T, H, W), T = 1 + k * tf
      encoder: causal conv ─▶ per stage [ResBlock x n, Downsample] ─▶ mid [ResBlock, FrameAttention, ResBlock]
               ─▶ RMSNorm, SiLU, causal conv ─▶ quant_conv ─▶ mean, logvar (B, c, 1 + k, H / s, W / s)
      decoder: post_quant_conv ─▶ causal conv ─▶ mid ─▶ per stage [ResBlock x (n + 1), Upsample]
               ─▶ RMSNorm, SiLU, causal conv ─▶ video (B, 3, T, H, W)

Everything is causal in time: 3D convs pad only the past, attention stays within a
frame, and temporal down/up-sampling treats the first frame on its own. So latent
frame 0 is frame 0 alone (an image is a one-frame video, and image-to-video uses
the same encoder), and latent frame j >= 1 covers frames 1 + (j - 1) * tf ... j * tf.

Because of that a clip can be encoded or decoded in chunks of latent frames, each
layer carrying its last input frames (`CausalState`) into the next chunk: the
result equals the whole clip at once, and memory depends on the chunk, not on the
clip's length. Large frames can also be cut into overlapping spatial tiles whose
outputs are blended across the overlaps.

Activations run in channels-last memory (B, T, H, W, C order), where the 2D
convs, the channel RMSNorm and the per-frame attention are views, not copies, and
where oneDNN's convolutions are fastest on CPU.

`VideoVAE.from_diffusers` / `to_diffusers` convert to and from diffusers'
`AutoencoderKLWan` (same outputs); `vae_wan21()` is the Wan2.1 VAE's shape.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from kinema.errors import KinemaError
from kinema.nn import conv as shared_conv
from kinema.nn.attention import attention
from kinema.nn.norm import RMSNorm

if TYPE_CHECKING:
    from diffusers import AutoencoderKLWan

SPATIAL_FACTORS = (4, 8, 16)
TEMPORAL_FACTORS = (1, 2, 4)
# Wan normalises with F.normalize (eps 1e-12 on the L2 norm); an RMSNorm with this eps matches it to float precision.
NORM_EPS = 1e-12
CHUNK_LATENTS = 1
"""Latent frames per chunk of a chunked encode or decode: frame 0, then tf frames at a time (as Wan). Larger
chunks hold proportionally more activations for at most ~15% more speed (benchmarks/BENCHMARKS-vae.md)."""
_CHANNELS_LAST = torch.channels_last_3d


@dataclass(frozen=True, kw_only=True)
class VAEConfig:
    """Shape of a VideoVAE; presets below (`vae_tiny`, `vae_shapes`, `vae_wan21`)."""

    latent_channels: int = 16
    """Channels c of the latent."""
    base_channels: int = 96
    """Channels of the first stage; stage i has base_channels * channel_mult[i]."""
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    """Channel multiplier per stage; each stage after the first halves H and W: spatial factor 2 ** (len - 1)."""
    temporal_downsample: tuple[bool, ...] = (False, True, True)
    """Per downsampling stage (len(channel_mult) - 1 of them), whether it also halves time: factor 2 ** count."""
    num_res_blocks: int = 2
    """Residual blocks per encoder stage (the decoder has one more per stage, as Wan)."""
    dropout: float = 0.0
    """Dropout inside the residual blocks (active in training mode only)."""
    video_channels: int = 3
    """Channels of the video (3 for RGB)."""
    latent_mean: tuple[float, ...] | None = None
    """Per-channel mean of the posterior means on training data (see `measure_latent_stats`); None = zeros."""
    latent_std: tuple[float, ...] | None = None
    """Per-channel std of the same; `encode` returns (z - mean) / std and `decode` undoes it; None = ones."""
    causal_padding: str = "zeros"
    """What the causal convs see before frame 0: "zeros" (Wan) or "replicate" (frame 0, as if the clip had stood
    still before it; the encoder's time downsampling then sees frame 0 too). With zeros a deep encoder's first
    latent frames come out weaker, and the shipped shapes VAE kept colours 5-7x closer in latent frame 0 than
    later, where a denoiser's small error swaps them; the shapes VAE uses "replicate"."""

    def __post_init__(self) -> None:
        for name in ("latent_channels", "base_channels", "num_res_blocks", "video_channels"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"VAEConfig.{name} must be a positive int, got {value!r}")
        stages = len(self.channel_mult)
        if 2 ** (stages - 1) not in SPATIAL_FACTORS:
            raise ValueError(
                f"VAEConfig.channel_mult has {stages} entries, a spatial factor of {2 ** (stages - 1)}; "
                f"valid spatial factors are {SPATIAL_FACTORS} (3, 4 or 5 entries)"
            )
        if any(not isinstance(m, int) or m < 1 for m in self.channel_mult):
            raise ValueError(f"VAEConfig.channel_mult must be positive ints, got {self.channel_mult!r}")
        flags = self.temporal_downsample
        if len(flags) != stages - 1 or any(not isinstance(t, bool) for t in flags):
            raise ValueError(
                f"VAEConfig.temporal_downsample must be {stages - 1} bools (one per downsampling stage), "
                f"got {self.temporal_downsample!r}"
            )
        if self.temporal_factor not in TEMPORAL_FACTORS:
            raise ValueError(
                f"VAEConfig.temporal_downsample halves time {sum(self.temporal_downsample)} times; "
                f"valid temporal factors are {TEMPORAL_FACTORS} (at most 2 True)"
            )
        # Each decoder stage that upsamples hands half its channels to the next (Wan's layout).
        halved = [self.base_channels * m for m in self.channel_mult[1:]]
        if any(d % 2 for d in halved):
            raise ValueError(
                f"VAEConfig: base_channels * channel_mult[1:] = {halved} must be even (the decoder halves them)"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"VAEConfig.dropout must be in [0, 1), got {self.dropout}")
        for name in ("latent_mean", "latent_std"):
            value = getattr(self, name)
            if value is not None and len(value) != self.latent_channels:
                raise ValueError(
                    f"VAEConfig.{name} must have latent_channels = {self.latent_channels} values or be None, "
                    f"got {len(value)}"
                )
        if self.latent_std is not None and not all(s > 0 for s in self.latent_std):
            raise ValueError(f"VAEConfig.latent_std must be all > 0, got {self.latent_std}")
        if self.causal_padding not in shared_conv.PAST_PADDINGS:
            raise ValueError(f"VAEConfig.causal_padding must be one of {shared_conv.PAST_PADDINGS}, got {self.causal_padding!r}")

    @property
    def spatial_factor(self) -> int:
        """H and W of the video over those of the latent: 4, 8 or 16."""
        return 2 ** (len(self.channel_mult) - 1)

    @property
    def temporal_factor(self) -> int:
        """Frames per latent frame after the first: 1, 2 or 4."""
        return 2 ** sum(self.temporal_downsample)

    def frames_for_latents(self, latent_frames: int) -> int:
        """Video frames decoded from `latent_frames` latent frames: 1 + (t - 1) * tf."""
        return 1 + (latent_frames - 1) * self.temporal_factor

    def latent_shape(self, video_shape: tuple[int, ...]) -> tuple[int, ...]:
        """(..., C, T, H, W) of a video -> (..., c, t, h, w) of its latent; raises KinemaError for invalid sizes."""
        if len(video_shape) < 4:
            raise KinemaError(f"a video shape is (B, C, T, H, W) or (C, T, H, W), got {tuple(video_shape)}")
        *lead, channels, frames, height, width = video_shape
        if channels != self.video_channels:
            raise KinemaError(f"the video has {channels} channels; this VAE takes {self.video_channels} (RGB)")
        tf, s = self.temporal_factor, self.spatial_factor
        if frames < 1 or (frames - 1) % tf:
            below = 1 + max(frames - 1, 0) // tf * tf
            raise KinemaError(
                f"the video has {frames} frames; this VAE (temporal factor {tf}) takes 1 + {tf}k frames: "
                f"use {below} or {below + tf}"
            )
        if height < s or width < s or height % s or width % s:
            near = lambda n: sorted({max(s, n // s * s), max(s, -(-n // s) * s)})  # noqa: E731
            raise KinemaError(
                f"the frames are {height}x{width} (HxW); this VAE (spatial factor {s}) needs multiples of {s}: "
                f"height {' or '.join(map(str, near(height)))}, width {' or '.join(map(str, near(width)))}"
            )
        return (*lead, self.latent_channels, 1 + (frames - 1) // tf, height // s, width // s)


def _layout(spatial_factor: int, temporal_factor: int) -> tuple[int, tuple[bool, ...]]:
    """Stages and temporal flags for the factors; time is halved in the deepest stages, as Wan does."""
    if spatial_factor not in SPATIAL_FACTORS or temporal_factor not in TEMPORAL_FACTORS:
        raise ValueError(f"spatial factor must be one of {SPATIAL_FACTORS} and temporal one of {TEMPORAL_FACTORS}")
    downs = spatial_factor.bit_length() - 1
    halvings = temporal_factor.bit_length() - 1
    return downs + 1, tuple(i >= downs - halvings for i in range(downs))


def vae_tiny(
    *, spatial_factor: int = 4, temporal_factor: int = 4, latent_channels: int = 4, **overrides: Any
) -> VAEConfig:
    """A ~0.1M-parameter VAE for tests and smoke runs."""
    stages, flags = _layout(spatial_factor, temporal_factor)
    base = dict(
        latent_channels=latent_channels, base_channels=8, channel_mult=(1,) + (2,) * (stages - 1),
        temporal_downsample=flags, num_res_blocks=1,
    )
    return VAEConfig(**{**base, **overrides})


def vae_shapes(
    *, spatial_factor: int = 4, temporal_factor: int = 4, latent_channels: int = 8, **overrides: Any
) -> VAEConfig:
    """The shapes model's VAE (1.8M parameters): 64x64x17 clips -> latents (8, 5, 16, 16) at the defaults.

    About 0.85 GFLOP per 64x64 frame to encode and decode, so it trains on a laptop CPU in hours. Its causal
    convs replicate frame 0 into the past (`VAEConfig.causal_padding`), so latent frame 0 keeps colours as far
    apart as the later ones.
    """
    stages, flags = _layout(spatial_factor, temporal_factor)
    base = dict(
        latent_channels=latent_channels, base_channels=16, channel_mult=(1, 2) + (4,) * (stages - 2),
        temporal_downsample=flags, num_res_blocks=1, causal_padding="replicate",
    )
    return VAEConfig(**{**base, **overrides})


def vae_wan21(**overrides: Any) -> VAEConfig:
    """The shape of the Wan2.1 VAE (8x spatial, 4x temporal, 16 channels, ~127M parameters), with its latent stats."""
    base = dict(
        latent_channels=16, base_channels=96, channel_mult=(1, 2, 4, 4), temporal_downsample=(False, True, True),
        num_res_blocks=2, latent_mean=WAN21_LATENT_MEAN, latent_std=WAN21_LATENT_STD,
    )
    return VAEConfig(**{**base, **overrides})


# Per-channel statistics of the released Wan2.1 VAE's latents (from its model card / diffusers config).
WAN21_LATENT_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)  # fmt: skip
WAN21_LATENT_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------------
# Causal state and the layers


@dataclass
class CausalState:
    """What a chunked pass carries from one chunk of frames to the next (a fresh one starts a clip)."""

    past: dict[nn.Module, torch.Tensor] = field(default_factory=dict)
    """Per layer, its last input frames: the time padding of the next chunk."""
    first: bool = True
    """Whether the current chunk starts the clip (holds frame 0)."""


class CausalConv3d(shared_conv.CausalConv3d):
    """kinema's causal conv, with fp32 on CPU always sent to oneDNN.

    PyTorch sends an fp32 conv3d with batch 1 and fewer than 20480 input elements in (N, C, T, H) to its im2col
    kernel (a heuristic from 2D images); for this VAE's chunks oneDNN is up to 6x faster. Autocast and other
    devices take the usual path.
    """

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        fp32 = x.dtype == weight.dtype == torch.float32
        if x.device.type == "cpu" and fp32 and not torch.is_autocast_enabled("cpu"):
            return torch.mkldnn_convolution(x, weight, bias, self.padding, self.stride, self.dilation, self.groups)
        return super()._conv_forward(x, weight, bias)


def causal_conv(conv: CausalConv3d, x: torch.Tensor, state: CausalState | None) -> torch.Tensor:
    """conv(x) continuing the clip from the previous chunk; keeps x's last frames for the next one.

    state None: x is the whole clip (nothing before it, nothing kept).
    """
    if state is None:
        return conv(x)
    past = state.past.get(conv)
    keep = conv.cache_frames
    if keep:
        frames = x if past is None or x.shape[2] >= keep else torch.cat([past, x], dim=2)
        state.past[conv] = frames[:, :, -keep:].clone()  # a copy, so the chunk itself can be freed
    return conv(x, past)


def per_frame(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """fn applied to the frames as a batch of images: x (B, C, T, H, W) -> (B, C', T, H', W')."""
    b, t = x.shape[0], x.shape[2]
    y = fn(x.transpose(1, 2).flatten(0, 1))  # (B*T, C, H, W): a view in channels-last memory
    return y.unflatten(0, (b, t)).transpose(1, 2)


class ChannelRMSNorm(RMSNorm):
    """RMSNorm over the channels of x: (B, C, T, H, W) (Wan's channel-first RMS_norm)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.movedim(1, -1)).movedim(-1, 1)


class ResBlock(nn.Module):
    """(RMSNorm, SiLU, causal 3x3x3 conv) twice, plus a shortcut (1x1x1 conv when the width changes).

    x: (B, C, T, H, W) -> (B, C_out, T, H, W)
    """

    def __init__(self, dim: int, out_dim: int, dropout: float, past: str = "zeros") -> None:
        super().__init__()
        self.norm1 = ChannelRMSNorm(dim, eps=NORM_EPS)
        self.conv1 = CausalConv3d(dim, out_dim, 3, past=past)
        self.norm2 = ChannelRMSNorm(out_dim, eps=NORM_EPS)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = CausalConv3d(out_dim, out_dim, 3, past=past)
        self.conv_shortcut = CausalConv3d(dim, out_dim, 1) if dim != out_dim else nn.Identity()

    def forward(self, x: torch.Tensor, state: CausalState | None = None) -> torch.Tensor:
        h = causal_conv(self.conv1, F.silu(self.norm1(x)), state)
        h = causal_conv(self.conv2, self.dropout(F.silu(self.norm2(h))), state)
        return self.conv_shortcut(x) + h


class FrameAttention(nn.Module):
    """Single-head self-attention among the pixels of each frame, residual; frames never mix, so it stays causal.

    x: (B, C, T, H, W) -> (B, C, T, H, W)
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = RMSNorm(dim, eps=NORM_EPS)
        self.to_qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        tokens = x.permute(0, 2, 3, 4, 1).reshape(b * t, 1, h * w, c)  # (frames, 1 head, pixels, C)
        q, k, v = self.to_qkv(self.norm(tokens)).chunk(3, dim=-1)
        out = self.proj(attention(q, k, v))
        return x + out.reshape(b, t, h, w, c).permute(0, 4, 1, 2, 3)


class MidBlock(nn.Module):
    """ResBlock, FrameAttention, ResBlock at the deepest stage.  x: (B, C, T, H, W) -> same."""

    def __init__(self, dim: int, dropout: float, past: str = "zeros") -> None:
        super().__init__()
        self.resnets = nn.ModuleList([ResBlock(dim, dim, dropout, past), ResBlock(dim, dim, dropout, past)])
        self.attentions = nn.ModuleList([FrameAttention(dim)])

    def forward(self, x: torch.Tensor, state: CausalState | None = None) -> torch.Tensor:
        x = self.resnets[0](x, state)
        x = self.attentions[0](x)
        return self.resnets[1](x, state)


class Downsample(nn.Module):
    """Halve H and W (a stride-2 3x3 conv per frame); with `time`, then halve T after the first frame.

    The time conv (kernel 3, stride 2) maps frames (2j - 2, 2j - 1, 2j) to output frame j >= 1; frame 0 passes
    alone (past "zeros", as Wan) or through the conv as (0, 0, 0) with frame 0 held before it (past "replicate").
    x: (B, C, T, H, W) -> (B, C, T', H/2, W/2), T' = 1 + (T - 1) / 2 in the chunk holding frame 0, T / 2 after it.
    """

    def __init__(self, dim: int, *, time: bool, past: str = "zeros") -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 3, stride=2)
        self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1), padding=0) if time else None
        self.past = past

    def forward(self, x: torch.Tensor, state: CausalState | None = None) -> torch.Tensor:
        x = per_frame(self.conv, F.pad(x, (0, 1, 0, 1)))  # pads right and bottom only, as Wan
        if self.time_conv is None:
            return x
        if state is not None and not state.first:
            past, state.past[self] = state.past[self], x[:, :, -1:].clone()
            return self.time_conv(torch.cat([past, x], dim=2))
        if state is not None:
            state.past[self] = x[:, :, -1:].clone()
        if self.past == "replicate":
            return self.time_conv(torch.cat([x[:, :, :1], x[:, :, :1], x], dim=2))
        pairs = self.time_conv(x) if x.shape[2] > 1 else x[:, :, :0]
        return torch.cat([x[:, :, :1], pairs], dim=2)


class Upsample(nn.Module):
    """With `time`, double T after the first frame (a causal conv makes two frames of each); then double H and W
    (nearest, and a 3x3 conv per frame to `out_dim` channels).

    x: (B, C, T, H, W) -> (B, C_out, T', 2H, 2W), T' = 1 + 2 (T - 1) in the chunk holding frame 0, 2T after it.
    """

    def __init__(self, dim: int, out_dim: int, *, time: bool, past: str = "zeros") -> None:
        super().__init__()
        self.time_conv = CausalConv3d(dim, 2 * dim, (3, 1, 1), past=past) if time else None
        self.conv = nn.Conv2d(dim, out_dim, 3, padding=1)

    def forward(self, x: torch.Tensor, state: CausalState | None = None) -> torch.Tensor:
        if self.time_conv is not None:
            head = x[:, :, :0]
            if state is None or state.first:  # frame 0 stays one frame, outside the time conv's past (as Wan)
                head, x = x[:, :, :1], x[:, :, 1:]
            if x.shape[2]:
                pairs = causal_conv(self.time_conv, x, state)  # (B, 2C, T, H, W)
                x = torch.stack(pairs.chunk(2, dim=1), dim=3).flatten(2, 3)  # (B, C, 2T, H, W)
            x = torch.cat([head, x], dim=2).contiguous(memory_format=_CHANNELS_LAST)
        return per_frame(lambda f: self.conv(F.interpolate(f, scale_factor=2.0, mode="nearest")), x)


class UpBlock(nn.Module):
    """ResBlocks, then an optional Upsample (to half the channels).  x: (B, C, T, H, W) -> (B, C', T', H', W')."""

    def __init__(
        self, dim: int, out_dim: int, num_resnets: int, dropout: float, upsample: bool, time: bool, past: str = "zeros"
    ) -> None:
        super().__init__()
        widths = [dim] + [out_dim] * (num_resnets - 1)
        self.resnets = nn.ModuleList([ResBlock(width, out_dim, dropout, past) for width in widths])
        self.upsample = Upsample(out_dim, out_dim // 2, time=time, past=past) if upsample else None

    def forward(self, x: torch.Tensor, state: CausalState | None = None) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x, state)
        return x if self.upsample is None else self.upsample(x, state)


class Encoder(nn.Module):
    """Video -> posterior moments before quant_conv.

    x: (B, 3, T, H, W) -> (B, 2c, T', H/s, W/s): T' = 1 + (T - 1) / tf for the chunk holding frame 0, T / tf after.
    """

    def __init__(self, c: VAEConfig) -> None:
        super().__init__()
        dims = [c.base_channels * m for m in (1, *c.channel_mult)]
        past = c.causal_padding
        self.conv_in = CausalConv3d(c.video_channels, dims[0], 3, past=past)
        blocks: list[nn.Module] = []
        for i, (dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(c.num_res_blocks):
                blocks.append(ResBlock(dim, out_dim, c.dropout, past))
                dim = out_dim
            if i < len(c.channel_mult) - 1:
                blocks.append(Downsample(out_dim, time=c.temporal_downsample[i], past=past))
        self.down_blocks = nn.ModuleList(blocks)
        self.mid_block = MidBlock(dims[-1], c.dropout, past)
        self.norm_out = ChannelRMSNorm(dims[-1], eps=NORM_EPS)
        self.conv_out = CausalConv3d(dims[-1], 2 * c.latent_channels, 3, past=past)

    def forward(self, x: torch.Tensor, state: CausalState | None = None) -> torch.Tensor:
        x = causal_conv(self.conv_in, x.to(self.conv_in.weight.dtype, memory_format=_CHANNELS_LAST), state)
        for block in self.down_blocks:
            x = block(x, state)
        x = self.mid_block(x, state)
        return causal_conv(self.conv_out, F.silu(self.norm_out(x)), state)


class Decoder(nn.Module):
    """Latent (after post_quant_conv) -> video.

    z: (B, c, t, h, w) -> (B, 3, T', h*s, w*s): T' = 1 + (t - 1) * tf for the chunk holding frame 0, t * tf after.
    """

    def __init__(self, c: VAEConfig) -> None:
        super().__init__()
        mult = c.channel_mult
        dims = [c.base_channels * m for m in (mult[-1], *reversed(mult))]
        time_up = tuple(reversed(c.temporal_downsample))
        past = c.causal_padding
        self.conv_in = CausalConv3d(c.latent_channels, dims[0], 3, past=past)
        self.mid_block = MidBlock(dims[0], c.dropout, past)
        blocks = []
        for i, (dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            upsample = i < len(mult) - 1
            blocks.append(
                UpBlock(
                    dim if i == 0 else dim // 2,  # the previous stage's Upsample halved its width
                    out_dim, c.num_res_blocks + 1, c.dropout, upsample, time=upsample and time_up[i], past=past,
                )
            )
        self.up_blocks = nn.ModuleList(blocks)
        self.norm_out = ChannelRMSNorm(dims[-1], eps=NORM_EPS)
        self.conv_out = CausalConv3d(dims[-1], c.video_channels, 3, past=past)

    def forward(self, z: torch.Tensor, state: CausalState | None = None) -> torch.Tensor:
        x = causal_conv(self.conv_in, z.to(self.conv_in.weight.dtype, memory_format=_CHANNELS_LAST), state)
        x = self.mid_block(x, state)
        for block in self.up_blocks:
            x = block(x, state)
        return causal_conv(self.conv_out, F.silu(self.norm_out(x)), state)


# ---------------------------------------------------------------------------------------------------------------------
# Chunks in time, tiles in space


def run_chunks(
    fn: Callable[[torch.Tensor, CausalState], torch.Tensor],
    x: torch.Tensor,
    chunks: list[tuple[slice, slice]],
    out_frames: int,
    progress: Callable[[], None] | None = None,
) -> torch.Tensor:
    """Run a causal fn over x chunk by chunk along time, writing each chunk's output into one tensor.

    chunks: (input frames, output frames) per chunk, in order; out_frames: the output's length.
    progress: called after each chunk.
    x: (B, C, T, H, W) -> (B, C', out_frames, H', W'), in x's dtype or wider (autocast outputs are widened).
    """
    state = CausalState()
    out = None
    for src, dst in chunks:
        y = fn(x[:, :, src], state)
        state.first = False
        if out is None:
            dtype = torch.promote_types(y.dtype, x.dtype)
            out = y.new_empty((*y.shape[:2], out_frames, *y.shape[3:]), dtype=dtype)
        out[:, :, dst] = y
        if progress is not None:
            progress()
    assert out is not None
    return out


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Starts of tiles of length `tile` covering [0, size), neighbours overlapping by >= `overlap`."""
    if not 0 <= overlap < tile:
        raise ValueError(f"tile overlap must be in [0, tile = {tile}), got {overlap}")
    if tile >= size:
        return [0]
    starts = list(range(0, size - tile, tile - overlap))
    return starts + [size - tile]


def _blend_weights(start: int, length: int, size: int, ramp: int) -> torch.Tensor:
    """1D weights of a tile: 1 inside, rising linearly over `ramp` at each edge shared with another tile."""
    w = torch.ones(length)
    if ramp > 0:
        rise = (torch.arange(ramp) + 0.5) / ramp
        if start > 0:
            w[:ramp] = torch.minimum(w[:ramp], rise)
        if start + length < size:
            w[-ramp:] = torch.minimum(w[-ramp:], rise.flip(0))
    return w


def run_tiles(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    *,
    tile: int,
    overlap: int,
    scale_in: int,
    scale_out: int,
) -> torch.Tensor:
    """fn over overlapping spatial tiles of x, averaged across the overlaps with linear ramps (no visible seams).

    Tiles are laid out on a grid of units: one unit is `scale_in` pixels of x and `scale_out` pixels of the output;
    `tile` and `overlap` count units. x: (B, C, T, H, W) -> (B, C', T', H * scale_out / scale_in, W * ...).
    """
    H, W = x.shape[-2] // scale_in, x.shape[-1] // scale_in  # in units
    out = weight = None
    for top in tile_starts(H, tile, overlap):
        for left in tile_starts(W, tile, overlap):
            h, w = min(tile, H), min(tile, W)
            y = fn(x[..., top * scale_in : (top + h) * scale_in, left * scale_in : (left + w) * scale_in])
            if out is None:
                dtype = torch.promote_types(y.dtype, torch.float32)
                out = y.new_zeros((*y.shape[:3], H * scale_out, W * scale_out), dtype=dtype)
                weight = y.new_zeros((H * scale_out, W * scale_out), dtype=dtype)
            ramp = overlap * scale_out
            wy = _blend_weights(top * scale_out, h * scale_out, H * scale_out, ramp)
            wx = _blend_weights(left * scale_out, w * scale_out, W * scale_out, ramp)
            w2d = (wy[:, None] * wx[None, :]).to(out)
            rows = slice(top * scale_out, (top + h) * scale_out)
            cols = slice(left * scale_out, (left + w) * scale_out)
            out[..., rows, cols] += y * w2d
            weight[rows, cols] += w2d
    assert out is not None and weight is not None
    return out / weight


# ---------------------------------------------------------------------------------------------------------------------
# The VAE


class VideoVAE(nn.Module):
    """Causal 3D video VAE with a diagonal-Gaussian latent.

    encode: video (B, 3, T, H, W) in [-1, 1], T = 1 + k * tf -> normalised latents (B, c, 1 + k, H/s, W/s)
    decode: normalised latents -> video in [-1, 1]
    forward: video -> (reconstruction, posterior mean, posterior logvar), for training.

    Run encode and decode under `torch.no_grad()` (or `inference_mode`) for bounded memory: with autograd on,
    every chunk's activations are kept for the backward pass.
    """

    config_class = VAEConfig

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        c = config.latent_channels
        self.encoder = Encoder(config)
        self.quant_conv = CausalConv3d(2 * c, 2 * c, 1)
        self.post_quant_conv = CausalConv3d(c, c, 1)
        self.decoder = Decoder(config)
        mean = torch.tensor(config.latent_mean or [0.0] * c, dtype=torch.float32)
        std = torch.tensor(config.latent_std or [1.0] * c, dtype=torch.float32)
        self.register_buffer("latent_mean", mean.view(1, c, 1, 1, 1), persistent=False)
        self.register_buffer("latent_std", std.view(1, c, 1, 1, 1), persistent=False)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def latent_shape(self, video_shape: tuple[int, ...]) -> tuple[int, ...]:
        """(..., C, T, H, W) of a video -> (..., c, t, h, w) of its latent; KinemaError for invalid sizes."""
        return self.config.latent_shape(tuple(video_shape))

    def frames_for_latents(self, latent_frames: int) -> int:
        """Video frames decoded from `latent_frames` latent frames: 1 + (t - 1) * tf."""
        return self.config.frames_for_latents(latent_frames)

    # -- encoding

    def encode_posterior(
        self, x: torch.Tensor, *, chunked: bool = True, chunk_latents: int = CHUNK_LATENTS, tile: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The posterior of video x: (mean, logvar), each (B, c, t, h, w), not normalised (for training).

        chunked: encode `chunk_latents` latent frames at a time (same result, memory bounded by the chunk);
        tile: cut frames into tiles of this many pixels (a multiple of the spatial factor), blended where they overlap.
        """
        _, _, t, _, _ = self._check_video(x)
        chunks = self._chunks(t, chunk_latents if chunked else t)

        def encode_frames(frames: torch.Tensor) -> torch.Tensor:
            return run_chunks(lambda f, state: self.quant_conv(self.encoder(f, state)), frames, chunks, t)

        moments = self._tiled(encode_frames, x, tile, encode=True)
        mean, logvar = moments.chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def encode(
        self,
        x: torch.Tensor,
        *,
        sample: bool = False,
        generator: torch.Generator | None = None,
        chunked: bool = True,
        chunk_latents: int = CHUNK_LATENTS,
        tile: int | None = None,
    ) -> torch.Tensor:
        """Video x: (B, 3, T, H, W) in [-1, 1], T = 1 + k * tf -> normalised latents (B, c, 1 + k, H/s, W/s).

        The posterior mean by default; `sample=True` draws from the posterior (with `generator`).
        """
        mean, logvar = self.encode_posterior(x, chunked=chunked, chunk_latents=chunk_latents, tile=tile)
        z = mean
        if sample:
            noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
            z = mean + (0.5 * logvar).exp() * noise
        return (z - self.latent_mean.to(z)) / self.latent_std.to(z)

    # -- decoding

    def decode(
        self,
        z: torch.Tensor,
        *,
        chunked: bool = True,
        chunk_latents: int = CHUNK_LATENTS,
        tile: int | None = None,
        progress: Callable[[], None] | None = None,
    ) -> torch.Tensor:
        """Normalised latents z: (B, c, t, h, w) -> video (B, 3, 1 + (t - 1) * tf, h * s, w * s), clamped to [-1, 1].

        chunked / chunk_latents / tile as in `encode_posterior` (tile in video pixels). progress: called after
        each chunk (of each tile): `num_chunks(t)` times untiled.
        """
        c = self.config
        if z.ndim != 5 or z.shape[1] != c.latent_channels or z.shape[2] < 1:
            raise KinemaError(
                f"decode takes latents (B, {c.latent_channels}, t, h, w) with t >= 1, got shape {tuple(z.shape)}"
            )
        t = z.shape[2]
        frames = self.frames_for_latents(t)
        chunks = [(lat, vid) for vid, lat in self._chunks(t, chunk_latents if chunked else t)]
        z = z * self.latent_std.to(z) + self.latent_mean.to(z)

        dtype = self.post_quant_conv.weight.dtype

        def decode_latents(latents: torch.Tensor) -> torch.Tensor:
            step = lambda f, state: self.decoder(self.post_quant_conv(f.to(dtype)), state)  # noqa: E731
            return run_chunks(step, latents, chunks, frames, progress)

        return self._tiled(decode_latents, z, tile, encode=False).clamp_(-1.0, 1.0)

    # -- training

    def forward(
        self, x: torch.Tensor, *, sample: bool = True, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: (B, 3, T, H, W) -> (recon (B, 3, T, H, W) unclamped, mean, logvar (B, c, t, h, w) not normalised).

        The whole clip in one pass; the decoder sees a posterior sample (`sample=False`: its mean).
        """
        self._check_video(x)
        moments = self.quant_conv(self.encoder(x))
        mean, logvar = moments.chunk(2, dim=1)
        logvar = logvar.clamp(-30.0, 20.0)
        z = mean
        if sample:
            noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
            z = mean + (0.5 * logvar).exp() * noise
        recon = self.decoder(self.post_quant_conv(z))
        return recon, mean, logvar

    # -- helpers

    def _check_video(self, x: torch.Tensor) -> tuple[int, ...]:
        """The latent shape of video batch x, or a KinemaError that says what to change."""
        if x.ndim != 5:
            raise KinemaError(f"the VAE takes a video batch (B, C, T, H, W), got shape {tuple(x.shape)}")
        return self.latent_shape(x.shape)

    def num_chunks(self, latent_frames: int, chunk_latents: int = CHUNK_LATENTS) -> int:
        """Chunks a chunked encode or decode of `latent_frames` latent frames runs (what a progress bar counts)."""
        return len(self._chunks(latent_frames, chunk_latents))

    def _chunks(self, latent_frames: int, chunk: int) -> list[tuple[slice, slice]]:
        """(video frames, latent frames) of each chunk of `chunk` latent frames."""
        if not isinstance(chunk, int) or chunk < 1:
            raise KinemaError(f"chunk_latents must be a positive int, got {chunk!r}")
        tf = self.config.temporal_factor
        first_frame = lambda j: 0 if j == 0 else 1 + (j - 1) * tf  # noqa: E731  (first video frame of latent j)
        bounds = [*range(0, latent_frames, chunk), latent_frames]
        return [(slice(first_frame(a), first_frame(b)), slice(a, b)) for a, b in zip(bounds, bounds[1:])]

    def _tiled(
        self, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tile: int | None, *, encode: bool
    ) -> torch.Tensor:
        """fn(x), or fn over tiles of `tile` video pixels overlapping by a quarter, blended."""
        s = self.config.spatial_factor
        if tile is None:
            return fn(x)
        if not isinstance(tile, int) or tile < 2 * s or tile % s:
            raise KinemaError(f"tile must be a multiple of the spatial factor {s} and >= {2 * s} pixels, got {tile!r}")
        units = tile // s  # tiles are laid out in latent pixels
        overlap = max(1, units // 4)
        scale_in, scale_out = (s, 1) if encode else (1, s)
        return run_tiles(fn, x, tile=units, overlap=overlap, scale_in=scale_in, scale_out=scale_out)

    def flops(self, x_shape: tuple[int, ...]) -> dict[str, int]:
        """Forward FLOPs (2 per multiply-add) of the convolutions, matmuls and attention for a video of x_shape.

        Returns {"encode", "decode", "forward"}; norms and activations are left out. A training step is about
        3x "forward".
        """
        from torch.utils.flop_counter import FlopCounterMode

        with torch.device("meta"):
            model = VideoVAE(self.config)
            x = torch.empty(tuple(x_shape))
        with FlopCounterMode(display=False) as counter:
            z = model.encode(x, chunked=False)
        encode = counter.get_total_flops()
        with FlopCounterMode(display=False) as counter:
            model.decode(z, chunked=False)
        decode = counter.get_total_flops()
        return {"encode": encode, "decode": decode, "forward": encode + decode}

    # -- latent statistics

    def with_latent_stats(self, mean: Iterable[float], std: Iterable[float]) -> VideoVAE:
        """A copy of this VAE whose config carries these latent statistics (e.g. from `measure_latent_stats`)."""
        stats = {"latent_mean": tuple(map(float, mean)), "latent_std": tuple(map(float, std))}
        config = dataclasses.replace(self.config, **stats)
        param = next(self.parameters())
        vae = VideoVAE(config).to(device=param.device, dtype=param.dtype)
        vae.load_state_dict(self.state_dict())
        return vae.train(self.training)

    # -- diffusers

    @classmethod
    def from_diffusers(cls, model: AutoencoderKLWan) -> VideoVAE:
        """Our VAE with the weights of a diffusers `AutoencoderKLWan` (same outputs, fp32 within 1e-4).

        For the released Wan2.1 VAE: `VideoVAE.from_diffusers(AutoencoderKLWan.from_pretrained(folder))`.
        """
        config = config_from_diffusers(dict(model.config))
        vae = cls(config)
        vae.load_state_dict(state_dict_from_diffusers(model.state_dict(), vae.state_dict()))
        param = next(model.parameters())
        return vae.to(device=param.device, dtype=param.dtype)

    def to_diffusers(self) -> AutoencoderKLWan:
        """A diffusers `AutoencoderKLWan` with these weights (on this model's device and dtype); needs diffusers."""
        try:
            from diffusers import AutoencoderKLWan
        except ImportError:
            raise KinemaError("VideoVAE.to_diffusers needs diffusers: pip install diffusers") from None
        model = AutoencoderKLWan(**config_to_diffusers(self.config))
        model.load_state_dict(state_dict_to_diffusers(self.state_dict(), model.state_dict()))
        param = next(self.parameters())
        return model.to(device=param.device, dtype=param.dtype)


@torch.no_grad()
def measure_latent_stats(
    vae: VideoVAE, batches: Iterable[torch.Tensor | dict[str, Any]], **encode_kwargs: Any
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of the posterior means of `batches` (videos (B, 3, T, H, W), or dicts with "video").

    Use them with `vae.with_latent_stats(mean, std)`, so `encode` returns latents of zero mean and unit std.
    """
    count, total, total_sq = 0, 0.0, 0.0
    for batch in batches:
        x = batch["video"] if isinstance(batch, dict) else batch
        mean, _ = vae.encode_posterior(x, **encode_kwargs)
        per_channel = mean.double().transpose(0, 1).flatten(1)  # (c, B*t*h*w)
        count += per_channel.shape[1]
        total = total + per_channel.sum(dim=1)
        total_sq = total_sq + per_channel.square().sum(dim=1)
    if count == 0:
        raise KinemaError("measure_latent_stats got no batches; pass an iterable of videos (B, 3, T, H, W)")
    mu = total / count
    std = (total_sq / count - mu.square()).clamp_min(1e-12).sqrt()
    return tuple(mu.tolist()), tuple(std.tolist())


# ---------------------------------------------------------------------------------------------------------------------
# Conversion to and from diffusers' AutoencoderKLWan (Wan2.1 layout)


def config_from_diffusers(d: dict[str, Any]) -> VAEConfig:
    """A VAEConfig from an `AutoencoderKLWan` config (the Wan2.1 layout)."""
    unsupported = {
        k: d.get(k)
        for k, ok in (
            ("is_residual", not d.get("is_residual")),
            ("patch_size", d.get("patch_size") in (None, 1)),
            ("attn_scales", not d.get("attn_scales")),
            ("decoder_base_dim", d.get("decoder_base_dim") in (None, d.get("base_dim"))),
            ("out_channels", d.get("out_channels", 3) == d.get("in_channels", 3)),
        )
        if not ok
    }
    if unsupported:
        raise KinemaError(
            f"this AutoencoderKLWan uses options kinema's VideoVAE does not have ({unsupported}); "
            "only the Wan2.1 layout converts"
        )
    z = d["z_dim"]
    stats = {}
    for ours, theirs in (("latent_mean", "latents_mean"), ("latent_std", "latents_std")):
        values = d.get(theirs)
        if values is not None and len(values) != z:
            raise KinemaError(f"the AutoencoderKLWan config has {len(values)} {theirs} for z_dim = {z}; fix its config")
        stats[ours] = None if values is None else tuple(float(v) for v in values)
    try:
        return VAEConfig(
            latent_channels=z,
            base_channels=d["base_dim"],
            channel_mult=tuple(d["dim_mult"]),
            temporal_downsample=tuple(bool(t) for t in d["temperal_downsample"]),
            num_res_blocks=d["num_res_blocks"],
            dropout=float(d.get("dropout", 0.0)),
            video_channels=d.get("in_channels", 3),
            **stats,
        )
    except ValueError as e:
        raise KinemaError(f"cannot convert this AutoencoderKLWan: {e}") from None


def config_to_diffusers(c: VAEConfig) -> dict[str, Any]:
    """`AutoencoderKLWan(**config_to_diffusers(c))` has the same shape as `VideoVAE(c)`."""
    return dict(
        base_dim=c.base_channels,
        z_dim=c.latent_channels,
        dim_mult=list(c.channel_mult),
        num_res_blocks=c.num_res_blocks,
        attn_scales=[],
        temperal_downsample=list(c.temporal_downsample),
        dropout=c.dropout,
        in_channels=c.video_channels,
        out_channels=c.video_channels,
        scale_factor_temporal=c.temporal_factor,
        scale_factor_spatial=c.spatial_factor,
        latents_mean=list(c.latent_mean or [0.0] * c.latent_channels),
        latents_std=list(c.latent_std or [1.0] * c.latent_channels),
    )


# Our tensor names -> diffusers'. Shapes differ only by size-1 dims: norms' (C,) vs (C, 1, 1[, 1]), and the
# attention's Linear (C_out, C) vs its 1x1 Conv2d (C_out, C, 1, 1).
_NAME_RULES = [
    (re.compile(r"\.upsample\."), ".upsamplers.0."),
    (re.compile(r"\.conv\."), ".resample.1."),
    (re.compile(r"(norm\w*)\.weight$"), r"\1.gamma"),
]


def diffusers_name(name: str) -> str:
    """The diffusers name of one of our tensors."""
    for pattern, replacement in _NAME_RULES:
        name = pattern.sub(replacement, name)
    return name


def _convert(
    source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], name_in_source: Callable[[str], str]
) -> dict[str, torch.Tensor]:
    """`source`'s tensors under `target`'s names and shapes; every tensor of both must be used."""
    names = {name: name_in_source(name) for name in target}
    missing = sorted(n for n in names.values() if n not in source)
    unexpected = sorted(set(source) - set(names.values()))
    if missing or unexpected:
        raise KinemaError(
            f"the weights do not match the converted layout: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    out = {}
    for name, src_name in names.items():
        tensor, like = source[src_name], target[name]
        if tensor.numel() != like.numel():
            raise KinemaError(f"{src_name}: shape {tuple(tensor.shape)} does not fit {name} {tuple(like.shape)}")
        out[name] = tensor.reshape(like.shape)
    return out


def state_dict_from_diffusers(sd: dict[str, torch.Tensor], ours: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An `AutoencoderKLWan` state dict in our names and shapes (`ours`: our model's state dict, for the shapes)."""
    return _convert(sd, ours, diffusers_name)


def state_dict_to_diffusers(sd: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict in `AutoencoderKLWan` names and shapes (`theirs`: its state dict, for the shapes)."""
    back = {diffusers_name(name): name for name in sd}
    return _convert(sd, theirs, lambda name: back.get(name, name))
