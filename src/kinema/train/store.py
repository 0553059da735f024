"""The latent store: a diffusion run's training set, encoded once, held as tensors on the training device.

    latents    (N, c, t, h, w) fp32      every clip through the frozen VAE (posterior mean)
    images     (N, F, c, 1, h, w) fp32   single frames as one-frame videos, when the run trains on images
                                         (F = 1 with data.image_frame "first", else every frame)
    ids        (N, L) int64              byte ids, when the run trains its text encoder
    text       (N, L, D) fp32            a frozen text encoder's tokens otherwise
    lengths    (N,) int64                real tokens per caption (the rest is padding)
    valid      (N,) bool                 False for a sample that could not be read: never drawn, counted once

A step gathers its batch by index on the device (`LatentStore.batch`): no DataLoader,
no per-sample Python, no copy from the host. Which samples a step draws is the same
plan as the streaming path's, and groups are trimmed to their longest caption as a
collated batch is, so both paths train alike.

The store is saved as one safetensors file named by a hash of what it depends on
(the VAE's weights, the data settings, the text encoder, the precision it was encoded
in, which images it holds), under `data.store_dir` (default $KINEMA_CACHE/latents,
else ~/.cache/kinema/latents), so later runs with the same VAE and data load it
instead of encoding again. `data.store="auto"` builds it when it fits a quarter of
the device's free memory and streams otherwise, saying which.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset

from kinema.atomic import atomic_write
from kinema.train import checkpoint as ckpt
from kinema.train.data import Items, Pick, loader, plan_tensors

log = logging.getLogger("kinema.train")

ENCODE_BATCH = 32
"""Clips encoded per VAE call while building the store."""
BUDGET_FRACTION = 0.25
"""Share of the device's free memory that data.store="auto" lets the store take."""


def default_dir() -> Path:
    """$KINEMA_CACHE/latents, else ~/.cache/kinema/latents."""
    root = os.environ.get("KINEMA_CACHE") or Path.home() / ".cache" / "kinema"
    return Path(root) / "latents"


class LatentStore(NamedTuple):
    """The encoded training set (see the module docstring); tensors on the training device, `lengths` and
    `valid` also on the CPU, where a step decides its groups' shapes without waiting on the device."""

    latents: torch.Tensor
    images: torch.Tensor | None
    tokens: torch.Tensor
    """ids (N, L) when the text encoder trains, else the frozen encoder's tokens (N, L, D)."""
    lengths: torch.Tensor
    valid: torch.Tensor

    @property
    def trains_text(self) -> bool:
        return self.tokens.dtype == torch.int64

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self if t is not None)

    def batch(self, index: torch.Tensor, frame: torch.Tensor, slots: torch.Tensor) -> dict[str, Any]:
        """A micro-batch of picks (index (b,), frame (b,) with -1 for a clip, slots (b,): CPU int64) as the
        loop's {"groups": [...], "errors": []}; each group holds latents, text, its slots and its count."""
        keep = self.valid[index]
        index, frame, slots = index[keep], frame[keep], slots[keep]
        groups = []
        for is_image, rows in ((False, frame < 0), (True, frame >= 0)):  # one shape each
            if not rows.any():
                continue
            i, f, s = index[rows], frame[rows], slots[rows]
            length = max(int(self.lengths[i].max()), 1)
            on_device = i.to(self.latents.device, non_blocking=True)
            if not is_image:
                latents = self.latents[on_device]
            else:
                if self.images is None:
                    raise RuntimeError("this latent store holds no images; build it with the run's data settings")
                which = f.clamp_max(self.images.shape[1] - 1).to(self.latents.device, non_blocking=True)
                latents = self.images[on_device, which]
            tokens = self.tokens[on_device, :length]
            mask = torch.arange(length, device=tokens.device) < self.lengths[i].to(tokens.device)[:, None]
            group: dict[str, Any] = {"latents": latents, "slots": s, "count": len(i), "first": int(s[0])}
            group.update({"ids": tokens, "ids_mask": mask} if self.trains_text else {"text": tokens, "text_mask": mask})
            groups.append(group)
        groups.sort(key=lambda g: g["first"])  # the order a collated batch has
        return {"groups": groups, "errors": []}


def micro_batches(
    store: LatentStore, start: int, stop: int, *, rank: int, world: int, accum: int, **plan: Any
) -> Iterator[dict[str, Any]]:
    """This rank's micro-batches of steps start .. stop - 1, gathered from the store (the plan of
    `kinema.train.data.plan_step`)."""
    for step in range(start, stop):
        index, frame = plan_tensors(step, **plan)
        for micro in range(accum):
            slots = torch.arange(micro * world + rank, plan["batch_size"], world * accum)
            yield store.batch(index[slots], frame[slots], slots)


