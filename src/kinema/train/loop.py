"""The training loop: one function, `train(config, out_dir)`, for both stages, on one process or many.

Read it top to bottom: check where the run starts, build the models, restore the
newest checkpoint when resuming, then run steps until `config.steps`. A step
loads this rank's share of a seeded global batch, accumulates gradients over
micro-steps, skips itself if the loss or the gradient is not finite, clips,
updates AdamW and the EMA, and logs; every so often it writes samples and a
checkpoint. SIGINT or SIGTERM ends the run at the next step boundary with a
checkpoint (DataLoader workers ignore them, so a signal to the whole process group
reaches the loop; a checkpoint being written is never cut short). A checkpoint is
only saved while the weights are finite, and the run remembers the newest one whose
weights then trained a step with a finite loss: when the losses stay non-finite, it
names that one to go back to (`resume_from`). At the end the EMA weights are
exported as DIR/pipeline.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import random
import shutil
import signal
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any, NamedTuple

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset

from kinema import config as cfg
from kinema import precision as precisions
from kinema.atomic import atomic_write, check_writable, write_json
from kinema.errors import KinemaError
from kinema.train import checkpoint as ckpt
from kinema.train import distributed
from kinema.train.cache import LatentCache
from kinema.train.config import (
    SAFE_ON_RESUME,
    TrainConfig,
    check_field_names,
    config_changes,
    learned_hash,
    resume_conflicts,
)
from kinema.train.data import (
    STOP_SIGNALS,
    Items,
    StepBatches,
    StepRandom,
    dataset_for,
    loader,
    log,
    mix_seed,
    plan_settings,
)
from kinema.train.distributed import World
from kinema.train.ema import EMA
from kinema.train.observe import Meter, Observer, peak_memory_mb
from kinema.train.schedule import lr_at, set_lr
from kinema.train.stages import STAGES, Stage, vae_folder, write_pipeline
from kinema.train.store import micro_batches as store_batches
from kinema.train.store import open_store
from kinema.train.undo import RunFolder, undo_failed_run


class Result(NamedTuple):
    """How a run ended: the last completed step, the signal that stopped it (or None), the pipeline folder."""

    step: int
    stopped_by: int | None
    pipeline: Path | None


class NonFiniteError(KinemaError):
    """Too many consecutive steps had a non-finite loss or gradient."""


def train(
    config: TrainConfig,
    out_dir: str | os.PathLike,
    *,
    resume: bool = False,
    resume_from: int | None = None,
    allow_changes: Sequence[str] = (),
    dataset: Dataset | None = None,
) -> Result:
    """Train `config` into `out_dir`: config.json, checkpoints/, metrics.jsonl, loss.png, samples/, pipeline/.

    resume: continue from the newest complete checkpoint in out_dir/checkpoints.
    resume_from: continue from checkpoint step-N instead (implies resume), e.g. the last good one before the
      losses became non-finite; the newer checkpoints are removed when this run saves its first, and the
      metrics of the steps it goes back over are dropped.
    allow_changes: dotted config names (or groups, e.g. "diffusion.flow") that may differ from the checkpoint's
      config on resume, for a deliberate change of recipe mid-run; each change is appended to
      out_dir/config_changes.jsonl with the step it took effect.
    dataset: train on this dataset of {"video": (3, T, H, W) in [-1, 1], "caption": str} instead of
      `config.data.dataset` (it must give the same items on every rank).
    Under torchrun every rank calls this; only rank 0 writes files. A run that fails (or is interrupted)
    before it saves its first checkpoint removes what it wrote (`kinema.train.undo`). A full or read-only
    out_dir is a KinemaError that names it, found before any work when it can be.
    """
    world = distributed.init(config.device)
    deterministic = torch.are_deterministic_algorithms_enabled()
    out_dir = Path(out_dir)
    folder = lock = None
    try:
        if world.is_main:
            check_out_dir(out_dir)
            # noted before anything is written, so that a run that fails before its first checkpoint leaves no
            # half-run behind (config.json, samples/...), and nothing that was there before is touched
            folder = RunFolder(out_dir)
            try:
                lock = lock_run_folder(out_dir)
            except KinemaError:
                folder = None  # the folder is another run's, live: leave every file of it alone
                raise
        return _train(
            config,
            out_dir,
            world,
            resume=resume or resume_from is not None,
            resume_from=resume_from,
            allow_changes=allow_changes,
            dataset=dataset,
        )
    except BaseException as e:
        undo_failed_run(folder)
        problem = storage_problem(e, out_dir)
        if problem:
            raise KinemaError(problem) from e
        raise
    finally:
        if lock is not None:
            lock.close()  # releases the lock
        torch.use_deterministic_algorithms(deterministic)
        distributed.shutdown(world)


def _train(
    config: TrainConfig,
    out_dir: Path,
    world: World,
    *,
    resume: bool,
    resume_from: int | None,
    allow_changes: Sequence[str],
    dataset: Dataset | None,
) -> Result:
    start = starting_checkpoint(config, out_dir, resume=resume, resume_from=resume_from, allow_changes=allow_changes)
    micro_size = micro_batch_size(config, world)
    if world.is_main:
        (out_dir / "samples").mkdir(parents=True, exist_ok=True)
        write_json(out_dir / "config.json", cfg.to_dict(config))
        if resume_from is not None:
            _drop_metrics_after(out_dir, resume_from)
    run = build(config, out_dir, world, resuming=start is not None)
    run.resumed, run.discard_after = start is not None, resume_from
    if start is not None:
        restore(run, start, allow_changes)
    data = open_data(run, dataset)

    stop = StopSignals(verbose=world.is_main)
    stop.install()
    observer = None
    if world.is_main:
        log_config = config.log
        observer = Observer(out_dir, total_steps=config.steps, start_step=run.step, progress=log_config.progress,
                            tensorboard=log_config.tensorboard)  # fmt: skip
    meter = Meter()
    stopped_by = None
    try:
        while run.step < config.steps and stopped_by is None:
            epoch_end = min(config.steps, (run.step // data.steps_per_epoch + 1) * data.steps_per_epoch)
            batches = epoch_batches(run, data, epoch_end)
            while run.step < epoch_end and stopped_by is None:
                losses, samples, grad_norm, lr = train_step(run, batches, micro_size)
                meter.add(losses, run.last_bad, samples * world.size)
                observe(run, observer, meter, grad_norm, lr)
                if stop.caught or world.distributed:
                    stopped_by = signal_on_any_rank(world, stop.caught)
                if config.sample.every and run.step % config.sample.every == 0:
                    preview(run, data.dataset)
                if run.step % config.checkpoint.every == 0 or run.step == config.steps or stopped_by is not None:
                    checkpoint(run, stop, data.steps_per_epoch)
                    if stopped_by is None and (stop.caught or world.distributed):  # a signal while it was written
                        stopped_by = signal_on_any_rank(world, stop.caught)
            del batches
    finally:
        stop.restore()
        if data.cache is not None:
            data.cache.flush()
        if observer:
            observer.close()

    if stopped_by is not None:
        if world.is_main:
            name = signal.Signals(stopped_by).name
            print(f"stopped by {name} after step {run.step}; checkpoint saved, continue with --resume", flush=True)
        return Result(run.step, stopped_by, None)
    if config.sample.every and run.step % config.sample.every:
        preview(run, data.dataset)
    final = run.averaged()
    pipeline = write_pipeline(run.stage, final.eval(), run.frozen, config, out_dir) if final is not None else None
    distributed.barrier(world)
    return Result(run.step, None, pipeline)


# ---- the steps of a run, in the order `_train` takes them ---------------------------------------------------


def starting_checkpoint(
    config: TrainConfig, out_dir: Path, *, resume: bool, resume_from: int | None, allow_changes: Sequence[str]
) -> Path | None:
    """The checkpoint the run continues from (None: a new run), after checking that the request makes sense:
    a resume needs a checkpoint, a new run an empty folder, and a resumed config differs from the saved one
    only where allowed."""
    checkpoints = out_dir / "checkpoints"
    start = ckpt.latest_checkpoint(checkpoints)
    if resume_from is not None:
        start = ckpt.checkpoint_at(checkpoints, resume_from)
        if start is None:
            steps = ", ".join(str(s) for s, _ in ckpt.list_checkpoints(checkpoints)) or "none"
            raise KinemaError(
                f"--resume-from {resume_from}: {checkpoints} holds no complete checkpoint of step {resume_from} "
                f"(it holds steps: {steps}); choose one of those"
            )
    if resume and start is None:
        raise KinemaError(f"--resume: {checkpoints} holds no complete checkpoint; start the run without --resume")
    if allow_changes:
        if not resume:
            raise KinemaError("--allow-change only applies to --resume (a new run has nothing to change from)")
        try:
            check_field_names(allow_changes, config)
        except ValueError as e:
            raise KinemaError(f"--allow-change: {e}") from None
    if not resume and start is not None:
        raise KinemaError(
            f"{out_dir} already holds a run (up to {start.name}); add --resume to continue it, or choose another --out"
        )
    if start is not None:
        changed = resume_conflicts(ckpt.read_state(start)["config"], config, allow_changes)
        if changed:
            raise KinemaError(
                f"cannot resume from {start}: the config changed in {', '.join(changed)}. Only "
                f"{', '.join(SAFE_ON_RESUME)} may change on resume; restore the others, use a new --out, or change "
                "them on purpose with --allow-change NAME"
            )
    return start


def micro_batch_size(config: TrainConfig, world: World) -> int:
    """Samples a rank takes per micro-step: the global batch over ranks and accumulation steps."""
    d, o = config.data, config.optim
    micro_size, rest = divmod(d.batch_size, world.size * o.grad_accum)
    if rest or micro_size == 0:
        raise KinemaError(
            f"data.batch_size ({d.batch_size}) must be a multiple of ranks x optim.grad_accum "
            f"= {world.size} x {o.grad_accum}"
        )
    return micro_size


class Run:
    """What a run holds from step to step: the models and their optimiser, where it is, and its tallies."""

    def __init__(self, **parts: Any) -> None:
        self.config: TrainConfig = parts["config"]
        self.out_dir: Path = parts["out_dir"]
        self.world: World = parts["world"]
        self.stage: Stage = parts["stage"]
        self.precision: str = parts["precision"]
        self.model: nn.Module = parts["model"]
        """The model as built; `trained` is it wrapped for DDP or FSDP2 (or itself on one process)."""
        self.trained: nn.Module = parts["trained"]
        self.frozen: dict[str, nn.Module] = parts["frozen"]
        self.ema: EMA = parts["ema"]
        self.ema_plain: nn.Module | None = parts["ema_plain"]
        self.optimizer: torch.optim.AdamW = parts["optimizer"]
        self.sharded: bool = parts["sharded"]
        self.step = 0
        self.counters = {"skipped_samples": 0, "nonfinite_steps": 0, "nonfinite_run": 0}
        # The newest checkpoint whose weights then trained a step with a finite loss and gradient, the one to go
        # back to when the losses become non-finite; a checkpoint is `pending` until its first step shows it.
        self.health = Health(good=None, pending=None)
        self.resumed = False
        self.discard_after: int | None = None
        """Set by resume_from: the checkpoints newer than this step go when the run saves its first."""
        # Device-side tallies, read only every log interval (`settle`), so that a step never waits for the device.
        device = self.world.device
        self.nonfinite = torch.zeros((), dtype=torch.int64, device=device)
        self.nonfinite_run = torch.zeros((), dtype=torch.int64, device=device)
        self.last_bad = torch.zeros((), dtype=torch.bool, device=device)

    @property
    def checkpoints(self) -> Path:
        return self.out_dir / "checkpoints"

    def autocast(self) -> contextlib.AbstractContextManager:
        return precisions.autocast(self.precision, self.world.device)

    def averaged(self) -> nn.Module | None:
        """The EMA model on rank 0, whole (collective under FSDP2); None on the other ranks."""
        if not self.sharded:
            return self.ema.model if self.world.is_main else None
        weights = distributed.full_state_dict(self.ema.model)
        if self.ema_plain is not None:
            self.ema_plain.load_state_dict(weights)
        return self.ema_plain

    def settle(self) -> int:
        """Move the device tallies into `counters` (waits for the device); the steps skipped since last time."""
        skipped = int(self.nonfinite)
        self.nonfinite.zero_()
        self.counters["nonfinite_steps"] += skipped
        self.counters["nonfinite_run"] = int(self.nonfinite_run)
        self.health.settle()
        return skipped


def build(config: TrainConfig, out_dir: Path, world: World, *, resuming: bool) -> Run:
    """Determinism and precision, then the stage's models (initialised unless resuming), the EMA and AdamW,
    wrapped for DDP or FSDP2, compiled when asked."""
    device = world.device
    if config.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    precision = precisions.resolve(config.precision, device)
    if world.is_main and config.precision == "auto":
        print(f"precision auto: {precision} on {device.type} ({precisions.why(device)})", flush=True)

    stage = STAGES[config.stage]
    torch.manual_seed(config.seed)  # the same initial weights on every rank
    model, frozen = stage.build(config)
    if not resuming:
        stage.init(model, frozen, config)  # fine-tuning starts from saved weights; a resume has its own
    model.to(device)
    for module in frozen.values():
        module.to(device)
    ema = EMA(model, config.optim.ema_decay)
    sharded = world.distributed and config.parallel == "fsdp"
    # Under FSDP2 the average is sharded like the weights; rank 0 gathers it into a plain copy to sample and export.
    ema_plain = copy.deepcopy(ema.model) if sharded and world.is_main else None
    trained = distributed.wrap(model, world, parallel=config.parallel, bf16=precision == "bf16")
    if sharded:
        distributed.wrap(ema.model, world, parallel="fsdp", bf16=False)
    optimizer = make_optimizer(model, config, device)
    if config.compile:  # after the EMA's copy is made: previews sample eagerly
        stage.compile(model)
    seed_everything(config.seed + 1 + world.rank)  # dropout and anything else drawn from the global generators
    return Run(
        config=config, out_dir=out_dir, world=world, stage=stage, precision=precision, model=model, trained=trained,
        frozen=frozen, ema=ema, ema_plain=ema_plain, optimizer=optimizer, sharded=sharded,
    )  # fmt: skip


def restore(run: Run, start: Path, allow_changes: Sequence[str]) -> None:
    """Load checkpoint `start` into the run: weights, EMA, optimiser, this rank's random generators, the step and
    the tallies; a deliberate change of config is logged to config_changes.jsonl."""
    state = ckpt.read_state(start)
    try:
        distributed.load_full_state_dict(run.trained, ckpt.read_tensors(start, "model"))
    except RuntimeError as e:
        if not allow_changes:
            raise
        raise KinemaError(
            f"the weights in {start} do not fit the changed config ({', '.join(allow_changes)}); "
            "--allow-change cannot change the model's shapes, start a new run instead"
        ) from e
    distributed.load_full_state_dict(run.ema.model, ckpt.read_tensors(start, "ema"))
    run.ema.updates = state["ema_updates"]
    optimizer_state = ckpt.optimizer_state_dict(ckpt.read_tensors(start, "optimizer"), state["optimizer_groups"])
    distributed.load_full_optimizer_state(run.trained, run.optimizer, optimizer_state)
    rank = run.world.rank
    if (start / f"rng-rank{rank}.safetensors").is_file():  # absent when the rank count grew
        ckpt.set_rng_tensors(ckpt.read_tensors(start, f"rng-rank{rank}"))
    run.step = state["step"]
    run.counters = {k: state[k] for k in run.counters}
    run.nonfinite_run.fill_(run.counters["nonfinite_run"])
    run.health = Health(good=state.get("good_checkpoint"), pending=state["step"])
    deliberate = resume_conflicts(state["config"], run.config)
    if deliberate and run.world.is_main:
        _record_changes(run.out_dir, run.step, state["config"], run.config, deliberate)


class Data(NamedTuple):
    """Where a run's batches come from: the latent store on the device, or the dataset streamed (and cached)."""

    dataset: Dataset
    steps_per_epoch: int
    plan: dict[str, Any]
    """The sampling plan's settings (`plan_settings`): image ratio, mode and frame."""
    store: Any
    cache: LatentCache | None
    items: Items


