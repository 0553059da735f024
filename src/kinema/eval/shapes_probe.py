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
  larger axis (y grows downwards); except that a track that reverses near an
  edge is bouncing (`bouncing_axis`: a turn of >= 0.05 S each way in the 3-frame
  moving average of the centroid along its axis of larger range, with the box
  within 0.06 S of that axis's edge there, a range >= 0.40 S along it and
  < 0.10 S across it): "bouncing left and right" or "bouncing up and down";
- long clips (more than 17 frames): `score` also probes each 17-frame window
  (frames 16k .. 16k + 16) on its own (`windows`);
- consistency: the object is present (area >= 25% of its median) in every
  frame, and the coefficient of variation of its area over frames.

Frames with no foreground are left out of the medians and of the motion
(the first two and last two frames that show something are used); a clip with
no foreground at all gets None for every attribute and is never correct. The
motion needs at least 3 frames to be told apart from "still".

Clips of two objects (`probe_objects`, `score_objects`): the objects of a
caption have distinct colours, so the foreground is split by colour (each
pixel to the palette colour whose ray from black passes nearest it, so an
anti-aliased edge keeps its colour). An object is the connected piece of its
colour and of third colours (none the caption names) that holds most of its
colour, with any other piece of object size that touches no other caption
colour: a third colour attached to both objects, or a blob of its own, counts
against both. Each object is then measured as above, its shape and size from
the frames where it touches the other least. A clip is correct when every
object is. Real clips read 95.8%: where the objects overlap in every frame
(mostly two that move together), the one drawn first is partly hidden
throughout and its shape cannot be read.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from kinema.data.shapes import COLOURS, MOTIONS, PALETTE, SHAPES, SIZES, is_bouncing, side_pixels
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
BOUNCE_TURN = 0.05
"""A bounce's turn: the centroid moves at least this fraction of S towards it and away from it."""
BOUNCE_EDGE = 0.06
"""A bounce's turn happens with the bounding box within this fraction of S of the canvas edge."""
BOUNCE_MIN_RANGE = 0.40
"""A bouncing track covers at least this fraction of S along its axis ..."""
BOUNCE_MAX_ACROSS = 0.10
"""... and less than this across it."""
WINDOW = 17
"""Frames of the windows a long clip is probed in, one every WINDOW - 1 frames (SHAPES.md)."""
PRESENT_MIN_AREA = 0.25
"""A frame shows the object when its area is at least this fraction of the median area."""
OBJECT_MIN_AREA = 0.005
"""With several objects, an object is there when its colour covers at least this fraction of the canvas
(S^2) in its median frame: a quarter of the smallest object, a small triangle of about 0.02 S^2."""

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


def _brightest(frames: np.ndarray) -> np.ndarray:
    """The largest channel of every pixel: uint8 (T, S, S, 3) -> uint8 (T, S, S)."""
    return np.maximum(np.maximum(frames[..., 0], frames[..., 1]), frames[..., 2])


def probe(frames: np.ndarray) -> dict[str, Any]:
    """Measure one single-object clip. frames: uint8 (T, S, S, 3).

    Returns colour, shape, size, motion (names, or None when there is no
    foreground), the measurements behind them (rgb, fill_ratio, side,
    displacement (dx, dy) in pixels, area and centroid per frame),
    present_all_frames and area_cv.
    """
    frames = _check_frames(frames)
    brightest = _brightest(frames)
    return measure(frames, brightest >= FOREGROUND_MIN, brightest)


