"""`kinema generate PROMPT`: text-to-video, image-to-video, interpolation, extension and editing.

    kinema generate "a red circle moving right" --out circle.mp4
    kinema generate "a red circle moving right" --image first.png
    kinema generate "a red circle moving right" --image first.png --last-image last.png
    kinema generate "a red circle bouncing left and right" --frames 129    # long video, window after window
    kinema generate "a red circle moving right" --extend circle.mp4 --frames 48
    kinema generate "a blue circle moving right" --edit circle.mp4 --strength 0.6 --mask mask.png

The task follows from the flags that are set. Every output carries its metadata (prompt, seed,
sampler, steps, guidance, model hash, kinema version) inside the file and in a sidecar JSON
beside it: `out.mp4` -> `out.mp4.json`, a PNG folder `frames/` -> `frames.json`. Several outputs
(`--num N`, `--prompts FILE`) are numbered: `out_000.mp4`, `out_001.mp4`, ...
Everything is checked before the model is loaded or any frame is made; bad input exits with 2.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Optional

import typer

from kinema.cli import app

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".gif")
STILL_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


@app.command()
def generate(
    prompt: Optional[str] = typer.Argument(None, metavar="PROMPT", help="What the video shows, e.g. \"a red circle moving right\"."),
    image: Optional[str] = typer.Option(None, "--image", help="Image-to-video: this image is frame 0."),
    last_image: Optional[str] = typer.Option(None, "--last-image", help="Interpolation (with --image): this image is the last frame."),
    extend: Optional[str] = typer.Option(None, "--extend", help="Continue this clip by --frames frames, window after window."),
    edit: Optional[str] = typer.Option(None, "--edit", help="Re-make this clip under the prompt (SDEdit)."),
    strength: Optional[float] = typer.Option(None, "--strength", help="With --edit: how much changes, in (0, 1] (default 0.6)."),
    mask: Optional[str] = typer.Option(None, "--mask", help="With --edit: an image of the clip's size, white = regenerate, black = keep."),
    frames: Optional[int] = typer.Option(None, "--frames", help="Frames of the clip (1 + 4k for the shapes model); past the model's window (17 for shapes) it is made window after window, each continuing the last; with --extend, frames to add."),
    size: Optional[str] = typer.Option(None, "--size", help="Frame size HxW (e.g. 64x96) or one number for a square."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Denoising steps (default: the model's)."),
    sampler: Optional[str] = typer.Option(None, "--sampler", help="euler, heun, dpmpp_2m, ddim, ddpm or unipc (default: the model's)."),
    guidance: Optional[float] = typer.Option(None, "--guidance", help="Classifier-free guidance scale >= 0 (1 is off; default: the model's)."),
    guidance_interval: Optional[str] = typer.Option(None, "--guidance-interval", metavar="LO,HI", help="Guide only at noise levels sigma in [LO, HI] (cheaper steps elsewhere); 0,inf guides every step (default: the model's)."),
    shift: Optional[float] = typer.Option(None, "--shift", help="Noise-level shift of the sampling schedule, > 0 (flow matching; higher spends more steps at high noise; default: the model's)."),
    image_first: Optional[bool] = typer.Option(None, "--image-first/--no-image-first", help="Text-to-video: make frame 0 first, then the clip from it (default: the model's)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the first video (the next use seed + 1, ...); default random, printed."),
    num: int = typer.Option(1, "--num", help="Videos per prompt."),
    prompts_file: Optional[str] = typer.Option(None, "--prompts", help="A text file of prompts, one a line: a video each; with --extend, one per window."),
    out: Optional[str] = typer.Option(None, "--out", help="Output: .mp4 .webm .gif .mov .mkv, or a folder ending in / for PNG frames (default: PROMPT.mp4)."),
    model: str = typer.Option("shapes", "--model", help="A shipped pipeline's name, or a pipeline directory."),
    fps: Optional[float] = typer.Option(None, "--fps", help="Frame rate of the output (default: the model's, or the input clip's)."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    precision: Optional[str] = typer.Option(None, "--precision", help="auto, fp32 or bf16 (autocast: faster on GPUs and CPUs with AVX-512 BF16 or AMX, much slower on others); default: the model's, auto for the shipped one: bf16 where it is native."),
    compile_: bool = typer.Option(False, "--compile", help="torch.compile the denoiser's blocks: pays for long or many videos, costs compile time up front (seconds to minutes, again for each new size)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Generate a video from a prompt, an image, two keyframes, or an earlier clip; the flags pick the task."""
    from kinema.errors import KinemaError
    from kinema.pipelines import common
    from kinema.precision import check_precision

    # -- everything that needs no model: flags, numbers, files
    if last_image is not None and image is None:
        raise KinemaError("--last-image needs --image (the first frame) for interpolation")
    inputs = [flag for flag, value in (("--image", image), ("--extend", extend), ("--edit", edit)) if value is not None]
    if len(inputs) > 1:
        raise KinemaError(f"{' and '.join(inputs)} are different tasks; give one of them")
    for flag, value in (("--strength", strength), ("--mask", mask)):
        if value is not None and edit is None:
            raise KinemaError(f"{flag} applies to --edit VIDEO only")
    if image_first is not None and inputs:
        raise KinemaError(f"--image-first applies to text-to-video only; {inputs[0]} gives the frames to start from")
    if extend is not None and frames is None:
        raise KinemaError("--extend needs --frames N: how many frames to add")
    if edit is not None and frames is not None:
        raise KinemaError("--frames does not apply to --edit: an edit keeps the clip's length (use --extend to lengthen it)")
    if (extend is not None or edit is not None) and size is not None:
        raise KinemaError("--size does not apply to --extend or --edit: the clip keeps its size (resize the clip first)")
    prompts = common.check_prompts(_prompts(prompt, prompts_file), "PROMPT")
    if sampler is not None:
        common.check_sampler(sampler)
    if steps is not None:
        common.check_steps(steps)
    if guidance is not None:
        common.check_guidance(guidance)
    interval = None if guidance_interval is None else common.parse_guidance_interval(guidance_interval)
    if shift is not None:
        common.check_shift_value(shift, "--shift")
    if fps is not None:
        common.check_fps(fps, "--fps")
    if frames is not None:
        common.check_count(frames, "--frames")
    common.check_count(num, "--num")
    if precision is not None:
        check_precision(precision, "--precision")
    edit_strength = common.check_strength(0.6 if strength is None else strength)
    seed = common.draw_seed() if seed is None else common.check_seed(seed)
    height, width = _size(size)
    count = num if extend is not None else num * len(prompts)
    targets = _targets(out or _default_name(prompts[0]), count)

    from kinema.pipelines.inputs import as_image, as_mask, as_video

    first = as_image(image, "--image") if image is not None else None
    last = as_image(last_image, "--last-image") if last_image is not None else None
    clip = None
    if extend is not None or edit is not None:
        clip = as_video(extend, "--extend") if extend is not None else as_video(edit, "--edit")
    masks = as_video(mask, "--mask") if mask is not None else None
    if masks is not None:
        as_mask(masks, clip)  # its size and length, checked before the model loads

    # -- the model, then the task the flags ask for
    from kinema.pipelines.pipeline import Pipeline

    pipe = Pipeline.load(model, device=device, precision=precision)
    if compile_:
        pipe.compile()
    _warn_long(pipe, prompts)
    _warn_unfamiliar(pipe, prompts)
    common_args: dict[str, Any] = dict(
        num_inference_steps=steps, guidance_scale=guidance, guidance_interval=interval, shift=shift, sampler=sampler, seed=seed, num_videos=num, fps=fps,
        progress=not quiet,
    )  # fmt: skip
    total = _total_frames(pipe, frames, clip, extend is not None)
    _check_still(targets, total)
    _check_output_fps(targets, fps or (clip.fps if clip is not None else pipe.settings.fps))
    inputs = {"--image": image, "--last-image": last_image, "--extend": extend, "--edit": edit}
    _check_memory(pipe, total, len(targets), height, width, first, clip, inputs)
    if extend is not None:
        videos = pipe.extend(clip, prompts, num_frames=frames, **common_args)
    elif edit is not None:
        videos = pipe.edit(clip, prompts, strength=edit_strength, mask=masks, **common_args)
    elif last is not None:
        videos = pipe.interpolate(first, last, prompts, num_frames=frames, height=height, width=width, **common_args)
    else:
        videos = pipe.generate(
            prompts, image=first, num_frames=frames, height=height, width=width, image_first=image_first, **common_args
        )
    videos = videos if isinstance(videos, list) else [videos]

    for video, target in zip(videos, targets):
        path = video.save(target)
        sidecar = write_sidecar(target, video)
        m = video.metadata
        shape = f"{video.num_frames} frames, {video.height}x{video.width}"
        typer.echo(f"wrote {path} ({shape}, seed {m['seed']}, {m['precision']}); metadata in {sidecar}")


