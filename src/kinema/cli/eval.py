"""`kinema eval ...`: measure a model (shapes, digits, VAE reconstructions) and train the small eval networks.

    kinema eval shapes --model PIPELINE [--n 64 | --per-combination 4] [--split heldout] [--task t2v|i2v|extend [--frames 65|129]] [--objects 1|2] [--out report.json]
    kinema eval digits --model PIPELINE [--n 32] [--out digits.json]
    kinema eval vae --model VAE_OR_PIPELINE_OR_NAME --data shapes [--n 32] [--out vae.json]
    kinema eval train-digit-classifier --out DIR
    kinema eval train-video-features --out DIR
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from kinema.atomic import check_writable
from kinema.cli import app

eval_app = typer.Typer(
    help="Evaluate models (probes, PSNR/SSIM, flicker, FVD) and train the small networks the probes use.",
    no_args_is_help=True,
)
app.add_typer(eval_app, name="eval")


PRECISION_HELP = "auto, fp32 or bf16 (autocast); default: the model's (auto: bf16 where this device computes it natively)."
MODEL_HELP = "A pipeline directory (e.g. RUN/pipeline from `kinema train`) or the name of a shipped pipeline."
I3D_HELP = (
    "A local TorchScript I3D (StyleGAN-V's i3d_torchscript.pt) for the standard FVD; "
    "without it FVD uses kinema's small shapes network and is labelled non-standard."
)


def _load_pipeline(model: str, device: str, precision: str | None):
    from kinema.pipelines import Pipeline
    from kinema.precision import check_precision

    if precision is not None:
        check_precision(precision, "--precision")
    return Pipeline.load(model, device=device, precision=precision)


def _settings(
    steps: int | None, sampler: str | None, guidance: float | None, interval: str | None, seed: int,
    image_first: bool | None = None, shift: float | None = None,
):
    from kinema.errors import KinemaError
    from kinema.eval.shapes_eval import GenerationSettings
    from kinema.pipelines.common import check_guidance, check_sampler, check_shift_value, parse_guidance_interval

    if sampler is not None:
        check_sampler(sampler)
    if guidance is not None:
        check_guidance(guidance)
    if seed < 0:
        raise KinemaError(f"--seed must be >= 0, got {seed}")
    if shift is not None:
        check_shift_value(shift, "--shift")
    guidance_interval = None if interval is None else parse_guidance_interval(interval)
    return GenerationSettings(
        steps=steps, sampler=sampler, guidance=guidance, guidance_interval=guidance_interval, shift=shift,
        image_first=image_first, seed=seed,
    )


def _check_outputs(out: Path, save_videos: Path | None = None) -> None:
    """Where the report (and the clips) go can be written: found before the evaluation, not after it."""
    check_writable(out, "--out")
    if save_videos is not None:
        check_writable(save_videos, "--save-videos", folder=True)


def _progress(message: str) -> None:
    typer.echo(message, err=True)


@eval_app.command()
def shapes(
    model: str = typer.Option(..., "--model", help=MODEL_HELP),
    n: int = typer.Option(64, "--n", min=2, help="Prompts (clips per row), drawn at random from the split."),
    split: str = typer.Option("all", "--split", help="Prompts from: train, heldout (combinations never trained on) or all."),
    per_combination: int = typer.Option(None, "--per-combination", min=1, help="Instead of --n random prompts: every combination of the split at both sizes, this many clips each."),
    task: str = typer.Option("t2v", "--task", help="t2v (text), i2v (text + the real first frame), extend (the real clip of a lasting motion, bouncing or still, continued to --frames, every 17-frame window probed)."),
    frames: int = typer.Option(None, "--frames", min=2, help="extend: frames to continue the real clip to, e.g. 65 or 129 (default 4x its length: 65 for 17)."),
    objects: int = typer.Option(1, "--objects", min=1, max=2, help="Objects per prompt: 1, or 2 (the split's two-object prompts, scored by the two-object probe; not with --per-combination)."),
    steps: int = typer.Option(None, "--steps", min=1, help="Denoising steps (default: the pipeline's)."),
    sampler: str = typer.Option(None, "--sampler", help="Sampler (default: the pipeline's): euler, heun, dpmpp_2m, ddim, ddpm, ..."),
    guidance: float = typer.Option(None, "--guidance", help="Classifier-free guidance scale (default: the pipeline's)."),
    guidance_interval: str = typer.Option(None, "--guidance-interval", metavar="LO,HI", help="Guide only at noise levels sigma in [LO, HI]; 0,inf: every step (default: the pipeline's)."),
    shift: float = typer.Option(None, "--shift", help="Noise-level shift of the sampling schedule, > 0 (default: the pipeline's)."),
    image_first: bool = typer.Option(None, "--image-first/--no-image-first", help="t2v: make frame 0 first, then the clip from it (default: the pipeline's)."),
    seed: int = typer.Option(0, "--seed", help="Clip i is sampled with seed + i, in every row."),
    out: Path = typer.Option(Path("report.json"), "--out", help="The JSON report; the .md summary and .png contact sheet go beside it."),
    save_videos: Path = typer.Option(None, "--save-videos", help="Keep every clip here (DIR/model/0000.mp4, DIR/within_frame/...), prompt in its metadata."),
    i3d: Path = typer.Option(None, "--i3d", help=I3D_HELP),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    precision: Optional[str] = typer.Option(None, "--precision", help=PRECISION_HELP),
) -> None:
    """Generate clips from the prompts of a shapes split, probe them, and report accuracy beside reference rows."""
    from kinema.eval.report import write_report
    from kinema.eval.shapes_eval import check_objects, draw_windows, evaluate_shapes, get_task, shapes_markdown

    _check_outputs(out, save_videos)
    eval_task = get_task(task)  # a bad name or combination fails before the model loads
    check_objects(objects, per_combination, task)
    settings = _settings(steps, sampler, guidance, guidance_interval, seed, image_first, shift)
    pipe = _load_pipeline(model, device, precision)
    report, sheet = evaluate_shapes(
        pipe, model=model, n=n, split=split, task=task, settings=settings, i3d=i3d, save_videos=save_videos,
        progress=_progress, per_combination=per_combination, objects=objects, frames=frames,
    )
    paths = write_report(report, sheet, out, shapes_markdown, {"windows": draw_windows} if eval_task.continues else None)
    typer.echo(shapes_markdown(report))
    typer.echo(f"wrote {', '.join(paths.values())}")


@eval_app.command()
def digits(
    model: str = typer.Option(..., "--model", help=MODEL_HELP + " It must have been trained on moving digits."),
    n: int = typer.Option(32, "--n", min=1, help="Captions of the test split (clips per row)."),
    count: int = typer.Option(1, "--digits", min=1, max=2, help="Digits per clip (1 or 2), as the model was trained."),
    steps: int = typer.Option(None, "--steps", min=1, help="Denoising steps (default: the pipeline's)."),
    sampler: str = typer.Option(None, "--sampler", help="Sampler (default: the pipeline's)."),
    guidance: float = typer.Option(None, "--guidance", help="Classifier-free guidance scale (default: the pipeline's)."),
    guidance_interval: str = typer.Option(None, "--guidance-interval", metavar="LO,HI", help="Guide only at noise levels sigma in [LO, HI]; 0,inf: every step (default: the pipeline's)."),
    shift: float = typer.Option(None, "--shift", help="Noise-level shift of the sampling schedule, > 0 (default: the pipeline's)."),
    seed: int = typer.Option(0, "--seed", help="Clip i is sampled with seed + i, in every row."),
    out: Path = typer.Option(Path("digits_report.json"), "--out", help="The JSON report; the .md and .png go beside it."),
    save_videos: Path = typer.Option(None, "--save-videos", help="Keep every clip here, prompt in its metadata."),
    classifier: Path = typer.Option(None, "--classifier", help="A folder from train-digit-classifier (default: the shipped one)."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    precision: Optional[str] = typer.Option(None, "--precision", help=PRECISION_HELP),
) -> None:
    """Generate moving-digits clips, read each frame's digits, and report accuracy and identity consistency."""
    from kinema.eval.digits import digits_markdown, evaluate_digits
    from kinema.eval.report import write_report

    _check_outputs(out, save_videos)
    settings = _settings(steps, sampler, guidance, guidance_interval, seed, shift=shift)
    pipe = _load_pipeline(model, device, precision)
    report, sheet = evaluate_digits(
        pipe, model=model, n=n, digits=count, settings=settings, classifier=classifier, save_videos=save_videos, progress=_progress
    )
    paths = write_report(report, sheet, out, digits_markdown)
    typer.echo(digits_markdown(report))
    typer.echo(f"wrote {', '.join(paths.values())}")