def measure(
    frames: np.ndarray, foreground: np.ndarray, brightest: np.ndarray, shape_frames: np.ndarray | None = None
) -> dict[str, Any]:
    """Measure the object whose pixels are `foreground`, as `probe` does for a whole clip.

    frames: uint8 (T, S, S, 3); foreground: bool (T, S, S), the object's pixels; brightest: uint8 (T, S, S),
    the largest channel of each pixel (`_brightest(frames)`). shape_frames: bool (T,), the frames whose fill
    ratio and side give the shape and size (default every frame that shows the object; when none of them shows
    it, every frame that does): an object partly hidden by another in some frames is measured where it is not.
    """
    num_frames, canvas = frames.shape[0], frames.shape[1]
    fg = foreground
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
    judged = present if shape_frames is None or not (present & shape_frames).any() else present & shape_frames
    height, width = (bottom - top + 1)[judged], (right - left + 1)[judged]
    fill = float(np.median(area[judged] / (height * width)))
    side = float(np.median((height + width) / 2))

    coords = np.arange(canvas, dtype=np.float64)
    safe_area = np.maximum(area, 1)
    cx = per_col @ coords / safe_area  # (T,)
    cy = per_row @ coords / safe_area
    shown = np.flatnonzero(present)
    first, last = shown[:2], shown[-2:]
    dx = float(cx[last].mean() - cx[first].mean())
    dy = float(cy[last].mean() - cy[first].mean())

    bright = frames[fg & (brightest >= COLOUR_MIN)]  # (N, 3), a subset of the foreground
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
    # frames where another object hides most of it would move its centroid across the axis
    whole = np.flatnonzero(present & (area >= PRESENT_MIN_AREA * np.median(area)))
    bounce = bouncing_axis(cx[whole], cy[whole], np.stack([left, right, top, bottom], axis=1)[whole], canvas)
    if bounce is not None:
        motion = ("bouncing left and right", "bouncing up and down")[bounce]
    elif np.hypot(dx, dy) < STILL_MAX_DISPLACEMENT * canvas:
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


def turns(track: np.ndarray, threshold: float) -> list[int]:
    """Indices where a 1-D track turns back after moving at least `threshold` towards the turn, and then
    moves at least `threshold` away from it (a zig-zag with that hysteresis); smaller wiggles are ignored."""
    out: list[int] = []
    low = high = extreme = 0
    direction = 0  # +1 rising, -1 falling, 0 not yet moved by threshold
    for j in range(1, len(track)):
        if direction == 0:
            low, high = (j if track[j] < track[low] else low), (j if track[j] > track[high] else high)
            if track[j] - track[low] >= threshold:
                direction, extreme = 1, j
            elif track[high] - track[j] >= threshold:
                direction, extreme = -1, j
        elif direction * (track[j] - track[extreme]) >= 0:
            extreme = j
        elif direction * (track[extreme] - track[j]) >= threshold:
            out.append(extreme)
            direction, extreme = -direction, j
    return out


def bouncing_axis(cx: np.ndarray, cy: np.ndarray, boxes: np.ndarray, canvas: int) -> int | None:
    """0 when a centroid track bounces left and right, 1 up and down, None when it does not bounce.

    cx, cy: (N,) centroid per frame that shows the object; boxes: (N, 4) its bounding box (left, right, top,
    bottom) in those frames. Bouncing: along the axis of larger range the track covers >= BOUNCE_MIN_RANGE S
    (< BOUNCE_MAX_ACROSS S across) and it turns (`turns`, BOUNCE_TURN S) at least once where the box is within
    BOUNCE_EDGE S of an edge of that axis. The raw track, not a moving average: averaging flattens a turn
    near a window's end, and 7% of real 17-frame windows then failed (none of 3,000 do as it is).
    """
    if len(cx) < 3:
        return None
    ranges = (float(np.ptp(cx)), float(np.ptp(cy)))
    axis = int(ranges[1] > ranges[0])
    if ranges[axis] < BOUNCE_MIN_RANGE * canvas or ranges[1 - axis] >= BOUNCE_MAX_ACROSS * canvas:
        return None
    along = (cx, cy)[axis]
    low, high = boxes[:, 2 * axis], boxes[:, 2 * axis + 1]
    margin = BOUNCE_EDGE * canvas
    near_edge = (low <= margin) | (high >= canvas - 1 - margin)
    for i in turns(along, BOUNCE_TURN * canvas):
        if near_edge[i]:
            return axis
    return None


