"""`kinema data ...`: look at the datasets, export them as files, check a manifest."""

from __future__ import annotations

import json
import math
from pathlib import Path

import typer

from kinema.cli import app

data_app = typer.Typer(help="Preview, export and inspect datasets (built-in or your own manifest).", no_args_is_help=True)
app.add_typer(data_app, name="data")

DATASET_HELP = "shapes, shapes2 (two objects), shapes-mixed (one or two), digits (moving MNIST digits), or a path to a .csv/.jsonl manifest"


ALLOW_OUTSIDE_HELP = "Let a manifest name files outside its folder (absolute paths, .., symlinks out): only for a manifest you trust."


def _dataset(name: str, *, size: int, frames: int, split: str | None, seed: int, allow_outside: bool):
    from kinema.data import DATASET_NAMES, get_dataset

    kwargs: dict = {"size": size, "frames": frames}
    if name in DATASET_NAMES:  # a manifest's clips are what they are: no seed
        kwargs["seed"] = seed
    if split is not None:
        kwargs["split"] = split
    return get_dataset(name, allow_outside=allow_outside, **kwargs)


def grid(clips: list, columns: int, gap: int = 2) -> "object":
    """Tile uint8 clips (T, H, W, 3) of one size into one clip, `gap` grey pixels apart."""
    import numpy as np

    t, h, w, _ = clips[0].shape
    rows = math.ceil(len(clips) / columns)
    out = np.full((t, rows * (h + gap) - gap, columns * (w + gap) - gap, 3), 64, dtype=np.uint8)
    for i, clip in enumerate(clips):
        r, c = divmod(i, columns)
        y, x = r * (h + gap), c * (w + gap)
        out[:, y : y + h, x : x + w] = clip[:t]
    return out


@data_app.command()
def preview(
    dataset: str = typer.Argument(..., help=DATASET_HELP),
    n: int = typer.Option(16, "--n", min=1, max=256, help="How many clips to tile into the preview."),
    # A str, not a Path: Path drops the trailing `/` that asks for a folder of PNG frames.
    out: str = typer.Option("preview.gif", "--out", help="Output file: .gif, .mp4, .webm, or a folder ending in / for PNG frames."),
    split: str = typer.Option(None, "--split", help="Dataset split (shapes: train, heldout, all; digits: train, test)."),
    size: int = typer.Option(64, "--size", help="Frame size in pixels."),
    frames: int = typer.Option(17, "--frames", help="Frames per clip."),
    seed: int = typer.Option(0, "--seed", help="Dataset seed (built-in datasets)."),
    allow_outside: bool = typer.Option(False, "--allow-outside", help=ALLOW_OUTSIDE_HELP),
) -> None:
    """Write a grid of N clips as one video; captions are printed and stored in its metadata."""
    from kinema.data.transforms import to_uint8
    from kinema.video import Video

    ds = _dataset(dataset, size=size, frames=frames, split=split, seed=seed, allow_outside=allow_outside)
    n = min(n, len(ds))
    items = [ds[i] for i in range(n)]
    clips = [to_uint8(item["video"]) for item in items]
    captions = [item["caption"] for item in items]
    length = min(c.shape[0] for c in clips)
    video = Video(
        grid([c[:length] for c in clips], columns=math.ceil(math.sqrt(n))),
        fps=float(getattr(ds, "fps", 8.0)),
        metadata={"dataset": dataset, "captions": json.dumps(captions)},
    )
    path = video.save(out)
    for i, caption in enumerate(captions):
        typer.echo(f"{i:3d}  {caption}")
    typer.echo(f"wrote {path} ({n} clips, {length} frames)")


@data_app.command()
def export(
    dataset: str = typer.Argument(..., help=DATASET_HELP),
    n: int = typer.Option(..., "--n", min=1, help="How many clips to export."),
    out: Path = typer.Option(..., "--out", help="Output folder; gets one file per clip and manifest.jsonl."),
    split: str = typer.Option(None, "--split", help="Dataset split (shapes: train, heldout, all; digits: train, test)."),
    fmt: str = typer.Option("mp4", "--format", help="File format per clip: mp4, webm, gif or png (a folder of PNGs)."),
    size: int = typer.Option(64, "--size", help="Frame size in pixels."),
    frames: int = typer.Option(17, "--frames", help="Frames per clip."),
    seed: int = typer.Option(0, "--seed", help="Dataset seed (built-in datasets)."),
    allow_outside: bool = typer.Option(False, "--allow-outside", help=ALLOW_OUTSIDE_HELP),
) -> None:
    """Export N clips as files plus a manifest.jsonl that `FolderDataset` (and `kinema train`) can read."""
    from tqdm import tqdm

    from kinema.data.folder import write_manifest
    from kinema.data.transforms import to_uint8
    from kinema.errors import KinemaError
    from kinema.video import Video

    if fmt not in ("mp4", "webm", "gif", "png"):
        raise KinemaError(f"--format {fmt!r} is not supported; use mp4, webm, gif or png")
    ds = _dataset(dataset, size=size, frames=frames, split=split, seed=seed, allow_outside=allow_outside)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in tqdm(range(min(n, len(ds))), desc="export", unit="clip"):
        item = ds[i]
        name = f"{i:06d}/%05d.png" if fmt == "png" else f"{i:06d}.{fmt}"
        fps = float(getattr(ds, "fps", 8.0))
        Video(to_uint8(item["video"]), fps=fps, metadata={"prompt": item["caption"]}).save(out / name)
        rows.append({"path": name, "caption": item["caption"]})
    manifest = write_manifest(out / "manifest.jsonl", rows)
    typer.echo(f"wrote {len(rows)} clips and {manifest}")


@data_app.command()
def stats(
    manifest: Path = typer.Argument(..., help="A .csv or .jsonl manifest of clips and captions."),
    listed: int = typer.Option(20, "--list", min=0, help="Unreadable files to name in the output (all are counted)."),
    unreadable_out: Path = typer.Option(None, "--unreadable-out", help="A .jsonl file to write every unreadable file to (path, line, reason)."),
    allow_outside: bool = typer.Option(False, "--allow-outside", help=ALLOW_OUTSIDE_HELP),
) -> None:
    """Count, durations, sizes and unreadable files of a manifest, read row by row with a progress bar."""
    from kinema.data.folder import manifest_stats

    s = manifest_stats(manifest, allow_outside=allow_outside, listed=listed, unreadable_out=unreadable_out)
    typer.echo(json.dumps(s, indent=2, default=str))
    if unreadable_out is not None and s["unreadable_count"]:
        typer.echo(f"wrote the {s['unreadable_count']} unreadable file(s) to {unreadable_out}", err=True)