@eval_app.command()
def vae(
    model: str = typer.Option(..., "--model", help="A VAE directory (save_model(vae, DIR, 'vae')), a pipeline directory, or the name of a shipped pipeline (its VAE)."),
    data: str = typer.Option(..., "--data", help="shapes, shapes2, shapes-mixed, digits, or a .csv/.jsonl manifest of your clips."),
    n: int = typer.Option(32, "--n", min=1, help="Clips to reconstruct."),
    size: int = typer.Option(64, "--size", help="Frame size in pixels (a multiple of the VAE's spatial factor)."),
    frames: int = typer.Option(17, "--frames", help="Frames per clip (1 + k * the VAE's temporal factor)."),
    split: str = typer.Option(None, "--split", help="Split of a built-in dataset (shapes: train, heldout, all; digits: train, test)."),
    out: Path = typer.Option(Path("vae_report.json"), "--out", help="The JSON report; the .md summary goes beside it."),
    i3d: Path = typer.Option(None, "--i3d", help=I3D_HELP),
    precision: str = typer.Option("auto", "--precision", help="auto, fp32 or bf16 (autocast on the CPU; auto: bf16 where the CPU computes it natively)."),
    allow_outside: bool = typer.Option(False, "--allow-outside", help="Let a --data manifest name files outside its folder (only for a manifest you trust)."),
) -> None:
    """Reconstruct clips through a VAE: PSNR, SSIM, flicker beside the real clips', FVD."""
    from kinema.data import get_dataset
    from kinema.errors import KinemaError
    from kinema.eval.metrics import evaluate_vae, vae_markdown
    from kinema.eval.report import write_report
    from kinema.models.checkpoint import load_model
    from kinema.pipelines.storage import resolve, shipped_pipelines
    from kinema.precision import check_precision

    check_precision(precision, "--precision")
    _check_outputs(out)
    shipped = shipped_pipelines()
    # A shipped name means that pipeline's VAE, as `--model` does for generate and eval shapes.
    directory = resolve(model) if model in shipped else Path(model)
    if not (directory / "vae.json").is_file():
        raise KinemaError(
            f"--model {model}: no vae.json there; give a folder written by save_model(vae, DIR, 'vae'), "
            f"a pipeline directory, or a shipped pipeline ({', '.join(shipped) or 'none shipped'})"
        )
    autoencoder = load_model(directory, "vae")
    kwargs = {"size": size, "frames": frames}
    if split is not None:
        kwargs["split"] = split
    dataset = get_dataset(data, allow_outside=allow_outside, **kwargs)
    autoencoder.latent_shape((1, 3, frames, size, size))  # a size the VAE cannot take fails here, named
    report = evaluate_vae(autoencoder, dataset, model=model, data=data, n=n, i3d=i3d, precision=precision)
    paths = write_report(report, None, out, vae_markdown)
    typer.echo(vae_markdown(report))
    typer.echo(f"wrote {', '.join(paths.values())}")


