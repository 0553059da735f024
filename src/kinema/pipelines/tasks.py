"""The tasks, one thin function each: which latent frames are known, then the shared sampling.

Every task is "generate the latent frames that are not given" (DESIGN.md). With the causal VAE
(temporal factor f) latent frame 0 is pixel frame 0 alone and latent frame j >= 1 is pixel frames
f(j - 1) + 1 .. fj, so:

    text-to-video    nothing known
    image-to-video   the image encoded alone (a one-frame video) is latent frame 0
    interpolation    latent frame 0 from `first`; the last latent frame from `last` held for 1 + f frames
    extension        the clip's last 1 + f(k - 1) frames re-encoded as a fresh clip are latent frames 0..k-1
                     of a window; the window's new frames are appended; repeat (memory of one window)
    long video       text- or image-to-video for the first window, then extension to the asked length
    edit             SDEdit: the clip's latents noised to the level `strength` of the way up the schedule,
                     then denoised under the new prompt; with a mask, everything outside it is known

Each function takes a checked `Plan` (`common.make_plan`) and returns one `Video` per seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from kinema.diffusion import conditioning
from kinema.errors import KinemaError
from kinema.pipelines.common import (
    QUIET,
    Plan,
    Progress,
    decode,
    draw_noise,
    encode,
    encode_prompts,
    metadata,
    prepare_noise,
    run_sampler,
    SampleRandom,
    TextInputs,
    sample_and_decode,
    sample_random,
    sampling_sigmas,
    to_videos,
)
from kinema.video import Video, to_tensor, to_uint8

if TYPE_CHECKING:
    from kinema.pipelines.pipeline import Pipeline

def _batch(x: Tensor, n: int) -> Tensor:
    """The known latents of one input, shared by n samples: (1, ...) -> (n, ...)."""
    return x.expand(n, *x.shape[1:])


def text_to_video(
    pipe: Pipeline, prompts: Sequence[str], plan: Plan, progress: Progress = QUIET, rngs: Sequence[SampleRandom] | None = None
) -> list[Video]:
    """A clip per (prompt, seed) from noise alone; with plan.image_first, frame 0 first, then the rest.

    The factorized way (Emu Video) samples frame 0 as a one-frame clip, then the clip from that image
    as image-to-video does: the frame is settled before any motion is drawn. The image goes through
    pixels (uint8, as saved) and is encoded again, so the known latent is one the encoder makes, as in
    training; keeping the sampled latent instead measured 5 points lower joint accuracy on the shapes probe.
    """
    n, (c, t, h, w) = len(plan.seeds), plan.latent_shape
    if not plan.image_first or t == 1:
        cond = conditioning.text_to_video((n, *plan.latent_shape), device=pipe.device)
        return sample_and_decode(pipe, "text-to-video", prompts, cond, plan, progress, rngs)
    texts = encode_prompts(pipe.text_encoder, prompts)
    if rngs is None:
        noise, rngs = prepare_noise((c, 1, h, w), plan.seeds, device=pipe.device)
    else:
        noise = draw_noise((c, 1, h, w), rngs, device=pipe.device)
    blank = conditioning.text_to_video((n, c, 1, h, w), device=pipe.device)
    image = run_sampler(pipe, noise, blank, texts, plan, rngs, progress=progress)
    pixels = torch.stack([to_tensor(frames) for frames in to_uint8(decode(pipe, image, progress))])  # as saved: uint8 levels
    first = encode(pipe, pixels)  # (n, C, 1, h, w)
    noise = draw_noise(plan.latent_shape, rngs, device=pipe.device)  # each sample's next draws
    latents = run_sampler(pipe, noise, conditioning.image_to_video(first, t), texts, plan, rngs, progress=progress)
    return to_videos(decode(pipe, latents, progress), plan.fps, metadata(pipe, plan, "text-to-video", prompts, image_first=True))


def image_to_video(
    pipe: Pipeline,
    image: Video,
    prompts: Sequence[str],
    plan: Plan,
    progress: Progress = QUIET,
    rngs: Sequence[SampleRandom] | None = None,
) -> list[Video]:
    """A clip per (prompt, seed) whose frame 0 is `image` (as the VAE reconstructs it)."""
    first = encode(pipe, image.to_tensor()[None])  # (1, C, 1, h, w)
    cond = conditioning.image_to_video(_batch(first, len(plan.seeds)), plan.latent_shape[1])
    return sample_and_decode(pipe, "image-to-video", prompts, cond, plan, progress, rngs)


def interpolation(
    pipe: Pipeline, first: Video, last: Video, prompts: Sequence[str], plan: Plan, progress: Progress = QUIET
) -> list[Video]:
    """A clip per (prompt, seed) from `first` to `last`.

    Training knows the first and the last latent frame of a real clip; the last one encodes its
    final f frames with the frames just before them in the causal context. The nearest thing one
    image gives is `last` held still: encode 1 + f copies of it and keep latent frame 1. (Zeros
    before it, as Wan's FLF2V pads, would put grey frames into that context.)
    """
    f = pipe.vae.config.temporal_factor
    start = encode(pipe, first.to_tensor()[None])  # (1, C, 1, h, w)
    held = last.to_tensor().expand(-1, 1 + f, -1, -1)  # (3, 1 + f, H, W)
    end = encode(pipe, held[None])[:, :, -1:]
    n = len(plan.seeds)
    cond = conditioning.interpolation(_batch(start, n), _batch(end, n), plan.latent_shape[1])
    return sample_and_decode(pipe, "interpolation", prompts, cond, plan, progress)


# ----------------------------------------------------------------------------------------------
# Extension


def context_for(pipe: Pipeline, clip_frames: int, context_frames: int) -> int:
    """Pixel frames of context a clip of `clip_frames` gives: context_frames, or the most 1 + fk it has."""
    f = pipe.vae.config.temporal_factor
    return min(context_frames, 1 + f * ((clip_frames - 1) // f))


def extension_windows(pipe: Pipeline, clip_frames: int, new_frames: int, context_frames: int, plan: Plan) -> list[int]:
    """New frames each window adds (the last one trimmed), for a clip of clip_frames extended by new_frames.

    A window is plan.num_frames frames; its first `context` frames are known (fewer in the first
    window when the clip is shorter), the rest are new.
    """
    windows, made, context = [], 0, context_for(pipe, clip_frames, context_frames)
    while made < new_frames:
        add = min(plan.num_frames - context, new_frames - made)
        windows.append(add)
        made += add
        context = context_frames
    return windows


def extension(
    pipe: Pipeline,
    clip: Video,
    window_prompts: Sequence[str],
    new_frames: int,
    context_frames: int,
    plan: Plan,
    progress: Progress = QUIET,
) -> list[Video]:
    """Per seed, `clip` followed by `new_frames` generated frames, window after window.

    Window w is conditioned on the last `context_frames` frames so far (re-encoded as a fresh clip,
    whose latents are valid first frames for the causal VAE) and on window_prompts[w]. Only one
    window is ever in the denoiser or the VAE; the frames made so far are kept as uint8.
    """
    texts = encode_prompts(pipe.text_encoder, window_prompts)
    videos = [
        continued(pipe, clip.frames, texts, new_frames, context_frames, plan, sample_random(seed, pipe.device), progress)
        for seed in plan.seeds  # one sample at a time, as alone
    ]
    prompt = list(window_prompts) if len(set(window_prompts)) > 1 else window_prompts[0]
    meta = metadata(
        pipe, plan, "extension", [prompt] * len(plan.seeds),
        input_frames=clip.num_frames, context_frames=context_frames, window_frames=plan.num_frames,
    )  # fmt: skip
    return [Video(frames, fps=plan.fps, metadata=m) for frames, m in zip(videos, meta)]


def continued(
    pipe: Pipeline,
    frames: np.ndarray,
    texts: Sequence[TextInputs],
    new_frames: int,
    context_frames: int,
    plan: Plan,
    rng: SampleRandom,
    progress: Progress = QUIET,
) -> np.ndarray:
    """uint8 frames (T, H, W, 3) followed by `new_frames` frames made window after window, one sample.

    texts: the encoded prompt of each window (`encode_prompts`); rng: the sample's random streams, drawn on.
    Each window knows the last `context_frames` frames so far, re-encoded as a fresh clip: the causal VAE's
    latent frame 0 is one frame alone, so the previous window's own latent frames (frame 0 of four) would
    not be valid first latents of the next.
    """
    adds = extension_windows(pipe, len(frames), new_frames, context_frames, plan)
    first_context = context_for(pipe, len(frames), context_frames)
    tail = to_tensor(frames[len(frames) - first_context :])  # (3, context, H, W)
    pieces = [frames]
    for w, add in enumerate(adds):
        known = encode(pipe, tail[None])  # (1, C, k, h, w)
        cond = conditioning.extension(known, plan.latent_shape[1])
        noise = draw_noise(plan.latent_shape, [rng], device=pipe.device)
        latents = run_sampler(pipe, noise, cond, [texts[w]], plan, [rng], progress=progress)
        new = decode(pipe, latents, progress)[0, :, tail.shape[1] :]  # (3, frames after the context, H, W)
        pieces.append(to_uint8(new[:, :add]))
        tail = torch.cat([tail, new], dim=1)[:, -context_frames:]
    return np.concatenate(pieces)


def long_video(
    pipe: Pipeline,
    prompts: Sequence[str],
    image: Video | None,
    num_frames: int,
    context_frames: int,
    plan: Plan,
    progress: Progress = QUIET,
) -> list[Video]:
    """A clip per (prompt, seed) of `num_frames` frames, longer than the plan's window: text-to-video (or
    image-to-video from `image`) makes the first window, then extension adds the rest, window after window,
    each knowing the last `context_frames` frames. Memory is one window's whatever the length; each sample
    draws every window's noise from its own seed's streams, so a sample is the same alone or in a batch."""
    rngs = [sample_random(seed, pipe.device) for seed in plan.seeds]
    if image is None:
        firsts = text_to_video(pipe, prompts, plan, progress, rngs)
    else:
        firsts = image_to_video(pipe, image, prompts, plan, progress, rngs)
    new_frames = num_frames - plan.num_frames
    windows = len(extension_windows(pipe, plan.num_frames, new_frames, context_frames, plan))
    videos = []
    for prompt, first, rng in zip(prompts, firsts, rngs):
        texts = encode_prompts(pipe.text_encoder, [prompt] * windows)
        frames = continued(pipe, first.frames, texts, new_frames, context_frames, plan, rng, progress)
        videos.append(frames)
    task = "text-to-video" if image is None else "image-to-video"
    meta = metadata(pipe, plan, task, prompts, window_frames=plan.num_frames, context_frames=context_frames)
    return [Video(frames, fps=plan.fps, metadata=m) for frames, m in zip(videos, meta)]


# ----------------------------------------------------------------------------------------------
# Editing


def edit_steps(strength: float, steps: int) -> int:
    """Steps an edit runs: the last strength * steps of the schedule, rounded half up; at least one, or an error."""
    run = math.floor(strength * steps + 0.5)
    if run < 1:
        raise KinemaError(
            f"strength {strength} of {steps} steps runs no step; use strength >= {0.5 / steps:.3g} or more steps"
        )
    return run


def latent_mask(mask: Tensor, temporal_factor: int, spatial_factor: int) -> Tensor:
    """Pixel mask (1 or T, H, W) in [0, 1] -> repaint mask (1, 1, 1 or t, h, w) on the latent grid.

    A latent pixel is regenerated when any pixel it covers is at least half white (so the generated
    region covers the whole mask), a latent frame when any of its pixel frames is.
    """
    m = F.max_pool2d(mask[:, None], spatial_factor)[:, 0]  # (1 or T, h, w)
    if m.shape[0] > 1:  # latent frame 0 is pixel frame 0; frame j >= 1 is f frames
        m = torch.cat([m[:1], m[1:].unflatten(0, (-1, temporal_factor)).amax(dim=1)])
    return (m >= 0.5).float()[None, None]


def edit(
    pipe: Pipeline,
    clip: Video,
    prompts: Sequence[str],
    strength: float,
    mask: Tensor | None,
    plan: Plan,
    progress: Progress = QUIET,
) -> list[Video]:
    """Per (prompt, seed), `clip` re-made under the prompt (SDEdit); with a mask (1 or T, H, W), only inside it.

    The clip's latents are noised to the noise level `strength` of the way up the schedule and
    the last strength * steps steps (rounded) are run. With a mask the latents outside it are known
    (conditioning and pasting, as inpainting is trained), and the decoded frames are composited
    with the input in pixels, so every pixel outside the mask is the input's.
    """
    source = clip.to_tensor()[None]  # (1, 3, T, H, W)
    latents = encode(pipe, source)
    n = len(plan.seeds)
    run = edit_steps(strength, plan.steps)
    sigmas = sampling_sigmas(pipe.process, plan.steps, plan.shift)[plan.steps - run :]
    if mask is None:
        cond = conditioning.text_to_video((n, *latents.shape[1:]), device=pipe.device)
    else:
        repaint = latent_mask(mask, pipe.vae.config.temporal_factor, pipe.vae.config.spatial_factor).to(pipe.device)
        cond = conditioning.inpainting(_batch(latents, n), _batch(repaint, n))
    noise, rngs = prepare_noise(tuple(latents.shape[1:]), plan.seeds, device=pipe.device)
    x = pipe.process.add_noise(_batch(latents, n), noise, sigmas[0])
    out = run_sampler(pipe, x, cond, encode_prompts(pipe.text_encoder, prompts), plan, rngs, sigmas=sigmas, progress=progress)
    frames = decode(pipe, out, progress)
    if mask is not None:
        alpha = mask[None, None]  # (1, 1, 1 or T, H, W)
        frames = alpha * frames + (1 - alpha) * source
    task = "edit" if mask is None else "inpaint"
    return to_videos(frames, plan.fps, metadata(pipe, plan, task, prompts, strength=strength, input_frames=clip.num_frames))
