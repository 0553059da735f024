"""The shapes evaluation: generate clips from the prompts of a split, probe them, and set them beside references.

    prompts of the split (fixed dataset seed) ─▶ pipeline (seed + i per clip) ─▶ clips ─▶ shapes probe ─▶ report
                                              └▶ the same pipeline, frames denoised apart ─▶ ... (reference)
    the real rendered clip of every prompt ─▶ the pipeline's VAE, encoded and decoded ─▶ ... (the ceiling)
                                          └────────────────────────────────────────▶ ... (reference, must be 100%)

A task is data (`EvalTask`): how a clip is made from (prompt, the real clip)
and which of its frames the probe reads:

    t2v     the prompt alone; the probe reads all frames
    i2v     the prompt and the real clip's first frame; also the PSNR of generated frame 0 against it
    extend  the real clip continued to --frames frames (default 4x its length: 65 for 17) with the prompt, on
            prompts of lasting motions (bouncing, still); the probe reads every 17-frame window (frames 16k ..
            16k + 16, SHAPES.md), the row's accuracy is the last window's, and the report adds the accuracy of
            window k against k (`windows`, a table and a plot) and the share of still objects that stay put

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

import itertools
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


MakeClip = Callable[["Pipeline", str, np.ndarray, int, dict[str, Any]], "Video"]


def _text_to_video(pipe: Pipeline, prompt: str, real: np.ndarray, frames: int, kw: dict[str, Any]) -> Video:
    return pipe.generate(prompt, num_frames=frames, height=real.shape[1], width=real.shape[2], **kw)


def _image_to_video(pipe: Pipeline, prompt: str, real: np.ndarray, frames: int, kw: dict[str, Any]) -> Video:
    return pipe.generate(prompt, image=real[:1], num_frames=frames, **kw)


def _extend(pipe: Pipeline, prompt: str, real: np.ndarray, frames: int, kw: dict[str, Any]) -> Video:
    kw = {k: v for k, v in kw.items() if k != "image_first"}  # a text-to-video setting; the clip gives frame 0
    return pipe.extend(real, prompt, num_frames=frames - len(real), **kw)


def lasting_scenes(split: str, size: int, frames: int, n: int) -> list[list[dict[str, Any]]]:
    """n one-object scenes of `split` whose motion lasts at any length, as the extend task draws them: a
    one-way motion leaves the canvas within a few clips' length, so its continuation has no right answer.
    Scene i is bouncing left and right, bouncing up and down or still as i % 3; its combination (of that
    motion), size, start and speed come from a stream seeded by (PROMPT_SEED, i)."""
    from kinema.data.shapes import MOTIONS, SIZES, SPLIT_COMBOS, make_object

    lasting = [MOTIONS.index(m) for m in ("bouncing left and right", "bouncing up and down", "still")]
    pools = [[(c, s, m) for c, s, m in SPLIT_COMBOS[split] if m == motion] for motion in lasting]
    scenes = []
    for i in range(n):
        rng = np.random.default_rng((PROMPT_SEED, i))
        pool = pools[i % 3]
        c, s, m = pool[rng.integers(len(pool))]
        z, (u, v, distance) = int(rng.integers(len(SIZES))), rng.random(3)
        scenes.append([make_object(colour=c, shape=s, size=z, motion=m, canvas=size, frames=frames, start=(u, v), distance=distance)])
    return scenes


def told_apart(scene: Sequence[dict[str, Any]], frames: int) -> bool:
    """Whether the probe can tell every object's motion in a clip of `frames` frames: bouncing takes a
    17-frame window (SHAPES.md: every such window holds a reversal), so shorter clips leave it out."""
    from kinema.data.shapes import is_bouncing
    from kinema.eval.shapes_probe import WINDOW

    return frames >= WINDOW or not any(is_bouncing(a["motion"]) for a in scene)


def still_stays_put(clips: Sequence[np.ndarray], scenes: Sequence[Sequence[dict[str, Any]]]) -> dict[str, Any]:
    """Of the clips whose prompt is one still object, the share whose object moved less than
    STILL_MAX_DISPLACEMENT * S over the whole clip (the probe's displacement, first two frames to last two)."""
    from kinema.eval.metrics import proportion
    from kinema.eval.shapes_probe import STILL_MAX_DISPLACEMENT, probe

    still = [clip for clip, scene in zip(clips, scenes) if len(scene) == 1 and scene[0]["motion"] == "still"]
    moved = [probe(clip)["displacement"] for clip in still]
    put = sum(d is not None and float(np.hypot(*d)) < STILL_MAX_DISPLACEMENT * clip.shape[1] for d, clip in zip(moved, still))
    return proportion(put, len(still))


@dataclass(frozen=True)
class EvalTask:
    """One way of making an evaluation clip from (prompt, real clip), and what of it is measured."""

    name: str
    """Name on the command line and in reports."""
    description: str
    """One line for the report."""
    make: MakeClip
    """(pipeline, prompt, real clip uint8 (T, S, S, 3), frames to make, sampling keywords) -> Video."""
    continues: bool = False
    """The clip runs on past the real one, to the evaluation's `frames`: prompts of lasting motions only
    (`lasting_scenes`), every WINDOW-frame window probed, and the row's accuracy is the last window's."""
    first_frame_psnr: bool = False
    """Report the PSNR of generated frame 0 against the real frame 0 that was given."""


TASKS: dict[str, EvalTask] = {
    task.name: task
    for task in (
        EvalTask("t2v", "text-to-video: the prompt alone", _text_to_video),
        EvalTask("i2v", "image-to-video: the prompt and the real first frame", _image_to_video, first_frame_psnr=True),
        EvalTask("extend", "extension: the real clip continued window after window, every 17-frame window probed", _extend, continues=True),
    )
}  # fmt: skip


def check_objects(objects: int, per_combination: int | None, task: str = "t2v") -> None:
    """Refuse an object count the shapes data does not draw, or a grid of combinations (one object each) with two."""
    if objects not in (1, 2):
        raise KinemaError(f"--objects must be 1 or 2 (objects per prompt, as the shapes data draws them), got {objects!r}")
    if objects == 2 and per_combination is not None:
        raise KinemaError("--per-combination covers the one-object combinations; with --objects 2 give --n prompts instead")
    if task in TASKS and TASKS[task].continues and (objects != 1 or per_combination is not None):
        raise KinemaError(
            f"--task {task} draws one-object prompts of lasting motions (bouncing, still); leave out --objects and --per-combination"
        )


def eval_frames(task: EvalTask, window: int, frames: int | None) -> int:
    """Frames of every clip of the evaluation: the pipeline's window, or for a task that continues the real
    clip `frames` (default 1 + EXTEND_FACTOR * (window - 1)), at least one probe window and longer than the clip."""
    from kinema.eval.shapes_probe import WINDOW

    if not task.continues:
        if frames is not None and frames != window:
            raise KinemaError(f"--frames applies to --task extend; {task.name} makes clips of the pipeline's {window} frames")
        return window
    total = 1 + EXTEND_FACTOR * (window - 1) if frames is None else frames
    if not isinstance(total, int) or total <= window or total < WINDOW:
        raise KinemaError(
            f"--frames {total}: the extend task continues the pipeline's {window}-frame clip to more frames, at "
            f"least {max(window + 1, WINDOW)} (one {WINDOW}-frame probe window), e.g. {1 + EXTEND_FACTOR * (window - 1)}"
        )
    return total


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
    frames: int | None = None,
) -> Generated:
    """Make one clip per prompt with `task.make`, clip i with seed settings.seed + i, of `frames` frames
    (default the real clip's)."""
    clips, videos, seconds = [], [], []
    for i, (prompt, real) in enumerate(zip(prompts, reals)):
        start = time.perf_counter()
        video = task.make(pipe, prompt, real, len(real) if frames is None else frames, settings.kwargs(i))
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
    """Every (colour, shape, motion) of `split` at both sizes, `per_combination` scenes each, one object
    (bouncing only at `frames` >= 17, where the probe can tell it: `told_apart`).

    Each scene's start and speed are drawn from its own stream, seeded by (PROMPT_SEED, combination, size, k).
    """
    from kinema.data.shapes import SIZES, SPLIT_COMBOS, is_bouncing, make_object
    from kinema.eval.shapes_probe import WINDOW

    scenes = []
    for c, s, m in SPLIT_COMBOS[split]:
        if frames < WINDOW and is_bouncing(m):
            continue
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
    frames: int | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Evaluate `pipe` (named `model` in the report) on `n` prompts of the shapes `split`.

    per_combination: instead of `n` random prompts, every combination of the split at both sizes,
    this many clips each (`grid_scenes`); n is then their number.
    objects: objects per prompt, 1 or 2: with 2, the prompts are the split's two-object clips, scored by the
    two-object probe (`score_objects`; a clip is correct when both objects are), and every row adds the
    per-object accuracy (`per_object`), by object size (`object_by_size`, in place of `joint_by_size`).
    frames: the extend task's length (`eval_frames`); the real row is then the real clip rendered that long, and
    every row adds `windows` (accuracy per probe window) and `still_stays_put`.

    Returns (report, sheet) for `kinema.eval.report.write_report(report, sheet, out, shapes_markdown)`.

    report: JSON data (settings, one row per model variant and the real reference, per-clip results);
    sheet: the model's probed clips, prompts and pass/fail for the contact sheet.
    variants: the generated rows as (name, label, pipeline); default `model_rows(pipe)`.
    vae_row: add the `vae` row (the real clips through `pipe`'s VAE, the model row's ceiling).
    """
    from kinema.data.shapes import SIZES, SPLITS, ShapesDataset, caption_for, render_clip
    from kinema.eval.fvd import feature_extractor, fvd_from_features
    from kinema.eval.metrics import proportion, psnr
    from kinema.eval.shapes_probe import score_objects, window_frames

    eval_task = get_task(task)
    settings = settings or GenerationSettings()
    if split not in SPLITS:
        raise KinemaError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    if per_combination is not None and (not isinstance(per_combination, int) or per_combination < 1):
        raise KinemaError(f"--per-combination must be an int >= 1, got {per_combination!r}")
    check_objects(objects, per_combination, task)
    if per_combination is None and (not isinstance(n, int) or n < 2):
        raise KinemaError(f"--n must be an int >= 2 (FVD needs two clips), got {n!r}")
    size, window = pipe.settings.height, pipe.settings.num_frames
    total = eval_frames(eval_task, window, frames)
    if pipe.settings.width != size:
        raise KinemaError(f"the shapes evaluation needs square clips; the pipeline makes {size}x{pipe.settings.width}")
    if size < 64:
        raise KinemaError(f"the shapes probe needs clips of at least 64x64 pixels (SHAPES.md); the pipeline makes {size}x{size}")

    if eval_task.continues:
        scenes = lasting_scenes(split, size, window, n)
    elif per_combination is None:
        data = ShapesDataset(size=size, frames=window, split=split, objects=objects, length=64 * n, seed=PROMPT_SEED)
        scenes = list(itertools.islice((a for a in map(data.attributes, range(len(data))) if told_apart(a, window)), n))
    else:
        scenes = grid_scenes(split, size, window, per_combination)
        n = len(scenes)
    prompts = [caption_for(objects) for objects in scenes]
    givens = [render_clip(objects, size, window) for objects in scenes]  # what the tasks are given
    reals = givens if total == window else [render_clip(objects, size, total) for objects in scenes]
    extractor = feature_extractor(i3d)
    real_batch = as_batch(reals)
    real_features = extractor(real_batch)
    windows = window_frames(total) if eval_task.continues else [slice(0, total)]

    object_sizes = [a["size"] for scene in scenes for a in scene]  # in the order of clip_objects

    def row(name: str, label: str, clips: list[np.ndarray], against: torch.Tensor, **extra: Any) -> tuple[dict[str, Any], list]:
        by_window = [[score_objects(clip[w], prompt) for clip, prompt in zip(clips, prompts)] for w in windows]
        scores = by_window[-1]  # the row's accuracy: the last window's (the whole clip but for extend)
        batch = as_batch(clips)
        sized = list(zip(clip_objects(scores), object_sizes))
        by_size = {z: proportion(sum(bool(o["correct"]) for o, zz in sized if zz == z), sum(zz == z for _, zz in sized)) for z in SIZES}
        one_object = objects == 1 and not eval_task.continues  # the frame-0 check reads one object
        summary = {
            "name": name, "label": label, **summarize_shapes(scores), _by_size_key(objects): by_size, "flicker": _temporal(batch),
            "fvd": fvd_from_features(against, extractor(batch)),
            "first_frame_colour_differs": first_frame_colour_differs(clips) if one_object else None, **extra,
        }  # fmt: skip
        if eval_task.continues:
            bouncing = [bool(scene[0]["bouncing"]) for scene in scenes]
            summary["windows"] = [
                {"frames": [w.start, w.stop], "accuracy": _accuracy(s),
                 "bouncing_joint": proportion(sum(bool(x["correct"]) for x, b in zip(s, bouncing) if b), sum(bouncing))}
                for w, s in zip(windows, by_window)
            ]  # fmt: skip
            summary["still_stays_put"] = still_stays_put(clips, scenes)
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
        generated = generate_clips(variant, eval_task, prompts, givens, settings, report, frames=total)
        summary, scores = row(
            name, label, generated.clips, real_features, seconds_per_clip=generated.seconds_per_clip,
            first_frame_psnr=first_frame(generated.clips),
        )
        rows.append(summary)
        for record, s in zip(clip_records, scores):
            record[name] = _brief(s)
        if save_videos is not None:
            marks = [{"eval_correct": int(s["correct"]), "eval_row": name} for s in scores]
            saved[name] = save_clips(Path(save_videos) / name, generated, marks)
        if not sheet:  # the first row: the model, its last probe window
            shown = [clip[windows[-1]] for clip in generated.clips[:SHEET_CLIPS]]
            sheet = {"clips": shown, "captions": prompts[:SHEET_CLIPS], "passed": [s["correct"] for s in scores[:SHEET_CLIPS]]}
    references = []
    if vae_row:
        if progress is not None:
            progress(f"[vae] encoding and decoding the {n} real clips")
        recon = through_vae(pipe, reals)
        references.append(("vae", "real clips through the VAE (the ceiling)", recon, real_features, first_frame(recon)))
    # The real clips against the same captions drawn again: the FVD floor at this n, and the probe's 100% check.
    second_draw = extractor(as_batch(redraw(scenes, size, total, seed=PROMPT_SEED + 1)))
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
        "clip": {"frames": total, "size": size, "given_frames": window if eval_task.continues else None,
                 "probe_windows": [[w.start, w.stop] for w in windows]},
        "settings": settings.resolved(pipe),
        "fvd": {"label": extractor.label, "standard": extractor.standard, "real_row": REAL_FVD_NOTE},
        "rows": rows,
        "clips": clip_records,
    }  # fmt: skip
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


def window_lines(report: dict[str, Any]) -> list[str]:
    """The extend report's per-window joint accuracy (a table, rows by windows) and its still-object line."""
    from kinema.eval.report import markdown_table, percent
    from kinema.eval.shapes_probe import STILL_MAX_DISPLACEMENT

    rows = [r for r in report["rows"] if "windows" in r]
    spans = [w["frames"] for w in rows[0]["windows"]]

    def table(joint: Callable[[dict[str, Any]], dict[str, Any]]) -> str:
        columns = [("row", lambda r: r["label"])] + [
            (f"window {k} (frames {a}-{b - 1})", lambda r, k=k: percent(joint(r["windows"][k]))) for k, (a, b) in enumerate(spans)
        ]
        return markdown_table(rows, columns)

    given = report["clip"].get("given_frames")
    still = "; ".join(f"{r['label']} {percent(r['still_stays_put'])}" for r in rows if r["still_stays_put"]["n"])
    return [
        f"Joint accuracy by window, the probe reading each {spans[0][1] - spans[0][0]}-frame window on its own"
        + (f" (the first {given} frames are the real clip the model was given)" if given else "") + ". Bouncing prompts:",
        "",
        table(lambda w: w["bouncing_joint"]),
        "",
        "All prompts (bouncing and still):",
        "",
        table(lambda w: w["accuracy"]["joint"]),
        "",
        f"Still objects that stay put (moved < {STILL_MAX_DISPLACEMENT:.2f} S over the whole clip): {still or 'no still prompts'}.",
    ]


