"""Building blocks shared by kinema's models: attention, RoPE, embeddings, modulation, norms, causal conv,
and regional compilation (`compile_blocks`)."""

from kinema.nn.attention import attention
from kinema.nn.compile import compile_blocks
from kinema.nn.conv import CausalConv3d
from kinema.nn.embed import TimestepEmbedder, timestep_embedding
from kinema.nn.mlp import MLP
from kinema.nn.modulation import AdaLNZero, Modulation, modulate, modulation_rows, split_modulation
from kinema.nn.norm import LayerNorm32, RMSNorm
from kinema.nn.rope import apply_rope, axis_dims, rope_frequencies, rope_frequencies_1d

__all__ = [
    "MLP",
    "AdaLNZero",
    "CausalConv3d",
    "LayerNorm32",
    "Modulation",
    "RMSNorm",
    "TimestepEmbedder",
    "apply_rope",
    "attention",
    "axis_dims",
    "compile_blocks",
    "modulate",
    "modulation_rows",
    "rope_frequencies",
    "rope_frequencies_1d",
    "split_modulation",
    "timestep_embedding",
]

