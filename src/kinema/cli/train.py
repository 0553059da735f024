"""`kinema train PRESET_OR_CONFIG --out DIR`: train the VAE or a denoiser; under torchrun, on many processes.

kinema train shapes-vae --out runs/shapes-vae
kinema train shapes-dit --out runs/shapes-dit --set optim.lr=1e-4 --set data.batch_size=32
kinema train shapes-dit --out runs/shapes-dit --resume
kinema train shapes-dit --out runs/shapes-dit --resume --set diffusion.flow.logit_mean=1 --allow-change diffusion.flow
kinema train shapes-dit --out runs/shapes-dit --resume-from 1000 --set optim.lr=1e-4 --allow-change optim.lr
torchrun --nproc-per-node 4 -m kinema train shapes-dit --out runs/shapes-dit
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer

from kinema.cli import app

PRESET_HELP = (
    "A preset (shapes-vae, shapes-dit, shapes-unet3d, or their -debug versions) or a .toml/.json config file "
    '(a whole config, or `preset = "NAME"` plus the fields that differ).'
)


@app.command()
def train(
    preset_or_config: str = typer.Argument(..., metavar="PRESET_OR_CONFIG", help=PRESET_HELP),
    out: Path = typer.Option(
        ..., "--out", help="Run folder: config.json, checkpoints/, metrics.jsonl, loss.png, samples/, pipeline/."
    ),
    steps: int = typer.Option(None, "--steps", min=1, help="Optimiser steps (overrides the config's `steps`)."),
    set_: list[str] = typer.Option(
        [], "--set", help="Override a field by dotted name, e.g. --set optim.lr=1e-4 (repeatable)."
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue from the newest complete checkpoint in DIR/checkpoints."
    ),
    resume_from: int = typer.Option(
        None,
        "--resume-from",
        metavar="STEP",
        min=0,
        help="Continue from DIR/checkpoints/step-STEP instead of the newest (e.g. the last good one before the "
        "losses became non-finite); the newer checkpoints are removed when the run saves its first.",
    ),
    allow_change: list[str] = typer.Option(
        [],
        "--allow-change",
        metavar="NAME",
        help="With --resume or --resume-from: let this config field or group (e.g. diffusion.flow) differ from the "
        "checkpoint's, to change the recipe mid-run on purpose; the change is logged to DIR/config_changes.jsonl (repeatable). "
        "Fields the weights' shapes depend on cannot change.",
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Print parameter counts, FLOPs per step and the time per step here, then exit."
    ),
) -> None:
    """Train a model from a preset or a config file; the resolved config is written to DIR/config.json."""
    from kinema.errors import KinemaError
    from kinema.train.config import parse_value
    from kinema.train.presets import load_config

    overrides: dict[str, object] = {}
    for item in set_:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise KinemaError(f"--set {item!r}: expected key=value, e.g. --set optim.lr=1e-4")
        overrides[key.strip()] = parse_value(value.strip())
    if steps is not None:
        overrides["steps"] = steps
    config = load_config(preset_or_config, overrides)

    if dry_run:
        from kinema.train.estimate import estimate, format_estimate

        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        typer.echo(format_estimate(estimate(config, world_size=world_size), config.steps))
        return

    from kinema.train.loop import train as run

    result = run(config, out, resume=resume, resume_from=resume_from, allow_changes=allow_change)
    if int(os.environ.get("RANK", "0")) == 0 and result.pipeline is not None:
        typer.echo(json.dumps({"step": result.step, "pipeline": str(result.pipeline)}))
    if result.stopped_by is not None:
        raise SystemExit(128 + int(result.stopped_by))  # 130 for SIGINT, 143 for SIGTERM, like a shell