def draw_windows(report: dict[str, Any], path: str | Path) -> None:
    """The per-window joint accuracy of every row as a PNG line chart (window k against k), written atomically."""
    from PIL import Image, ImageDraw

    from kinema.atomic import atomic_write

    rows = [r for r in report["rows"] if "windows" in r]
    count = len(rows[0]["windows"])
    W, H, left, right, top, bottom = 640, 360, 50, 170, 20, 40
    x_of = lambda k: left + (k / max(count - 1, 1)) * (W - left - right)  # noqa: E731
    y_of = lambda v: top + (1.0 - v) * (H - top - bottom)  # noqa: E731
    image = Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(image)
    for v in (0.0, 0.25, 0.5, 0.75, 1.0):
        draw.line([(left, y_of(v)), (W - right, y_of(v))], fill=(230, 230, 230))
        draw.text((8, y_of(v) - 6), f"{v:.0%}", fill="black")
    for k in range(count):
        draw.text((x_of(k) - 3, H - bottom + 6), str(k), fill="black")
    draw.rectangle([left, top, W - right, H - bottom], outline="black")
    draw.text(((W - right + left) / 2 - 60, H - 16), "window (16 frames each)", fill="black")
    colours = [(30, 90, 200), (220, 120, 30), (120, 120, 120), (40, 160, 60), (180, 40, 160)]
    for i, r in enumerate(rows):
        colour = colours[i % len(colours)]
        points = [(x_of(k), y_of(w["accuracy"]["joint"]["rate"])) for k, w in enumerate(r["windows"])]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for x, y in points:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        draw.text((W - right + 10, top + 16 * i), r["name"], fill=colour)
    draw.text((left + 5, top + 3), "joint accuracy", fill="black")
    atomic_write(Path(path), lambda tmp: image.save(tmp, format="PNG"))


def shapes_markdown(report: dict[str, Any]) -> str:
    """The Markdown summary of a shapes report."""
    from kinema.eval.report import markdown_table, number, percent

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
    if any("windows" in r for r in report["rows"]):
        lines += ["", *window_lines(report)]
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