_CAPTION = re.compile(
    r"^(?:an? )?(?:(?P<size>{sizes}) )?(?P<colour>{colours}) (?P<shape>{shapes}) "
    r"(?:moving (?P<motion>{moves})|staying (?P<still>still)|(?P<bouncing>{bounces}))$".format(
        sizes="|".join(SIZES),
        colours="|".join(COLOURS),
        shapes="|".join(SHAPES),
        moves="|".join(m for m in MOTIONS if m != "still" and not is_bouncing(m)),
        bounces="|".join(m for m in MOTIONS if is_bouncing(m)),
    )
)
_OBJECTS = re.compile(r" and (?=an? )")  # "bouncing left and right" keeps its "and"


def parse_captions(caption: str) -> list[dict[str, str | None]]:
    """Parse a shapes caption of one or more objects joined by ` and `; one dict per object."""
    text = " ".join(caption.lower().replace(",", " ").split()).rstrip(".")
    objects = []
    for part in _OBJECTS.split(text):
        match = _CAPTION.match(part.strip())
        if match is None:
            raise KinemaError(
                f"cannot read {part!r} as a shapes caption; expected "
                "'a [small|large] COLOUR SHAPE moving left|right|up|down', '... staying still' or "
                f"'... bouncing left and right|up and down', with COLOUR one of {', '.join(COLOURS)} "
                f"and SHAPE one of {', '.join(SHAPES)}"
            )
        motion = "still" if match["still"] else match["bouncing"] or match["motion"]
        objects.append({"size": match["size"], "colour": match["colour"], "shape": match["shape"], "motion": motion})
    return objects


def parse_caption(caption: str) -> dict[str, str | None]:
    """Parse a single-object caption into size (None when not given), colour, shape and motion.

    Two-object captions raise KinemaError (`probe` and `score` measure one object);
    use `parse_captions` to read them and `score_objects` to score their clips.
    """
    objects = parse_captions(caption)
    if len(objects) != 1:
        raise KinemaError(
            f"{caption!r} describes {len(objects)} objects; `score` and `probe` measure single-object "
            "clips: score it with score_objects (use parse_captions to read multi-object captions)"
        )
    return objects[0]


def _judge(expected: dict[str, str | None], measured: dict[str, Any]) -> dict[str, Any]:
    """One object's verdict: per-attribute correctness, `correct`, and the `expected` and `measured` values."""
    out: dict[str, Any] = {k: measured[k] is not None and measured[k] == expected[k] for k in _JUDGED}
    out["size"] = None if expected["size"] is None else measured["size"] == expected["size"]
    out["correct"] = out["colour"] and out["shape"] and out["motion"]
    out["expected"], out["measured"] = expected, measured
    return out


def score(frames: np.ndarray, caption: str) -> dict[str, Any]:
    """Check a single-object clip uint8 (T, S, S, 3) against its caption.

    Returns per-attribute correctness (colour, shape, motion, and size, which
    is None when the caption gives no size), `correct` (colour and shape and
    motion all match), and the `expected` and `measured` values; for a clip of
    more than WINDOW frames also `windows`, the same verdict for each WINDOW-frame
    window (frames 16k .. 16k + 16; `window_frames`), each probed on its own.
    """
    expected = parse_caption(caption)
    out = _judge(expected, probe(frames))
    if len(frames) > WINDOW:
        out["windows"] = [_judge(expected, probe(frames[w])) for w in window_frames(len(frames))]
    return out


def window_frames(num_frames: int) -> list[slice]:
    """The WINDOW-frame windows a clip of `num_frames` frames is probed in: frames 16k .. 16k + 16, each whole."""
    step = WINDOW - 1
    return [slice(start, start + WINDOW) for start in range(0, num_frames - WINDOW + 1, step)]


# ----------------------------------------------------------------------------- clips of several objects