# ----------------------------------------------------------------------------------------------
# Helpers


def _prompts(prompt: str | None, prompts_file: str | None) -> list[str]:
    from kinema.errors import KinemaError

    if prompt is not None and prompts_file is not None:
        raise KinemaError("give PROMPT or --prompts FILE, not both")
    if prompts_file is None:
        if prompt is None:
            raise KinemaError('a prompt is needed: kinema generate "a red circle moving right" (or --prompts FILE)')
        return [prompt]
    path = Path(prompts_file).expanduser()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise KinemaError(
            f"--prompts {path}: cannot read it ({e.__class__.__name__}); give a UTF-8 text file, one prompt a line"
        ) from None
    prompts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise KinemaError(f"--prompts {path}: no prompts in it; write one prompt a line (# starts a comment)")
    return prompts


def _short(prompt: str) -> str:
    """A prompt as messages show it: a long one cut, with its length."""
    return prompt if len(prompt) <= 80 else f"{prompt[:60]}... ({len(prompt)} characters)"


def _warn_long(pipe: Any, prompts: list[str]) -> None:
    """One line per prompt longer than the text encoder reads (it keeps the start and drops the rest)."""
    measure = getattr(pipe.text_encoder, "prompt_length", None)
    for prompt in dict.fromkeys(prompts) if measure is not None else ():
        length, limit, unit = measure(prompt)
        if length > limit:
            typer.echo(
                f"warning: the prompt {_short(prompt)!r} is {length} {unit}; this model reads the first {limit} "
                "and ignores the rest",
                err=True,
            )