def fits(config: Any, n: int, latent_shape: tuple[int, ...], text_dim: int | None, device: torch.device) -> tuple[bool, str]:
    """Whether data.store="auto" keeps the encoded set in memory, and a line saying why."""
    clip = math.prod(latent_shape)  # (c, t, h, w); an image's latent is one latent frame of it
    per_sample = 4 * (clip + _image_frames(config) * clip // latent_shape[-3])
    text_len = 128  # an upper bound on real captions; a store keeps the longest
    per_sample += 8 * text_len if text_dim is None else 4 * text_len * text_dim
    need = n * per_sample
    free = _free_memory(device)
    budget = int(free * BUDGET_FRACTION)
    verdict = need <= budget
    words = "fits" if verdict else "does not fit"
    return verdict, f"{n} samples need ~{need / 2**20:,.0f} MiB, which {words} a quarter of {device.type}'s free {free / 2**30:,.1f} GiB"


def _image_frames(config: Any) -> int:
    """How many single-frame latents per clip the run needs: 0, 1 (first frames) or every frame's."""
    d = config.data
    if d.image_ratio == 0:
        return 0
    return 1 if d.image_frame == "first" else d.frames


def _free_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
        return info["MemAvailable"]
    except (OSError, KeyError, ValueError):
        return 8 * 2**30  # unknown (not Linux): assume a modest machine


def store_key(meta: dict[str, Any], config: Any) -> dict[str, Any]:
    """What a saved store depends on: the latent cache's settings plus which images it holds."""
    images = {0: "none", 1: "first"}.get(_image_frames(config), "all")
    return {**meta, "images": images, "format": 1}


def store_file(directory: Path, key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return directory / f"store-{digest}.safetensors"


def load(path: Path, device: torch.device) -> LatentStore:
    tensors = load_file(str(path), device=str(device))
    valid, lengths = tensors["valid"].cpu(), tensors["lengths"].cpu()
    return LatentStore(tensors["latents"], tensors.get("images"), tensors["tokens"], lengths, valid)


def save(store: LatentStore, path: Path, key: dict[str, Any]) -> None:
    tensors = {k: v.contiguous().cpu() for k, v in store._asdict().items() if v is not None}
    metadata = {"key": json.dumps(key, sort_keys=True)}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def saved_key(path: Path) -> dict[str, Any] | None:
    try:
        with safe_open(str(path), "pt") as f:
            return json.loads((f.metadata() or {})["key"])
    except (OSError, KeyError, ValueError, RuntimeError):  # a foreign or damaged file: encode again
        return None


@torch.no_grad()
def encode(
    dataset: Dataset,
    prepare: Any,
    frozen: dict[str, torch.nn.Module],
    config: Any,
    device: torch.device,
    autocast: Any,
    *,
    tokenizer: Any = None,
    progress: bool = True,
) -> LatentStore:
    """Every sample of `dataset` through `prepare` (the diffusion stage's: the frozen VAE and text encoder),
    in batches of ENCODE_BATCH on `device`. `tokenizer`: the trained text encoder's, for its ids."""
    from tqdm import tqdm

    n = len(dataset)  # type: ignore[arg-type]
    frames = _image_frames(config)
    chunks = [[Pick(i, -1, i) for i in range(s, min(s + ENCODE_BATCH, n))] for s in range(0, n, ENCODE_BATCH)]
    batches = loader(Items(dataset), chunks, num_workers=config.data.num_workers)  # type: ignore[arg-type]
    latents: list[torch.Tensor | None] = [None] * n
    images: list[torch.Tensor | None] = [None] * n
    tokens: list[torch.Tensor | None] = [None] * n
    bar = tqdm(total=n, desc="encoding the training set", unit="clip", disable=not progress, dynamic_ncols=True)
    for batch in batches:
        for error in batch["errors"]:
            log.warning("latent store: skipped an unreadable sample (%s)", error)
        for group in batch["groups"]:
            video = group["video"].to(device, non_blocking=True)
            with autocast():
                done = prepare(frozen, {"video": video, "caption": group["caption"]}, config)
                if frames:
                    t = video.shape[2] if frames > 1 else 1
                    stills = video[:, :, :t].transpose(1, 2).flatten(0, 1)[:, :, None]  # (b * t, 3, 1, H, W)
                    stills = frozen["vae"].encode(stills).float().unflatten(0, (len(video), t))
            if tokenizer is not None:
                ids, mask = tokenizer(group["caption"])
                rows = [ids[i, mask[i]] for i in range(len(ids))]
            else:
                rows = [done["text"][i, done["text_mask"][i]].float() for i in range(len(video))]
            for j, key in enumerate(group["key"]):
                k = int(key)
                latents[k], tokens[k] = done["latents"][j], rows[j].to(device)
                if frames:
                    images[k] = stills[j]
        bar.update(sum(len(g["key"]) for g in batch["groups"]) + len(batch["errors"]))
    bar.close()
    return _assemble(latents, images if frames else None, tokens, device)


def _assemble(
    latents: list[torch.Tensor | None], images: list[torch.Tensor | None] | None, tokens: list[torch.Tensor | None],
    device: torch.device,
) -> LatentStore:
    """Per-sample tensors (None for an unreadable sample) -> the stacked store, captions right-padded."""
    valid = torch.tensor([x is not None for x in latents])
    if not valid.any():
        raise RuntimeError("no sample of the dataset could be read")
    like = next(x for x in latents if x is not None)
    lengths = torch.tensor([0 if t is None else t.shape[0] for t in tokens], dtype=torch.int64)
    sample_tokens = next(t for t in tokens if t is not None)
    padded = sample_tokens.new_zeros((len(tokens), int(lengths.max()), *sample_tokens.shape[1:]))
    for i, t in enumerate(tokens):
        if t is not None:
            padded[i, : t.shape[0]] = t
    stacked = torch.stack([like.new_zeros(like.shape) if x is None else x for x in latents])
    stills = None
    if images is not None:
        first = next(x for x in images if x is not None)
        stills = torch.stack([first.new_zeros(first.shape) if x is None else x for x in images])
    return LatentStore(stacked.to(device), None if stills is None else stills.to(device), padded.to(device), lengths, valid)


def open_store(
    config: Any,
    dataset: Dataset,
    frozen: dict[str, torch.nn.Module],
    model: torch.nn.Module,
    prepare: Any,
    device: torch.device,
    autocast: Any,
    *,
    meta: dict[str, Any] | None,
    world: Any,
) -> LatentStore | None:
    """The diffusion run's latent store per data.store, or None to stream (said on rank 0 with the reason).

    model: the trained DiffusionModel (its text encoder, when it trains one, tokenizes the captions).
    """
    from kinema.train import distributed

    d = config.data
    text_encoder = getattr(model, "text_encoder", None)
    tokenizer = text_encoder.tokenizer if text_encoder is not None else None
    n = len(dataset)  # type: ignore[arg-type]
    if d.store == "auto":
        latent = frozen["vae"].latent_shape((3, d.frames, d.size, d.size))
        text_dim = None if tokenizer is not None else frozen["text_encoder"].dim
        ok, why = fits(config, n, latent, text_dim, device)
        if not ok:
            if world.is_main:
                print(f"data: streaming from the dataset: {why} (data.store=memory keeps it anyway)", flush=True)
            return None
    # Loaded when a store with the same key is saved; else encoded on rank 0 and saved for the other ranks and
    # later runs. meta None (a dataset with no stable identity) or data.store_dir "": encoded by every rank, not saved.
    where = d.store_dir
    directory = default_dir() if where is None else Path(where) if where else None
    if directory is None or meta is None:
        store = encode(dataset, prepare, frozen, config, device, autocast, tokenizer=tokenizer, progress=world.is_main)
    else:
        key = store_key(meta, config)
        path = store_file(directory, key)
        store = None
        if world.is_main and saved_key(path) != key:
            started = time.perf_counter()
            store = encode(dataset, prepare, frozen, config, device, autocast, tokenizer=tokenizer)
            try:
                save(store, path, key)
                print(f"data: encoded in {time.perf_counter() - started:.0f} s, saved to {path}", flush=True)
            except Exception as e:  # a cache: a full or read-only disk costs the next run an encoding, not this run
                code = ckpt.storage_errno(e)
                if code is None:
                    raise
                print(f"data: could not save the latent store to {path} ({os.strerror(code)}); this run keeps it in "
                      "memory and the next one encodes again, unless that folder has room and is writable by then or "
                      'data.store_dir names another ("" keeps the store in memory only)', flush=True)  # fmt: skip
        distributed.barrier(world)
        if store is None:  # saved by an earlier run, or by rank 0 for this one (if it could)
            if saved_key(path) == key:
                store = load(path, device)
            else:
                store = encode(dataset, prepare, frozen, config, device, autocast, tokenizer=tokenizer, progress=False)
    if world.is_main:
        print(
            f"data: {int(store.valid.sum())} samples in the latent store on {device.type} "
            f"({store.nbytes() / 2**20:,.1f} MiB); every batch is drawn from it by index",
            flush=True,
        )
    return store
