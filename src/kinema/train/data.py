"""What each step trains on: a seeded plan of samples, per-sample randomness, loading and batching.

The plan is a pure function of (seed, step): step s of a run always trains on the
same global batch, in the same order, whatever the number of ranks or
accumulation micro-steps, so a resumed run restarts at its step without reading
(or decoding) the samples it skips. Each rank takes every `world`-th sample of a
micro-step's share of the batch: its own shard.

Every random draw of a step (noise, sigma, conditioning mask, caption dropout) is
made at once for the step's whole global batch, on the device, from generators
seeded by (seed, step, what is drawn) (`StepRandom`); a sample takes the row of its
slot in the batch, so its draws do not depend on how the batch is split over ranks.

Joint image and video training: an image is one frame of a clip, a one-frame
video (any frame, or with `image_frame="first"` frame 0). With `image_ratio` r,
"mixed" makes round(r * batch) samples of every batch images, "separate" makes a
fraction r of the steps all-image steps. A micro-batch is a list of groups of
equal frame count, each a forward pass of its own.
"""

from __future__ import annotations

import functools
import logging
import signal
import threading
import zlib
from typing import Any, Callable, NamedTuple

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
    return get_dataset(d.dataset, size=d.size, frames=d.frames, allow_outside=d.allow_outside, **extra)


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
    """The sample's position in the run, step * batch_size + slot: the slot picks its rows of the step's draws."""


@functools.lru_cache(maxsize=2)
def _epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(mix_seed(seed, epoch)))


def plan_tensors(
    step: int,
    *,
    n: int,
    batch_size: int,
    seed: int,
    image_ratio: float = 0.0,
    image_mode: str = "mixed",
    image_frame: str = "any",
    frames: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The global batch of optimiser step `step` as (index (B,), frame (B,)) int64 CPU tensors: dataset indices,
    and for each sample the frame it takes as an image, -1 for the whole clip. Epochs of `n // batch_size` steps,
    the last partial batch dropped."""
    per_epoch = n // batch_size
    epoch, k = divmod(step, per_epoch)
    index = _epoch_order(seed, epoch, n)[k * batch_size : (k + 1) * batch_size]
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
    return index, torch.where(is_image, frame, -1)


def plan_settings(config: Any, n: int) -> dict[str, Any]:
    """`plan_tensors`' keyword arguments for a TrainConfig over a dataset of `n` samples."""
    d = config.data
    return dict(
        n=n, batch_size=d.batch_size, seed=config.seed, frames=d.frames,
        image_ratio=d.image_ratio, image_mode=d.image_mode, image_frame=d.image_frame,
    )  # fmt: skip


def plan_step(step: int, **plan: Any) -> list[Pick]:
    """The global batch of optimiser step `step` as Picks (`plan_tensors`' arguments)."""
    index, frame = plan_tensors(step, **plan)
    first = step * plan["batch_size"]
    return [Pick(i, f, first + slot) for slot, (i, f) in enumerate(zip(index.tolist(), frame.tolist()))]


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


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
"""What stops a run: the training process handles them, its DataLoader workers ignore them."""


def ignore_stop_signals(worker_id: int) -> None:
    """A DataLoader worker's init: ignore SIGINT / SIGTERM, which a Ctrl-C, `timeout`, `kill -- -PGID`, SLURM or
    Kubernetes send the whole process group, so that the training process stops the run with a checkpoint and then
    shuts its workers down, rather than a worker dying first and taking the run with it."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):  # held back while the worker started (`Loader.__iter__`): now discarded
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


class Loader(DataLoader):
    """A DataLoader whose workers start with SIGINT / SIGTERM held back until they ignore them: a signal sent to
    the process group while they start reaches the training process alone (delivered when `__iter__` returns)."""

    def __iter__(self) -> Any:
        main = threading.current_thread() is threading.main_thread()  # where Python runs its signal handlers
        if not self.num_workers or not main or not hasattr(signal, "pthread_sigmask"):
            return super().__iter__()
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)  # inherited by the forked workers
        try:
            return super().__iter__()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def loader(
    items: Items, sampler: StepBatches, *, num_workers: int, pin_memory: bool = False, seed: int = 0
) -> DataLoader:
    """A DataLoader of `items` in the batches `sampler` yields. seed: its own generator's, which seeds the workers;
    a DataLoader without one draws that seed from the global torch generator at every `iter`, once per epoch and
    once more at each resume, and shifts the dropout masks drawn from it after that, so resume would not be exact."""
    return Loader(
        items,
        batch_sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        persistent_workers=False,
        prefetch_factor=2 if num_workers else None,
        worker_init_fn=ignore_stop_signals if num_workers else None,
        generator=torch.Generator().manual_seed(seed),
    )


class StepRandom:
    """The random draws of one optimiser step, each made once for the step's whole global batch, on the device.

    A draw is named ("noise", "sigma", ...) and made for all `batch_size` slots of the step from a generator
    seeded by (seed, step, name, shape); a group of samples takes its rows (`rows`). So a sample draws the same
    numbers whichever rank, micro-step or group it lands in, a resumed run draws what the straight run drew,
    and no draw is a per-sample Python loop.
    """

    def __init__(self, seed: int, step: int, batch_size: int, device: torch.device | str = "cpu") -> None:
        self.seed, self.step, self.batch_size = seed, step, batch_size
        self.device = torch.device(device)
        self._drawn: dict[tuple, torch.Tensor] = {}

    def generator(self, name: str, *key: int) -> torch.Generator:
        """A generator of its own for draw `name` (and any integers that tell its draws apart)."""
        return torch.Generator(self.device).manual_seed(mix_seed(self.seed, self.step, _name_id(name), *key))

    def draw(self, name: str, make: Callable[[int, torch.Generator], torch.Tensor], *key: int) -> torch.Tensor:
        """make(batch_size, generator) -> (batch_size, ...), made once per (name, key) in this step."""
        if (name, *key) not in self._drawn:
            self._drawn[(name, *key)] = make(self.batch_size, self.generator(name, *key))
        return self._drawn[(name, *key)]

    def rows(self, slots: torch.Tensor) -> GroupRandom:
        """The draws of the samples at `slots` (b,) (their places in the global batch)."""
        return GroupRandom(self, slots.to(self.device))


class GroupRandom(NamedTuple):
    """A group's rows of a step's draws; every method returns (b, ...) with row i for sample `slots[i]`."""

    step: StepRandom
    slots: torch.Tensor

    def draw(self, name: str, make: Callable[[int, torch.Generator], torch.Tensor], *key: int) -> torch.Tensor:
        return self.step.draw(name, make, *key)[self.slots]

    def randn(self, name: str, *shape: int) -> torch.Tensor:
        """(b, *shape) standard normal, fp32."""
        device = self.step.device
        return self.draw(name, lambda n, g: torch.randn((n, *shape), generator=g, device=device), *shape)

    def rand(self, name: str, *shape: int) -> torch.Tensor:
        """(b, *shape) uniform in [0, 1), fp32."""
        device = self.step.device
        return self.draw(name, lambda n, g: torch.rand((n, *shape), generator=g, device=device), *shape)

    def generator(self, name: str) -> torch.Generator:
        """One generator for an API that draws for the whole group at once (seeded by the group's first slot)."""
        return self.step.generator(name, int(self.slots[0]) if len(self.slots) else 0)


def _name_id(name: str) -> int:
    return zlib.crc32(name.encode())
