"""`Pipeline`: the VAE, the denoiser, the text encoder, the noise process and the sampling defaults.

    pipe = Pipeline.load("shapes")                                   # or a directory
    video = pipe.generate("a red circle moving right", num_frames=17, num_inference_steps=20, seed=0)
    clip = pipe.generate("a red circle moving right", image="first.png")
    clip = pipe.interpolate("first.png", "last.png", "a red circle moving right")
    longer = pipe.extend(video, "a red circle moving right", num_frames=48)
    edited = pipe.edit(video, "a blue circle moving right", strength=0.6, mask="mask.png")

Each method returns a `Video` (a list of them for a list of prompts or num_videos > 1); sample i
uses seed + i and is the same video whether made alone or with others. Every argument is
checked before any work, and bad ones raise `KinemaError` naming the valid values.

The container holds no generation logic: each method checks its arguments into a `Plan`
(`common.make_plan`) and calls one task function of `kinema.pipelines.tasks`.
`Pipeline(...)` + `pipe.save(dir)` is how `kinema train` exports its EMA weights.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kinema import config as cfg
from kinema import precision as precisions
from kinema.errors import KinemaError
from kinema.pipelines import common
from kinema.video import Video


SETTINGS_LIMITS = {"steps": 10_000, "num_frames": 1025, "height": 4096, "width": 4096}
"""Largest defaults a pipeline may carry: a pipeline.json asking for more (100001 frames a window) is damaged or
hostile, not a model. Callers may still ask for more per call (a long clip is made window after window)."""


@dataclass(frozen=True, kw_only=True)
class SamplingSettings:
    """A pipeline's generation defaults; every API argument and CLI flag overrides them per call."""

    sampler: str = "euler"
    """Sampler: euler, heun, dpmpp_2m, ddim, ddpm or unipc (kinema.diffusion.samplers)."""
    steps: int = 30
    """Denoising steps."""
    guidance: float = 4.0
    """Classifier-free guidance scale: 1 is off, 0 unconditional, 3-7 usual."""
    guidance_interval: tuple[float, float] | None = dataclasses.field(default=None, metadata={cfg.ALLOW_INF: True})
    """(sigma_lo, sigma_hi): guide only at these noise levels, the conditional pass alone elsewhere, which is
    cheaper (Kynkaanniemi et al. 2024); None guides every step."""
    shift: float | None = None
    """Noise-level shift of the sampling schedule (flow matching: s' = shift s / (1 + (shift - 1) s), as
    Wan's sample_shift); None samples with the process's own shift, the one it was trained with. A higher
    shift spends more of the steps at high noise, where a clip's layout and motion are decided."""
    image_first: bool = False
    """Text-to-video in two stages: frame 0 as an image (a one-frame clip), then the clip from it, as
    image-to-video (Emu Video's factorized generation); costs one extra, much smaller, sampling run."""
    num_frames: int = 17
    """Frames of a clip (1 + k * the VAE's temporal factor), and of each window of an extension."""
    height: int = 64
    """Frame height in pixels (a multiple of the VAE's spatial factor times the denoiser's patch)."""
    width: int = 64
    """Frame width in pixels (same rule as height)."""
    fps: float = 8.0
    """Frame rate of the videos made."""
    precision: str = "auto"
    """What the models run in unless the caller says otherwise: fp32, bf16 (autocast), or auto: bf16 where this
    device computes it natively (CUDA, a CPU with AVX-512 BF16 or AMX), fp32 elsewhere (`kinema.precision`)."""

    def __post_init__(self) -> None:
        from kinema.diffusion.samplers import STEPS

        if self.sampler not in STEPS:
            raise ValueError(f"SamplingSettings.sampler must be one of {', '.join(STEPS)}, got {self.sampler!r}")
        for name, most in SETTINGS_LIMITS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"SamplingSettings.{name} must be an int >= 1, got {value!r}")
            if value > most:
                raise ValueError(f"SamplingSettings.{name} must be at most {most} as a pipeline's default, got {value}")
        if not 0 <= self.guidance < math.inf:
            raise ValueError(f"SamplingSettings.guidance must be a finite number >= 0, got {self.guidance}")
        if self.guidance_interval is not None:
            from kinema.pipelines.common import check_guidance_interval

            try:  # (0, inf) is stored as None, every step
                object.__setattr__(self, "guidance_interval", check_guidance_interval(self.guidance_interval))
            except KinemaError as e:
                raise ValueError(f"SamplingSettings.{e}") from None
        if self.shift is not None and (isinstance(self.shift, bool) or not 0 < self.shift < math.inf):
            raise ValueError(f"SamplingSettings.shift must be > 0 or None, got {self.shift!r}")
        if not isinstance(self.image_first, bool):
            raise ValueError(f"SamplingSettings.image_first must be True or False, got {self.image_first!r}")
        if not 0 < self.fps < math.inf:
            raise ValueError(f"SamplingSettings.fps must be a finite number > 0, got {self.fps}")
        if self.precision not in precisions.PRECISIONS:
            raise ValueError(
                f"SamplingSettings.precision must be one of {', '.join(precisions.PRECISIONS)}, got {self.precision!r}"
            )


