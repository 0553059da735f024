"""The shapes evaluation: generate clips from the prompts of a split, probe them, and set them beside references.

    prompts of the split (fixed dataset seed) ─▶ pipeline (seed + i per clip) ─▶ clips ─▶ shapes probe ─▶ report
                                              └▶ the same pipeline, frames denoised apart ─▶ ... (reference)
    the real rendered clip of every prompt ─▶ the pipeline's VAE, encoded and decoded ─▶ ... (the ceiling)
                                          └────────────────────────────────────────▶ ... (reference, must be 100%)

A task is data (`EvalTask`): how a clip is made from (prompt, the real clip)
and which of its frames the probe reads:

    t2v     the prompt alone; the probe reads all frames
    i2v     the prompt and the real clip's first frame; also the PSNR of generated frame 0 against it
    extend  the real clip continued to 4x its length (65 frames for 17) with the prompt; the probe reads the last 17
            (the report also says how many real clips leave their object room to go on moving: `continuation`)

Reference rows, in every report:
- `real`: the real rendered clips through the same probe (100% by construction;
  less means the probe cannot be trusted at this size). Its FVD is against the
  same captions drawn again (new positions and speeds): the floor of the FVD at this n.
- `vae`: the real clips encoded and decoded by the pipeline's VAE: what a perfect
  denoiser would give, so the most the model row can reach (below 100% the VAE is
  what to improve, not the denoiser). Its frame-0 PSNR (i2v) is the ceiling of the model's.
- `within_frame`: the same pipeline whose denoiser sees each latent frame as a
  clip of its own (`WithinFrame`), with the same seeds. Frames are made without
  seeing each other, so the gap to the model row is what temporal modelling buys.

The generation harness (`EvalTask`, `generate_clips`, `model_rows`, `WithinFrame`)
is shared with the digits evaluation (`kinema.eval.digits.evaluate_digits`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from einops import rearrange
from torch import nn

from kinema.errors import KinemaError

if TYPE_CHECKING:
    from kinema.pipelines import Pipeline
    from kinema.video import Video

PROMPT_SEED = 7
"""Dataset seed of the evaluation's prompts and real clips (training draws with seed 0)."""
EXTEND_FACTOR = 4
"""The extend task continues a clip of F frames to 1 + EXTEND_FACTOR * (F - 1) frames (65 for 17)."""
SHEET_CLIPS = 16
"""Clips shown on the contact sheet."""
REAL_TWO_OBJECTS_MIN = 0.90
"""Real two-object clips read 95.8% (3,000 clips: where the objects overlap in every frame, the one drawn first is
partly hidden throughout); a real row below this means the probe cannot be trusted on the clips."""
TWO_OBJECTS_NOTE = (
    "Two objects: each is found by its colour; pixels of a colour the prompt does not name count against the "
    "object they are attached to, or against both when they make a blob of their own. Colour, shape, motion and "
    "size are right when they are for both objects, joint when both objects are wholly right. Object (each), "
    "object small / large and object in every frame: the {n} objects one by one. Third colour: the mean share of "
    "foreground pixels in a colour the prompt does not name (objects that merge into a blend). The real row is "
    "the probe's ceiling here, about 96%: where two objects overlap in every frame, the one drawn first is partly "
    "hidden throughout and its shape cannot be read."
)
VAE_ROW_NOTE = (
    "The VAE row is the real clips encoded and decoded by the pipeline's VAE: what a perfect denoiser "
    "would give, so the most the model row can reach."
)


# ----------------------------------------------------------------------------- generation settings and tasks


