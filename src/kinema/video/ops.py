"""Pure operations on frames: choosing frames on a time grid, and resizing.

`select_frames` is the one place that decides which source frame lands at
which output time; `read_video` streams decoded frames through it (so frames
that are not chosen are never converted), and `kinema.data.transforms.resample_fps`
uses it on arrays.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import TypeVar

import numpy as np
from PIL import Image

T = TypeVar("T")

_EPS = 1e-6  # in output frames: absorbs float error in timestamps


def frame_count(duration: float, fps: float) -> int:
    """Frames at `fps` whose middle falls within `duration` seconds: round(duration * fps)."""
    return max(0, math.ceil(duration * fps - 0.5 + _EPS))


def select_frames(
    frames: Iterable[tuple[float, float, T]], *, fps: float, start: float = 0.0, end: float = math.inf
) -> Iterator[T]:
    """Resample a stream of frames to `fps`: each output frame shows what is on screen at its middle.

    frames: `(time, duration, item)` in display order, seconds from the clip's start.
    Output frame i spans `[start + i/fps, start + (i+1)/fps)`; it takes the source
    frame on screen at the middle of that span (the last one starting before it;
    a tie goes to the earlier frame). Sampling at the middle keeps half a frame
    of margin against rounded timestamps (GIF centiseconds, WebM milliseconds):
    the same rate gives the frames back, 16 -> 8 fps keeps frames 0, 2, 4...,
    30 -> 10 fps keeps 1, 4, 7... (the middle of each 3), 8 -> 24 fps shows each
    frame 3 times, and a frame shown for longer (a GIF stores repeats once) is
    repeated. Output frame i exists while its middle lies before `end` and
    before the clip ends, so a span of D seconds gives `frame_count(D, fps)`
    frames. Items are yielded as soon as they are known; the input is not read
    past what `end` needs.
    """

    def middle_before(i: int, limit: float) -> bool:
        return i + 0.5 < (limit - start) * fps + _EPS

    i = 0
    prev: T | None = None
    shown_until = -math.inf
    for t, dur, item in frames:
        # Output frames whose middle comes before this frame starts show the previous one.
        while prev is not None and middle_before(i, t) and middle_before(i, end):
            yield prev
            i += 1
        if not middle_before(i, end):
            return
        prev, shown_until = item, t + dur
    while prev is not None and middle_before(i, min(end, shown_until)):  # the rest fall on the last frame
        yield prev
        i += 1


def resize(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """frames: uint8 (T, H, W, 3) -> uint8 (T, size[0], size[1], 3).

    Area averaging when shrinking both sides (no aliasing), bicubic otherwise.
    """
    h, w = size
    if frames.shape[1:3] == (h, w):
        return frames
    shrink = h <= frames.shape[1] and w <= frames.shape[2]
    method = Image.Resampling.BOX if shrink else Image.Resampling.BICUBIC
    out = np.empty((frames.shape[0], h, w, 3), dtype=np.uint8)
    for k, frame in enumerate(frames):
        out[k] = np.asarray(Image.fromarray(frame).resize((w, h), method))
    return out
