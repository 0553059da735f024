"""The shapes probe: measure what a clip shows and check it against its caption.

Follows SHAPES.md, "The probe", for single-object clips on a square canvas of
S >= 64 pixels (at S = 32 a small circle and a small triangle are too few
pixels to tell apart). Every number is measured from the pixels:

- foreground: pixels whose largest channel is >= 80;
- colour: median RGB of the foreground pixels whose largest channel is >= 150,
  nearest palette colour (Euclidean);
- shape: fill ratio = foreground area / bounding-box area, median over frames:
  > 0.90 square, 0.68 to 0.90 circle, < 0.68 triangle;
- size: median bounding-box side (mean of width and height), nearest of small and large;
- motion: centroid displacement from the mean of the first two frames to the
  mean of the last two; |d| < 0.10 S is still, otherwise the sign along the
  larger axis (y grows downwards);
- consistency: the object is present (area >= 25% of its median) in every
  frame, and the coefficient of variation of its area over frames.

Frames with no foreground are left out of the medians and of the motion
(the first two and last two frames that show something are used); a clip with
no foreground at all gets None for every attribute and is never correct. The
motion needs at least 3 frames to be told apart from "still".
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from kinema.data.shapes import COLOURS, MOTIONS, PALETTE, SHAPES, SIZES, side_pixels
from kinema.errors import KinemaError

FOREGROUND_MIN = 80
"""A pixel is foreground when its largest channel is at least this."""
COLOUR_MIN = 150
"""Only foreground pixels this bright (largest channel) vote for the colour."""
SQUARE_MIN_FILL = 0.90
"""Fill ratio above this is a square."""
CIRCLE_MIN_FILL = 0.68
"""Fill ratio from this up to SQUARE_MIN_FILL is a circle; below it, a triangle."""
STILL_MAX_DISPLACEMENT = 0.10
"""Centroid displacement below this fraction of S is "still"."""
PRESENT_MIN_AREA = 0.25
"""A frame shows the object when its area is at least this fraction of the median area."""

_JUDGED = ("colour", "shape", "motion")  # what makes a clip correct; size is reported apart
_PALETTE_RGB = np.asarray([PALETTE[c] for c in COLOURS], np.float64)


def _check_frames(frames: Any) -> np.ndarray:
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8:
        raise KinemaError(
            f"the shapes probe takes uint8 numpy frames (T, S, S, 3), got {type(frames).__name__}"
            f"{'' if not hasattr(frames, 'dtype') else ' of ' + str(frames.dtype)}; "
            "convert a (3, T, H, W) tensor in [-1, 1] with kinema.data.transforms.to_uint8"
        )
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[1] != frames.shape[2] or frames.shape[0] < 1:
        raise KinemaError(f"the shapes probe takes frames of shape (T, S, S, 3) with T >= 1, got {frames.shape}")
    return frames


def probe(frames: np.ndarray) -> dict[str, Any]:
    """Measure one single-object clip. frames: uint8 (T, S, S, 3).

    Returns colour, shape, size, motion (names, or None when there is no
    foreground), the measurements behind them (rgb, fill_ratio, side,
    displacement (dx, dy) in pixels, area and centroid per frame),
    present_all_frames and area_cv.
    """
    frames = _check_frames(frames)
    num_frames, canvas = frames.shape[0], frames.shape[1]
    brightest = np.maximum(np.maximum(frames[..., 0], frames[..., 1]), frames[..., 2])  # (T, S, S)
    fg = brightest >= FOREGROUND_MIN
    per_row, per_col = np.count_nonzero(fg, axis=2), np.count_nonzero(fg, axis=1)  # (T, S) each
    area = per_row.sum(axis=1)  # (T,)
    present = area > 0
    result: dict[str, Any] = {
        "colour": None, "shape": None, "size": None, "motion": None,
        "rgb": None, "fill_ratio": None, "side": None, "displacement": None,
        "area": area.tolist(), "centroid": [None] * num_frames,
        "present_all_frames": False, "area_cv": None,
    }  # fmt: skip
    if not present.any():
        return result

    # Bounding box per frame from the rows and columns that hold foreground.
    rows, cols = per_row > 0, per_col > 0
    top, bottom = rows.argmax(axis=1), canvas - 1 - rows[:, ::-1].argmax(axis=1)
    left, right = cols.argmax(axis=1), canvas - 1 - cols[:, ::-1].argmax(axis=1)
    height, width = (bottom - top + 1)[present], (right - left + 1)[present]
    fill = float(np.median(area[present] / (height * width)))
    side = float(np.median((height + width) / 2))

    coords = np.arange(canvas, dtype=np.float64)
    safe_area = np.maximum(area, 1)
    cx = per_col @ coords / safe_area  # (T,)
    cy = per_row @ coords / safe_area
    shown = np.flatnonzero(present)
    first, last = shown[:2], shown[-2:]
    dx = float(cx[last].mean() - cx[first].mean())
    dy = float(cy[last].mean() - cy[first].mean())

    bright = frames[brightest >= COLOUR_MIN]  # (N, 3), a subset of the foreground
    if len(bright):
        rgb = np.median(bright, axis=0)
        nearest = int(np.argmin(((_PALETTE_RGB - rgb) ** 2).sum(axis=1)))
        result["colour"], result["rgb"] = COLOURS[nearest], tuple(float(v) for v in rgb)

    if fill > SQUARE_MIN_FILL:
        shape = "square"
    elif fill >= CIRCLE_MIN_FILL:
        shape = "circle"
    else:
        shape = "triangle"
    sides = [side_pixels(z, canvas) for z in range(len(SIZES))]
    size = SIZES[int(np.argmin([abs(side - s) for s in sides]))]
    if np.hypot(dx, dy) < STILL_MAX_DISPLACEMENT * canvas:
        motion = "still"
    elif abs(dx) >= abs(dy):
        motion = "right" if dx > 0 else "left"
    else:
        motion = "down" if dy > 0 else "up"

    median_area = float(np.median(area))
    result.update(
        shape=shape, size=size, motion=motion, fill_ratio=fill, side=side, displacement=(dx, dy),
        centroid=[(float(cx[t]), float(cy[t])) if present[t] else None for t in range(num_frames)],
        present_all_frames=bool(present.all() and (area >= PRESENT_MIN_AREA * median_area).all()),
        area_cv=float(area.std() / area.mean()),
    )
    return result


_CAPTION = re.compile(
    r"^(?:an? )?(?:(?P<size>{sizes}) )?(?P<colour>{colours}) (?P<shape>{shapes}) "
    r"(?:moving (?P<motion>{moves})|staying (?P<still>still))$".format(
        sizes="|".join(SIZES),
        colours="|".join(COLOURS),
        shapes="|".join(SHAPES),
        moves="|".join(m for m in MOTIONS if m != "still"),
    )
)


def parse_captions(caption: str) -> list[dict[str, str | None]]:
    """Parse a shapes caption of one or more objects joined by ` and `; one dict per object."""
    text = " ".join(caption.lower().replace(",", " ").split()).rstrip(".")
    objects = []
    for part in text.split(" and "):
        match = _CAPTION.match(part.strip())
        if match is None:
            raise KinemaError(
                f"cannot read {part!r} as a shapes caption; expected "
                "'a [small|large] COLOUR SHAPE moving left|right|up|down' or '... staying still', "
                f"with COLOUR one of {', '.join(COLOURS)} and SHAPE one of {', '.join(SHAPES)}"
            )
        objects.append(
            {
                "size": match["size"],
                "colour": match["colour"],
                "shape": match["shape"],
                "motion": "still" if match["still"] else match["motion"],
            }
        )
    return objects


def parse_caption(caption: str) -> dict[str, str | None]:
    """Parse a single-object caption into size (None when not given), colour, shape and motion.

    Two-object captions raise KinemaError (the probe measures one object);
    use `parse_captions` to read them.
    """
    objects = parse_captions(caption)
    if len(objects) != 1:
        raise KinemaError(
            f"{caption!r} describes {len(objects)} objects; the shapes probe measures single-object "
            "clips (use parse_captions to read multi-object captions)"
        )
    return objects[0]


def score(frames: np.ndarray, caption: str) -> dict[str, Any]:
    """Check a single-object clip uint8 (T, S, S, 3) against its caption.

    Returns per-attribute correctness (colour, shape, motion, and size, which
    is None when the caption gives no size), `correct` (colour and shape and
    motion all match), and the `expected` and `measured` values.
    """
    expected = parse_caption(caption)
    measured = probe(frames)
    out: dict[str, Any] = {k: measured[k] is not None and measured[k] == expected[k] for k in _JUDGED}
    out["size"] = None if expected["size"] is None else measured["size"] == expected["size"]
    out["correct"] = out["colour"] and out["shape"] and out["motion"]
    out["expected"], out["measured"] = expected, measured
    return out