def open_data(run: Run, dataset: Dataset | None) -> Data:
    """The config's dataset (or `dataset`), encoded once into the latent store when the diffusion stage can hold
    it, else streamed through DataLoaders with the disk cache when asked."""
    config, world, d = run.config, run.world, run.config.data
    given = dataset is not None
    if dataset is None:
        dataset = dataset_for(config)
    n = len(dataset)  # type: ignore[arg-type]
    if n < d.batch_size:
        raise KinemaError(
            f"the dataset has {n} samples, fewer than data.batch_size ({d.batch_size}); "
            "lower the batch size or add clips"
        )
    store = None
    if config.stage == "diffusion" and d.store != "stream":
        # the whole set encoded once into tensors on the device; None when it does not fit (and said so)
        store = open_store(
            config, dataset, run.frozen, run.model, run.stage.prepare, world.device, run.autocast,
            meta=None if given else cache_meta(config, run.precision), world=world,
        )  # fmt: skip
        if store is not None and not run.resumed:
            run.counters["skipped_samples"] = int((~store.valid).sum())
    cache = None
    if store is None and d.cache and config.stage == "diffusion":
        if world.is_main:
            LatentCache.prepare(run.out_dir / "cache", cache_meta(config, run.precision))
        distributed.barrier(world)
        cache = LatentCache(run.out_dir / "cache", rank=world.rank)
    return Data(dataset, n // d.batch_size, plan_settings(config, n), store, cache, Items(dataset, cache))


def epoch_batches(run: Run, data: Data, epoch_end: int) -> Any:
    """This rank's micro-batches from the run's step to `epoch_end`: gathered from the store, or loaded by one
    DataLoader for the epoch (the cache's index re-read first)."""
    config, world = run.config, run.world
    shard = dict(rank=world.rank, world=world.size, accum=config.optim.grad_accum, **data.plan)
    if data.store is not None:
        return store_batches(data.store, run.step, epoch_end, **shard)
    if data.cache is not None:
        data.cache.flush()
        distributed.barrier(world)
        data.cache.refresh()
    sampler = StepBatches(run.step, epoch_end, **shard)
    # its own generator: one drawn from the global one would shift the dropout masks after it
    seed = mix_seed(config.seed, run.step // data.steps_per_epoch, world.rank)
    loaded = loader(data.items, sampler, num_workers=config.data.num_workers, pin_memory=world.device.type == "cuda",
                    seed=seed)  # fmt: skip
    return streamed(loaded, run.stage, run.frozen, config, world.device, run.autocast, data.cache)


def train_step(run: Run, batches: Any, micro_size: int) -> tuple[dict[str, torch.Tensor], int, torch.Tensor, float]:
    """One optimiser step: set the learning rate, accumulate gradients over the micro-batches, clip, and update
    AdamW and the EMA unless the loss or the gradient is not finite (skipped on the device). Returns the losses
    (means over the batch, on the device), this rank's samples, the gradient norm and the learning rate."""
    config, world = run.config, run.world
    o = config.optim
    lr = lr_at(run.step, lr=o.lr, warmup_steps=o.warmup_steps, total_steps=config.steps, schedule=o.schedule,
               min_lr_ratio=o.min_lr_ratio)  # fmt: skip
    set_lr(run.optimizer, lr)
    draws = StepRandom(config.seed, run.step, config.data.batch_size, world.device)
    losses: dict[str, torch.Tensor] = {}
    samples = 0
    for micro in range(o.grad_accum):
        batch = next(batches)
        for error in batch["errors"]:
            log.warning("step %d, rank %d: skipped an unreadable sample (%s)", run.step, world.rank, error)
        groups = batch["groups"]
        if not groups:
            raise KinemaError(
                f"step {run.step}: every sample of rank {world.rank}'s micro-batch was unreadable; check the dataset"
            )
        # Every rank runs as many passes as the busiest one (the extra ones weigh 0), so that DDP's and FSDP's
        # collectives pair up across ranks.
        passes, errors = counts_over_ranks(world, len(groups), len(batch["errors"]))
        run.counters["skipped_samples"] += errors
        for k in range(passes):
            group = groups[min(k, len(groups) - 1)]
            weight = group["count"] / (micro_size * o.grad_accum) if k < len(groups) else 0.0
            last = micro == o.grad_accum - 1 and k == passes - 1
            with contextlib.nullcontext() if last else no_sync(run.trained):
                with run.autocast():
                    out = run.stage.step(run.trained, run.frozen, group, draws.rows(group["slots"]), config)
                (out["loss"] * weight).backward()
            for key, value in out.items():
                losses[key] = losses.get(key, 0.0) + value.detach().float() * weight
            samples += group["count"] if k < len(groups) else 0

    # A non-finite loss or gradient skips the update (on the device: a fused AdamW reads `found_inf` as under a
    # GradScaler); max_nonfinite of them in a row stop the run, checked at log intervals (`observe`).
    grad_norm = clip_grad_norm(run.trained, o.grad_clip)
    bad = ~(torch.isfinite(losses["loss"]) & torch.isfinite(grad_norm))
    if world.distributed:
        bad = distributed.any_true_tensor(world, bad)
    optimizer_step(run.optimizer, bad, sharded=run.sharded)
    run.ema.update(distributed.unwrap(run.trained), skip=bad)
    run.nonfinite += bad
    run.nonfinite_run = (run.nonfinite_run + 1) * bad
    run.health.step(run.step, bad)
    run.last_bad = bad
    run.optimizer.zero_grad(set_to_none=True)
    run.step += 1
    return losses, samples, grad_norm, lr


def observe(run: Run, observer: Observer | None, meter: Meter, grad_norm: torch.Tensor, lr: float) -> None:
    """The progress bar every step; at log intervals the metrics row (means over ranks), the loss plot, and the
    stop when too many steps in a row were not finite (the only times a step waits for the device)."""
    config, step = run.config, run.step
    logging_now = step % config.log.every == 0 or step == config.steps
    if observer:
        observer.progress(meter.last_loss() if logging_now else None, meter.samples_per_s())
    if not logging_now:
        return
    skipped = run.settle()
    if skipped and observer:
        observer.message(
            f"step {step - 1}: {skipped} of the last {config.log.every} steps had a non-finite loss or gradient and "
            "were skipped"
        )
    if run.counters["nonfinite_run"] >= config.optim.max_nonfinite:
        raise NonFiniteError(
            f"step {step - 1}: {run.counters['nonfinite_run']} steps in a row had a non-finite loss or gradient, "
            "so the run stops. " + nonfinite_advice(config, run.precision, run.health.good, run.checkpoints)
        )
    row = {"step": step, **mean_over_ranks(run.world, meter.read())}
    row.update(lr=lr, grad_norm=float(grad_norm), peak_memory_mb=peak_memory_mb(run.world.device), **run.counters)
    if observer:
        observer.write(row)
        if step % config.log.plot_every == 0 or step == config.steps:
            observer.plot()


def preview(run: Run, dataset: Dataset) -> None:
    """Samples from the EMA model into DIR/samples/step-N (in sample.precision: the stage sets its own autocast)."""
    model = run.averaged()
    if model is not None:
        run.stage.preview(model, run.frozen, run.config, dataset, run.out_dir / "samples" / f"step-{run.step:06d}")


def checkpoint(run: Run, stop: StopSignals, steps_per_epoch: int) -> None:
    """Save step-N, unless the weights are no longer finite (then the run stops, naming the checkpoint to go back
    to); a signal meanwhile waits for the write. The first save after resume_from removes the newer ones."""
    run.settle()
    at, world = run.step, run.world
    if not weights_finite(world, run.trained, run.ema.model):  # never a checkpoint that nothing can continue from
        raise NonFiniteError(
            f"step {at - 1}: the weights are no longer finite, so no checkpoint of step {at} is saved. "
            + nonfinite_advice(run.config, run.precision, run.health.good, run.checkpoints)
        )
    if run.discard_after is not None and world.is_main:  # the steps this run went back over: their checkpoints
        # go, or they would count as the newest ones to prune by and to resume from
        newer = [path for s, path in ckpt.list_checkpoints(run.checkpoints) if s > run.discard_after]
        for path in newer:
            shutil.rmtree(path)
        if newer:
            print(f"resume: removed {', '.join(p.name for p in newer)}, newer than step {run.discard_after}", flush=True)
    run.discard_after = None
    with stop.writing():  # a signal now waits for the checkpoint: cut short, it would leave nothing
        save_checkpoint(
            run.checkpoints, at, config=run.config, world=world, model=run.trained, ema=run.ema,
            optimizer=run.optimizer, counters=run.counters, steps_per_epoch=steps_per_epoch, good=run.health.good,
        )  # fmt: skip
    run.health.saved(at)


# ---- helpers ------------------------------------------------------------------------------------------------


def check_out_dir(out_dir: Path) -> None:
    """Raise a KinemaError unless `out_dir` is a folder this process can write into, or can create, and so is its
    checkpoints/ folder when it has one."""
    check_writable(out_dir, "--out", folder=True)
    if (out_dir / "checkpoints").is_dir():
        check_writable(out_dir / "checkpoints", "--out", folder=True)


LOCK_FILE = ".kinema-train.lock"


def lock_run_folder(out_dir: Path) -> IO[str] | None:
    """Hold an exclusive lock on out_dir/LOCK_FILE for the run (closing the file releases it, as does the
    process's death, kill -9 included): two runs writing into one folder would interleave their checkpoints.
    None where the platform has no flock."""
    try:
        import fcntl
    except ImportError:  # Windows
        return None
    out_dir.mkdir(parents=True, exist_ok=True)
    f = open(out_dir / LOCK_FILE, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        pid = f.read().strip() or "unknown"
        f.close()
        raise KinemaError(
            f"--out {out_dir}: another kinema train (pid {pid}) is writing into this folder; wait for it to end "
            "or choose another --out"
        ) from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


def storage_problem(e: BaseException, out_dir: Path) -> str | None:
    """A one-line message for a write into `out_dir` that its storage refused (full, read-only, ...), else None.
    A write that fails when a file is flushed names no file: a full disk then is taken to be out_dir's."""
    if isinstance(e, KinemaError):
        return None
    code = ckpt.storage_errno(e)
    if code is None:
        return None
    filename = getattr(e, "filename", None)
    if filename is not None:
        path = Path(os.fsdecode(filename)).absolute()
        if out_dir.absolute() not in (path, *path.parents):
            return None
        where = str(path)
    elif code in ckpt.FULL:
        where = f"into {out_dir}"
    else:
        return None
    newest = ckpt.latest_checkpoint(out_dir / "checkpoints")
    again = f"continue from {newest.name} with --resume" if newest else "start the run again"
    return f"cannot write {where}: {os.strerror(code)}. {ckpt.storage_fix(code).capitalize()}, then {again}"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_optimizer(model: nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices and kernels only: norms, biases and other 1-D parameters get none."""
    o = config.optim
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": o.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    kind = o.implementation
    if kind == "auto":
        kind = "fused" if device.type in ("cpu", "cuda") else "foreach"
    kernel = {"fused": {"fused": True}, "foreach": {"foreach": True}, "for-loop": {"foreach": False}}[kind]
    return torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps, **kernel)


def to_device(group: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in group.items()}


@contextlib.contextmanager
def no_sync(model: nn.Module):
    """Accumulate gradients locally: DDP skips its all-reduce, FSDP2 defers its reduce-scatter."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        with model.no_sync():
            yield
    elif hasattr(model, "set_requires_gradient_sync"):
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        yield


def counts_over_ranks(world: World, groups: int, errors: int) -> tuple[int, int]:
    """(the most groups any rank has, the unreadable samples of all ranks) for one micro-step."""
    if not world.distributed:
        return groups, errors
    t = torch.tensor([groups, -errors], device=world.device)
    every = [torch.empty_like(t) for _ in range(world.size)]
    dist.all_gather(every, t)
    every = torch.stack(every)
    return int(every[:, 0].max()), int(-every[:, 1].sum())


class StopSignals:
    """SIGINT / SIGTERM during the loop. The first asks it to stop at the next step boundary with a checkpoint
    (`caught`); a second says it is still finishing that step; a third stops at once, without a checkpoint of it.
    While a checkpoint is being written (`writing`) none cuts it short: the run stops once it is written.

    `install` does nothing off the main thread, where Python cannot set handlers."""

    def __init__(self, *, verbose: bool = True) -> None:
        self.caught: list[int] = []
        self.verbose = verbose
        self._writing = False
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}

    def restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    @contextlib.contextmanager
    def writing(self):
        self._writing = True
        try:
            yield
        finally:
            self._writing = False

    def _say(self, message: str) -> None:
        if self.verbose:  # os.write: a print here could re-enter a print the signal interrupted
            os.write(2, f"{message}\n".encode())

    def _handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        self.caught.append(signum)
        if self._writing:
            self._say(f"{name}: still writing a checkpoint; the run stops once it is written")
        elif len(self.caught) == 1:
            self._say(f"{name}: the run stops after this step and saves a checkpoint (twice more: at once, without)")
        elif len(self.caught) == 2:
            self._say(f"{name} again: still finishing the step, then the checkpoint (once more: stop at once, without)")
        else:
            self._say(f"{name} a third time: stopping at once, without a checkpoint of this step")
            raise KeyboardInterrupt


class Health:
    """Which checkpoint to go back to when the losses become non-finite: `good`, the step of the newest one whose
    weights then trained a step with a finite loss and gradient (None: none yet). The newest checkpoint is
    `pending` until its first step ran; whether that step was finite is read on the device only when the loop
    settles its tallies (`settle`), so that no step waits for the device."""

    def __init__(self, *, good: int | None, pending: int | None) -> None:
        self.good, self.pending = good, pending
        self._first_bad: torch.Tensor | None = None

    def step(self, step: int, bad: torch.Tensor) -> None:
        """Step `step` ran; `bad` (0-dim bool, on the device) says it was skipped as non-finite."""
        if step == self.pending:
            self._first_bad = bad

    def settle(self) -> None:
        if self._first_bad is not None:
            if not bool(self._first_bad):
                self.good = self.pending
            self.pending, self._first_bad = None, None

    def saved(self, step: int) -> None:
        self.pending, self._first_bad = step, None


def weights_finite(world: World, *modules: nn.Module) -> bool:
    """Whether every floating-point parameter of `modules` is finite, on every rank (one wait for the device;
    collective). Under FSDP2 each rank looks at its own shards."""
    flags = []
    for module in modules:
        for p in module.parameters():
            local = p.to_local() if hasattr(p, "to_local") else p
            if local.is_floating_point() and local.numel():
                flags.append(torch.isfinite(local.detach()).all())
    device = world.device
    bad = ~torch.stack(flags).all() if flags else torch.zeros((), dtype=torch.bool, device=device)
    return not bool(distributed.any_true_tensor(world, bad.to(device)))


def nonfinite_advice(config: TrainConfig, precision: str, good: int | None, checkpoints: Path) -> str:
    """What to do when the losses (or weights) became non-finite: the checkpoint to go back to and how, and only
    the changes not already in force (a lower optim.lr always; gradient clipping when off; fp32 when not in it)."""
    o = config.optim
    changes = {"optim.lr": f"{o.lr / 10:g}"}
    what = f"a lower optim.lr (now {o.lr:g})"
    if o.grad_clip <= 0:
        changes["optim.grad_clip"] = "1"
        what += ", gradient clipping"
    if precision != "fp32":
        changes["precision"] = "fp32"
        what += ", fp32"
    sets = " ".join(f"--set {name}={value}" for name, value in changes.items())
    path = ckpt.checkpoint_at(checkpoints, good) if good is not None else None
    if path is None:
        return (
            f"No checkpoint was saved while the losses were finite: start the run again (a new --out, or remove "
            f"{checkpoints}) with {what}, e.g. {sets}"
        )
    allow = " ".join(f"--allow-change {name}" for name in changes)
    return (
        f"{path} is the newest checkpoint whose weights still trained a finite step: go back to it with {what}, "
        f"e.g. --resume-from {good} {sets} {allow}"
    )


def mean_over_ranks(world: World, row: dict[str, float]) -> dict[str, float]:
    """The means of a metrics row's values over ranks (throughputs are summed)."""
    if not world.distributed:
        return row
    keys = sorted(row)
    t = torch.tensor([row[k] for k in keys], dtype=torch.float64, device=world.device)
    dist.all_reduce(t)
    summed = ("samples_per_s",)
    return {k: v if k in summed else v / world.size for k, v in zip(keys, t.tolist())}


def signal_on_any_rank(world: World, caught: list[int]) -> int | None:
    """The signal that stops the run, if any rank caught one (SIGTERM when another rank did)."""
    here = caught[0] if caught else None
    if not world.distributed:
        return here
    if distributed.any_true(world, here is not None):
        return here or signal.SIGTERM
    return None


def clip_grad_norm(model: nn.Module, max_norm: float) -> torch.Tensor:
    """The global gradient norm (clipping to max_norm when > 0), a 0-dim fp32 tensor on the model's device;
    inf or nan when a gradient is not finite."""
    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return torch.zeros(())
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"), foreach=True)
    if hasattr(norm, "full_tensor"):  # a DTensor under FSDP2
        norm = norm.full_tensor()
    return norm.detach().float()


def optimizer_step(optimizer: torch.optim.Optimizer, bad: torch.Tensor, *, sharded: bool) -> None:
    """Update the weights unless `bad` (0-dim bool). A fused AdamW skips on the device, reading `found_inf`
    as it does under a GradScaler, so the step never waits for the device; the others ask it (as does one
    over FSDP2's sharded DTensor parameters)."""
    if optimizer.defaults.get("fused") and not sharded:
        optimizer.found_inf = bad.float()
        optimizer.step()
    elif not bool(bad):
        optimizer.step()


def streamed(
    batches: Any,
    stage: Stage,
    frozen: dict[str, nn.Module],
    config: TrainConfig,
    device: torch.device,
    autocast: Any,
    cache: LatentCache | None,
) -> Any:
    """The DataLoader's micro-batches made ready for a step: on the device, encoded by the stage's `prepare`
    (newly encoded latents queued in the disk cache), each group with its "slots" in the batch and its "count"."""
    for batch in batches:
        groups = []
        for group in batch["groups"]:
            group = to_device(group, device)
            encoded = "video" in group
            with autocast():
                group = stage.prepare(frozen, group, config)
            if cache is not None and encoded:
                cache.add(group["key"], group["caption"], group["latents"], group.get("text"), group.get("text_mask"))
            group.update(slots=group["position"] % config.data.batch_size, count=len(group["key"]))
            groups.append(group)
        yield {"groups": groups, "errors": batch["errors"]}


DRAWING_ONLY = ("batch_size", "num_workers", "cache", "store", "store_dir", "image_ratio", "image_mode", "image_frame")
"""Data fields that change which samples are drawn, not their latents: a cache outlives changes to them."""


def cache_meta(config: TrainConfig, precision: str) -> dict[str, Any]:
    """What cached latents and embeddings depend on (precision: the run's, resolved); a cache made under
    anything else is cleared."""
    from kinema.models.checkpoint import weights_hash

    d = config.diffusion
    return {
        "vae": weights_hash(vae_folder(d.vae_path) / "vae.safetensors"),
        # what a sample's latents are, not which samples a step draws (an image is keyed by its frame)
        "data": {k: v for k, v in cfg.to_dict(config.data).items() if k not in DRAWING_ONLY},
        "text": None if d.train_text_encoder else [d.text_encoder, cfg.to_dict(d.text) if d.text else None],
        "precision": precision,
    }


def _drop_metrics_after(out_dir: Path, step: int) -> None:
    """Drop the metrics rows of the steps after `step` (a run going back to an older checkpoint)."""
    path = out_dir / "metrics.jsonl"
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines(keepends=True):
        try:
            if int(json.loads(line)["step"]) > step:
                continue
        except (ValueError, KeyError, TypeError):
            pass  # a line cut short by a kill: left for read_metrics to skip
        kept.append(line)
    atomic_write(path, lambda tmp: Path(tmp).write_text("".join(kept)))


def _record_changes(out_dir: Path, step: int, saved: dict[str, Any], config: TrainConfig, names: list[str]) -> None:
    """Say, and append to out_dir/config_changes.jsonl, which fields a resume changed on purpose and from when."""
    changes = config_changes(saved, config)
    with open(out_dir / "config_changes.jsonl", "a") as f:
        for name in names:
            before, after = changes[name]
            print(f"resume: {name} changes from {before!r} to {after!r} at step {step}", flush=True)
            f.write(json.dumps({"step": step, "field": name, "from": before, "to": after}) + "\n")


def save_checkpoint(
    checkpoints: Path,
    step: int,
    *,
    config: TrainConfig,
    world: World,
    model: nn.Module,
    ema: EMA,
    optimizer: torch.optim.Optimizer,
    counters: dict[str, int],
    steps_per_epoch: int,
    good: int | None = None,
) -> None:
    """Gather what continuing bit for bit needs and let rank 0 write it (collective: every rank calls).

    good: the newest checkpoint known to be good (`Health`), recorded, and kept however old."""
    weights = distributed.full_state_dict(model)
    ema_weights = distributed.full_state_dict(ema.model)
    optimizer_state = distributed.full_optimizer_state(model, optimizer)  # whole on rank 0 only under FSDP2
    rngs = distributed.all_gather_object(world, ckpt.rng_tensors())
    if world.is_main:
        optimizer_tensors, optimizer_groups = ckpt.optimizer_tensors(optimizer_state)
        tensors = {"model": weights, "ema": ema_weights, "optimizer": optimizer_tensors}
        tensors.update({f"rng-rank{rank}": rng for rank, rng in enumerate(rngs)})
        epoch, batch = divmod(step, steps_per_epoch)
        state = {
            "config": cfg.to_dict(config),
            "config_hash": learned_hash(config),
            "ema_updates": ema.updates,
            "optimizer_groups": optimizer_groups,
            "lr_schedule": {"schedule": config.optim.schedule, "next_step": step, "total_steps": config.steps},
            "data_position": {"epoch": epoch, "batch": batch, "steps_per_epoch": steps_per_epoch},
            "world_size": world.size,
            "good_checkpoint": good,
            **counters,
        }
        ckpt.save_checkpoint(checkpoints, step, tensors, state, keep=config.checkpoint.keep, also_keep=good)
    distributed.barrier(world)
