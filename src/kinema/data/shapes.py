"""The `shapes` dataset: synthetic text-to-video clips with known ground truth.

Every clip shows one (or two) coloured shapes moving in a straight line, standing still or
bouncing between two edges on a black canvas, with a caption such as `a small red circle moving
right` or `a large blue square bouncing up and down`. The
full specification (palette, sizes, motions, captions, the train/held-out
split) is SHAPES.md; this module follows it to the letter, and
`kinema.eval.shapes_probe` measures generated clips against the same rules.

A clip is a pure function of (seed, index, split, objects): the random draws
are made in units of the canvas, so the same item at 64 and at 128 pixels (or
with more frames) shows the same scene.

Geometry, in pixels of the S x S canvas (x to the right, y downwards):
- each object has a bounding box of side `side` = round(0.20 S) or round(0.32 S);
  `start` is the top-left corner of that box in the first frame;
- circle: the disc inscribed in the box; square: the box; triangle: apex at
  the top middle, base along the bottom edge (width = height = side);
- one-way motions: the box moves by `displacement` (dx, dy) in total, linearly over the frames;
- bouncing: the box moves at `velocity` (pixels a frame) along one axis, reflecting off the canvas
  edges (its top-left corner follows a triangle wave between 0 and S - side), at any number of frames.
  The start is a uniform phase of that wave (position and direction), so every window of a long
  bouncing clip is drawn as likely as a clip's start: the 17-frame training clips are the windows that
  extension continues.

Objects are drawn at 4x resolution and area-averaged down, so edges are
anti-aliased. With two objects the second is drawn over the first (alpha by
coverage): where they overlap, the second one is visible.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from kinema.errors import KinemaError

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 90, 230),
    "yellow": (235, 215, 40),
    "magenta": (210, 60, 210),
    "cyan": (40, 200, 220),
    "white": (240, 240, 240),
    "orange": (245, 140, 30),
}
"""Colour name -> RGB, in index order (the index is used by the held-out rule)."""
COLOURS: tuple[str, ...] = tuple(PALETTE)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SIZES: tuple[str, ...] = ("small", "large")
SIZE_FRACTIONS: tuple[float, ...] = (0.20, 0.32)
"""Side (or diameter) of each size as a fraction of the canvas side S."""
MOTIONS: tuple[str, ...] = ("left", "right", "up", "down", "still", "bouncing left and right", "bouncing up and down")
ONE_WAY_MOTIONS: tuple[str, ...] = MOTIONS[:5]
"""The motions of a clip that has a start and an end (the first five): one way, or none."""
MOTION_DIRECTIONS: tuple[tuple[int, int], ...] = ((-1, 0), (1, 0), (0, -1), (0, 1), (0, 0), (1, 0), (0, 1))
"""Unit (dx, dy) of each motion (for bouncing, the axis); image y grows downwards."""
DISPLACEMENT_RANGE: tuple[float, float] = (0.30, 0.50)
"""Total displacement over a clip, as a fraction of S (uniform); "still" moves 0."""
BOUNCE_SPEED_RANGE: tuple[float, float] = (0.90, 1.20)
"""Speed of a bouncing object, as a fraction of S per 16 frames (uniform): every 17-frame window holds a reversal."""
SPLITS: tuple[str, ...] = ("train", "heldout", "all")

_SUPERSAMPLE = 4  # render at 4x, then area-average down


def is_heldout(c: int, s: int, m: int) -> bool:
    """Whether (colour c, shape s, motion m), as indices, is a held-out combination."""
    return (c + 3 * s + 2 * m) % 8 == 5


ALL_COMBOS: tuple[tuple[int, int, int], ...] = tuple(
    (c, s, m) for c in range(len(COLOURS)) for s in range(len(SHAPES)) for m in range(len(MOTIONS))
)
HELDOUT_COMBOS: tuple[tuple[int, int, int], ...] = tuple(k for k in ALL_COMBOS if is_heldout(*k))
TRAIN_COMBOS: tuple[tuple[int, int, int], ...] = tuple(k for k in ALL_COMBOS if not is_heldout(*k))
SPLIT_COMBOS: dict[str, tuple[tuple[int, int, int], ...]] = {
    "train": TRAIN_COMBOS, "heldout": HELDOUT_COMBOS, "all": ALL_COMBOS,
}  # fmt: skip
"""The (colour, shape, motion) combinations a one-object clip of each split draws from."""


def is_bouncing(motion: int | str) -> bool:
    """Whether a motion (index or name) bounces between two edges."""
    return (MOTIONS[motion] if isinstance(motion, int) else motion).startswith("bouncing")


def side_pixels(size: int | str, canvas: int) -> int:
    """Side (or diameter) in pixels of size `size` (index or name) on an S = `canvas` canvas."""
    index = SIZES.index(size) if isinstance(size, str) else size
    return int(math.floor(SIZE_FRACTIONS[index] * canvas + 0.5))


def _index(value: int | str, names: tuple[str, ...], what: str) -> int:
    if isinstance(value, str):
        if value not in names:
            raise KinemaError(f"unknown {what} {value!r}; valid: {', '.join(names)}")
        return names.index(value)
    if not 0 <= int(value) < len(names):
        raise KinemaError(f"{what} index {value} out of range; valid: 0..{len(names) - 1} ({', '.join(names)})")
    return int(value)


def make_object(
    *,
    colour: int | str,
    shape: int | str,
    size: int | str,
    motion: int | str,
    canvas: int,
    frames: int,
    start: tuple[float, float] = (0.5, 0.5),
    distance: float = 0.5,
) -> dict[str, Any]:
    """The attributes of one object, placed from unit-interval draws.

    `start` (u, v) in [0, 1]^2 places the object's first-frame box within the
    range that keeps it inside the canvas for the whole clip (0 = leftmost/top);
    `distance` in [0, 1] picks the displacement within DISPLACEMENT_RANGE.
    Bouncing: `distance` picks the speed within BOUNCE_SPEED_RANGE, the start's
    coordinate along the axis the phase of the bounce (position and direction:
    [0, 1/2) moving right or down from the left or top edge, [1/2, 1) coming back),
    the other coordinate the place across. Attribute values may be given as names or indices.
    """
    c = _index(colour, COLOURS, "colour")
    s = _index(shape, SHAPES, "shape")
    z = _index(size, SIZES, "size")
    m = _index(motion, MOTIONS, "motion")
    if not all(0.0 <= float(f) <= 1.0 for f in (*start, distance)):
        raise KinemaError(f"start {tuple(start)} and distance {distance} must lie in [0, 1] (fractions of the free range)")
    side = side_pixels(z, canvas)
    ux, uy = MOTION_DIRECTIONS[m]
    steps = max(frames - 1, 1)
    bounce = is_bouncing(m)
    if bounce:
        lo, hi = BOUNCE_SPEED_RANGE
        speed = (lo + (hi - lo) * float(distance)) * canvas / 16  # pixels a frame
        room = canvas - side  # the box's corner runs over [0, room]
        along, across = (start[0], start[1]) if ux else (start[1], start[0])
        phase = 2 * room * min(float(along), 1.0 - 1e-9)  # unfolded position on the wave's period 2 * room
        position, sign = (phase, 1.0) if phase <= room else (2 * room - phase, -1.0)
        x, y = (position, room * float(across)) if ux else (room * float(across), position)
        vx, vy = ux * sign * speed, uy * sign * speed
        corners = _bounce(np.array([x, y]), np.array([vx, vy]), frames, room)
        dx, dy = (float(v) for v in corners[-1] - corners[0])
    else:
        lo, hi = DISPLACEMENT_RANGE
        travel = 0.0 if MOTIONS[m] == "still" else (lo + (hi - lo) * float(distance)) * canvas
        dx, dy = ux * travel, uy * travel
        # The box spans [x, x + side] in frame 0 and [x + dx, x + dx + side] in the last frame.
        x_lo, x_hi = max(0.0, -dx), canvas - side - max(0.0, dx)
        y_lo, y_hi = max(0.0, -dy), canvas - side - max(0.0, dy)
        x = x_lo + (x_hi - x_lo) * float(start[0])
        y = y_lo + (y_hi - y_lo) * float(start[1])
        vx, vy = dx / steps, dy / steps
    return {
        "colour": COLOURS[c],
        "colour_index": c,
        "rgb": PALETTE[COLOURS[c]],
        "shape": SHAPES[s],
        "shape_index": s,
        "size": SIZES[z],
        "size_index": z,
        "side": side,
        "motion": MOTIONS[m],
        "motion_index": m,
        "start": (float(x), float(y)),
        "displacement": (dx, dy),
        "velocity": (float(vx), float(vy)),
        "bouncing": bounce,
        "canvas": canvas,
        "heldout": is_heldout(c, s, m),
    }


def _bounce(start: np.ndarray, velocity: np.ndarray, frames: int, room: float) -> np.ndarray:
    """Top-left corners (T, 2) of a box moving at `velocity` from `start`, reflected to stay in [0, room]."""
    unfolded = start[None, :] + velocity[None, :] * np.arange(frames, dtype=np.float64)[:, None]
    return room - np.abs(np.mod(unfolded, 2 * room) - room) if room > 0 else np.zeros_like(unfolded)


def track(attrs: dict[str, Any], frames: int) -> tuple[np.ndarray, np.ndarray]:
    """The top-left corner (x, y), each (T,), of one object's box in each of `frames` frames.

    One-way motions spread their `displacement` over the frames (the clip's length is part of the scene);
    a bouncing object keeps its `velocity` (pixels a frame) for as many frames as asked.
    """
    if attrs.get("bouncing"):
        room = attrs["canvas"] - side_pixels(attrs["size"], attrs["canvas"])
        corners = _bounce(np.asarray(attrs["start"], np.float64), np.asarray(attrs["velocity"], np.float64), frames, room)
        return corners[:, 0], corners[:, 1]
    t = np.arange(frames, dtype=np.float64) / max(frames - 1, 1)
    return attrs["start"][0] + attrs["displacement"][0] * t, attrs["start"][1] + attrs["displacement"][1] * t


def action_for(motion: str) -> str:
    """The words of a caption that say how an object moves: "moving left", "staying still", "bouncing up and down"."""
    if motion == "still":
        return "staying still"
    return motion if is_bouncing(motion) else f"moving {motion}"


def caption_for(attrs: dict[str, Any] | Sequence[dict[str, Any]], *, sizes: bool = True) -> str:
    """The caption of one object's attributes, or of several joined with ` and `; `sizes=False` leaves
    the sizes out ("a red circle moving right")."""
    if isinstance(attrs, dict):
        attrs = [attrs]
    parts = []
    for a in attrs:
        size = f"{a['size']} " if sizes else ""
        parts.append(f"a {size}{a['colour']} {a['shape']} {action_for(a['motion'])}")
    return " and ".join(parts)


def _coverage(shape: str, side: int, x: np.ndarray, y: np.ndarray, canvas: int) -> np.ndarray:
    """Anti-aliased coverage of one object over the frames, as a count of 4x4 subpixels hit.

    x, y: (T,) top-left corner of the box per frame. Returns (T, S, S) uint8 in
    0..16. Only a window of side + 2 pixels around the object is supersampled.
    """
    frames = x.shape[0]
    win = side + 2
    x0 = np.clip(np.floor(x).astype(np.int64), 0, canvas - win)
    y0 = np.clip(np.floor(y).astype(np.int64), 0, canvas - win)
    offsets = (np.arange(win * _SUPERSAMPLE) + 0.5) / _SUPERSAMPLE
    u = (x0[:, None] + offsets[None, :] - x[:, None])[:, None, :]  # (T, 1, 4W) across the box
    v = (y0[:, None] + offsets[None, :] - y[:, None])[:, :, None]  # (T, 4W, 1) down the box
    if shape == "circle":
        r = side / 2
        inside = (u - r) ** 2 + (v - r) ** 2 <= r * r
    elif shape == "square":
        inside = (u >= 0) & (u < side) & (v >= 0) & (v < side)
    else:  # triangle: apex at (side / 2, 0), half-width grows by 1/2 per pixel down
        inside = (v >= 0) & (v < side) & (np.abs(u - side / 2) <= v / 2)
    # Count the hits in each 4x4 block by adding strided slices (much faster than a strided sum).
    hits = inside.view(np.uint8).reshape(frames, win, _SUPERSAMPLE, win * _SUPERSAMPLE)
    hits = sum(hits[:, :, k] for k in range(_SUPERSAMPLE)).reshape(frames, win, win, _SUPERSAMPLE)
    counts = sum(hits[..., k] for k in range(_SUPERSAMPLE))
    out = np.zeros((frames, canvas, canvas), np.uint8)
    rows = y0[:, None, None] + np.arange(win)[None, :, None]
    cols = x0[:, None, None] + np.arange(win)[None, None, :]
    out[np.arange(frames)[:, None, None], rows, cols] = counts
    return out


def render_clip(attrs: dict[str, Any] | Sequence[dict[str, Any]], size: int, frames: int) -> np.ndarray:
    """Render objects (as from `make_object` or `ShapesDataset.attributes`) to uint8 (T, S, S, 3).

    Each box follows its `track` over the `frames` frames: from `start` to `start + displacement`
    linearly, or bouncing at its velocity. Later objects are drawn over earlier ones (alpha = coverage).
    """
    if isinstance(attrs, dict):
        attrs = [attrs]
    if frames < 1:
        raise KinemaError(f"frames must be >= 1, got {frames}")
    # Coverage takes only 17 levels per object, so every pixel's colour is a lookup
    # into a table over the combinations of levels, built by compositing once.
    levels = np.arange(_SUPERSAMPLE**2 + 1, dtype=np.float64)[None, :, None] / _SUPERSAMPLE**2  # (1, 17, 1)
    table = np.zeros((1, 3))  # entry 0: black background
    code = np.zeros((frames, size, size), np.intp)
    for a in attrs:
        if a.get("canvas", size) != size:
            raise KinemaError(
                f"object attributes were drawn for a {a['canvas']}-pixel canvas, not {size}; "
                "make them again with make_object(canvas=...) for this size"
            )
        side = side_pixels(a["size"], size)
        x, y = track(a, frames)
        if x.min() < -1e-6 or y.min() < -1e-6 or x.max() + side > size + 1e-6 or y.max() + side > size + 1e-6:
            raise KinemaError(f"object {caption_for(a)!r} leaves the {size}x{size} canvas; draw it with make_object")
        rgb = np.asarray(PALETTE[a["colour"]], np.float64)
        table = (table[:, None, :] * (1.0 - levels) + levels * rgb).reshape(-1, 3)
        code = code * levels.shape[1] + _coverage(a["shape"], side, x, y, size)
    return np.take(np.rint(table).astype(np.uint8), code, axis=0)


class ShapesDataset(Dataset):
    """Synthetic clips of coloured shapes moving on black, each with its caption.

    Items: `{"video": (3, T, S, S) float in [-1, 1], "caption": str}`.
    `split`: "train" never shows a held-out (colour, shape, motion) in any
    object slot; "heldout" shows only held-out combinations (with two objects,
    at least one slot is held out); "all" draws from all 168.
    `objects`: 1 or 2 objects per clip, or a tuple of counts that each clip draws
    from uniformly: (1, 1, 2) gives one object in two clips of three. A drawn
    count n gives the same clip as `objects=n` at that index.
    `sized_captions`: the share of captions that name the sizes; the others leave them
    out ("a red circle moving right"), so that a model also follows prompts without one.
    """

    def __init__(
        self,
        size: int = 64,
        frames: int = 17,
        split: str = "train",
        objects: int | tuple[int, ...] = 1,
        length: int = 10000,
        seed: int = 0,
        fps: float = 8,
        sized_captions: float = 1.0,
    ) -> None:
        if not isinstance(size, int) or size < 16:
            raise KinemaError(f"size must be an int >= 16 (64 by default; 32 and 128 also common), got {size!r}")
        if not isinstance(frames, int) or frames < 1:
            raise KinemaError(f"frames must be an int >= 1 (17 = 1 + 4k by default), got {frames!r}")
        if split not in SPLITS:
            raise KinemaError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        counts = objects if isinstance(objects, tuple) else (objects,)
        if not counts or any(n not in (1, 2) for n in counts):
            raise KinemaError(f"objects must be 1, 2 or a tuple of them such as (1, 1, 2), got {objects!r}")
        if not isinstance(length, int) or length < 1:
            raise KinemaError(f"length must be an int >= 1, got {length!r}")
        if not isinstance(seed, int) or seed < 0:
            raise KinemaError(f"seed must be an int >= 0, got {seed!r}")
        if not fps > 0:
            raise KinemaError(f"fps must be > 0, got {fps!r}")
        if not 0.0 <= sized_captions <= 1.0:
            raise KinemaError(f"sized_captions must be in [0, 1] (the share of captions naming sizes), got {sized_captions!r}")
        self.size, self.frames, self.split, self.objects = size, frames, split, objects
        self.length, self.seed, self.fps, self.sized_captions = length, seed, fps, sized_captions

    def __len__(self) -> int:
        return self.length

    def _check_index(self, index: int) -> int:
        if not -self.length <= index < self.length:
            raise IndexError(f"index {index} out of range for a dataset of length {self.length}")
        return index % self.length

    def attributes(self, index: int) -> list[dict[str, Any]]:
        """Ground truth of item `index`: one dict per object (names, indices, start, velocity, ...)."""
        index = self._check_index(index)
        split = SPLITS.index(self.split)
        objects = self.objects
        if isinstance(objects, tuple):  # its own stream, so a drawn count n reproduces the objects=n clip
            objects = objects[np.random.default_rng((self.seed, index, 0, split)).integers(len(objects))]
        rng = np.random.default_rng((self.seed, index, objects, split))
        combos = self._draw_combos(rng, objects)
        out = []
        for c, s, m in combos:
            z = int(rng.integers(len(SIZES)))
            distance, u, v = rng.random(3)
            out.append(
                make_object(
                    colour=c, shape=s, size=z, motion=m, canvas=self.size, frames=self.frames,
                    start=(u, v), distance=distance,
                )
            )
        return out

    def _draw_combos(self, rng: np.random.Generator, objects: int) -> list[tuple[int, int, int]]:
        if objects == 1:
            pool = SPLIT_COMBOS[self.split]
            return [pool[rng.integers(len(pool))]]
        pool = TRAIN_COMBOS if self.split == "train" else ALL_COMBOS
        while True:  # rejection sampling: distinct colours, and a held-out slot for "heldout"
            a, b = pool[rng.integers(len(pool))], pool[rng.integers(len(pool))]
            if a[0] != b[0] and (self.split != "heldout" or is_heldout(*a) or is_heldout(*b)):
                return [a, b]

    def caption(self, index: int) -> str:
        return caption_for(self.attributes(index), sizes=self._names_sizes(index))

    def _names_sizes(self, index: int) -> bool:
        if self.sized_captions >= 1.0:
            return True
        index = self._check_index(index)
        draw = np.random.default_rng((self.seed, index, 3, SPLITS.index(self.split))).random()  # 3: not a count
        return bool(draw < self.sized_captions)

    def __getitem__(self, index: int) -> dict[str, Any]:
        attrs = self.attributes(index)
        frames = render_clip(attrs, self.size, self.frames)  # (T, S, S, 3) uint8
        video = torch.from_numpy(frames.transpose(3, 0, 1, 2).astype(np.float32) / 127.5 - 1.0)
        return {"video": video, "caption": caption_for(attrs, sizes=self._names_sizes(index))}
