"""A spatiotemporal diffusion transformer in the layout of Wan2.1.

    x (B, C_in, T, H, W) ──Conv3d patches──▶ tokens (B, L, dim), L = T/pt * H/ph * W/pw
    timestep (B,) ──sinusoid, MLP──▶ temb (B, dim) ──SiLU, Linear──▶ six modulation rows (B, 6, dim)
    context (B, Lc, text_dim) ──MLP──▶ (B, Lc, dim)
    each block:  x += gate * self_attn(modulate(norm(x)))      3D RoPE, RMSNorm on q and k
                 x += cross_attn(norm(x), context, mask)        text tokens, key padding mask
                 x += gate * mlp(modulate(norm(x)))             GELU(tanh)
    head: modulate(norm(x)) ──Linear (zero init)──▶ unpatchify ──▶ (B, C_out, T, H, W)

Each block's modulation is a learned table (6, dim) plus the shared projection of
the timestep, as in Wan. Precision: the residual stream and the timestep path stay
fp32 (as in Wan's reference code); each branch (attention, MLP) runs in the autocast
dtype, or in the weights' dtype when they are low precision (FSDP mixed precision).

Self-attention is either full 3D over all L tokens (default), or factorized for
long clips: even blocks attend within a frame (spatial), odd blocks across frames
at one spatial position (temporal). Both use the same weights and the same 3D RoPE
(positions that do not vary within a group rotate q and k alike and cancel), so a
model trained with one can be run or fine-tuned with the other.

`DiT.from_diffusers` / `DiT.to_diffusers` convert to and from diffusers'
`WanTransformer3DModel` (same outputs); `wan_1_3b()` is the Wan2.1-1.3B shape.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

from kinema.errors import KinemaError
from kinema.nn.checks import check_conditioning
from kinema.nn import (
    MLP,
    LayerNorm32,
    RMSNorm,
    TimestepEmbedder,
    apply_rope,
    attention,
    modulate,
    modulation_rows,
    rope_frequencies,
    split_modulation,
)

if TYPE_CHECKING:
    from diffusers import WanTransformer3DModel

ATTENTION_KINDS = ("full", "factorized")

# Factorized self-attention: how a block groups the tokens (B, heads, T*S, head_dim), S = H*W, and back.
TOKEN_GROUPS = {
    "spatial": ("b n (t s) d -> (b t) n s d", "(b t) n s d -> b n (t s) d"),  # the tokens of one frame
    "temporal": ("b n (t s) d -> (b s) n t d", "(b s) n t d -> b n (t s) d"),  # one position across frames
}


@dataclass(frozen=True, kw_only=True)
class DiTConfig:
    """Shape of a DiT; presets below (`dit_tiny`, `dit_shapes`, `dit_small`, `wan_1_3b`)."""

    in_channels: int = 33
    """Input channels: noisy latents plus the timeline's conditioning (known latents and mask), 2 * latent + 1."""
    out_channels: int = 16
    """Output channels: the latent channels."""
    dim: int = 256
    """Width of the token stream."""
    num_heads: int = 4
    """Attention heads; dim // num_heads is the head dim (even, >= 6 for the 3D RoPE)."""
    num_layers: int = 8
    """Transformer blocks."""
    ffn_dim: int = 1024
    """Hidden width of each block's feed-forward MLP."""
    text_dim: int = 256
    """Width of the text encoder's token embeddings (the context)."""
    freq_dim: int = 256
    """Size of the sinusoidal timestep features."""
    patch_size: tuple[int, int, int] = (1, 2, 2)
    """Patch size (t, h, w) of the Conv3d patch embedding; T, H, W of the input must be multiples."""
    cross_attn_norm: bool = True
    """LayerNorm (with affine weights) on the token stream before cross-attention, as Wan2.1."""
    eps: float = 1e-6
    """Epsilon of the LayerNorms and of the q/k RMSNorms."""
    rope_theta: float = 10000.0
    """Base of the rotary position frequencies."""
    attention: str = "full"
    """Self-attention layout: "full" (3D over all tokens) or "factorized" (spatial, temporal in alternate blocks)."""
    gradient_checkpointing: bool = False
    """Recompute each block in the backward pass instead of storing its activations (saves memory, same gradients)."""

    def __post_init__(self) -> None:
        sizes = ("in_channels", "out_channels", "dim", "num_heads", "num_layers", "ffn_dim", "text_dim", "freq_dim")
        for name in sizes:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"DiTConfig.{name} must be a positive int, got {value!r}")
        if self.dim % self.num_heads:
            raise ValueError(f"DiTConfig.dim ({self.dim}) must be divisible by num_heads ({self.num_heads})")
        head_dim = self.dim // self.num_heads
        if head_dim % 2 or head_dim < 6:
            raise ValueError(f"DiTConfig: head dim dim // num_heads = {head_dim} must be even and >= 6 (3D RoPE)")
        if len(self.patch_size) != 3 or any(not isinstance(p, int) or p < 1 for p in self.patch_size):
            raise ValueError(f"DiTConfig.patch_size must be three positive ints (t, h, w), got {self.patch_size!r}")
        if self.attention not in ATTENTION_KINDS:
            raise ValueError(f"DiTConfig.attention must be one of {ATTENTION_KINDS}, got {self.attention!r}")
        if not self.eps > 0:
            raise ValueError(f"DiTConfig.eps must be > 0, got {self.eps}")
        if not self.rope_theta > 1:
            raise ValueError(f"DiTConfig.rope_theta must be > 1, got {self.rope_theta}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads


def dit_tiny(*, latent_channels: int = 4, text_dim: int = 32, **overrides: Any) -> DiTConfig:
    """A few-hundred-thousand-parameter DiT for tests and smoke runs."""
    base = dict(dim=64, num_heads=2, num_layers=2, ffn_dim=128, freq_dim=32)
    return _preset(base, latent_channels, text_dim, overrides)


def dit_shapes(*, latent_channels: int = 8, text_dim: int = 192, **overrides: Any) -> DiTConfig:
    """The shipped shapes model's denoiser (~4M parameters): 64x64x17 clips -> latents 8x5x16x16 -> 320 tokens.

    Sized so that training fits a few hours of a 2-core CPU and sampling a few seconds; text_dim 192
    matches `text_shapes`.
    """
    base = dict(dim=192, num_heads=3, num_layers=6, ffn_dim=768, freq_dim=256)
    return _preset(base, latent_channels, text_dim, overrides)


def dit_small(*, latent_channels: int = 8, text_dim: int = 256, **overrides: Any) -> DiTConfig:
    """A ~9M-parameter DiT on the shapes latents (320 tokens), the size the CPU benchmarks compare.

    text_dim 256 matches `text_small`.
    """
    base = dict(dim=256, num_heads=4, num_layers=8, ffn_dim=1024, freq_dim=256)
    return _preset(base, latent_channels, text_dim, overrides)


def wan_1_3b(**overrides: Any) -> DiTConfig:
    """The shape of Wan2.1-T2V-1.3B (in/out 16 channels as released; ~1.4B parameters)."""
    base = dict(
        in_channels=16, out_channels=16, dim=1536, num_heads=12, num_layers=30, ffn_dim=8960, text_dim=4096,
        freq_dim=256,
    )
    return DiTConfig(**{**base, **overrides})


def _preset(base: dict[str, Any], latent_channels: int, text_dim: int, overrides: dict[str, Any]) -> DiTConfig:
    # Input = noisy latents + known latents + the mask channel of the conditioning timeline.
    sizes = dict(in_channels=2 * latent_channels + 1, out_channels=latent_channels, text_dim=text_dim)
    return DiTConfig(**{**base, **sizes, **overrides})


def block_attention(config: DiTConfig, index: int) -> str:
    """Which tokens block `index` attends over: "full", or alternately "spatial" and "temporal" when factorized."""
    if config.attention == "full":
        return "full"
    return "spatial" if index % 2 == 0 else "temporal"


class SelfAttention(nn.Module):
    """Multi-head self-attention with one fused QKV projection, RMSNorm over all heads on q and k, and RoPE.

    x: (B, L, dim) -> (B, L, dim)
    """

    def __init__(self, dim: int, num_heads: int, eps: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.norm_q = RMSNorm(dim, eps)
        self.norm_k = RMSNorm(dim, eps)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, rope: torch.Tensor, kind: str, grid: tuple[int, int, int]) -> torch.Tensor:
        """kind: "full" (every token attends to every token) or a key of TOKEN_GROUPS; grid: the (T, H, W) tokens;
        rope: the 3D RoPE table, complex (L, head_dim // 2) or its real form (L, head_dim // 2, 2) (`apply_rope`)."""
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k, v = (self._heads(t) for t in (self.norm_q(q), self.norm_k(k), v))  # (B, heads, L, head_dim)
        q, k = apply_rope(q, rope), apply_rope(k, rope)
        if kind == "full":
            out = attention(q, k, v)
        else:
            split, merge = TOKEN_GROUPS[kind]
            t, h, w = grid
            q, k, v = (rearrange(z, split, t=t) for z in (q, k, v))
            out = rearrange(attention(q, k, v), merge, t=t, s=h * w)
        return self.out(out.transpose(1, 2).flatten(2))

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)