class Pipeline:
    """A trained text-to-video model: vae + denoiser + text_encoder + process + settings.

    vae: `VideoVAE`; denoiser: `DiT` or `UNet3D` taking latents plus the conditioning channels
    (in_channels = 2 * latent_channels + 1); text_encoder: `TextEncoder` or `HFTextEncoder`;
    process: `FlowMatching` or `VPDiffusion` (what the denoiser was trained with);
    settings: the generation defaults; provenance: JSON data saved with it (training config, step...).
    The modules are put in eval mode. precision: "fp32", "bf16" (bf16 autocast) or "auto" (bf16 where the
    device computes it natively); default: settings.precision. `pipe.precision` is what it resolved to.
    """

    def __init__(
        self,
        *,
        vae: nn.Module,
        denoiser: nn.Module,
        text_encoder: nn.Module,
        process: Any,
        settings: SamplingSettings | None = None,
        provenance: dict[str, Any] | None = None,
        precision: str | None = None,
        model_hash: str | None = None,
    ) -> None:
        from kinema.diffusion import num_channels

        latent = vae.config.latent_channels
        expect = {"in_channels": latent + num_channels(latent), "out_channels": latent, "text_dim": text_encoder.dim}
        wrong = {k: getattr(denoiser.config, k) for k, v in expect.items() if getattr(denoiser.config, k) != v}
        if wrong:
            raise KinemaError(
                f"the denoiser does not fit the VAE ({latent} latent channels) and the text encoder (dim "
                f"{text_encoder.dim}): it has {wrong}, needs { {k: expect[k] for k in wrong} }"
            )
        self.vae = vae.eval()
        self.denoiser = denoiser.eval()
        self.text_encoder = text_encoder.eval()
        self.process = process
        self.settings = settings or SamplingSettings()
        self.provenance = dict(provenance or {})
        self._precision = precisions.check_precision(self.settings.precision if precision is None else precision)
        self._hash = model_hash

    def __repr__(self) -> str:
        return (
            f"Pipeline(denoiser={type(self.denoiser).__name__}, text_encoder={type(self.text_encoder).__name__}, "
            f"process={type(self.process).__name__}, settings={self.settings}, device={self.device}, "
            f"model_hash={self.model_hash})"
        )

    # -- storage

    @classmethod
    def load(
        cls,
        name_or_path: str | os.PathLike[str] = "shapes",
        *,
        device: str | torch.device = "cpu",
        precision: str | None = None,
    ) -> Pipeline:
        """A shipped pipeline by name, or a pipeline directory; every file is checked against pipeline.json.

        precision: "fp32", "bf16" or "auto"; None takes the pipeline's `settings.precision`.
        """
        from kinema.pipelines.storage import load_pipeline

        pipe = load_pipeline(name_or_path, device=_check_device(device))
        return pipe if precision is None else pipe.to(precision=precision)

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write the pipeline directory (replacing an existing pipeline there); returns its path."""
        from kinema.pipelines.storage import save_pipeline

        return save_pipeline(self, directory)

    @property
    def model_hash(self) -> str:
        """The pipeline's content hash (components' kinds, configs, weights, and the process)."""
        if self._hash is None:
            from kinema.diffusion import process_to_dict
            from kinema.pipelines.storage import component_record, model_hash

            parts = {"vae": self.vae, "denoiser": self.denoiser, "text_encoder": self.text_encoder}
            self._hash = model_hash({k: component_record(m) for k, m in parts.items()}, process_to_dict(self.process))
        return self._hash

    # -- device and precision

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    @property
    def precision(self) -> str:
        """What the models run in on this device: "fp32" or "bf16" (an "auto" asked for, resolved)."""
        return precisions.resolve(self._precision, self.device)

    def to(self, device: str | torch.device | None = None, *, precision: str | None = None) -> Pipeline:
        """Move the models to `device` and/or set the precision ("fp32", "bf16" autocast, or "auto"); returns self."""
        if device is not None:
            device = _check_device(device)
            for module in (self.vae, self.denoiser, self.text_encoder):
                module.to(device)
        if precision is not None:
            self._precision = precisions.check_precision(precision)
        return self

    def autocast(self) -> contextlib.AbstractContextManager:
        """The context the models run in: bf16 autocast when `precision` is "bf16", else nothing."""
        return precisions.autocast(self.precision, self.device)

    def compile(self, **compile_kwargs: Any) -> Pipeline:
        """`torch.compile` the denoiser's repeated blocks, in place (`kinema.nn.compile_blocks`); returns self.

        Pays for long clips and many videos: each new size (frames, height, width, text length) compiles on
        first use (seconds on a CPU for the shipped model, more for larger ones), and every later step runs the
        compiled blocks. The VAE, the text
        encoder and the denoiser's glue stay eager; the weights, the state dict and `model_hash` are unchanged.
        compile_kwargs: `torch.compile` keywords (mode, backend, options, dynamic).
        """
        from kinema.nn import compile_blocks

        compile_blocks(self.denoiser, **compile_kwargs)
        return self

    # -- tasks

    @torch.no_grad()
    def generate(
        self,
        prompt: str | Sequence[str],
        *,
        image: Any = None,
        num_frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        guidance_interval: tuple[float, float] | None = None,
        shift: float | None = None,
        sampler: str | None = None,
        seed: int | None = None,
        num_videos: int = 1,
        fps: float | None = None,
        image_first: bool | None = None,
        window_frames: int | None = None,
        context_frames: int | None = None,
        progress: bool = False,
    ) -> Video | list[Video]:
        """Text-to-video, or image-to-video when `image` is given (it becomes frame 0).

        A clip longer than `window_frames` (default `settings.num_frames`, what the model was trained on) is
        made window after window: the first window as asked, then extension (`extend`), each window knowing
        the last `context_frames` frames so far; memory is one window's whatever num_frames is.

        prompt: a prompt, or a list (one video per prompt and seed). image: a path, `Video`, uint8 array
        or tensor (see `kinema.pipelines.inputs`); the clip takes its size unless height/width are given,
        in which case it is resized. seed: sample i uses seed + i (None: a random seed, recorded in the
        metadata). guidance_interval: (sigma_lo, sigma_hi), the noise levels where guidance runs ((0, inf):
        every step). shift: the sampling schedule's noise-level shift (see `SamplingSettings.shift`).
        image_first: text-to-video makes frame 0 first, then the clip from it (see
        `SamplingSettings.image_first`). Defaults for the rest come from `self.settings`.
        """
        from kinema.pipelines import tasks
        from kinema.pipelines.inputs import as_image, resized

        prompts, single = self._prompts(prompt, num_videos)
        picture = None
        if image is not None:
            picture = as_image(image, "image")
            height = picture.height if height is None else height
            width = picture.width if width is None else width
        window = self.settings.num_frames if window_frames is None else common.check_count(window_frames, "window_frames")
        total = window if num_frames is None else common.check_count(num_frames, "num_frames")
        long = total > window
        plan = self._plan(
            len(prompts), seed, num_inference_steps, guidance_scale, sampler, window if long else total, height, width,
            fps, guidance_interval=guidance_interval, shift=shift, image_first=image_first if picture is None else False,
            least_latents=2 if picture is not None or long else 1,  # a latent frame after the image, or the context
            frames_name="window_frames" if long else "num_frames",
        )  # fmt: skip
        runs = 2 if plan.image_first and plan.latent_shape[1] > 1 else 1  # frame 0 alone, then the clip
        chunks = self.vae.num_chunks(plan.latent_shape[1]) + (runs - 1) * self.vae.num_chunks(1)
        context, windows = 0, 0
        if long:
            common.check_frames(self, total)  # whole latent frames, as one window would make them
            context = self._context_frames(context_frames, plan)
            windows = len(tasks.extension_windows(self, plan.num_frames, total - plan.num_frames, context, plan))
            chunks += windows * self.vae.num_chunks(plan.latent_shape[1])
        elif context_frames is not None:
            raise KinemaError(f"context_frames applies to clips longer than a window ({window} frames); num_frames is {total}")
        image = None if picture is None else resized(picture, plan.height, plan.width)
        n, steps = len(prompts), plan.steps * (runs + windows)
        with common.Progress("generate", steps=n * steps, chunks=n * chunks, enabled=progress) as bar:
            if long:
                videos = tasks.long_video(self, prompts, image, total, context, plan, bar)
            elif image is None:
                videos = tasks.text_to_video(self, prompts, plan, bar)
            else:
                videos = tasks.image_to_video(self, image, prompts, plan, bar)
        return videos[0] if single else videos

    @torch.no_grad()
    def interpolate(
        self,
        first: Any,
        last: Any,
        prompt: str | Sequence[str],
        *,
        num_frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        guidance_interval: tuple[float, float] | None = None,
        shift: float | None = None,
        sampler: str | None = None,
        seed: int | None = None,
        num_videos: int = 1,
        fps: float | None = None,
        progress: bool = False,
    ) -> Video | list[Video]:
        """A clip that starts at image `first` and ends at image `last` (both resized to the clip's size).

        The size defaults to `first`'s; num_frames needs at least 1 + 2f frames (three latent frames).
        """
        from kinema.pipelines import tasks
        from kinema.pipelines.inputs import as_image, resized

        prompts, single = self._prompts(prompt, num_videos)
        start, end = as_image(first, "first"), as_image(last, "last")
        height = start.height if height is None else height
        width = start.width if width is None else width
        plan = self._plan(
            len(prompts), seed, num_inference_steps, guidance_scale, sampler, num_frames, height, width, fps,
            guidance_interval=guidance_interval, shift=shift, least_latents=3,
        )  # fmt: skip
        size = (plan.height, plan.width)
        with self._progress("interpolate", len(prompts), plan.steps, plan, progress) as bar:
            videos = tasks.interpolation(self, resized(start, *size), resized(end, *size), prompts, plan, bar)
        return videos[0] if single else videos

    @torch.no_grad()
    def extend(
        self,
        video: Any,
        prompt: str | Sequence[str],
        *,
        num_frames: int,
        context_frames: int | None = None,
        window_frames: int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        guidance_interval: tuple[float, float] | None = None,
        shift: float | None = None,
        sampler: str | None = None,
        seed: int | None = None,
        num_videos: int = 1,
        fps: float | None = None,
        progress: bool = False,
    ) -> Video | list[Video]:
        """`video` continued by `num_frames` frames, window after window; returns the whole clip.

        prompt: one prompt, or a list with one prompt per window (the prompt may change along the clip;
            `extension_windows` / the error message say how many windows a length takes).
        context_frames: frames of the clip so far each window sees (1 + k * f; default about half a window).
        window_frames: frames per window (default `settings.num_frames`, what the model was trained on).
        Memory is that of one window whatever the length. The video keeps its size; fps defaults to its own.
        """
        from kinema.pipelines import tasks
        from kinema.pipelines.inputs import as_video

        clip = as_video(video, "video")
        new_frames = common.check_count(num_frames, "num_frames (frames to add)")
        num_videos = common.check_count(num_videos, "num_videos")
        window_prompts = common.check_prompts(prompt)
        plan = self._plan(
            num_videos, seed, num_inference_steps, guidance_scale, sampler, window_frames, clip.height, clip.width,
            clip.fps if fps is None else fps, least_latents=2, frames_name="window_frames",
            guidance_interval=guidance_interval, shift=shift,
        )  # fmt: skip
        context = self._context_frames(context_frames, plan)
        adds = tasks.extension_windows(self, clip.num_frames, new_frames, context, plan)
        if len(window_prompts) == 1:
            window_prompts = window_prompts * len(adds)
        elif len(window_prompts) != len(adds):
            raise KinemaError(
                f"{len(window_prompts)} prompts for {len(adds)} windows: adding {new_frames} frames in windows of "
                f"{plan.num_frames} frames with {context} frames of context takes {len(adds)} windows; "
                f"give one prompt, or {len(adds)} (one per window)"
            )
        with self._progress("extend", num_videos * len(adds), plan.steps, plan, progress) as bar:
            videos = tasks.extension(self, clip, window_prompts, new_frames, context, plan, bar)
        return videos[0] if num_videos == 1 else videos

    @torch.no_grad()
    def edit(
        self,
        video: Any,
        prompt: str | Sequence[str],
        *,
        strength: float = 0.6,
        mask: Any = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        guidance_interval: tuple[float, float] | None = None,
        shift: float | None = None,
        sampler: str | None = None,
        seed: int | None = None,
        num_videos: int = 1,
        fps: float | None = None,
        progress: bool = False,
    ) -> Video | list[Video]:
        """`video` re-made under `prompt` (SDEdit); with `mask` (white = regenerate) only inside the mask.

        strength in (0, 1]: how far up the noise schedule the clip is taken (the last strength * steps
        steps run, rounded); 1 regenerates from pure noise. mask: an image (every frame) or a clip of masks of
        the video's size; pixels outside it are returned exactly as given.
        """
        from kinema.pipelines import tasks
        from kinema.pipelines.inputs import as_mask, as_video

        clip = as_video(video, "video")
        prompts, single = self._prompts(prompt, num_videos)
        strength = common.check_strength(strength)
        pixels = None if mask is None else as_mask(mask, clip)
        plan = self._plan(
            len(prompts), seed, num_inference_steps, guidance_scale, sampler, clip.num_frames, clip.height, clip.width,
            clip.fps if fps is None else fps, frames_name="video frames", guidance_interval=guidance_interval, shift=shift,
        )  # fmt: skip
        run = tasks.edit_steps(strength, plan.steps)
        with self._progress("edit", len(prompts), run, plan, progress) as bar:
            videos = tasks.edit(self, clip, prompts, strength, pixels, plan, bar)
        return videos[0] if single else videos

    # -- argument checks shared by the methods

    def _prompts(self, prompt: str | Sequence[str], num_videos: int) -> tuple[list[str], bool]:
        """One prompt per sample (each prompt num_videos times), and whether one Video is returned."""
        prompts = common.check_prompts(prompt)
        num_videos = common.check_count(num_videos, "num_videos")
        return [p for p in prompts for _ in range(num_videos)], isinstance(prompt, str) and num_videos == 1

    def _progress(self, task: str, runs: int, steps: int, plan: common.Plan, enabled: bool) -> common.Progress:
        """Bars for `runs` sampling runs of `steps` steps, each decoding a clip of the plan's latent frames."""
        chunks = runs * self.vae.num_chunks(plan.latent_shape[1])
        return common.Progress(task, steps=runs * steps, chunks=chunks, enabled=enabled)

    def _plan(self, num_samples, seed, steps, guidance, sampler, num_frames, height, width, fps, **kwargs) -> common.Plan:
        return common.make_plan(
            self, num_samples=num_samples, seed=seed, sampler=sampler, steps=steps, guidance=guidance,
            num_frames=num_frames, height=height, width=width, fps=fps, **kwargs,
        )  # fmt: skip

    def _context_frames(self, context_frames: int | None, plan: common.Plan) -> int:
        """Context of each extension window in pixel frames: 1 + f(k - 1) for k known latent frames < the window's."""
        f, window = self.vae.config.temporal_factor, plan.latent_shape[1]
        if context_frames is None:
            return 1 + f * (max(1, window // 2) - 1)
        common.check_count(context_frames, "context_frames")
        most = 1 + f * (window - 2)
        if (context_frames - 1) % f or context_frames > most:
            below = min(most, 1 + f * ((context_frames - 1) // f))
            near = sorted({below, min(most, below + f)})
            raise KinemaError(
                f"context_frames={context_frames} cannot be used: a window of {plan.num_frames} frames takes "
                f"1 + {f}k context frames, at most {most} (one latent frame must be new); use {' or '.join(map(str, near))}"
            )
        return context_frames


def _check_device(device: str | torch.device) -> torch.device:
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise KinemaError(f"device {device!r} is not a device; use cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise KinemaError("device cuda asked for, but CUDA is not available here (a CPU build of torch?); use cpu")
    return device
