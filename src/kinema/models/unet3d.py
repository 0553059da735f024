"""A factorized space-time 3D U-Net, as in Video Diffusion Models (Ho et al. 2022).

An image U-Net (2D ResBlocks with timestep scale-shift, spatial self-attention,
cross-attention to text) made into a video U-Net by adding temporal layers:

- each ResBlock is followed by a 1-D convolution over time (kernel (k, 1, 1));
- each spatial attention block is followed by self-attention over time, where
  every pixel position attends to itself in the other frames, with rotary
  positions (1-D RoPE over frame index).

Every temporal layer is residual with a zero-initialised output, so at
initialisation it is exactly the identity and the network computes the image
U-Net frame by frame: `UNet3D.inflate_from_image` turns an image U-Net
(`temporal=False`) into a video U-Net that starts from the same function.

Frames are folded into the batch everywhere except inside the temporal layers:
the spatial layers see `(B*T, C, H, W)`, so an image is a one-frame video and
nothing spatial depends on the frame count. Only H and W are down- and
up-sampled; the frame count is kept at every level, so any T >= 1 works.

The temporal convs are centred (zero-padded on both sides, `k // 2` frames),
the standard for the U-Net: a denoiser sees the whole clip at once, so there is
no reason to hide future frames from it (the causal layout is the VAE's).

Same forward contract as the DiT, so the two are interchangeable in training
and sampling:

    model(x (B, C_in, T, H, W), timestep (B,), context (B, L, text_dim), context_mask (B, L) bool | None)
        -> (B, C_out, T, H, W)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint
from torch.utils.flop_counter import FlopCounterMode

from kinema.errors import KinemaError
from kinema.nn.attention import attention
from kinema.nn.checks import check_conditioning
from kinema.nn.embed import TimestepEmbedder
from kinema.nn.modulation import modulate
from kinema.nn.norm import LayerNorm32
from kinema.nn.rope import apply_rope, rope_frequencies_1d

# ----------------------------------------------------------------------------- config


@dataclass(frozen=True, kw_only=True)
class UNetConfig:
    """The shape of a factorized space-time U-Net."""

    in_channels: int = 33
    """Input channels: the noisy latent plus the conditioning timeline (2 * latent_channels + 1)."""
    out_channels: int = 16
    """Output channels: the latent channels the network predicts."""
    channels: int = 64
    """Channels at full resolution; level i has channels * channel_mult[i]."""
    channel_mult: tuple[int, ...] = (1, 2, 2)
    """Channel multiplier per level; each level after the first halves H and W."""
    num_res_blocks: int = 2
    """ResBlocks per level on the way down; the way up has one more (it also reads the level's input skip)."""
    attention_levels: tuple[int, ...] = (1, 2)
    """Levels (indices into channel_mult; 0 = full resolution) whose blocks get spatial, cross, temporal attention."""
    mid_attention: bool = True
    """Put spatial, cross and temporal attention in the middle block (between its two ResBlocks)."""
    head_dim: int = 32
    """Channels per attention head; must divide every attention level's channels."""
    text_dim: int = 256
    """Width of the text tokens that the cross-attention reads."""
    mlp_ratio: float = 4.0
    """Hidden width of the attention blocks' feed-forward, as a multiple of the level's channels."""
    num_groups: int = 32
    """GroupNorm groups; must divide every level's channels."""
    dropout: float = 0.0
    """Dropout inside the ResBlocks, in [0, 1)."""
    temporal: bool = True
    """Build the temporal layers; False gives an image U-Net applied to each frame alone."""
    temporal_kernel: int = 3
    """Kernel size over time of the temporal convs (odd; centred, zero-padded)."""
    rope_theta: float = 10000.0
    """RoPE base of the temporal attention's frame positions."""
    gradient_checkpointing: bool = False
    """Recompute each block's activations during backward to save memory (same gradients)."""

    def __post_init__(self) -> None:
        for name in ("in_channels", "out_channels", "channels", "head_dim", "text_dim", "num_groups"):
            if getattr(self, name) < 1:
                raise ValueError(f"UNetConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_res_blocks < 1:
            raise ValueError(f"UNetConfig.num_res_blocks must be >= 1, got {self.num_res_blocks}")
        if not self.channel_mult or min(self.channel_mult) < 1:
            raise ValueError(f"UNetConfig.channel_mult must be a non-empty tuple of ints >= 1, got {self.channel_mult}")
        last = len(self.channel_mult) - 1
        if any(not 0 <= lv <= last for lv in self.attention_levels):
            raise ValueError(f"UNetConfig.attention_levels must be levels 0..{last}, got {self.attention_levels}")
        for lv, mult in enumerate(self.channel_mult):
            ch = self.channels * mult
            if ch % self.num_groups:
                raise ValueError(f"UNetConfig.num_groups ({self.num_groups}) must divide level {lv}'s channels ({ch})")
            has_attention = lv in self.attention_levels or (self.mid_attention and lv == last)
            if has_attention and ch % self.head_dim:
                raise ValueError(f"UNetConfig.head_dim ({self.head_dim}) must divide level {lv}'s channels ({ch})")
        if self.temporal and self.head_dim % 2:
            raise ValueError(f"UNetConfig.head_dim must be even for the temporal RoPE, got {self.head_dim}")
        if self.temporal_kernel < 1 or self.temporal_kernel % 2 == 0:
            raise ValueError(f"UNetConfig.temporal_kernel must be a positive odd int, got {self.temporal_kernel}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"UNetConfig.dropout must be in [0, 1), got {self.dropout}")
        if self.mlp_ratio <= 0:
            raise ValueError(f"UNetConfig.mlp_ratio must be > 0, got {self.mlp_ratio}")
        if self.rope_theta <= 1:
            raise ValueError(f"UNetConfig.rope_theta must be > 1, got {self.rope_theta}")

    @property
    def downsample_factor(self) -> int:
        """H and W must be multiples of this."""
        return 2 ** (len(self.channel_mult) - 1)


def unet_tiny(*, latent_channels: int = 4, text_dim: int = 32, **overrides: Any) -> UNetConfig:
    """A quarter-million-parameter U-Net for tests: 2 levels (16, 32 channels), attention at the second."""
    base = dict(
        channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,),
        head_dim=8, num_groups=8, mlp_ratio=2.0,
    )  # fmt: skip
    return _preset(base, latent_channels, text_dim, overrides)


def unet_shapes(*, latent_channels: int = 16, text_dim: int = 256, **overrides: Any) -> UNetConfig:
    """The shapes model's U-Net (~11M parameters, ~5 GFLOP per 16x16x5 latent, like `dit_small`): levels 16, 8, 4 px."""
    base = dict(
        channels=64, channel_mult=(1, 2, 2), num_res_blocks=2, attention_levels=(1, 2), head_dim=32, num_groups=32
    )
    return _preset(base, latent_channels, text_dim, overrides)


def _preset(base: dict[str, Any], latent_channels: int, text_dim: int, overrides: dict[str, Any]) -> UNetConfig:
    # in = noisy latent + the conditioning timeline's known latents and mask.
    sizes = dict(in_channels=2 * latent_channels + 1, out_channels=latent_channels, text_dim=text_dim)
    return UNetConfig(**{**base, **sizes, **overrides})


# ----------------------------------------------------------------------------- layers


class Cond(NamedTuple):
    """What every layer may read besides the features."""

    emb: torch.Tensor
    """(B*T, time_dim) timestep embedding, repeated per frame."""
    context: torch.Tensor
    """(B, L, text_dim) text tokens."""
    context_mask: torch.Tensor | None
    """(B, L) bool, True = a real token."""
    frames: int
    """T, to unfold the frames from the batch in the temporal layers."""


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class TemporalConv(nn.Module):
    """x + conv_t(SiLU(GroupNorm(x))), a centred 1-D conv over frames at every pixel; zero-initialised.

    The conv is a (k, 1) Conv2d over (frames, pixels): the same weights as a (k, 1, 1) Conv3d, faster on CPU.
    x: (B*T, C, H, W) -> (B*T, C, H, W)
    """

    def __init__(self, channels: int, *, kernel: int, groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.conv = _zero(nn.Conv2d(channels, channels, (kernel, 1), padding=(kernel // 2, 0)))

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        h = rearrange(F.silu(self.norm(x)), "(b t) c h w -> b c t (h w)", t=frames)
        return x + rearrange(self.conv(h), "b c t (h w) -> (b t) c h w", h=x.shape[-2])


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv3x3, timestep scale-shift, GroupNorm-SiLU-dropout-conv3x3, plus skip; then TemporalConv.

    x: (B*T, C_in, H, W) -> (B*T, C_out, H, W)
    """

    def __init__(self, cin: int, cout: int, *, time_dim: int, config: UNetConfig) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(config.num_groups, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(time_dim, 2 * cout)
        self.norm2 = nn.GroupNorm(config.num_groups, cout)
        self.dropout = nn.Dropout(config.dropout)
        self.conv2 = _zero(nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        self.temporal = (
            TemporalConv(cout, kernel=config.temporal_kernel, groups=config.num_groups) if config.temporal else None
        )

    def forward(self, x: torch.Tensor, cond: Cond) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(cond.emb))[:, :, None, None].chunk(2, dim=1)
        h = modulate(self.norm2(h), shift, scale)
        h = self.conv2(self.dropout(F.silu(h)))
        x = self.skip(x) + h
        return x if self.temporal is None else self.temporal(x, cond.frames)


class Attention(nn.Module):
    """Multi-head attention with separate query and key/value inputs; the output projection is zero-initialised.

    x: (B, Lq, dim), source: (B, Lk, source_dim) -> (B, Lq, dim)
    """

    def __init__(self, dim: int, source_dim: int, *, head_dim: int) -> None:
        super().__init__()
        self.heads, self.head_dim = dim // head_dim, head_dim
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(source_dim, 2 * dim, bias=False)
        self.out = _zero(nn.Linear(dim, dim))

    def forward(
        self,
        x: torch.Tensor,
        source: torch.Tensor,
        *,
        mask: torch.Tensor | None = None,
        rope: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """mask: (B, Lk) bool key padding; rope: RoPE rotations (L, head_dim // 2) for self-attention."""
        q = rearrange(self.q(x), "b l (h d) -> b h l d", h=self.heads)
        k, v = rearrange(self.kv(source), "b l (two h d) -> two b h l d", two=2, h=self.heads)
        if rope is not None:
            q, k = apply_rope(q, rope), apply_rope(k, rope)
        return self.out(rearrange(attention(q, k, v, mask=mask), "b h l d -> b l (h d)"))


class SpatialTransformer(nn.Module):
    """Per frame: self-attention over H*W positions, cross-attention to the text, feed-forward (pre-norm, residual).

    x: (B*T, C, H, W) -> (B*T, C, H, W)
    """

    def __init__(self, channels: int, *, config: UNetConfig) -> None:
        super().__init__()
        hidden = int(channels * config.mlp_ratio)
        self.norm1 = LayerNorm32(channels)
        self.self_attn = Attention(channels, channels, head_dim=config.head_dim)
        self.norm2 = LayerNorm32(channels)
        self.cross_attn = Attention(channels, config.text_dim, head_dim=config.head_dim)
        self.norm3 = LayerNorm32(channels)
        self.ff = nn.Sequential(
            nn.Linear(channels, hidden), nn.GELU(approximate="tanh"), _zero(nn.Linear(hidden, channels))
        )

    def forward(self, x: torch.Tensor, cond: Cond) -> torch.Tensor:
        height = x.shape[-2]
        h = rearrange(x, "bt c h w -> bt (h w) c")
        n = self.norm1(h)
        h = h + self.self_attn(n, n)
        # Every query attends to its own clip's text independently, so all frames of a clip query at once.
        n = rearrange(self.norm2(h), "(b t) l c -> b (t l) c", t=cond.frames)
        cross = self.cross_attn(n, cond.context, mask=cond.context_mask)
        h = h + rearrange(cross, "b (t l) c -> (b t) l c", t=cond.frames)
        h = h + self.ff(self.norm3(h))
        return rearrange(h, "bt (h w) c -> bt c h w", h=height)


class TemporalAttention(nn.Module):
    """Per pixel position: self-attention over the T frames with 1-D RoPE; residual, zero-initialised.

    x: (B*T, C, H, W) -> (B*T, C, H, W)
    """

    def __init__(self, channels: int, *, config: UNetConfig) -> None:
        super().__init__()
        self.theta = config.rope_theta
        self.norm = LayerNorm32(channels)
        self.attn = Attention(channels, channels, head_dim=config.head_dim)

    def forward(self, x: torch.Tensor, cond: Cond) -> torch.Tensor:
        _, _, height, width = x.shape
        h = self.norm(rearrange(x, "(b t) c h w -> (b h w) t c", t=cond.frames))
        rope = rope_frequencies_1d(self.attn.head_dim, cond.frames, theta=self.theta, device=x.device, real=True)
        h = self.attn(h, h, rope=rope)
        return x + rearrange(h, "(b h w) t c -> (b t) c h w", h=height, w=width)


class AttentionBlock(nn.Module):
    """SpatialTransformer, then TemporalAttention (when the U-Net is temporal).

    x: (B*T, C, H, W) -> (B*T, C, H, W)
    """

    def __init__(self, channels: int, *, config: UNetConfig) -> None:
        super().__init__()
        self.spatial = SpatialTransformer(channels, config=config)
        self.temporal = TemporalAttention(channels, config=config) if config.temporal else None

    def forward(self, x: torch.Tensor, cond: Cond) -> torch.Tensor:
        x = self.spatial(x, cond)
        return x if self.temporal is None else self.temporal(x, cond)


class Downsample(nn.Module):
    """Stride-2 3x3 conv: halves H and W (never T). x: (B*T, C, H, W) -> (B*T, C, H/2, W/2)"""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor, cond: Cond) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest 2x, then a 3x3 conv: doubles H and W (never T). x: (B*T, C, H, W) -> (B*T, C, 2H, 2W)"""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, cond: Cond) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Block(nn.ModuleList):
    """Layers applied in order, each as layer(x, cond); the unit of gradient checkpointing."""

    def forward(self, x: torch.Tensor, cond: Cond) -> torch.Tensor:
        for layer in self:
            x = layer(x, cond)
        return x


# ----------------------------------------------------------------------------- the U-Net


class UNet3D(nn.Module):
    """Factorized space-time U-Net denoiser.

    forward(x (B, C_in, T, H, W), timestep (B,), context (B, L, text_dim), context_mask (B, L) bool | None)
        -> (B, C_out, T, H, W); H and W must be multiples of `config.downsample_factor`.
    """

    config_class = UNetConfig
    repeated_blocks = (ResBlock, AttentionBlock)
    """What `kinema.nn.compile_blocks` compiles: each level's blocks differ in shape, so the units are the layers."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        self.gradient_checkpointing = config.gradient_checkpointing
        c = config.channels
        time_dim = 4 * c
        self.time_embed = TimestepEmbedder(c, time_dim)
        self.conv_in = nn.Conv2d(config.in_channels, c, 3, padding=1)

        def block(cin: int, cout: int, level: int) -> Block:
            layers = [ResBlock(cin, cout, time_dim=time_dim, config=config)]
            if level in config.attention_levels:
                layers.append(AttentionBlock(cout, config=config))
            return Block(layers)

        # Down: each block's output is kept as a skip, as is conv_in's.
        self.down = nn.ModuleList()
        skip_channels = [c]
        ch = c
        last = len(config.channel_mult) - 1
        for level, mult in enumerate(config.channel_mult):
            for _ in range(config.num_res_blocks):
                self.down.append(block(ch, c * mult, level))
                ch = c * mult
                skip_channels.append(ch)
            if level != last:
                self.down.append(Block([Downsample(ch)]))
                skip_channels.append(ch)

        mid = [ResBlock(ch, ch, time_dim=time_dim, config=config)]
        if config.mid_attention:
            mid.append(AttentionBlock(ch, config=config))
        mid.append(ResBlock(ch, ch, time_dim=time_dim, config=config))
        self.mid = Block(mid)

        # Up: each block reads one skip (concatenated on channels); the last block of a level upsamples.
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(config.channel_mult))):
            for i in range(config.num_res_blocks + 1):
                up = block(ch + skip_channels.pop(), c * mult, level)
                ch = c * mult
                if level != 0 and i == config.num_res_blocks:
                    up.append(Upsample(ch))
                self.up.append(up)

        self.norm_out = nn.GroupNorm(config.num_groups, ch)
        self.conv_out = _zero(nn.Conv2d(ch, config.out_channels, 3, padding=1))

    def forward(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        context: torch.Tensor,
        context_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x: (B, C_in, T, H, W), timestep: (B,), context: (B, L, text_dim), context_mask: (B, L) bool
        -> (B, C_out, T, H, W)"""
        self._check_inputs(x, timestep, context, context_mask)
        batch, frames = x.shape[0], x.shape[2]
        emb = self.time_embed(timestep.expand(batch)).repeat_interleave(frames, dim=0)
        cond = Cond(emb, context, context_mask, frames)

        h = self.conv_in(rearrange(x, "b c t h w -> (b t) c h w"))
        skips = [h]
        for block in self.down:
            h = self._run(block, h, cond)
            skips.append(h)
        h = self._run(self.mid, h, cond)
        for block in self.up:
            h = self._run(block, torch.cat([h, skips.pop()], dim=1), cond)
        h = self.conv_out(F.silu(self.norm_out(h)))
        return rearrange(h, "(b t) c h w -> b c t h w", t=frames).to(x.dtype)

    def _run(self, block: Block, h: torch.Tensor, cond: Cond) -> torch.Tensor:
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, h, cond, use_reentrant=False)
        return block(h, cond)

    def _check_inputs(self, x, timestep, context, context_mask) -> None:
        cfg = self.config
        if x.ndim != 5 or x.shape[1] != cfg.in_channels:
            raise KinemaError(f"UNet3D input must be (B, {cfg.in_channels}, T, H, W), got {tuple(x.shape)}")
        b, _, _, height, width = x.shape
        f = cfg.downsample_factor
        if height % f or width % f:
            raise KinemaError(
                f"UNet3D input H x W = {height} x {width} must be multiples of {f} (the U-Net has "
                f"{len(cfg.channel_mult)} levels); choose a frame size whose latents are multiples of {f}"
            )
        check_conditioning("UNet3D", b, timestep, context, context_mask, cfg.text_dim)

    # ------------------------------------------------------------------------- from an image U-Net

    @classmethod
    def inflate_from_image(cls, image_model: UNet3D) -> UNet3D:
        """A temporal U-Net whose spatial layers are `image_model`'s and whose temporal layers are fresh.

        Fresh temporal layers are the identity, so the result computes exactly what
        `image_model` computes on each frame alone, until the temporal layers train.
        """
        if image_model.config.temporal:
            raise KinemaError(
                "inflate_from_image needs an image U-Net (config.temporal=False); this one is already temporal"
            )
        p = next(image_model.parameters())
        video = cls(dataclasses.replace(image_model.config, temporal=True)).to(device=p.device, dtype=p.dtype)
        missing, unexpected = video.load_state_dict(image_model.state_dict(), strict=False)
        not_temporal = [k for k in missing if ".temporal." not in k]
        if unexpected or not_temporal:  # the two layouts must differ by the temporal layers only
            raise RuntimeError(f"inflate_from_image: layouts differ: missing {not_temporal}, unexpected {unexpected}")
        return video

    def temporal_parameters(self) -> list[nn.Parameter]:
        """The temporal layers' parameters (e.g. to train only those after inflating)."""
        return [p for name, p in self.named_parameters() if ".temporal." in name]

    # ------------------------------------------------------------------------- size

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops(self, x_shape: tuple[int, int, int, int, int], context_len: int) -> int:
        """Floating-point operations of one forward at input shape (B, C_in, T, H, W) (2 per multiply-add).

        Counted by running the model on the meta device (no memory, no compute):
        every conv, matmul and attention is included; norms and activations are not.
        """
        b = x_shape[0]
        with torch.device("meta"):
            model = UNet3D(dataclasses.replace(self.config, gradient_checkpointing=False))
            args = (
                torch.empty(x_shape),
                torch.empty(b),
                torch.empty(b, context_len, self.config.text_dim),
                torch.ones(b, context_len, dtype=torch.bool),
            )
        with FlopCounterMode(display=False) as counter:
            model(*args)
        return counter.get_total_flops()
