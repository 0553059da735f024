"""Images, clips and masks as the tasks take them, from whatever the caller has.

Each may be a path (read with `read_video`, so a bad file gets its `VideoError`), a `Video`, a
uint8 numpy array `(T, H, W, 3)` / `(H, W, 3)`, or a float tensor in [-1, 1] `(3, T, H, W)` /
`(3, H, W)`. Everything becomes a `Video` first: one form to check, and what the tasks see
is exactly the uint8 frames a saved file would hold.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from kinema.errors import KinemaError
from kinema.video import Video, read_video

FORMS = "a path, a Video, a uint8 array (T, H, W, 3) or (H, W, 3), or a float tensor in [-1, 1] (3, T, H, W) or (3, H, W)"


def as_video(value: Any, what: str) -> Video:
    """`value` as a Video; `what` names the argument in errors (e.g. "video", "--extend")."""
    if isinstance(value, Video):
        return value
    if isinstance(value, (str, os.PathLike)):
        return read_video(value)
    if isinstance(value, np.ndarray):
        frames = value[None] if value.ndim == 3 else value
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise KinemaError(f"{what}: a numpy array must be uint8 (T, H, W, 3) or (H, W, 3), got {frames.dtype} {value.shape}")
        return Video(frames)
    if isinstance(value, torch.Tensor):
        if value.ndim not in (3, 4) or value.shape[0] != 3 or not value.is_floating_point():
            raise KinemaError(f"{what}: a tensor must be float (3, T, H, W) or (3, H, W) in [-1, 1], got {value.dtype} {tuple(value.shape)}")
        return Video.from_tensor(value.detach().cpu())
    raise KinemaError(f"{what} must be {FORMS}; got {type(value).__name__}")


def as_image(value: Any, what: str) -> Video:
    """`value` as a one-frame Video; a clip is refused (an image is the first frame, not a clip)."""
    image = as_video(value, what)
    if image.num_frames != 1:
        raise KinemaError(
            f"{what} must be one image, got a clip of {image.num_frames} frames; pass one frame "
            "(e.g. video.frames[0]), or continue the clip with extend (kinema generate --extend)"
        )
    return image


def resized(video: Video, height: int, width: int) -> Video:
    """The video at (height, width) (area averaging when shrinking, bicubic otherwise)."""
    from kinema.video.ops import resize

    if (video.height, video.width) == (height, width):
        return video
    return Video(resize(video.frames, (height, width)), fps=video.fps, metadata=video.metadata)


def as_mask(value: Any, clip: Video) -> torch.Tensor:
    """The region to regenerate as float (1 or T, H, W) in [0, 1]: white (1) is regenerated, black kept.

    One image masks every frame; a clip of the same length masks frame by frame. Its size must be the clip's.
    Besides the forms above (grey levels are the mean of R, G, B), a float tensor (H, W) or (T, H, W) in
    [0, 1] is taken as the mask itself.
    """
    if isinstance(value, torch.Tensor) and value.ndim in (2, 3) and value.is_floating_point():
        mask = value.detach().float().cpu().reshape(-1, *value.shape[-2:])
        if mask.min() < 0 or mask.max() > 1:
            raise KinemaError("mask: a float tensor mask must hold values in [0, 1] (1 = regenerate, 0 = keep)")
    else:
        frames = as_video(value, "mask").frames
        mask = torch.from_numpy(frames.astype(np.float32).mean(axis=-1) / 255.0)
    t, h, w = mask.shape
    if (h, w) != (clip.height, clip.width):
        raise KinemaError(
            f"mask is {h}x{w} (HxW) but the clip is {clip.height}x{clip.width}; "
            "give a mask of the clip's size (white = regenerate, black = keep)"
        )
    if t not in (1, clip.num_frames):
        raise KinemaError(f"mask has {t} frames; give one image (for every frame) or {clip.num_frames} (one per frame)")
    return mask
