"""The `Video` value and the conversions between uint8 frames and float tensors.

Inside kinema a video is a float tensor `(C, T, H, W)` in [-1, 1]; at the file
boundary it is `uint8 (T, H, W, 3)` numpy. `Video` carries the frames with their
frame rate and the metadata written into (and read back from) the file.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch

from kinema.errors import KinemaError

MetadataValue = Union[str, int, float]


class VideoError(KinemaError):
    """A video file that cannot be read or written: the message names the file, the problem and the fix."""


def to_tensor(frames: np.ndarray) -> torch.Tensor:
    """frames: uint8 (T, H, W, 3) -> float32 (3, T, H, W) in [-1, 1]."""
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 (T, H, W, 3); got {frames.dtype} {tuple(frames.shape)}")
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2)
    return x.float() / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """x: float (3, T, H, W) or (B, 3, T, H, W) in [-1, 1] -> uint8 (T, H, W, 3) or (B, T, H, W, 3).

    Values are clamped to [-1, 1] and rounded to the nearest level, so
    `to_uint8(to_tensor(f))` gives back `f` exactly.
    """
    if x.ndim not in (4, 5) or x.shape[-4] != 3:
        raise ValueError(f"x must be (3, T, H, W) or (B, 3, T, H, W); got {tuple(x.shape)}")
    levels = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()
    return levels.movedim(-4, -1).numpy()


@dataclass(frozen=True, eq=False, repr=False)
class Video:
    """A clip: uint8 frames `(T, H, W, 3)`, a frame rate, and string-keyed metadata.

    Frozen (fields cannot be reassigned) and checked on construction. An image
    is a one-frame video. Compare frames with `np.array_equal(a.frames, b.frames)`.
    """

    frames: np.ndarray
    """uint8 (T, H, W, 3) RGB frames, T >= 1."""
    fps: float = 8.0
    """Frames per second, > 0."""
    metadata: dict[str, MetadataValue] = field(default_factory=dict)
    """Written into the file (prompt, seed, settings...); values are str, int or float."""

    def __post_init__(self) -> None:
        f = self.frames
        if not isinstance(f, np.ndarray):
            raise VideoError(
                f"Video.frames must be a numpy array, got {type(f).__name__}; for a tensor use Video.from_tensor"
            )
        if f.dtype != np.uint8:
            raise VideoError(
                f"Video.frames must be uint8, got {f.dtype}; for float data in [-1, 1] use Video.from_tensor"
            )
        if f.ndim != 4 or f.shape[-1] != 3:
            raise VideoError(
                f"Video.frames must have shape (T, H, W, 3), got {tuple(f.shape)}; "
                "an image (H, W, 3) is frames[None], a grey video (T, H, W) is np.repeat(frames[..., None], 3, -1)"
            )
        if min(f.shape[:3]) < 1:
            raise VideoError(f"Video.frames must have at least one frame of at least 1x1 pixels, got {tuple(f.shape)}")
        if not (isinstance(self.fps, numbers.Real) and math.isfinite(self.fps) and self.fps > 0):
            raise VideoError(f"Video.fps must be a finite number > 0, got {self.fps!r}")
        if not isinstance(self.metadata, dict):
            raise VideoError(
                f"Video.metadata must be a dict of str -> str/int/float, got {type(self.metadata).__name__}"
            )
        metadata = {}
        for key, value in self.metadata.items():
            if isinstance(value, np.generic):  # a numpy seed or scale: plain Python, so it goes to JSON
                value = value.item()
            if not isinstance(key, str) or not key:
                raise VideoError(f"Video.metadata keys must be non-empty strings, got {key!r}")
            if not isinstance(value, (str, int, float)):
                raise VideoError(
                    f"Video.metadata[{key!r}] must be a str, int or float, got {type(value).__name__}; "
                    "store structured settings as a JSON string"
                )
            metadata[key] = value
        object.__setattr__(self, "fps", float(self.fps))  # frozen: set the plain-Python forms once, here
        object.__setattr__(self, "metadata", metadata)

    def __repr__(self) -> str:
        return f"Video(frames=uint8{tuple(self.frames.shape)}, fps={self.fps:g}, metadata={self.metadata!r})"

    @property
    def num_frames(self) -> int:
        return self.frames.shape[0]

    @property
    def height(self) -> int:
        return self.frames.shape[1]

    @property
    def width(self) -> int:
        return self.frames.shape[2]

    @property
    def duration(self) -> float:
        """Seconds: num_frames / fps."""
        return self.num_frames / self.fps

    def to_tensor(self) -> torch.Tensor:
        """float32 (3, T, H, W) in [-1, 1]."""
        return to_tensor(self.frames)

    @classmethod
    def from_tensor(
        cls, x: torch.Tensor, *, fps: float = 8.0, metadata: dict[str, MetadataValue] | None = None
    ) -> Video:
        """x: float (3, T, H, W), (1, 3, T, H, W) or an image (3, H, W), in [-1, 1] (clamped, rounded)."""
        if x.ndim == 3:
            x = x.unsqueeze(1)
        elif x.ndim == 5:
            if x.shape[0] != 1:
                raise VideoError(f"Video.from_tensor takes one video; got a batch of {x.shape[0]}: pass x[i]")
            x = x[0]
        if x.ndim != 4 or x.shape[0] != 3:
            raise VideoError(
                f"Video.from_tensor expects (3, T, H, W), (1, 3, T, H, W) or (3, H, W); got {tuple(x.shape)}"
            )
        return cls(to_uint8(x), fps=float(fps), metadata=dict(metadata or {}))

    def save(self, path: str | Path, **kwargs: Any) -> Path:
        """Write to `path` (format from the extension); see `write_video`."""
        from kinema.video.write import write_video  # write imports this module

        return write_video(path, self, **kwargs)
