"""Text encoders: prompts -> (tokens (B, L, dim), mask (B, L) bool) for the denoisers' cross-attention.

Two kinds, one contract (`encode(prompts) -> (tokens, mask)`, a `dim` attribute):

- `TextEncoder`, built in, trained from scratch with the denoiser. Its tokenizer
  is byte-level: a prompt is its UTF-8 bytes between BOS and EOS. We chose bytes
  over a word vocabulary learned from the captions because there is nothing to
  learn, save or keep in sync with the weights, and no prompt is ever out of
  vocabulary (a word vocabulary would map every word unseen in the captions to
  UNK); our captions are short English ("a small red circle moving right", at
  most ~80 bytes), so the longer sequences cost little.
- `HFTextEncoder`, any local Hugging Face text encoder (a T5 encoder, a CLIP
  text model) with its tokenizer, loaded from a folder, frozen, in the dtype
  asked for. Needs `pip install "kinema[hf]"`.

`load_text_encoder("hf:PATH" | "builtin" | preset name)` builds either.

Outputs are right-padded to the longest prompt of the batch; padded positions
are False in the mask and zero in the tokens, so a prompt's tokens never depend
on the other prompts of its batch (`pad_tokens` pads to a common length when
two batches are joined).

Repeated prompts are served from a bounded LRU cache per encoder (keyed by
prompt) whenever no gradient is needed: the encoder is in eval mode and either
grad mode is off or no weight requires grad (always true of a frozen HF
encoder). The cache empties itself whenever a weight changes (an optimizer
step, `load_state_dict`, `.to(...)`) or autocast is switched, so it never
returns embeddings of older weights.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from einops import rearrange
from torch import nn

from kinema.errors import KinemaError
from kinema.nn.attention import attention
from kinema.nn.mlp import MLP
from kinema.nn.norm import RMSNorm

# ----------------------------------------------------------------------------- padding and the prompt cache


def pad_tokens(tokens: torch.Tensor, mask: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad (tokens (B, L, dim) or ids (B, L), mask (B, L)) to `length` >= L with zeros / False."""
    extra = length - tokens.shape[1]
    if extra < 0:
        raise ValueError(f"cannot pad {tokens.shape[1]} tokens to a shorter length {length}")
    if extra == 0:
        return tokens, mask
    pad = (0, extra) if tokens.ndim == 2 else (0, 0, 0, extra)
    return nn.functional.pad(tokens, pad), nn.functional.pad(mask, (0, extra), value=False)