def nearest_palette(frames: np.ndarray) -> np.ndarray:
    """The palette colour of every pixel: uint8 (T, S, S, 3) -> int (T, S, S), indices into COLOURS.

    A pixel's colour is the palette colour whose ray from black (the colour at every brightness) passes
    nearest it in RGB: an anti-aliased edge, a palette colour blended with the black background, keeps its
    colour, where the nearest palette colour itself would often be another (a dim blue edge is nearer green).
    """
    x = frames.reshape(-1, 3).astype(np.float32)  # (N, 3)
    palette = _PALETTE_RGB.astype(np.float32)  # (K, 3)
    scale = np.maximum(x @ palette.T / (palette**2).sum(axis=1), 0.0)  # (N, K): the brightness nearest x on each ray
    distance = (x**2).sum(axis=1, keepdims=True) - 2 * scale * (x @ palette.T) + scale**2 * (palette**2).sum(axis=1)
    return distance.argmin(axis=1).reshape(frames.shape[:3])


def _neighbourhood_max(a: np.ndarray) -> np.ndarray:
    """The largest value among each pixel and its 8 neighbours, frame by frame: (T, S, S) -> (T, S, S).

    On a bool mask, the mask grown by one pixel in every direction.
    """
    out = a.copy()
    out[:, 1:] = np.maximum(out[:, 1:], a[:, :-1])
    out[:, :-1] = np.maximum(out[:, :-1], a[:, 1:])
    rows = out.copy()
    out[:, :, 1:] = np.maximum(out[:, :, 1:], rows[:, :, :-1])
    out[:, :, :-1] = np.maximum(out[:, :, :-1], rows[:, :, 1:])
    return out


def _components(mask: np.ndarray) -> np.ndarray:
    """Label the 8-connected pieces of each frame of a bool mask (T, S, S): int (T, S, S), 0 off the mask.

    Every piece takes the largest flat index + 1 among its pixels, so labels are unique over the clip.
    """
    labels = np.where(mask, np.arange(1, mask.size + 1).reshape(mask.shape), 0)
    while True:  # spread the largest label through each piece, one pixel a step
        grown = np.where(mask, _neighbourhood_max(labels), 0)
        if np.array_equal(grown, labels):
            return labels
        labels = grown


def _object_pixels(own: np.ndarray, stray: np.ndarray, others: np.ndarray, min_area: float) -> tuple[np.ndarray, np.ndarray]:
    """The pixels of one object of a clip of several, frame by frame.

    own: bool (T, S, S), pixels of the object's colour; stray: pixels of a colour no caption object has;
    others: pixels of the other caption colours. Each 8-connected piece of own | stray is kept when it is the
    piece with most of the object's colour, or when it has at least `min_area` pixels and touches no other
    caption colour (a second blob of the colour, or a blob of a third colour: both count against the object).
    Smaller pieces are dropped, as are pieces that lie along another object (its edges, shifted in colour).
    Returns (pixels bool (T, S, S), the count of own pixels in the main piece per frame int (T,)).
    """
    candidates = own | stray
    labels = _components(candidates)
    touching = _neighbourhood_max(others)
    pixels, main_own = np.zeros_like(own), np.zeros(own.shape[0], np.int64)
    for t in range(own.shape[0]):
        ids, piece = np.unique(labels[t][candidates[t]], return_inverse=True)
        if not len(ids):
            continue
        own_count = np.bincount(piece, weights=own[t][candidates[t]])
        keep = (np.bincount(piece) >= min_area) & (np.bincount(piece, weights=touching[t][candidates[t]]) == 0)
        if own_count.max() > 0:
            keep[own_count.argmax()] = True
            main_own[t] = int(own_count.max())
        pixels[t] = np.isin(labels[t], ids[keep])
    return pixels, main_own