def _warn_unfamiliar(pipe: Any, prompts: list[str]) -> None:
    """Say so when a model trained on shapes captions gets a prompt outside their grammar (it still runs)."""
    from kinema.errors import KinemaError

    data = (pipe.provenance.get("train_config") or {}).get("data") or {}
    if not str(data.get("dataset", "")).startswith("shapes"):
        return
    from kinema.eval.shapes_probe import parse_captions

    for prompt in dict.fromkeys(prompts):
        try:
            objects = parse_captions(prompt)
        except KinemaError as e:
            why = str(e) if len(prompt) <= 80 else f"cannot read {_short(prompt)!r} as a shapes caption"  # one line
            typer.echo(f"warning: this model learned shapes captions only, and {why}; the clip may not follow it", err=True)
            continue
        if len(objects) > 1:
            _warn_objects(pipe, len(objects))


TWO_OBJECTS_BAR = 0.85
"""Two-object prompts get a warning until the model's measured joint accuracy on them reaches this."""


def _warn_objects(pipe: Any, count: int) -> None:
    """Say how well the model draws several objects, from its recorded `kinema eval shapes --objects 2`."""
    measured = (pipe.provenance.get("quality") or {}).get("two_objects")
    if measured is None:
        typer.echo(
            f"warning: {count} objects asked for, and how well this model draws two is not measured "
            f"(kinema eval shapes --model MODEL --objects 2); they may come out merged or one missing",
            err=True,
        )
    elif measured["joint"] < TWO_OBJECTS_BAR:
        lo, hi = measured["ci95"]
        typer.echo(
            f"warning: this model draws both objects of a two-object prompt right in {measured['joint']:.0%} of clips "
            f"({lo:.0%}-{hi:.0%}, {measured['n']} {measured['split']} prompts, {measured['report']}): expect one object "
            "missing or the two merged into one blob",
            err=True,
        )


def _size(size: str | None) -> tuple[int | None, int | None]:
    from kinema.errors import KinemaError

    if size is None:
        return None, None
    match = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+)\s*)?", size)
    if match is None or int(match.group(1)) < 1 or (match.group(2) is not None and int(match.group(2)) < 1):
        raise KinemaError(f"--size {size!r}: give HxW (e.g. 64x96) or one number for a square (e.g. 64)")
    height = int(match.group(1))
    return height, int(match.group(2) or height)


def _default_name(prompt: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "_", prompt.lower()).strip("_")[:60]
    return f"{slug or 'video'}.mp4"


def _is_folder(text: str) -> bool:
    return text.endswith(("/", os.sep)) or Path(text).is_dir() or "%" in Path(text).name