def _stack_rows(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-prompt tokens [(L_i, dim)] -> right-padded (B, max L_i, dim) and its mask (B, max L_i)."""
    length = max(r.shape[0] for r in rows)
    tokens = rows[0].new_zeros(len(rows), length, rows[0].shape[1])
    mask = torch.zeros(len(rows), length, dtype=torch.bool, device=rows[0].device)
    for i, r in enumerate(rows):
        tokens[i, : r.shape[0]] = r
        mask[i, : r.shape[0]] = True
    return tokens, mask


class PromptEncoder(nn.Module):
    """Base of the text encoders: `encode` with a bounded LRU cache of per-prompt embeddings.

    Subclasses implement `_encode_batch(prompts) -> (tokens (B, L, dim), mask (B, L))` with the
    mask a prefix of True (right padding) and zeros at padded positions.
    """

    dim: int

    def __init__(self, cache_size: int) -> None:
        super().__init__()
        self.cache_size = cache_size
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._cache_stamp: tuple | None = None

    def _encode_batch(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """prompts (B strings) -> tokens (B, L, dim), mask (B, L) bool (True = a real token)."""
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise KinemaError("encode takes a list of prompt strings, e.g. encode(['a red circle moving right'])")
        if len(prompts) == 0:
            raise KinemaError("encode needs at least one prompt")
        if not self._cache_usable():
            return self._encode_batch(list(prompts))

        stamp = self._weights_stamp()
        if stamp != self._cache_stamp:
            self._cache.clear()
            self._cache_stamp = stamp
        unique = list(dict.fromkeys(prompts))
        found = {p: self._cache[p] for p in unique if p in self._cache}
        missing = [p for p in unique if p not in found]
        if missing:
            tokens, mask = self._encode_batch(missing)
            for p, row, m in zip(missing, tokens, mask):
                found[p] = row[: int(m.sum())].detach().clone()  # not a view that pins the whole batch
        for p in unique:  # refresh recency, insert the new ones, evict the oldest
            self._cache[p] = found[p]
            self._cache.move_to_end(p)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return _stack_rows([found[p] for p in prompts])

    def clear_cache(self) -> None:
        self._cache.clear()
        self._cache_stamp = None

    def _cache_usable(self) -> bool:
        if self.cache_size == 0 or self.training:
            return False
        return not torch.is_grad_enabled() or not any(p.requires_grad for p in self.parameters())

    def _weights_stamp(self) -> tuple:
        # In-place changes bump a tensor's version; .to() gives new storage; autocast changes the output.
        tensors = [*self.parameters(), *self.buffers()]
        device = tensors[0].device.type if tensors else "cpu"
        autocast = (torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        return (autocast, *((t.data_ptr(), t._version, t.dtype) for t in tensors))


# ----------------------------------------------------------------------------- the built-in byte-level encoder


class ByteTokenizer:
    """UTF-8 bytes between BOS and EOS; ids: PAD 0, BOS 1, EOS 2, byte b -> b + 3. Needs no files.

    Prompts longer than `max_length - 2` bytes are truncated (EOS is kept).
    """

    PAD, BOS, EOS, OFFSET = 0, 1, 2, 3
    vocab_size = 256 + OFFSET

    def __init__(self, max_length: int) -> None:
        self.max_length = max_length

    def ids(self, prompt: str) -> list[int]:
        body = prompt.encode("utf-8")[: self.max_length - 2]
        return [self.BOS, *(b + self.OFFSET for b in body), self.EOS]

    def __call__(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """prompts -> ids (B, L) long, mask (B, L) bool; right-padded with PAD to the longest."""
        rows = [self.ids(p) for p in prompts]
        length = max(len(r) for r in rows)
        ids = torch.full((len(rows), length), self.PAD, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
        return ids, ids != self.PAD

    def decode(self, ids: torch.Tensor) -> str:
        """One row of ids (L,) -> the prompt (special tokens dropped)."""
        return bytes(i - self.OFFSET for i in ids.tolist() if i >= self.OFFSET).decode("utf-8", errors="replace")


@dataclass(frozen=True, kw_only=True)
class TextEncoderConfig:
    """The built-in text encoder: a byte-level tokenizer and a small pre-norm transformer."""

    dim: int = 256
    """Width of the output tokens (the denoiser's text_dim)."""
    depth: int = 4
    """Transformer layers."""
    num_heads: int = 4
    """Attention heads; must divide dim into an even head width."""
    mlp_ratio: float = 4.0
    """Feed-forward hidden width as a multiple of dim."""
    max_length: int = 128
    """Most tokens per prompt (bytes + BOS + EOS); longer prompts are truncated."""
    dropout: float = 0.0
    """Dropout on attention and feed-forward outputs while training, in [0, 1)."""
    cache_size: int = 1024
    """Prompts whose embeddings the LRU cache keeps when no gradient is needed; 0 turns it off."""

    def __post_init__(self) -> None:
        for name in ("dim", "depth", "num_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"TextEncoderConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.dim % self.num_heads:
            raise ValueError(f"TextEncoderConfig.num_heads ({self.num_heads}) must divide dim ({self.dim})")
        if self.max_length < 3:
            raise ValueError(f"TextEncoderConfig.max_length must be >= 3 (BOS, a byte, EOS), got {self.max_length}")
        if self.mlp_ratio <= 0:
            raise ValueError(f"TextEncoderConfig.mlp_ratio must be > 0, got {self.mlp_ratio}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"TextEncoderConfig.dropout must be in [0, 1), got {self.dropout}")
        if self.cache_size < 0:
            raise ValueError(f"TextEncoderConfig.cache_size must be >= 0, got {self.cache_size}")


def text_tiny(**overrides: Any) -> TextEncoderConfig:
    """A tiny encoder for tests (dim 32, one layer)."""
    return TextEncoderConfig(**{**dict(dim=32, depth=1, num_heads=2, max_length=48), **overrides})


def text_shapes(**overrides: Any) -> TextEncoderConfig:
    """The shipped shapes model's encoder (dim 192, 3 layers, ~1.4M parameters); fits every shapes caption."""
    return TextEncoderConfig(**{**dict(dim=192, depth=3, num_heads=3, max_length=128), **overrides})


def text_small(**overrides: Any) -> TextEncoderConfig:
    """A larger encoder (dim 256, 4 layers, ~3M parameters); fits every shapes caption untruncated."""
    return TextEncoderConfig(**{**dict(dim=256, depth=4, num_heads=4, max_length=128), **overrides})


class EncoderBlock(nn.Module):
    """Pre-norm self-attention (padded keys masked out) and feed-forward, both residual.

    x: (B, L, dim), mask: (B, L) bool -> (B, L, dim)
    """

    def __init__(self, config: TextEncoderConfig) -> None:
        super().__init__()
        self.heads = config.num_heads
        self.norm1 = RMSNorm(config.dim)
        self.qkv = nn.Linear(config.dim, 3 * config.dim)
        self.proj = nn.Linear(config.dim, config.dim)
        self.norm2 = RMSNorm(config.dim)
        self.mlp = MLP(config.dim, int(config.dim * config.mlp_ratio), activation="gelu_tanh")
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q, k, v = rearrange(self.qkv(self.norm1(x)), "b l (three h d) -> three b h l d", three=3, h=self.heads)
        x = x + self.dropout(self.proj(rearrange(attention(q, k, v, mask=mask), "b h l d -> b l (h d)")))
        return x + self.dropout(self.mlp(self.norm2(x)))


class TextEncoder(PromptEncoder):
    """Built-in text encoder: byte tokens + learned positions -> transformer -> RMSNorm.

    encode(prompts) -> tokens (B, L, dim), mask (B, L) bool; L <= config.max_length.
    """

    config_class = TextEncoderConfig

    def __init__(self, config: TextEncoderConfig) -> None:
        super().__init__(config.cache_size)
        self.config = config
        self.dim = config.dim
        self.tokenizer = ByteTokenizer(config.max_length)
        self.embed = nn.Embedding(ByteTokenizer.vocab_size, config.dim)
        self.pos = nn.Parameter(torch.zeros(config.max_length, config.dim))
        self.blocks = nn.ModuleList(EncoderBlock(config) for _ in range(config.depth))
        self.norm = RMSNorm(config.dim)
        self.apply(_init_weights)
        nn.init.normal_(self.pos, std=0.02)
        for block in self.blocks:  # GPT-2's scaling of the residual projections by depth
            nn.init.normal_(block.proj.weight, std=0.02 / math.sqrt(2 * config.depth))
            nn.init.normal_(block.mlp.fc2.weight, std=0.02 / math.sqrt(2 * config.depth))

    @property
    def device(self) -> torch.device:
        return self.pos.device

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ids: (B, L) long, mask: (B, L) bool -> tokens (B, L, dim), zero where mask is False."""
        x = self.embed(ids) + self.pos[: ids.shape[1]]
        for block in self.blocks:
            x = block(x, mask)
        return self.norm(x) * mask[..., None]

    def prompt_length(self, prompt: str) -> tuple[int, int, str]:
        """(length, limit, unit) of a prompt: the encoder reads its first `limit` UTF-8 bytes, cuts the rest."""
        return len(prompt.encode("utf-8", "replace")), self.config.max_length - 2, "UTF-8 bytes"

    def _encode_batch(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = self.tokenizer(prompts)
        ids, mask = ids.to(self.device), mask.to(self.device)
        return self(ids, mask), mask


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


# ----------------------------------------------------------------------------- Hugging Face encoders


# HF config `model_type` -> the transformers class holding just the text encoder.
HF_ENCODER_CLASSES = {
    "t5": "T5EncoderModel",
    "mt5": "MT5EncoderModel",
    "umt5": "UMT5EncoderModel",
    "clip": "CLIPTextModel",
    "clip_text_model": "CLIPTextModel",
}


def _import_transformers():
    try:
        import transformers
    except ImportError:
        raise KinemaError(
            'hf: text encoders need the transformers package; install it with pip install "kinema[hf]"'
        ) from None
    return transformers


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
"""Weight files that are Python pickles: an HF folder holding only these is refused (loading never unpickles)."""


def _dtype_kwarg(transformers) -> str:
    # `dtype` replaced `torch_dtype` in transformers 4.56.
    major, minor = (int(n) for n in transformers.__version__.split(".")[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


class HFTextEncoder(PromptEncoder):
    """A local Hugging Face text encoder and its tokenizer, frozen: it stays in eval mode and needs no grad.

    The folder holds what `save_pretrained` writes for the model (config.json, weights) and the
    tokenizer. The T5 family (t5, mt5, umt5) loads its encoder stack only; CLIP its text model.
    T5 overflows in float16: use bfloat16 or float32.

    encode(prompts) -> tokens (B, L, dim) = the last hidden states, mask (B, L) bool.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        dtype: torch.dtype = torch.float32,
        max_length: int | None = None,
        cache_size: int = 1024,
    ) -> None:
        super().__init__(cache_size)
        transformers = _import_transformers()
        path = Path(path).expanduser()
        if not path.is_dir():
            raise KinemaError(f"hf:{path}: no such folder; give the local folder of a saved Hugging Face text encoder")
        try:
            hf_config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError, KeyError) as e:
            raise KinemaError(f"hf:{path}: not a Hugging Face model folder (config.json unreadable: {e})") from None
        if hf_config.model_type not in HF_ENCODER_CLASSES:
            raise KinemaError(
                f"hf:{path}: model_type {hf_config.model_type!r} is not a supported text encoder; "
                f"supported: {sorted(HF_ENCODER_CLASSES)}"
            )
        model_class = getattr(transformers, HF_ENCODER_CLASSES[hf_config.model_type])
        if not any(path.glob("*.safetensors")):
            pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
            raise KinemaError(
                f"hf:{path}: no .safetensors weights"
                + (f", only {', '.join(pickles[:3])} (a pickle, which kinema never loads)" if pickles else "")
                + "; save the model with save_pretrained(folder) (transformers writes safetensors) or convert it"
            )
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
            self.model = model_class.from_pretrained(
                path, local_files_only=True, use_safetensors=True, **{_dtype_kwarg(transformers): dtype}
            )
        except (OSError, ValueError, KeyError) as e:
            raise KinemaError(f"hf:{path}: cannot load the tokenizer and model ({e})") from None
        self.tokenizer.padding_side = "right"  # the cache trims each prompt's padding off its end
        self.model.requires_grad_(False)
        self.path = path
        self.dim = self.model.config.hidden_size
        limits = [self.tokenizer.model_max_length, getattr(self.model.config, "max_position_embeddings", None), 512]
        self.max_length = max_length or min(int(n) for n in limits if n)
        self.eval()

    def train(self, mode: bool = True) -> HFTextEncoder:
        # Frozen: dropout stays off even when a parent module is put in training mode.
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return self.model.device

    def prompt_length(self, prompt: str) -> tuple[int, int, str]:
        """(length, limit, unit) of a prompt in tokens: the encoder reads the first `limit`, cuts the rest."""
        return len(self.tokenizer(prompt)["input_ids"]), self.max_length, "tokens"

    def _encode_batch(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.tokenizer(
            prompts, padding="longest", truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        ids, mask = batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device).bool()
        with torch.no_grad():
            tokens = self.model(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        return tokens * mask[..., None], mask


# ----------------------------------------------------------------------------- by name


PRESETS: dict[str, Callable[..., TextEncoderConfig]] = {
    "builtin": text_small,
    "text_small": text_small,
    "text_shapes": text_shapes,
    "text_tiny": text_tiny,
}


def load_text_encoder(
    spec: str, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> PromptEncoder:
    """A text encoder from a spec: "hf:PATH" (a local Hugging Face encoder, frozen) or a built-in
    preset name ("builtin" = "text_small", "text_shapes", "text_tiny"), freshly initialised for training.
    """
    if spec.startswith("hf:"):
        if not spec[3:]:
            raise KinemaError('"hf:" needs a folder after it, e.g. hf:/models/t5-small')
        return HFTextEncoder(spec[3:], dtype=dtype).to(device)
    if spec in PRESETS:
        return TextEncoder(PRESETS[spec]()).to(device=device, dtype=dtype)
    raise KinemaError(
        f"unknown text encoder {spec!r}; use hf:PATH (a local Hugging Face folder) or one of {sorted(PRESETS)}"
    )
