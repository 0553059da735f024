"""What each step trains on: a seeded plan of samples, per-sample randomness, loading and batching.

The plan is a pure function of (seed, step): step s of a run always trains on the
same global batch, in the same order, whatever the number of ranks or
accumulation micro-steps, so a resumed run restarts at its step without reading
(or decoding) the samples it skips. Each rank takes every `world`-th sample of a
micro-step's share of the batch: its own shard.

Every random draw a step makes for one sample (noise, sigma, conditioning mask,
caption dropout) comes from a generator seeded by (seed, the sample's position in
the run), so it too does not depend on how the batch is split over ranks.

Joint image and video training: an image is one frame of a clip, a one-frame
video (any frame, or with `image_frame="first"` frame 0). With `image_ratio` r,
"mixed" makes round(r * batch) samples of every batch images, "separate" makes a
fraction r of the steps all-image steps. A micro-batch is a list of groups of
equal frame count, each a forward pass of its own.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, NamedTuple

import torch
from torch.utils.data import DataLoader, Dataset

log = logging.getLogger("kinema.train")

_GOLDEN = 0x9E3779B97F4A7C15
_MIX = 0xBF58476D1CE4E5B9


def dataset_for(config: Any) -> Any:
    """The dataset a TrainConfig's `data` section names (built-in name or manifest path)."""
    from kinema.data import get_dataset

    d = config.data
    extra = {k: v for k, v in (("fps", d.fps), ("length", d.length)) if v is not None}
    return get_dataset(d.dataset, size=d.size, frames=d.frames, **extra)


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (splitmix-style), so nearby inputs give unrelated streams."""
    h = 0
    for part in parts:
        h = (h ^ (part + _GOLDEN + (h << 6) + (h >> 2))) * _MIX % (1 << 64)
        h ^= h >> 31
    return h % (1 << 63)


class Pick(NamedTuple):
    """One sample of a step: dataset `index`; `frame` >= 0 for that frame alone (an image), -1 for the clip."""

    index: int
    frame: int
    position: int
    """The sample's position in the run (step * batch_size + slot): it seeds the sample's randomness."""


@functools.lru_cache(maxsize=2)
def _epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(mix_seed(seed, epoch)))


def plan_step(
    step: int,
    *,
    n: int,
    batch_size: int,
    seed: int,
    image_ratio: float = 0.0,
    image_mode: str = "mixed",
    image_frame: str = "any",
    frames: int = 1,
) -> list[Pick]:
    """The global batch of optimiser step `step` (epochs of `n // batch_size` steps, last partial batch dropped)."""
    per_epoch = n // batch_size
    epoch, k = divmod(step, per_epoch)
    order = _epoch_order(seed, epoch, n)[k * batch_size : (k + 1) * batch_size].tolist()
    g = torch.Generator().manual_seed(mix_seed(seed, step, 1))
    is_image = torch.zeros(batch_size, dtype=torch.bool)
    if image_ratio > 0:
        if image_mode == "separate":
            is_image[:] = bool(torch.rand((), generator=g) < image_ratio)
        else:
            is_image[torch.randperm(batch_size, generator=g)[: round(image_ratio * batch_size)]] = True
    frame = torch.randint(frames, (batch_size,), generator=g)  # drawn either way: the same plan otherwise
    if image_frame == "first":
        frame.zero_()
    return [
        Pick(index, int(frame[slot]) if is_image[slot] else -1, step * batch_size + slot)
        for slot, index in enumerate(order)
    ]


def micro_batch(picks: list[Pick], *, rank: int, world: int, micro: int, accum: int) -> list[Pick]:
    """Rank `rank`'s share of accumulation micro-step `micro`: every (world * accum)-th pick."""
    return picks[micro * world + rank :: world * accum]


class StepBatches(torch.utils.data.Sampler):
    """Yields this rank's micro-batches (lists of Picks) for steps `start`, `start + 1`, ..., `stop - 1`."""

    def __init__(self, start: int, stop: int, *, rank: int, world: int, accum: int, **plan: Any) -> None:
        self.start, self.stop = start, stop
        self.rank, self.world, self.accum = rank, world, accum
        self.plan = plan

    def __len__(self) -> int:
        return (self.stop - self.start) * self.accum

    def __iter__(self):
        for step in range(self.start, self.stop):
            picks = plan_step(step, **self.plan)
            for micro in range(self.accum):
                yield micro_batch(picks, rank=self.rank, world=self.world, micro=micro, accum=self.accum)