@eval_app.command("train-digit-classifier")
def train_digit_classifier_cmd(
    out: Path = typer.Option(..., "--out", help="Folder for digit_classifier.safetensors and .json (the shipped one: src/kinema/assets/digit_classifier)."),
    epochs: int = typer.Option(15, "--epochs", min=1, help="Passes over the 4,000 training digits."),
    seed: int = typer.Option(0, "--seed", help="Seed of the initial weights, the batches and the augmentation."),
) -> None:
    """Train the digits probe's classifier on the train split of the bundled MNIST digits; print its test accuracy."""
    import json

    from kinema.eval.digits import train_digit_classifier
    from kinema.eval.fvd import save_network

    check_writable(out, "--out", folder=True)
    model, info = train_digit_classifier(epochs=epochs, seed=seed, log=typer.echo)
    info["command"] = f"kinema eval train-digit-classifier --out DIR --epochs {epochs} --seed {seed}"
    path = save_network(model, out, "digit_classifier", info)
    typer.echo(json.dumps({"weights": str(path), "test_accuracy": info["test_accuracy"]}))


@eval_app.command("train-video-features")
def train_video_features_cmd(
    out: Path = typer.Option(..., "--out", help="Folder for video_features.safetensors and .json (the shipped one: src/kinema/assets/video_features)."),
    steps: int = typer.Option(1500, "--steps", min=1, help="Optimiser steps of 32 freshly rendered clips each."),
    seed: int = typer.Option(0, "--seed", help="Seed of the initial weights and of the rendered clips."),
) -> None:
    """Train the small 3D CNN whose features give kinema's non-standard FVD; print its validation accuracy."""
    import json

    from kinema.eval.fvd import save_network, train_video_features

    check_writable(out, "--out", folder=True)
    model, info = train_video_features(steps=steps, seed=seed, log=typer.echo)
    info["command"] = f"kinema eval train-video-features --out DIR --steps {steps} --seed {seed}"
    path = save_network(model, out, "video_features", info)
    typer.echo(json.dumps({"weights": str(path), "validation_accuracy": info["validation_accuracy"]}))
