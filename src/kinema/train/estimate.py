"""`kinema train --dry-run`: parameter counts, FLOPs per step and a measured time per step, without training.

FLOPs are counted by torch's FlopCounterMode over one real sample's forward and
backward (matmuls, convolutions, attention), so every model is counted the same
way. The time is measured: two training passes of a `probe`-sample micro-batch
on this machine (the first warms up), scaled to the per-rank samples of a step; with
the latent store (`data.store` not "stream"), without the encoding, done once before step 1.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from kinema import precision as precisions
from kinema.errors import KinemaError
from kinema.train.config import TrainConfig
from kinema.train.data import Items, Pick, StepRandom, collate, dataset_for
from kinema.train.stages import STAGES


STAND_IN_VAE = "shapes"
"""The shipped pipeline whose VAE a dry run measures with when diffusion.vae_path is not trained yet."""


def _mkldnn_conv_flop(x_shape, w_shape, bias, padding, stride, dilation, groups, *, out_shape=None, **kwargs) -> int:
    return conv_flop_count(x_shape, w_shape, out_shape, transposed=False)


# Ops torch's counter has no formula for: the VAE calls oneDNN's convolution directly for fp32 on CPU.
EXTRA_FLOP_FORMULAS = {torch.ops.aten.mkldnn_convolution: _mkldnn_conv_flop}


def count_flops() -> FlopCounterMode:
    """A FlopCounterMode that also counts the ops in EXTRA_FLOP_FORMULAS."""
    return FlopCounterMode(display=False, custom_mapping=EXTRA_FLOP_FORMULAS)


def estimate(config: TrainConfig, *, world_size: int = 1, probe: int = 1, dataset: Any = None) -> dict[str, Any]:
    """Sizes and costs of a training step of `config` on this machine's CPU or first GPU."""
    stage = STAGES[config.stage]
    device = torch.device("cuda" if config.device != "cpu" and torch.cuda.is_available() else "cpu")
    torch.manual_seed(config.seed)
    config, note = _stand_in_vae(config)
    try:
        model, frozen = stage.build(config)
    except KinemaError as e:
        if note is None:
            raise
        raise KinemaError(f"{note}, but this config does not fit it ({e}); train the VAE first") from None
    model.to(device)
    for module in frozen.values():
        module.to(device)
    if dataset is None:
        dataset = dataset_for(config)
    batch = collate([Items(dataset)[Pick(i % len(dataset), -1, i)] for i in range(probe)])
    group = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch["groups"][0].items()}
    precision = precisions.resolve(config.precision, device)
    autocast = precisions.autocast(precision, device)

    stored = config.stage == "diffusion" and config.data.store != "stream"

    def one_pass(count: bool) -> tuple[int, int, float]:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with count_flops() if count else contextlib.nullcontext() as counter, autocast:
            prepared = stage.prepare(frozen, group, config)
        prepare_flops = counter.get_total_flops() if count else 0
        if stored:  # the latent store encodes the data once, before step 1: a step does not
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        with count_flops() if count else contextlib.nullcontext() as counter:
            with autocast:
                draws = StepRandom(config.seed, 0, probe, device).rows(group["position"])
                loss = stage.step(model, frozen, prepared, draws, config)["loss"]
            loss.backward()
        train_flops = counter.get_total_flops() if count else 0
        if device.type == "cuda":
            torch.cuda.synchronize()
        model.zero_grad(set_to_none=True)
        return prepare_flops, train_flops, time.perf_counter() - t0

    prepare_flops, train_flops, _ = one_pass(count=True)  # also warms up
    _, _, seconds = one_pass(count=False)
    per_rank = config.data.batch_size // world_size
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen_params = sum(p.numel() for m in frozen.values() for p in m.parameters())
    return {
        "stage": config.stage,
        "device": str(device),
        "precision": precision if config.precision != "auto" else f"auto: {precision}",
        "trained_params": trained,
        "frozen_params": frozen_params,
        "params_by_module": {name: sum(p.numel() for p in child.parameters()) for name, child in model.named_children()}
        or {config.stage: trained},
        "batch_size": config.data.batch_size,
        "flops_per_step": (prepare_flops + train_flops) * config.data.batch_size // probe,
        "train_flops_per_step": train_flops * config.data.batch_size // probe,
        "seconds_per_step": seconds * per_rank / probe,
        "samples_per_s": probe / seconds,
        "note": note,
    }


def _stand_in_vae(config: TrainConfig) -> tuple[TrainConfig, str | None]:
    """A diffusion config whose VAE is not trained yet, measured with the shipped one: a step's cost depends on
    the VAE's shape only, and the shipped VAE has the shape `kinema train shapes-vae` makes. Else unchanged."""
    from kinema.pipelines.storage import shipped_pipelines

    if config.stage != "diffusion":
        return config, None
    path = config.diffusion.vae_path
    if Path(path).exists() or path in shipped_pipelines() or STAND_IN_VAE not in shipped_pipelines():
        return config, None
    note = (
        f"diffusion.vae_path {path} does not exist yet: measured with the shipped {STAND_IN_VAE!r} VAE "
        "(the shape `kinema train shapes-vae` makes)"
    )
    return dataclasses.replace(config, diffusion=dataclasses.replace(config.diffusion, vae_path=STAND_IN_VAE)), note


def format_estimate(e: dict[str, Any], steps: int) -> str:
    """The dry-run report, a few aligned lines."""
    lines = [f"stage            {e['stage']} on {e['device']} ({e['precision']})"]
    if e.get("note"):
        lines.append(f"note             {e['note']}")
    lines.append(
        f"trained params   {e['trained_params']:,}  ("
        + ", ".join(f"{k} {v:,}" for k, v in e["params_by_module"].items())
        + ")"
    )
    if e["frozen_params"]:
        lines.append(f"frozen params    {e['frozen_params']:,}")
    lines.append(
        f"FLOPs per step   {e['flops_per_step'] / 1e9:,.2f} GFLOP  "
        f"(batch {e['batch_size']}; training passes {e['train_flops_per_step'] / 1e9:,.2f})"
    )
    lines.append(f"time per step    {e['seconds_per_step']:.3f} s measured here ({e['samples_per_s']:.2f} samples/s)")
    seconds = e["seconds_per_step"] * steps
    took = f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"
    lines.append(f"whole run        {steps:,} steps ~ {took} on this machine (one process)")
    return "\n".join(lines)