class Items(Dataset):
    """Dataset items looked up by Pick: a clip or one frame of it, or its cached latents.

    A sample that cannot be read (an exception from the dataset) comes back as an
    `error` entry: the batch goes on without it and the loop logs it.
    """

    def __init__(self, dataset: Dataset, cache: Any = None) -> None:
        self.dataset = dataset
        self.cache = cache

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, pick: Pick) -> dict[str, Any]:
        key = f"{pick.index}" if pick.frame < 0 else f"{pick.index}@{pick.frame}"
        base = {"key": key, "position": pick.position}
        if self.cache is not None:
            cached = self.cache.get(key)
            if cached is not None:
                return {**base, **cached}
        try:
            item = self.dataset[pick.index]
        except Exception as e:  # a broken sample must not stop the run
            return {**base, "error": f"sample {pick.index}: {type(e).__name__}: {e}"}
        video = item["video"]
        if pick.frame >= 0:
            f = min(pick.frame, video.shape[1] - 1)
            video = video[:, f : f + 1]
        return {**base, "video": video, "caption": item["caption"]}


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Items -> {"groups": [...], "errors": [...]}; a group stacks items of one kind and shape.

    A group holds "video" (b, 3, T, H, W) or cached "latents" (b, c, t, h, w) (then maybe
    "text" (b, L, D) and "text_mask" (b, L) bool, padded to the longest), "caption",
    "key" and "position" (b,) int64.
    """
    errors = [item["error"] for item in items if "error" in item]
    buckets: dict[tuple, list[dict[str, Any]]] = {}
    for item in items:
        if "error" in item:
            continue
        kind = "latents" if "latents" in item else "video"
        buckets.setdefault((kind, tuple(item[kind].shape)), []).append(item)
    groups = []
    for (kind, _), members in buckets.items():
        group: dict[str, Any] = {
            kind: torch.stack([m[kind] for m in members]),
            "caption": [m["caption"] for m in members],
            "key": [m["key"] for m in members],
            "position": torch.tensor([m["position"] for m in members], dtype=torch.int64),
        }
        if "text" in members[0]:
            length = max(m["text"].shape[0] for m in members)
            text = torch.zeros(len(members), length, members[0]["text"].shape[1], dtype=members[0]["text"].dtype)
            mask = torch.zeros(len(members), length, dtype=torch.bool)
            for i, m in enumerate(members):
                text[i, : m["text"].shape[0]] = m["text"]
                mask[i, : m["text"].shape[0]] = True
            group["text"], group["text_mask"] = text, mask
        groups.append(group)
    groups.sort(key=lambda g: int(g["position"][0]))  # a fixed order of forward passes
    return {"groups": groups, "errors": errors}


def loader(items: Items, sampler: StepBatches, *, num_workers: int, pin_memory: bool = False) -> DataLoader:
    return DataLoader(
        items,
        batch_sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        persistent_workers=False,
        prefetch_factor=2 if num_workers else None,
    )


class SampleRandom:
    """Random draws for a group of samples, each row from its own generator seeded by (seed, position).

    positions: (b,) int64, the samples' positions in the run. Draws come back stacked (b, ...).
    """

    def __init__(self, seed: int, positions: torch.Tensor, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.seed = seed
        self.positions = positions.tolist()
        self.generators = [torch.Generator(self.device).manual_seed(mix_seed(seed, p, 2)) for p in self.positions]

    def __len__(self) -> int:
        return len(self.generators)

    def group_generator(self) -> torch.Generator:
        """One generator for draws an API makes for the whole group at once (seeded by all its positions)."""
        return torch.Generator(self.device).manual_seed(mix_seed(self.seed, *self.positions, 3))

    def randn(self, *shape: int) -> torch.Tensor:
        """(b, *shape) standard normal, fp32."""
        return torch.stack([torch.randn(shape, generator=g, device=self.device) for g in self.generators])

    def rand(self, *shape: int) -> torch.Tensor:
        """(b, *shape) uniform in [0, 1), fp32."""
        return torch.stack([torch.rand(shape, generator=g, device=self.device) for g in self.generators])
