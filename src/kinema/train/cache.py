"""A disk cache of VAE latents (and frozen text embeddings) as safetensors shards.

The diffusion stage encodes every sample with the frozen VAE; with `data.cache`
on, the first epoch writes what it encoded to `DIR/cache/shard-r{rank}-{n}.safetensors`
and later epochs load it instead of decoding and encoding the clip. Keys are the
sample's dataset index (`"17"`) or index and frame for an image (`"17@3"`), with
suffixes `/latents`, `/text` (trimmed to its real length). Text embeddings are
cached only when the text encoder is frozen.

`meta.json` records what the entries depend on (the VAE's weights hash, the data
settings, the text encoder); a cache made under other settings is cleared. The
shard index is re-read at the start of every epoch, so DataLoader workers see a
fixed snapshot and never read a shard that is being written (shards are written
atomically: temporary file, fsync, rename).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

SHARD_SIZE = 256
"""Samples per shard file."""


class LatentCache:
    def __init__(self, directory: str | os.PathLike, *, rank: int) -> None:
        self.directory = Path(directory)
        self.rank = rank
        self.index: dict[str, str] = {}
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_keys: set[str] = set()

    @staticmethod
    def prepare(directory: str | os.PathLike, meta: dict[str, Any]) -> None:
        """Create the cache folder, clearing it if it was made under other settings (call on rank 0 only)."""
        directory = Path(directory)
        meta_path = directory / "meta.json"
        if directory.exists():
            try:
                same = json.loads(meta_path.read_text()) == meta
            except (OSError, ValueError):
                same = False
            if not same:
                shutil.rmtree(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if not meta_path.exists():
            meta_path.write_text(json.dumps(meta, indent=2, sort_keys=True))

    def refresh(self) -> None:
        """Re-read which keys the shards on disk hold (all ranks' shards)."""
        index = {}
        for shard in sorted(self.directory.glob("shard-*.safetensors")):
            with safe_open(str(shard), "pt") as f:
                for name in f.keys():
                    index[name.rsplit("/", 1)[0]] = shard.name
        self.index = index

    def __contains__(self, key: str) -> bool:
        return key in self.index or key in self.pending_keys

    def get(self, key: str) -> dict[str, torch.Tensor] | None:
        shard = self.index.get(key)
        if shard is None:
            return None
        with safe_open(str(self.directory / shard), "pt") as f:
            names = set(f.keys())
            out = {"latents": f.get_tensor(f"{key}/latents")}
            if f"{key}/text" in names:
                out["text"] = f.get_tensor(f"{key}/text")
            meta = f.metadata() or {}
        out["caption"] = meta.get(f"{key}/caption", "")
        return out

    def add(
        self,
        keys: list[str],
        captions: list[str],
        latents: torch.Tensor,
        text: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
    ) -> None:
        """Queue newly encoded samples: latents (b, c, t, h, w); text (b, L, D) with text_mask (b, L)."""
        for i, key in enumerate(keys):
            if key in self:
                continue
            self.pending[f"{key}/latents"] = latents[i].detach().float().cpu().clone()
            if text is not None and text_mask is not None:
                self.pending[f"{key}/text"] = text[i, text_mask[i]].detach().float().cpu().clone()
            self.pending[f"{key}/caption"] = captions[i]  # type: ignore[assignment]
            self.pending_keys.add(key)
        if len(self.pending_keys) >= SHARD_SIZE:
            self.flush()

    def flush(self) -> None:
        """Write the queued samples as one shard."""
        if not self.pending_keys:
            return
        tensors = {k: v for k, v in self.pending.items() if torch.is_tensor(v)}
        metadata = {k: v for k, v in self.pending.items() if isinstance(v, str)}
        n = len(list(self.directory.glob(f"shard-r{self.rank}-*.safetensors")))
        final = self.directory / f"shard-r{self.rank}-{n:05d}.safetensors"
        tmp = final.with_name(f".{final.name}.tmp")
        save_file(tensors, str(tmp), metadata=metadata)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
        for key in self.pending_keys:
            self.index[key] = final.name
        self.pending, self.pending_keys = {}, set()