@dataclass(frozen=True, kw_only=True)
class GenerationSettings:
    """How every clip of an evaluation is sampled; None takes the pipeline's default."""

    steps: int | None = None
    """Denoising steps."""
    sampler: str | None = None
    """Sampler name (euler, heun, dpmpp_2m, ddim, ddpm, ...)."""
    guidance: float | None = None
    """Classifier-free guidance scale."""
    guidance_interval: tuple[float, float] | None = None
    """(sigma_lo, sigma_hi): guide only at these noise levels ((0, inf): every step)."""
    shift: float | None = None
    """The sampling schedule's noise-level shift (`SamplingSettings.shift`)."""
    image_first: bool | None = None
    """Text-to-video makes frame 0 first, then the clip from it (`SamplingSettings.image_first`)."""
    seed: int = 0
    """Clip i is sampled with seed + i (the same in every row, so rows are paired)."""

    def __post_init__(self) -> None:
        if self.steps is not None and (not isinstance(self.steps, int) or self.steps < 1):
            raise ValueError(f"GenerationSettings.steps must be an int >= 1 or None, got {self.steps!r}")
        if self.guidance is not None and not self.guidance >= 0:
            raise ValueError(f"GenerationSettings.guidance must be >= 0 or None, got {self.guidance!r}")
        if self.shift is not None and not self.shift > 0:
            raise ValueError(f"GenerationSettings.shift must be > 0 or None, got {self.shift!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"GenerationSettings.seed must be an int >= 0, got {self.seed!r}")
        if self.guidance_interval is not None:
            from kinema.pipelines.common import check_guidance_interval

            try:
                check_guidance_interval(self.guidance_interval)
            except KinemaError as e:
                raise ValueError(f"GenerationSettings.{e}") from None

    def kwargs(self, index: int) -> dict[str, Any]:
        """The sampling keywords of clip `index` for Pipeline.generate / extend."""
        return {
            "num_inference_steps": self.steps, "sampler": self.sampler, "guidance_scale": self.guidance,
            "guidance_interval": self.guidance_interval, "shift": self.shift, "image_first": self.image_first,
            "seed": self.seed + index,
        }  # fmt: skip

    def resolved(self, pipe: Pipeline) -> dict[str, Any]:
        """What the clips were sampled with, the pipeline's defaults filled in (for the report)."""
        from kinema.pipelines.common import resolve_guidance_interval

        interval = resolve_guidance_interval(pipe.settings, self.guidance_interval)
        return {
            "steps": self.steps or pipe.settings.steps, "sampler": self.sampler or pipe.settings.sampler,
            "guidance": pipe.settings.guidance if self.guidance is None else self.guidance,
            "guidance_interval": None if interval is None else list(interval),
            "shift": pipe.settings.shift if self.shift is None else self.shift,
            "image_first": pipe.settings.image_first if self.image_first is None else self.image_first, "seed": self.seed,
            "prompt_seed": PROMPT_SEED, "precision": pipe.precision,
        }  # fmt: skip


def sampling_line(s: dict[str, Any], n: int) -> str:
    """The report's sentence on how clips were sampled, from `GenerationSettings.resolved`."""
    interval = s.get("guidance_interval")
    where = "" if interval is None else f" at sigma in [{interval[0]:g}, {interval[1]:g}]"
    first = ", frame 0 first (image_first)" if s.get("image_first") else ""
    shift = "" if s.get("shift") is None else f", sampling shift {s['shift']:g}"
    precision = f", {s['precision']}" if s.get("precision") else ""
    return (
        f"Sampler {s['sampler']}, {s['steps']} steps, guidance {s['guidance']}{where}{shift}{first}{precision}, "
        f"seeds {s['seed']}..{s['seed'] + n - 1}."
    )


MakeClip = Callable[["Pipeline", str, np.ndarray, dict[str, Any]], "Video"]


def _text_to_video(pipe: Pipeline, prompt: str, real: np.ndarray, kw: dict[str, Any]) -> Video:
    return pipe.generate(prompt, num_frames=len(real), height=real.shape[1], width=real.shape[2], **kw)


def _image_to_video(pipe: Pipeline, prompt: str, real: np.ndarray, kw: dict[str, Any]) -> Video:
    return pipe.generate(prompt, image=real[:1], num_frames=len(real), **kw)


def _extend(pipe: Pipeline, prompt: str, real: np.ndarray, kw: dict[str, Any]) -> Video:
    kw = {k: v for k, v in kw.items() if k != "image_first"}  # a text-to-video setting; the clip gives frame 0
    return pipe.extend(real, prompt, num_frames=(EXTEND_FACTOR - 1) * (len(real) - 1), **kw)


def room_ahead(obj: dict[str, Any]) -> float:
    """Pixels an object (as from `make_object`) can still travel along its motion after its clip's last frame
    before its box touches the canvas edge; inf for a still object."""
    from kinema.data.shapes import MOTION_DIRECTIONS

    ux, uy = MOTION_DIRECTIONS[obj["motion_index"]]
    if ux == uy == 0:
        return float("inf")
    end = [obj["start"][k] + obj["displacement"][k] for k in (0, 1)]
    far = obj["canvas"] - obj["side"]
    return end[0] if ux < 0 else far - end[0] if ux > 0 else end[1] if uy < 0 else far - end[1]


def continuation(scenes: Sequence[Sequence[dict[str, Any]]], model_correct: Sequence[bool]) -> dict[str, Any]:
    """What the extend task's continuations have room for, from each real clip's objects at its last frame.

    inside_at_own_speed: every object stays in the canvas to the last extended frame at its clip's velocity
    (the continuation the data's physics gives; only still objects do, as DISPLACEMENT_RANGE is 0.3-0.5 S a clip).
    room_for_motion: every object has the STILL_MAX_DISPLACEMENT * S the probe needs to see its motion ahead of it,
    so some in-canvas continuation can pass. model_joint_with_room: the model row's joint accuracy on those clips.
    """
    from kinema.eval.metrics import proportion
    from kinema.eval.shapes_probe import STILL_MAX_DISPLACEMENT

    own = [all(room_ahead(o) >= (EXTEND_FACTOR - 1) * float(np.hypot(*o["displacement"])) for o in objs) for objs in scenes]
    roomy = [all(room_ahead(o) >= STILL_MAX_DISPLACEMENT * o["canvas"] for o in objs) for objs in scenes]
    n = len(scenes)
    return {
        "inside_at_own_speed": proportion(sum(own), n),
        "room_for_motion": proportion(sum(roomy), n),
        "model_joint_with_room": proportion(sum(c for c, r in zip(model_correct, roomy) if r), sum(roomy)),
    }


@dataclass(frozen=True)
class EvalTask:
    """One way of making an evaluation clip from (prompt, real clip), and what of it is measured."""

    name: str
    """Name on the command line and in reports."""
    description: str
    """One line for the report."""
    make: MakeClip
    """(pipeline, prompt, real clip uint8 (T, S, S, 3), sampling keywords) -> Video."""
    probe_last: bool = False
    """Probe only the last T frames of a longer clip (T = the real clip's frames) instead of the whole clip."""
    first_frame_psnr: bool = False
    """Report the PSNR of generated frame 0 against the real frame 0 that was given."""

    def probed(self, frames: np.ndarray, real_frames: int) -> np.ndarray:
        """The frames of a generated clip (T', S, S, 3) that the probe reads."""
        return frames[-real_frames:] if self.probe_last else frames


TASKS: dict[str, EvalTask] = {
    task.name: task
    for task in (
        EvalTask("t2v", "text-to-video: the prompt alone", _text_to_video),
        EvalTask("i2v", "image-to-video: the prompt and the real first frame", _image_to_video, first_frame_psnr=True),
        EvalTask(
            "extend", f"extension: the real clip continued to {EXTEND_FACTOR}x its length, last window probed",
            _extend, probe_last=True,
        ),
    )
}  # fmt: skip


def check_objects(objects: int, per_combination: int | None) -> None:
    """Refuse an object count the shapes data does not draw, or a grid of combinations (one object each) with two."""
    if objects not in (1, 2):
        raise KinemaError(f"--objects must be 1 or 2 (objects per prompt, as the shapes data draws them), got {objects!r}")
    if objects == 2 and per_combination is not None:
        raise KinemaError("--per-combination covers the one-object combinations; with --objects 2 give --n prompts instead")


def get_task(name: str) -> EvalTask:
    if name not in TASKS:
        raise KinemaError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
    return TASKS[name]


# ----------------------------------------------------------------------------- the within-frame reference


class WithinFrame(nn.Module):
    """A denoiser run on each latent frame as a clip of its own: frames are denoised without seeing each other.

    forward(x (B, C, T, H, W), timestep (B,), context (B, L, D), context_mask (B, L) | None) -> (B, C_out, T, H, W)

    Frames are folded into the batch (groups of the DiT's temporal patch size,
    1 for every shipped preset), text and timestep repeated for each. For a DiT
    this is exactly self-attention restricted to the tokens of one frame: RoPE
    rotates the q and k of one frame by the same temporal angle, which cancels,
    and every other layer acts on tokens alone. For the U-Net the temporal
    layers still run, on one frame (a temporal conv sees its centre tap, a
    temporal attention only itself).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        from kinema.pipelines.common import latent_multiples

        self.model = model
        self.config = model.config  # what the pipeline checks and plans with
        self.frames_per_group = latent_multiples(model)[0]

    def forward(
        self, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        b, groups = x.shape[0], x.shape[2] // self.frames_per_group
        folded = rearrange(x, "b c (g f) h w -> (b g) c f h w", f=self.frames_per_group)
        repeat = lambda z: None if z is None else z.repeat_interleave(groups, dim=0)  # noqa: E731
        timestep = timestep.expand(b) if timestep.ndim == 0 else timestep
        out = self.model(folded, repeat(timestep), repeat(context), repeat(context_mask))
        return rearrange(out, "(b g) c f h w -> b c (g f) h w", b=b)


def within_frame(pipe: Pipeline) -> Pipeline:
    """The same pipeline (weights shared, nothing copied) with its denoiser wrapped in `WithinFrame`."""
    from kinema.pipelines import Pipeline

    return Pipeline(
        vae=pipe.vae, denoiser=WithinFrame(pipe.denoiser), text_encoder=pipe.text_encoder, process=pipe.process,
        settings=pipe.settings, provenance=pipe.provenance, precision=pipe.precision,
        model_hash=f"{pipe.model_hash}-within-frame",
    )  # fmt: skip


# ----------------------------------------------------------------------------- the generation harness


@dataclass
class Generated:
    """The clips one row made, in prompt order."""

    clips: list[np.ndarray]
    """uint8 (T, H, W, 3) each, whole (for extend: the whole extended clip)."""
    videos: list[Video]
    """The Videos as returned (with their generation metadata)."""
    seconds_per_clip: float
    """Median wall time of one clip, sampling and decoding."""


def generate_clips(
    pipe: Pipeline,
    task: EvalTask,
    prompts: Sequence[str],
    reals: Sequence[np.ndarray],
    settings: GenerationSettings,
    progress: Callable[[str], None] | None = None,
) -> Generated:
    """Make one clip per prompt with `task.make`, clip i with seed settings.seed + i."""
    clips, videos, seconds = [], [], []
    for i, (prompt, real) in enumerate(zip(prompts, reals)):
        start = time.perf_counter()
        video = task.make(pipe, prompt, real, settings.kwargs(i))
        seconds.append(time.perf_counter() - start)
        clips.append(video.frames)
        videos.append(video)
        if progress is not None:
            progress(f"{i + 1}/{len(prompts)}  {seconds[-1]:.1f}s  {prompt}")
    return Generated(clips, videos, float(np.median(seconds)) if seconds else 0.0)  # median: the first call warms up


def model_rows(pipe: Pipeline) -> list[tuple[str, str, Pipeline]]:
    """(name, label, pipeline) of the generated rows: the model, and the model with frames denoised apart."""
    return [
        ("model", "model", pipe),
        ("within_frame", "model, frames denoised apart (no temporal attention)", within_frame(pipe)),
    ]


def save_clips(directory: Path, generated: Generated, extra: Sequence[dict[str, Any]]) -> list[str]:
    """Write every clip as DIR/NNNN.mp4 with its generation metadata plus `extra` (e.g. pass/fail)."""
    from kinema.video import Video

    paths = []
    for i, (video, more) in enumerate(zip(generated.videos, extra)):
        path = Video(video.frames, fps=video.fps, metadata={**video.metadata, **more}).save(directory / f"{i:04d}.mp4")
        paths.append(str(path))
    return paths


def as_batch(clips: Sequence[np.ndarray]) -> torch.Tensor:
    """uint8 clips (T, H, W, 3) of one shape -> float (N, 3, T, H, W) in [-1, 1]."""
    return torch.from_numpy(np.stack(clips)).permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0


# ----------------------------------------------------------------------------- the shapes evaluation


REAL_FVD_NOTE = "real row: FVD against the same captions drawn again (new positions and speeds), the floor at this n"


def redraw(scenes: Sequence[Sequence[dict[str, Any]]], size: int, frames: int, seed: int) -> list[np.ndarray]:
    """The same scenes (attributes of `ShapesDataset.attributes`) rendered again with new starts and speeds."""
    from kinema.data.shapes import make_object, render_clip

    rng = np.random.default_rng(seed)
    clips = []
    for objects in scenes:
        again = [
            make_object(
                colour=a["colour"], shape=a["shape"], size=a["size"], motion=a["motion"], canvas=size, frames=frames,
                start=tuple(rng.random(2)), distance=float(rng.random()),
            )
            for a in objects
        ]  # fmt: skip
        clips.append(render_clip(again, size, frames))
    return clips


def grid_scenes(split: str, size: int, frames: int, per_combination: int) -> list[list[dict[str, Any]]]:
    """Every (colour, shape, motion) of `split` at both sizes, `per_combination` scenes each, one object.

    Each scene's start and speed are drawn from its own stream, seeded by (PROMPT_SEED, combination, size, k).
    """
    from kinema.data.shapes import SIZES, SPLIT_COMBOS, make_object

    scenes = []
    for c, s, m in SPLIT_COMBOS[split]:
        for z in range(len(SIZES)):
            for k in range(per_combination):
                rng = np.random.default_rng((PROMPT_SEED, c, s, m, z, k))
                u, v, distance = rng.random(3)
                scenes.append([
                    make_object(
                        colour=c, shape=s, size=z, motion=m, canvas=size, frames=frames, start=(u, v), distance=distance
                    )
                ])  # fmt: skip
    return scenes


def through_vae(pipe: Pipeline, clips: Sequence[np.ndarray]) -> list[np.ndarray]:
    """uint8 clips (T, H, W, 3) encoded and decoded by `pipe`'s VAE, one at a time, as uint8 clips."""
    from kinema.pipelines import common

    with torch.no_grad():
        out = []
        for clip in clips:
            frames = common.decode(pipe, common.encode(pipe, as_batch([clip])))
            out.append(common.to_videos(frames, 1.0, [{}])[0].frames)
    return out


def _accuracy(scores: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy per attribute and joint (`correct`), with 95% Wilson intervals, of probe scores."""
    from kinema.eval.metrics import proportion

    n = len(scores)
    accuracy = {k: proportion(sum(bool(s[k]) for s in scores), n) for k in ("colour", "shape", "motion")}
    accuracy["joint"] = proportion(sum(bool(s["correct"]) for s in scores), n)
    sized = [s for s in scores if s["size"] is not None]
    accuracy["size"] = proportion(sum(bool(s["size"]) for s in sized), len(sized))
    return accuracy


def clip_objects(scores: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The per-object scores of probed clips, clip by clip (`score_objects`; a one-object score is its own object)."""
    return [o for s in scores for o in s.get("objects", [s])]


def summarize_shapes(scores: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy per attribute and joint (with 95% Wilson intervals), presence and area CV of probed clips.

    scores: `score_objects` results. The area statistics are over objects; for clips of several objects,
    `per_object` adds the accuracy and presence of each object on its own, and `stray_share` the mean share
    of foreground pixels in a colour the caption does not name.
    """
    from kinema.eval.metrics import proportion

    n = len(scores)
    objects = clip_objects(scores)
    cvs = [o["measured"]["area_cv"] for o in objects if o["measured"]["area_cv"] is not None]
    areas = [o["measured"]["area"] for o in objects]
    summary = {
        "clips": n,
        "accuracy": _accuracy(scores),
        "present_all_frames": proportion(sum(s["measured"]["present_all_frames"] for s in scores), n),
        "area_cv": float(np.mean(cvs)) if cvs else None,
        "area_spread_by_frame": area_spread_by_frame(areas),
        "area_cv_parts": area_cv_parts(areas),
    }
    if len(objects) > n:
        present = sum(o["measured"]["present_all_frames"] for o in objects)
        summary["per_object"] = {"accuracy": _accuracy(objects), "present_all_frames": proportion(present, len(objects))}
        summary["stray_share"] = float(np.mean([s["measured"]["stray_share"] for s in scores]))
    return summary


def area_spread_by_frame(areas: Sequence[Sequence[int]]) -> list[float] | None:
    """How far each frame's object area strays from its clip's median area, by frame index.

    areas: the probe's foreground area per frame, one sequence per clip (clips of one length; those with no
    object are skipped). Returns, per frame t, the root mean square over clips of area[t] / median - 1:
    where in a clip the area CV comes from (e.g. the first and last frames), which the CV alone hides.
    """
    kept = np.array([a for a in areas if np.median(a) > 0], dtype=np.float64)  # (N, T)
    if kept.size == 0:
        return None
    relative = kept / np.median(kept, axis=1, keepdims=True) - 1.0
    return np.sqrt((relative**2).mean(axis=0)).tolist()


def area_cv_parts(areas: Sequence[Sequence[int]]) -> dict[str, float] | None:
    """The area CV split into drift (a straight-line trend over the clip) and jitter (about that trend).

    Per clip, area[t] is fitted by a + b t (least squares); drift is the std of the fit and jitter the std
    of the residual, each over the clip's mean area, so drift^2 + jitter^2 = CV^2 clip by clip. Returns
    their means over clips (those with no object are skipped): a size that slowly grows or shrinks is a
    different failure from a frame-to-frame flicker. None for no clips or one-frame clips.
    """
    kept = np.array([a for a in areas if np.mean(a) > 0], dtype=np.float64)  # (N, T)
    if kept.size == 0 or kept.shape[1] < 2:
        return None
    t = np.arange(kept.shape[1], dtype=np.float64)
    design = np.stack([np.ones_like(t), t], axis=1)  # (T, 2)
    fitted = design @ np.linalg.lstsq(design, kept.T, rcond=None)[0]  # (T, N)
    mean = kept.mean(axis=1)
    drift = fitted.T.std(axis=1) / mean
    jitter = (kept - fitted.T).std(axis=1) / mean
    return {"drift": float(drift.mean()), "jitter": float(jitter.mean())}


def first_frame_colour_differs(clips: Sequence[np.ndarray]) -> dict[str, Any] | None:
    """The share of clips whose frame 0 the probe reads as another colour than the rest of the clip.

    A clip's first frame is its own latent frame in a causal VAE, so it can disagree with the frames
    after it; clips where either part shows no object are not counted. clips: uint8 (T, S, S, 3); None
    when a clip has one frame.
    """
    from kinema.eval.metrics import proportion
    from kinema.eval.shapes_probe import probe

    if any(len(clip) < 2 for clip in clips):
        return None
    pairs = [(probe(clip[:1])["colour"], probe(clip[1:])["colour"]) for clip in clips]
    seen = [(a, b) for a, b in pairs if a is not None and b is not None]
    return proportion(sum(a != b for a, b in seen), len(seen))


def _temporal(clips: torch.Tensor) -> float:
    from kinema.eval.metrics import flicker

    return float(flicker(clips).mean())


def evaluate_shapes(
    pipe: Pipeline,
    *,
    model: str = "pipeline",
    n: int = 64,
    split: str = "heldout",
    task: str = "t2v",
    settings: GenerationSettings | None = None,
    i3d: str | Path | None = None,
    save_videos: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
    variants: Sequence[tuple[str, str, Any]] | None = None,
    per_combination: int | None = None,
    vae_row: bool = True,
    objects: int = 1,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Evaluate `pipe` (named `model` in the report) on `n` prompts of the shapes `split`.

    per_combination: instead of `n` random prompts, every combination of the split at both sizes,
    this many clips each (`grid_scenes`); n is then their number.
    objects: objects per prompt, 1 or 2: with 2, the prompts are the split's two-object clips, scored by the
    two-object probe (`score_objects`; a clip is correct when both objects are), and every row adds the
    per-object accuracy (`per_object`), by object size (`object_by_size`, in place of `joint_by_size`).

    Returns (report, sheet) for `kinema.eval.report.write_report(report, sheet, out, shapes_markdown)`.

    report: JSON data (settings, one row per model variant and the real reference, per-clip results);
    sheet: the model's probed clips, prompts and pass/fail for the contact sheet.
    variants: the generated rows as (name, label, pipeline); default `model_rows(pipe)`.
    vae_row: add the `vae` row (the real clips through `pipe`'s VAE, the model row's ceiling).
    """
    from kinema.data.shapes import SIZES, SPLITS, ShapesDataset, caption_for, render_clip
    from kinema.eval.fvd import feature_extractor, fvd_from_features
    from kinema.eval.metrics import proportion, psnr
    from kinema.eval.shapes_probe import score_objects

    eval_task = get_task(task)
    settings = settings or GenerationSettings()
    if split not in SPLITS:
        raise KinemaError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    if per_combination is not None and (not isinstance(per_combination, int) or per_combination < 1):
        raise KinemaError(f"--per-combination must be an int >= 1, got {per_combination!r}")
    check_objects(objects, per_combination)
    if per_combination is None and (not isinstance(n, int) or n < 2):
        raise KinemaError(f"--n must be an int >= 2 (FVD needs two clips), got {n!r}")
    size, frames = pipe.settings.height, pipe.settings.num_frames
    if pipe.settings.width != size:
        raise KinemaError(f"the shapes evaluation needs square clips; the pipeline makes {size}x{pipe.settings.width}")
    if size < 64:
        raise KinemaError(f"the shapes probe needs clips of at least 64x64 pixels (SHAPES.md); the pipeline makes {size}x{size}")

    if per_combination is None:
        data = ShapesDataset(size=size, frames=frames, split=split, objects=objects, length=n, seed=PROMPT_SEED)
        scenes = [data.attributes(i) for i in range(n)]
    else:
        scenes = grid_scenes(split, size, frames, per_combination)
        n = len(scenes)
    prompts = [caption_for(objects) for objects in scenes]
    reals = [render_clip(objects, size, frames) for objects in scenes]
    extractor = feature_extractor(i3d)
    real_batch = as_batch(reals)
    real_features = extractor(real_batch)

    object_sizes = [a["size"] for scene in scenes for a in scene]  # in the order of clip_objects

    def row(name: str, label: str, clips: list[np.ndarray], against: torch.Tensor, **extra: Any) -> tuple[dict[str, Any], list]:
        scores = [score_objects(clip, prompt) for clip, prompt in zip(clips, prompts)]
        batch = as_batch(clips)
        sized = list(zip(clip_objects(scores), object_sizes))
        by_size = {z: proportion(sum(bool(o["correct"]) for o, zz in sized if zz == z), sum(zz == z for _, zz in sized)) for z in SIZES}
        one_object = objects == 1 and not eval_task.probe_last  # the frame-0 check reads one object
        summary = {
            "name": name, "label": label, **summarize_shapes(scores), _by_size_key(objects): by_size, "flicker": _temporal(batch),
            "fvd": fvd_from_features(against, extractor(batch)),
            "first_frame_colour_differs": first_frame_colour_differs(clips) if one_object else None, **extra,
        }  # fmt: skip
        return summary, scores

    def first_frame(clips: list[np.ndarray]) -> float | None:
        if not eval_task.first_frame_psnr:
            return None
        return float(psnr(as_batch([c[:1] for c in clips]), real_batch[:, :, :1]).mean())

    rows, clip_records = [], [{"index": i, "prompt": p, "seed": settings.seed + i} for i, p in enumerate(prompts)]
    sheet: dict[str, Any] = {}
    saved: dict[str, list[str]] = {}
    for name, label, variant in variants or model_rows(pipe):
        report = (lambda msg, name=name: progress(f"[{name}] {msg}")) if progress is not None else None
        generated = generate_clips(variant, eval_task, prompts, reals, settings, report)
        probed = [eval_task.probed(clip, frames) for clip in generated.clips]
        summary, scores = row(
            name, label, probed, real_features, seconds_per_clip=generated.seconds_per_clip, first_frame_psnr=first_frame(probed)
        )
        rows.append(summary)
        for record, s in zip(clip_records, scores):
            record[name] = _brief(s)
        if save_videos is not None:
            marks = [{"eval_correct": int(s["correct"]), "eval_row": name} for s in scores]
            saved[name] = save_clips(Path(save_videos) / name, generated, marks)
        if not sheet:  # the first row: the model
            sheet = {"clips": probed[:SHEET_CLIPS], "captions": prompts[:SHEET_CLIPS], "passed": [s["correct"] for s in scores[:SHEET_CLIPS]]}
    references = []
    if vae_row:
        if progress is not None:
            progress(f"[vae] encoding and decoding the {n} real clips")
        recon = through_vae(pipe, reals)
        references.append(("vae", "real clips through the VAE (the ceiling)", recon, real_features, first_frame(recon)))
    # The real clips against the same captions drawn again: the FVD floor at this n, and the probe's 100% check.
    second_draw = extractor(as_batch(redraw(scenes, size, frames, seed=PROMPT_SEED + 1)))
    references.append(("real", "real clips (reference)", reals, second_draw, None))
    for name, label, clips, against, psnr0 in references:
        summary, scores = row(name, label, clips, against, seconds_per_clip=None, first_frame_psnr=psnr0)
        rows.append(summary)
        for record, s in zip(clip_records, scores):
            record[name] = _brief(s)

    report_data = {
        "kind": "kinema-eval-shapes",
        "model": model,
        "model_hash": pipe.model_hash,
        "task": {"name": eval_task.name, "description": eval_task.description},
        "split": split,
        "n": n,
        "per_combination": per_combination,
        "objects": objects,
        "clip": {"frames": frames, "size": size, "probed_frames": frames},
        "settings": settings.resolved(pipe),
        "fvd": {"label": extractor.label, "standard": extractor.standard, "real_row": REAL_FVD_NOTE},
        "rows": rows,
        "clips": clip_records,
    }  # fmt: skip
    if eval_task.probe_last:  # a continuation: say how much room the real clips leave it
        report_data["continuation"] = continuation(scenes, [r[rows[0]["name"]]["correct"] for r in clip_records])
    if saved:
        report_data["videos"] = saved
    return report_data, sheet


def _by_size_key(objects: int) -> str:
    """The row key of accuracy by size: of clips (one object each) or of objects (two a clip)."""
    return "joint_by_size" if objects == 1 else "object_by_size"


def _brief(s: dict[str, Any]) -> dict[str, Any]:
    """The per-clip record of a probe score: correctness per attribute and what was measured (per object)."""
    verdict = {k: s[k] for k in ("correct", "colour", "shape", "motion", "size")}
    if "objects" in s:
        return {**verdict, "stray_share": s["measured"]["stray_share"], "objects": [_brief(o) for o in s["objects"]]}
    m = s["measured"]
    return {**verdict, "measured": {k: m[k] for k in ("colour", "shape", "size", "motion", "present_all_frames", "area_cv")}}


def _prompts_line(report: dict[str, Any]) -> str:
    k = report.get("per_combination")
    if k is None:
        return f"{report['n']} random prompts"
    return f"{report['n']} prompts (every combination of the split at both sizes, {k} each)"


def shapes_markdown(report: dict[str, Any]) -> str:
    """The Markdown summary of a shapes report."""
    from kinema.eval.report import markdown_table, number, percent
    from kinema.eval.shapes_probe import STILL_MAX_DISPLACEMENT

    objects = report.get("objects", 1)  # reports from before --objects are of one object
    acc = lambda key: lambda r: percent(r["accuracy"][key])  # noqa: E731
    by_size = lambda z: lambda r: percent(r[_by_size_key(objects)][z])  # noqa: E731
    columns = [
        ("row", lambda r: r["label"]),
        ("joint (colour+shape+motion)" if objects == 1 else "joint (both objects right)", acc("joint")),
        ("colour", acc("colour")),
        ("shape", acc("shape")),
        ("motion", acc("motion")),
        ("size", acc("size")),
        ("joint, small" if objects == 1 else "object, small", by_size("small")),
        ("joint, large" if objects == 1 else "object, large", by_size("large")),
        ("present in every frame", lambda r: percent(r["present_all_frames"])),
        ("area CV", lambda r: number(r["area_cv"], 3)),
        ("flicker (levels/frame)", lambda r: number(r["flicker"])),
        (report["fvd"]["label"], lambda r: number(r["fvd"], 1)),
        ("s/clip", lambda r: number(r["seconds_per_clip"])),
    ]
    if objects > 1:  # the objects one by one, after the clip's presence and joint columns
        at = [header for header, _ in columns].index("present in every frame") + 1
        columns[at:at] = [
            ("object in every frame", lambda r: percent(r["per_object"]["present_all_frames"])),
            ("third colour", lambda r: number(r["stray_share"], 3)),
        ]
        columns[2:2] = [("object (each)", lambda r: percent(r["per_object"]["accuracy"]["joint"]))]
    if report["task"]["name"] == "i2v":
        columns.append(("frame-0 PSNR (dB)", lambda r: number(r["first_frame_psnr"])))
    s = report["settings"]
    lines = [
        f"# Shapes evaluation: {report['model']}",
        "",
        f"Task **{report['task']['name']}** ({report['task']['description']}), split **{report['split']}**, "
        f"{_prompts_line(report)}{'' if objects == 1 else f' of {objects} objects'}, "
        f"{report['clip']['frames']} frames of {report['clip']['size']}x{report['clip']['size']}. "
        f"{sampling_line(s, report['n'])} Model hash `{report['model_hash']}`.",
        "",
        markdown_table(report["rows"], columns),
        "",
        "Accuracy: share of clips whose probed attribute matches the prompt, with its 95% Wilson interval; "
        "joint = colour, shape and motion all right (size is reported apart). Flicker: mean absolute change "
        "between consecutive frames, in grey levels; compare it with the real row. The real row's FVD is against "
        "the same captions drawn again (new positions and speeds): the floor of the FVD at this n.",
    ]
    if objects > 1:
        lines.append(TWO_OBJECTS_NOTE.format(n=objects * report["n"]))
    if any(r["name"] == "vae" for r in report["rows"]):
        lines.append(VAE_ROW_NOTE)
    if not report["fvd"]["standard"]:
        lines.append(
            f"{report['fvd']['label']}: a small 3D CNN trained by kinema on shapes clips, not the I3D of published "
            "FVD numbers; compare it only with itself at the same n."
        )
    if "continuation" in report:
        c = report["continuation"]
        lines.append(
            f"Room to continue: at its own clip's speed the object stays in the canvas to the last extended frame in "
            f"{percent(c['inside_at_own_speed'])} of clips (the still ones: a moving object covers 0.3-0.5 of the canvas "
            f"every {report['clip']['frames'] - 1} frames). {percent(c['room_for_motion'])} of clips leave the object "
            f"the {STILL_MAX_DISPLACEMENT:.2f} S ahead of it that the probe needs to see its motion; on those the "
            f"model's joint accuracy is {percent(c['model_joint_with_room'])}."
        )
    over = "clips" if objects == 1 else "objects"
    spread = [r for r in report["rows"] if r.get("area_spread_by_frame")]
    if spread:
        ends = lambda v: f"{v[0]:.3f} / {float(np.median(v[1:-1])):.3f} / {v[-1]:.3f}"  # noqa: E731
        lines.append(
            f"Area by frame: how far a frame's object area strays from its clip's median (RMS over {over}), "
            "first frame / median of the middle frames / last frame: "
            + "; ".join(f"{r['label']} {ends(r['area_spread_by_frame'])}" for r in spread)
            + "."
        )
    parts = [r for r in report["rows"] if r.get("area_cv_parts")]
    if parts:
        lines.append(
            "Area CV as drift (a straight-line trend of the area over the clip) / jitter (about that trend), "
            f"means over {over}: "
            + "; ".join(f"{r['label']} {r['area_cv_parts']['drift']:.3f} / {r['area_cv_parts']['jitter']:.3f}" for r in parts)
            + "."
        )
    differs = [r for r in report["rows"] if (r.get("first_frame_colour_differs") or {}).get("n")]
    if differs:
        lines.append(
            "Frame 0 in another colour than the rest of its clip: "
            + "; ".join(f"{r['label']} {percent(r['first_frame_colour_differs'])}" for r in differs)
            + "."
        )
    real = next(r for r in report["rows"] if r["name"] == "real")
    if objects == 1 and real["accuracy"]["joint"]["rate"] != 1.0:
        lines.append("**Warning:** the real clips do not all pass the probe; its numbers cannot be trusted at this size.")
    elif objects > 1 and real["accuracy"]["joint"]["rate"] < REAL_TWO_OBJECTS_MIN:
        lines.append(
            f"**Warning:** fewer than {REAL_TWO_OBJECTS_MIN:.0%} of the real clips pass the two-object probe; "
            "its numbers cannot be trusted here."
        )
    return "\n".join(lines) + "\n"