class CrossAttention(nn.Module):
    """Multi-head attention from tokens to text context, fused KV, RMSNorm on q and k, a key padding mask.

    x: (B, L, dim), context: (B, Lc, dim), mask: (B, Lc) bool (True = a real token) -> (B, L, dim)
    """

    def __init__(self, dim: int, num_heads: int, eps: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.norm_q = RMSNorm(dim, eps)
        self.norm_k = RMSNorm(dim, eps)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        k, v = self.kv(context).chunk(2, dim=-1)
        q, k, v = (self._heads(t) for t in (self.norm_q(self.q(x)), self.norm_k(k), v))
        return self.out(attention(q, k, v, mask=mask).transpose(1, 2).flatten(2))

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)


class DiTBlock(nn.Module):
    """Self-attention, cross-attention and MLP, with AdaLN modulation of the first and last.

    x: (B, L, dim) fp32 -> (B, L, dim) fp32; time_mod: (B, 6, dim), the shared timestep projection.
    The residual stream stays fp32; each branch runs in the weights' dtype (or under autocast).
    """

    def __init__(self, config: DiTConfig, kind: str) -> None:
        super().__init__()
        dim, eps = config.dim, config.eps
        self.kind = kind  # which tokens self-attention mixes: "full", "spatial" or "temporal"
        self.norm1 = LayerNorm32(dim, eps, elementwise_affine=False)
        self.self_attn = SelfAttention(dim, config.num_heads, eps)
        self.norm2 = LayerNorm32(dim, eps) if config.cross_attn_norm else nn.Identity()
        self.cross_attn = CrossAttention(dim, config.num_heads, eps)
        self.norm3 = LayerNorm32(dim, eps, elementwise_affine=False)
        self.mlp = MLP(dim, config.ffn_dim, activation="gelu_tanh")
        # Rows: shift, scale, gate of self-attention, then of the MLP.
        self.modulation = nn.Parameter(torch.randn(6, dim) / dim**0.5)

    def forward(
        self,
        x: torch.Tensor,
        time_mod: torch.Tensor,
        context: torch.Tensor,
        context_mask: torch.Tensor | None,
        rope: torch.Tensor,
        grid: tuple[int, int, int],
    ) -> torch.Tensor:
        dtype = self.modulation.dtype  # fp32 under autocast; bf16 if the weights are (e.g. FSDP mixed precision)
        attn, mlp = split_modulation(self.modulation.float() + time_mod.float(), 2)
        h = modulate(self.norm1(x), attn.shift, attn.scale).to(dtype)
        x = x + self.self_attn(h, rope, self.kind, grid) * attn.gate
        x = x + self.cross_attn(self.norm2(x).to(dtype), context, context_mask)
        h = modulate(self.norm3(x), mlp.shift, mlp.scale).to(dtype)
        x = x + self.mlp(h) * mlp.gate
        return x