def probe_objects(frames: np.ndarray, colours: Sequence[str]) -> dict[str, Any]:
    """Measure a clip of several objects of distinct colours. frames: uint8 (T, S, S, 3).

    The foreground (largest channel >= FOREGROUND_MIN) is split by colour (`nearest_palette`). Object i is,
    in each frame, the connected piece of pixels of colours[i] or of a third colour (one that no caption
    object has) that holds most of colours[i]; with it, every other such piece of at least OBJECT_MIN_AREA
    * S^2 pixels that touches no other caption colour: a second blob of its colour, or a blob of a third
    colour, which so counts against every object. Pieces along another object are left out: a decoder
    shifts the colour of edges, so a blue edge can read cyan or magenta. An object whose main piece holds
    fewer than OBJECT_MIN_AREA * S^2 pixels of its colour in its median frame is absent (every attribute
    None); otherwise its pixels are measured as `probe` measures a single object, except that its shape
    and size come from the frames where it is present (area >= PRESENT_MIN_AREA of its median) and the
    fewest of its pixels touch another caption colour ("clear_frames"): where two objects meet, the one
    drawn first can be partly hidden.

    Returns {"objects": one `probe` dict per colour, in order, with own_area (its colour's pixels in its
    main piece, per frame) and clear_frames (bool per frame) added; "stray_area": third-colour pixels per
    frame; "stray_share": their share of all foreground pixels (0 when there is none)}.
    """
    frames = _check_frames(frames)
    min_area = OBJECT_MIN_AREA * frames.shape[1] ** 2
    for colour in colours:
        if colour not in COLOURS:
            raise KinemaError(f"unknown colour {colour!r}; the shapes palette is {', '.join(COLOURS)}")
    if len(set(colours)) != len(colours):
        raise KinemaError(f"the objects of a clip are told apart by colour, so they need distinct colours, got {list(colours)}")
    brightest = _brightest(frames)
    foreground = brightest >= FOREGROUND_MIN
    nearest = nearest_palette(frames)
    own = np.stack([foreground & (nearest == COLOURS.index(c)) for c in colours])  # (K, T, S, S)
    stray = foreground & ~own.any(axis=0)  # (T, S, S)
    objects = []
    for i in range(len(colours)):
        others = np.delete(own, i, axis=0).any(axis=0)
        pixels, own_area = _object_pixels(own[i], stray, others, min_area)
        if np.median(own_area) < min_area:
            pixels = np.zeros_like(pixels)
        # The frames that show it (as present_all_frames counts them) where it touches the other colours least.
        area = np.count_nonzero(pixels, axis=(1, 2))
        shown = (area > 0) & (area >= PRESENT_MIN_AREA * np.median(area))
        contact = np.count_nonzero(pixels & _neighbourhood_max(others), axis=(1, 2))  # (T,)
        clear = shown & (contact == contact[shown].min()) if shown.any() else shown
        measured = measure(frames, pixels, brightest, shape_frames=clear)
        objects.append({**measured, "own_area": own_area.tolist(), "clear_frames": clear.tolist()})
    stray_total, foreground_total = int(np.count_nonzero(stray)), int(np.count_nonzero(foreground))
    return {
        "objects": objects,
        "stray_area": np.count_nonzero(stray, axis=(1, 2)).tolist(),
        "stray_share": stray_total / foreground_total if foreground_total else 0.0,
    }


def score_objects(frames: np.ndarray, caption: str) -> dict[str, Any]:
    """Check a clip uint8 (T, S, S, 3) of one object or more against its caption.

    One object: `score`. Several (of distinct colours, as the shapes data draws them): each caption object
    is found by its colour (`probe_objects`) and judged as `score` judges a single object. Returns `score`'s
    keys for the clip as a whole (colour, shape, motion: every object right on it; size: every sized object
    right, None when the caption gives no size; correct: every object correct; expected: one dict per
    object), `objects` (one `score` result per caption object, in order) and `measured`
    (present_all_frames: every object present in every frame; area_cv: the mean of the objects'; stray_share).
    """
    expected = parse_captions(caption)
    if len(expected) == 1:
        return score(frames, caption)
    measured = probe_objects(frames, [e["colour"] for e in expected])
    objects = [_judge(e, m) for e, m in zip(expected, measured["objects"])]
    out: dict[str, Any] = {k: all(o[k] for o in objects) for k in (*_JUDGED, "correct")}
    sized = [o["size"] for o in objects if o["size"] is not None]
    out["size"] = all(sized) if sized else None
    cvs = [o["measured"]["area_cv"] for o in objects]
    out["expected"], out["objects"] = expected, objects
    out["measured"] = {
        "present_all_frames": all(o["measured"]["present_all_frames"] for o in objects),
        "area_cv": None if None in cvs else float(np.mean(cvs)),
        "stray_share": measured["stray_share"],
    }
    return out
