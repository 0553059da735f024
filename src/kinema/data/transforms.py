"""Pure functions that turn decoded frames into training clips.

frames are uint8 `(T, H, W, 3)` numpy; tensors are float `(3, T, H, W)` in [-1, 1].
`to_tensor` and `to_uint8` are the ones `kinema.video` uses, so a clip goes to
a tensor and back the same way everywhere.
"""

from __future__ import annotations

import numpy as np

from kinema.video.core import to_tensor, to_uint8
from kinema.video.ops import resize, select_frames

__all__ = ["resize_center_crop", "resample_fps", "to_tensor", "to_uint8", "windows"]


def resize_center_crop(frames: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """frames: uint8 (T, H, W, 3) -> uint8 (T, h, w, 3) for size = (h, w), or (size, size) for an int.

    Crops the largest centred region with the target's aspect ratio, then
    resizes it (area averaging when shrinking), so nothing is stretched.
    """
    h, w = (size, size) if isinstance(size, int) else size
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive, got {size}")
    src_h, src_w = frames.shape[1:3]
    crop_h, crop_w = min(src_h, round(src_w * h / w)), min(src_w, round(src_h * w / h))
    top, left = (src_h - crop_h) // 2, (src_w - crop_w) // 2
    return resize(frames[:, top : top + crop_h, left : left + crop_w], (h, w))


def resample_fps(frames: np.ndarray, src_fps: float, dst_fps: float) -> np.ndarray:
    """frames: (T, ...) at `src_fps` -> (round(T * dst_fps / src_fps), ...) at `dst_fps`.

    Each output frame shows the source frame on screen at its middle (see
    `kinema.video.ops.select_frames`, which `read_video(fps=...)` uses too).
    """
    if src_fps <= 0 or dst_fps <= 0:
        raise ValueError(f"frame rates must be > 0, got src_fps={src_fps}, dst_fps={dst_fps}")
    step = 1.0 / src_fps
    index = list(select_frames(((k * step, step, k) for k in range(len(frames))), fps=dst_fps))
    return frames[index]


def windows(num_frames: int, window: int, stride: int) -> list[int]:
    """Start indices of the `window`-frame windows, `stride` apart, that fit in `num_frames` frames."""
    if window < 1 or stride < 1:
        raise ValueError(f"window and stride must be >= 1, got window={window}, stride={stride}")
    return list(range(0, num_frames - window + 1, stride))