def _targets(out: str, count: int) -> list[str]:
    """The output path of each video: `out` itself for one, else out_000.ext ... (folders: name_000/)."""
    from kinema.atomic import check_writable
    from kinema.errors import KinemaError
    from kinema.video.paths import local_path

    local_path(out)  # refuses URLs
    suffix = Path(out).suffix.lower()
    if not _is_folder(out) and suffix not in VIDEO_SUFFIXES + STILL_SUFFIXES:
        raise KinemaError(
            f"--out {out}: cannot write {suffix or 'a name without extension'}; use .mp4, .webm, .gif, .mov, .mkv, "
            "or a folder ending in / for PNG frames"
        )
    check_writable(out, "--out", folder=_is_folder(out))  # before the model loads, not after the video is made
    if count == 1:
        return [out]
    if _is_folder(out):
        folder = out.rstrip("/" + os.sep)
        if "%" in Path(folder).name:  # frames/%05d.png: number the folder
            parent = Path(folder).parent
            return [str(parent.with_name(f"{parent.name}_{i:03d}") / Path(folder).name) for i in range(count)]
        return [f"{folder}_{i:03d}/" for i in range(count)]
    stem = out[: len(out) - len(Path(out).suffix)]
    return [f"{stem}_{i:03d}{Path(out).suffix}" for i in range(count)]


def _total_frames(pipe: Any, frames: int | None, clip: Any, extending: bool) -> int:
    if extending:
        return clip.num_frames + frames
    if clip is not None:
        return clip.num_frames
    return pipe.settings.num_frames if frames is None else frames


def _check_memory(
    pipe: Any, total: int, videos: int, height: int | None, width: int | None, first: Any, clip: Any,
    inputs: dict[str, str | None],
) -> None:
    """Refuse, before any frame is made, what cannot fit in memory (`kinema.pipelines.memory`).

    inputs: the value of each of --image, --last-image, --extend and --edit (None where not given).
    """
    from kinema.pipelines.memory import check_fits

    window = pipe.settings.num_frames  # a longer clip is made window after window
    given, size_flag, frames_flag = 0, "--size", "--frames"
    if clip is not None:  # --extend or --edit: the clip keeps its size
        flag = "--extend" if inputs["--extend"] is not None else "--edit"
        height, width, size_flag = clip.height, clip.width, None
        what = f"{flag} {inputs[flag]} ({height}x{width})"
        if flag == "--extend":
            given = clip.num_frames
        else:  # an edit is one window
            window, frames_flag = total, "the clip trimmed to"
    elif height is not None:
        what = f"--size {height}x{width}"
    elif first is not None:
        height, width = first.height, first.width
        what = f"--image {inputs['--image']} ({height}x{width})"
    else:
        height, width, what = pipe.settings.height, pipe.settings.width, "generate"
    if inputs["--last-image"] is not None:  # an interpolation is one window
        window = total
    check_fits(
        pipe, frames=total, height=height, width=width, window=window, videos=videos, given_frames=given,
        what=what, frames_flag=frames_flag, size_flag=size_flag,
    )  # fmt: skip


def _check_output_fps(targets: list[str], fps: float) -> None:
    """The output format can hold the frame rate (a GIF at most 50 fps): checked before any frame is made."""
    from kinema.video.write import check_fps

    if not _is_folder(targets[0]):
        check_fps(fps, Path(targets[0]).suffix, f"--out {targets[0]} at {fps:g} fps")


def _check_still(targets: list[str], frames: int) -> None:
    from kinema.errors import KinemaError

    target = targets[0]
    if not _is_folder(target) and Path(target).suffix.lower() in STILL_SUFFIXES and frames != 1:
        raise KinemaError(
            f"--out {target}: a {Path(target).suffix} file holds one frame but the video has {frames}; "
            "write .mp4 or .gif, or a folder ending in / for PNG frames"
        )


def sidecar_path(target: str) -> Path:
    """out.mp4 -> out.mp4.json; a folder frames/ (or frames/%05d.png) -> frames.json beside it."""
    if _is_folder(target):
        folder = Path(target.rstrip("/" + os.sep))
        folder = folder.parent if "%" in folder.name else folder
        return folder.with_name(folder.name + ".json")
    return Path(target + ".json")


def write_sidecar(target: str, video: Any) -> Path:
    """The video's metadata record (the one stored in the file) as JSON beside it, written atomically."""
    from kinema.video import meta
    from kinema.video.paths import atomic_output

    path = sidecar_path(target).expanduser().absolute()
    name = path.name[: -len(".json")]  # the file, or the folder of PNG frames, it describes
    record = {"file": name, **json.loads(meta.encode(video))}
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return path