class Head(nn.Module):
    """Modulated LayerNorm and a zero-initialised projection to the patch values.

    x: (B, L, dim), temb: (B, dim) -> (B, L, pt * ph * pw * C_out)
    """

    def __init__(self, dim: int, out_features: int, eps: float) -> None:
        super().__init__()
        self.norm = LayerNorm32(dim, eps, elementwise_affine=False)
        self.linear = nn.Linear(dim, out_features)
        self.modulation = nn.Parameter(torch.randn(2, dim) / dim**0.5)  # rows: shift, scale

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        shift, scale = modulation_rows(self.modulation.float() + temb.float()[:, None])  # (B, 1, dim) each
        return self.linear(modulate(self.norm(x), shift, scale).to(self.linear.weight.dtype))


class DiT(nn.Module):
    """Spatiotemporal diffusion transformer (Wan2.1 layout).

    forward(x (B, C_in, T, H, W), timestep (B,) float, context (B, Lc, text_dim),
            context_mask (B, Lc) bool | None) -> (B, C_out, T, H, W)
    """

    config_class = DiTConfig
    repeated_blocks = (DiTBlock,)
    """What `kinema.nn.compile_blocks` compiles."""

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.dim
        self.gradient_checkpointing = config.gradient_checkpointing
        self.patch_embed = nn.Conv3d(config.in_channels, dim, config.patch_size, stride=config.patch_size)
        self.time_embed = TimestepEmbedder(config.freq_dim, dim)
        self.time_proj = nn.Linear(dim, 6 * dim)
        self.text_embed = MLP(config.text_dim, dim, dim, activation="gelu_tanh")
        self.blocks = nn.ModuleList(DiTBlock(config, block_attention(config, i)) for i in range(config.num_layers))
        self.head = Head(dim, config.out_channels * math.prod(config.patch_size), config.eps)
        self._init_weights()

    def _init_weights(self) -> None:
        # Wan's init: xavier linears and patch embedding, N(0, 0.02) embedders, a zero output head.
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.xavier_uniform_(self.patch_embed.weight.view(self.config.dim, -1))
        nn.init.zeros_(self.patch_embed.bias)
        for linear in (self.text_embed.fc1, self.text_embed.fc2, self.time_embed.linear_1, self.time_embed.linear_2):
            nn.init.normal_(linear.weight, std=0.02)
        nn.init.zeros_(self.head.linear.weight)
        nn.init.zeros_(self.head.linear.bias)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        context: torch.Tensor,
        context_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        c = self.config
        grid = self._check_inputs(x, timestep, context, context_mask)
        B = x.shape[0]
        # As (cos, sin) pairs: then a compiled block has no complex tensor (see kinema.nn.rope).
        rope = rope_frequencies(c.head_dim, grid, theta=c.rope_theta, device=x.device, real=True)

        dtype = self.patch_embed.weight.dtype
        tokens = self.patch_embed(x.to(dtype)).flatten(2).transpose(1, 2).float().contiguous()  # (B, L, dim) fp32
        with torch.autocast(x.device.type, enabled=False):  # the timestep conditioning in full precision, as Wan
            temb = self.time_embed(timestep.expand(B) if timestep.ndim == 0 else timestep)  # (B, dim)
            time_mod = self.time_proj(F.silu(temb)).unflatten(1, (6, c.dim))  # (B, 6, dim)
        context = self.text_embed(context.to(dtype))

        for block in self.blocks:
            if self.gradient_checkpointing and torch.is_grad_enabled():
                tokens = checkpoint(block, tokens, time_mod, context, context_mask, rope, grid, use_reentrant=False)
            else:
                tokens = block(tokens, time_mod, context, context_mask, rope, grid)

        out = self.head(tokens, temb)  # (B, L, pt * ph * pw * C_out)
        (pt, ph, pw), (t, h, w) = c.patch_size, grid
        return rearrange(
            out, "b (t h w) (pt ph pw c) -> b c (t pt) (h ph) (w pw)", t=t, h=h, w=w, pt=pt, ph=ph, pw=pw
        ).to(x.dtype)

    def _check_inputs(
        self, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None
    ) -> tuple[int, int, int]:
        c = self.config
        if x.ndim != 5 or x.shape[1] != c.in_channels:
            raise KinemaError(
                f"DiT input must be (B, {c.in_channels}, T, H, W) (latents plus conditioning channels), "
                f"got {tuple(x.shape)}; check the config's in_channels"
            )
        sizes = x.shape[2:]
        if any(n % p for n, p in zip(sizes, c.patch_size)):
            raise KinemaError(
                f"DiT input T, H, W = {tuple(sizes)} must be multiples of the patch size {c.patch_size}; "
                "choose a clip size whose latents divide by it"
            )
        check_conditioning("DiT", x.shape[0], timestep, context, context_mask, c.text_dim)
        return tuple(n // p for n, p in zip(sizes, c.patch_size))  # type: ignore[return-value]

    def flops(self, x_shape: tuple[int, ...], context_len: int) -> int:
        """Forward FLOPs (2 per multiply-add) of matmuls, convolutions and attention for an input of x_shape.

        Norms, RoPE and activations are left out. A training step (forward and backward) is about 3x this.
        """
        c = self.config
        B, _, T, H, W = x_shape
        t, h, w = (n // p for n, p in zip((T, H, W), c.patch_size))
        L, d, patch = t * h * w, c.dim, math.prod(c.patch_size)
        per_token = (
            c.in_channels * patch * d  # patch embedding
            + c.num_layers * (4 * d * d + 2 * d * d + 2 * d * c.ffn_dim)  # qkv + out, cross q + out, mlp
            + d * c.out_channels * patch  # head
        )
        keys_per_kind = {"full": L, "spatial": h * w, "temporal": t}
        keys = [keys_per_kind[block_attention(c, i)] for i in range(c.num_layers)]
        attn = sum(2 * L * k * d for k in keys)  # q @ k^T and weights @ v
        cross = c.num_layers * (2 * context_len * d * d + 2 * L * context_len * d)  # context kv + attention
        text = context_len * (c.text_dim * d + d * d)
        time = c.freq_dim * d + d * d + d * 6 * d
        return 2 * B * (L * per_token + attn + cross + text + time)

    # Conversion to and from diffusers' WanTransformer3DModel.

    @classmethod
    def from_diffusers(cls, model: WanTransformer3DModel, **overrides: Any) -> DiT:
        """Our DiT with the weights of a diffusers `WanTransformer3DModel` (same outputs, fp32 within 1e-4).

        `overrides` change config fields that do not affect the weights (attention, gradient_checkpointing).
        """
        config = dataclasses.replace(config_from_diffusers(dict(model.config)), **overrides)
        dit = cls(config).to(device=model.device, dtype=model.dtype)
        dit.load_state_dict(state_dict_from_diffusers(model.state_dict(), config))
        return dit

    def to_diffusers(self) -> WanTransformer3DModel:
        """A diffusers `WanTransformer3DModel` (fp32, on this model's device) with these weights; needs diffusers."""
        try:
            from diffusers import WanTransformer3DModel
        except ImportError:
            raise KinemaError("DiT.to_diffusers needs diffusers: pip install diffusers") from None
        if self.config.attention != "full":
            raise KinemaError("only a DiT with attention='full' has a diffusers equivalent")
        model = WanTransformer3DModel(**config_to_diffusers(self.config))
        model.load_state_dict(state_dict_to_diffusers(self.state_dict(), self.config))
        return model.to(self.head.linear.weight.device)


def config_from_diffusers(d: dict[str, Any]) -> DiTConfig:
    """A DiTConfig from a `WanTransformer3DModel` config (the text-to-video variants)."""
    unsupported = {k: d.get(k) for k in ("image_dim", "added_kv_proj_dim", "pos_embed_seq_len") if d.get(k) is not None}
    if d.get("qk_norm", "rms_norm_across_heads") != "rms_norm_across_heads":
        unsupported["qk_norm"] = d.get("qk_norm")
    if unsupported:
        raise KinemaError(
            f"this Wan model uses features kinema's DiT does not have ({unsupported}); "
            "only the text-to-video layout converts"
        )
    heads, head_dim = d["num_attention_heads"], d["attention_head_dim"]
    return DiTConfig(
        in_channels=d["in_channels"],
        out_channels=d.get("out_channels") or d["in_channels"],
        dim=heads * head_dim,
        num_heads=heads,
        num_layers=d["num_layers"],
        ffn_dim=d["ffn_dim"],
        text_dim=d["text_dim"],
        freq_dim=d["freq_dim"],
        patch_size=tuple(d["patch_size"]),
        cross_attn_norm=d["cross_attn_norm"],
        eps=d["eps"],
    )


def config_to_diffusers(c: DiTConfig) -> dict[str, Any]:
    """`WanTransformer3DModel(**config_to_diffusers(c))` has the same shape as `DiT(c)`."""
    return dict(
        patch_size=c.patch_size,
        num_attention_heads=c.num_heads,
        attention_head_dim=c.head_dim,
        in_channels=c.in_channels,
        out_channels=c.out_channels,
        text_dim=c.text_dim,
        freq_dim=c.freq_dim,
        ffn_dim=c.ffn_dim,
        num_layers=c.num_layers,
        cross_attn_norm=c.cross_attn_norm,
        qk_norm="rms_norm_across_heads",
        eps=c.eps,
    )


# (ours, diffusers) names of tensors that are the same up to a reshape.
_RENAMES = [
    ("patch_embed", "patch_embedding"),
    ("time_embed.linear_1", "condition_embedder.time_embedder.linear_1"),
    ("time_embed.linear_2", "condition_embedder.time_embedder.linear_2"),
    ("time_proj", "condition_embedder.time_proj"),
    ("text_embed.fc1", "condition_embedder.text_embedder.linear_1"),
    ("text_embed.fc2", "condition_embedder.text_embedder.linear_2"),
    ("head.linear", "proj_out"),
]
_BLOCK_RENAMES = [
    ("self_attn.norm_q", "attn1.norm_q"),
    ("self_attn.norm_k", "attn1.norm_k"),
    ("self_attn.out", "attn1.to_out.0"),
    ("cross_attn.q", "attn2.to_q"),
    ("cross_attn.norm_q", "attn2.norm_q"),
    ("cross_attn.norm_k", "attn2.norm_k"),
    ("cross_attn.out", "attn2.to_out.0"),
    ("norm2", "norm2"),
    ("mlp.fc1", "ffn.net.0.proj"),
    ("mlp.fc2", "ffn.net.2"),
]
# Fused projections: ours -> the diffusers projections concatenated along the output dim.
_BLOCK_FUSED = [
    ("self_attn.qkv", ("attn1.to_q", "attn1.to_k", "attn1.to_v")),
    ("cross_attn.kv", ("attn2.to_k", "attn2.to_v")),
]


def _pairs(c: DiTConfig) -> list[tuple[str, str]]:
    pairs = [(f"{a}.{p}", f"{b}.{p}") for a, b in _RENAMES for p in ("weight", "bias")]
    for i in range(c.num_layers):
        for a, b in _BLOCK_RENAMES:
            if a.startswith("norm2") and not c.cross_attn_norm:
                continue
            params = ("weight",) if "norm_" in a else ("weight", "bias")
            pairs += [(f"blocks.{i}.{a}.{p}", f"blocks.{i}.{b}.{p}") for p in params]
    return pairs


def state_dict_from_diffusers(sd: dict[str, torch.Tensor], c: DiTConfig) -> dict[str, torch.Tensor]:
    """Convert a `WanTransformer3DModel` state dict (fused or not) to ours."""
    out = {ours: sd[theirs] for ours, theirs in _pairs(c)}
    for i in range(c.num_layers):
        for ours, parts in _BLOCK_FUSED:
            fused_name = "attn1.to_qkv" if len(parts) == 3 else "attn2.to_kv"
            for p in ("weight", "bias"):
                if f"blocks.{i}.{fused_name}.{p}" in sd:  # diffusers' own fused projections
                    out[f"blocks.{i}.{ours}.{p}"] = sd[f"blocks.{i}.{fused_name}.{p}"]
                else:
                    out[f"blocks.{i}.{ours}.{p}"] = torch.cat([sd[f"blocks.{i}.{part}.{p}"] for part in parts])
        out[f"blocks.{i}.modulation"] = sd[f"blocks.{i}.scale_shift_table"].reshape(6, c.dim)
    out["head.modulation"] = sd["scale_shift_table"].reshape(2, c.dim)
    return out


def state_dict_to_diffusers(sd: dict[str, torch.Tensor], c: DiTConfig) -> dict[str, torch.Tensor]:
    """Convert our state dict to an (unfused) `WanTransformer3DModel` one."""
    out = {theirs: sd[ours] for ours, theirs in _pairs(c)}
    for i in range(c.num_layers):
        for ours, parts in _BLOCK_FUSED:
            for p in ("weight", "bias"):
                for part, tensor in zip(parts, sd[f"blocks.{i}.{ours}.{p}"].chunk(len(parts))):
                    out[f"blocks.{i}.{part}.{p}"] = tensor
        out[f"blocks.{i}.scale_shift_table"] = sd[f"blocks.{i}.modulation"].reshape(1, 6, c.dim)
    out["scale_shift_table"] = sd["head.modulation"].reshape(1, 2, c.dim)
    return out
