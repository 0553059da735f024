"""Will a generation fit in memory? A simple estimate, checked before any frame is made.

A request that cannot fit (a 4096x4096 image, `--size 8192`, a million frames) would otherwise end in a
raw allocator error after minutes of work; `check_fits` refuses it up front with the largest frame count
and the largest size that do fit.

The estimate counts, in bytes, the tensors that grow with the request, at their peak:

    denoiser     one sampling step on one window, float32: the guidance pair (2) x its tokens x the widest
                 token width (a DiT's ffn_dim) x TOKEN_LIVE; a U-Net: 2 x latent positions x its
                 first-level channels x CONV_LIVE
    autoencoder  one chunk of pixel frames (the VAE's temporal factor) at full size in its outer stage,
                 float32: frames x H x W x (base_channels * channel_mult[0]) x CONV_LIVE, plus the decoded
                 window (3 x window x H x W float32, twice: decoded and gathered)
    frames       every video made, uint8: videos x frames x H x W x 3, twice (its pieces and the clip joined)

    estimate = max(denoiser, autoencoder) + frames

against the memory available when the model is loaded (on a GPU the working tensors are checked against
its free memory and the frames against the host's). It ignores the model's weights (already loaded) and
everything that does not grow with the request. The two factors are measured peaks of the shipped model
(fp32, one CPU thread, 128-512 pixels, 17 and 33 frames), where the estimate is within 10% of the peak; it
guards against requests that cannot fit, not tight ones.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from kinema.errors import KinemaError

if TYPE_CHECKING:
    from kinema.pipelines.pipeline import Pipeline

TOKEN_LIVE = 5
"""Per token, copies of the widest token width alive at the peak of a transformer block (measured: 4.6)."""
CONV_LIVE = 16
"""Per pixel, copies of a convolution stage's channels alive at its peak: the block's tensors and the 3x3x3
convolution's unfolded input (measured: 15)."""
_FLOAT = 4  # bytes of a float32


@dataclass(frozen=True)
class Estimate:
    """Bytes a generation needs, split by where they live."""

    working: int
    """The denoiser's or the autoencoder's tensors, on the pipeline's device."""
    frames: int
    """The videos being made, uint8 on the host."""

    @property
    def total(self) -> int:
        return self.working + self.frames


def estimate(
    pipe: Pipeline, *, frames: int, height: int, width: int, window: int | None = None, videos: int = 1
) -> Estimate:
    """Bytes to make `videos` clips of `frames` frames at height x width, `window` frames at a time (default: all)."""
    window = frames if window is None else min(window, frames)
    vae, denoiser = pipe.vae.config, pipe.denoiser.config
    tf, s = vae.temporal_factor, vae.spatial_factor
    pixels = height * width
    latent_positions = ((window - 1) // tf + 1) * math.ceil(height / s) * math.ceil(width / s)
    if hasattr(denoiser, "ffn_dim"):  # a DiT: tokens of dim and ffn_dim, each a patch of latent positions
        per_position = max(denoiser.dim, denoiser.ffn_dim) / math.prod(denoiser.patch_size) * TOKEN_LIVE
    else:  # a U-Net: its widest tensors are at the first level, one per latent position
        per_position = denoiser.channels * denoiser.channel_mult[0] * CONV_LIVE
    denoising = 2 * latent_positions * per_position * _FLOAT
    outer = vae.base_channels * vae.channel_mult[0]
    autoencoder = (min(tf, window) * pixels * outer * CONV_LIVE + 2 * 3 * window * pixels) * _FLOAT
    return Estimate(working=int(max(denoising, autoencoder)), frames=2 * videos * frames * pixels * 3)


def available_bytes(device: torch.device | str) -> int | None:
    """Memory free for new tensors on `device` (a GPU's free memory, the host's MemAvailable); None if unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:  # not Linux: the physical memory, an upper bound
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _gb(n: float) -> str:
    return f"{n / 2**30:.1f} GB"


def check_fits(
    pipe: Pipeline,
    *,
    frames: int,
    height: int,
    width: int,
    window: int | None = None,
    videos: int = 1,
    given_frames: int = 0,
    what: str = "this request",
    frames_flag: str = "--frames",
    size_flag: str | None = "--size",
) -> None:
    """Raise KinemaError when `estimate(...)` is over the memory available, naming the most frames and the
    largest size (of the same shape) that fit.

    given_frames: frames that come with the input (a clip being extended), so `frames_flag` counts the rest;
    size_flag: the flag that sets the size, None where only resizing the input (an image, a clip) does.
    """
    from kinema.pipelines.common import latent_multiples

    limits = {"host": available_bytes("cpu"), "device": available_bytes(pipe.device)}

    def over(n: int, h: int, w: int) -> bool:
        e = estimate(pipe, frames=n, height=h, width=w, window=window, videos=videos)
        if pipe.device.type == "cpu":
            parts = [(e.total, limits["host"])]
        else:
            parts = [(e.working, limits["device"]), (e.frames, limits["host"])]
        return any(limit is not None and used > limit for used, limit in parts)

    if not over(frames, height, width):
        return
    options = []
    tf = pipe.vae.config.temporal_factor
    most = _largest(lambda n: not over(1 + tf * (n - 1), height, width), (frames - 1) // tf + 1)
    most = 1 + tf * (most - 1) - given_frames  # a frame count the model makes
    if most >= 1:
        options.append(f"{frames_flag} {most} at {height}x{width}")
    step = pipe.vae.config.spatial_factor * max(latent_multiples(pipe.denoiser)[1:])
    shape = lambda k: (k * step, max(1, round(k * width / height)) * step)  # noqa: E731  (the same aspect)
    k = _largest(lambda k: not over(frames, *shape(k)), height // step)
    if k >= 1:
        h, w = shape(k)
        options.append(f"{size_flag or 'the input resized to'} {h}x{w} for {frames - given_frames} frames")
    need = estimate(pipe, frames=frames, height=height, width=width, window=window, videos=videos).total
    free = min(limit for limit in limits.values() if limit is not None)
    fix = "at most " + " or ".join(options) + " fit" if options else "nothing this model makes fits: free memory first"
    raise KinemaError(
        f"{what}: {frames} frames of {height}x{width} need about {_gb(need)} of memory and about {_gb(free)} "
        f"is available (an estimate, see kinema.pipelines.memory); {fix}"
    )


def _largest(ok: Callable[[int], bool], upper: int) -> int:
    """The largest n in [1, upper] with ok(n), ok falling from True to False as n grows; 0 if there is none."""
    lo, hi = 0, upper
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo
