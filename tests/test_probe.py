"""The shapes probe reads rendered clips perfectly and fails a clip on exactly what is wrong."""

import numpy as np
import pytest

from kinema.data.shapes import COLOURS, MOTIONS, SHAPES, SIZES, caption_for, make_object, render_clip
from kinema.errors import KinemaError
from kinema.eval.shapes_probe import parse_caption, parse_captions, probe, score

FRAMES = 17


def clip(canvas=64, frames=FRAMES, **attrs):
    a = make_object(canvas=canvas, frames=frames, **attrs)
    return a, render_clip(a, canvas, frames)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("canvas", [64, 128])
def test_probe_reads_every_rendered_combination(canvas, shape):
    rng = np.random.default_rng([canvas, SHAPES.index(shape)])
    for colour in COLOURS:
        for size in SIZES:
            for motion in MOTIONS:
                # One random placement, and one at the extremes (corners, shortest or longest travel).
                for start, distance in ((rng.random(2), rng.random()), (rng.integers(0, 2, 2), rng.integers(0, 2))):
                    a, frames = clip(
                        canvas, colour=colour, shape=shape, size=size, motion=motion, start=start, distance=distance
                    )
                    result = score(frames, caption_for(a))
                    m = result["measured"]
                    assert result["correct"] and result["size"], (caption_for(a), start, distance, m)
                    # Thresholded pixel counts vary a little with the sub-pixel position.
                    assert m["present_all_frames"] and m["area_cv"] < 0.1
                    assert m["rgb"] == tuple(float(v) for v in a["rgb"])


@pytest.mark.parametrize(
    ("attribute", "truth", "rendered"),
    [("colour", c, r) for c in COLOURS for r in COLOURS if c != r]
    + [("shape", s, r) for s in SHAPES for r in SHAPES if s != r]
    + [("motion", m, r) for m in MOTIONS for r in MOTIONS if m != r],
)
def test_a_wrong_clip_fails_on_exactly_that_attribute(attribute, truth, rendered):
    asked = dict(colour="green", shape="square", size="large", motion="right", start=(0.4, 0.6), distance=0.3)
    asked[attribute] = truth
    shown = dict(asked, **{attribute: rendered})
    a, frames = clip(**shown)
    caption = caption_for(make_object(canvas=64, frames=FRAMES, **asked))
    result = score(frames, caption)
    assert result["measured"][attribute] == rendered
    assert result[attribute] is False and result["correct"] is False
    for other in {"colour", "shape", "motion"} - {attribute}:
        assert result[other] is True


def test_size_is_reported_but_not_part_of_correct():
    _, frames = clip(colour="red", shape="circle", size="large", motion="up")
    result = score(frames, "a small red circle moving up")
    assert result["size"] is False and result["correct"] is True
    result = score(frames, "a red circle moving up")  # no size in the prompt
    assert result["size"] is None and result["correct"] is True


def test_measured_values():
    a, frames = clip(colour="white", shape="square", size="large", motion="left", start=(0.5, 0.5), distance=0.5)
    m = probe(frames)
    dx, dy = m["displacement"]
    # First-two to last-two means span (T - 2) of the T - 1 steps.
    assert dx == pytest.approx(a["displacement"][0] * (FRAMES - 2) / (FRAMES - 1), abs=0.2) and abs(dy) < 0.2
    assert m["fill_ratio"] > 0.95 and m["side"] == pytest.approx(a["side"], abs=1)
    assert len(m["area"]) == FRAMES and len(m["centroid"]) == FRAMES


def test_empty_clip_gives_no_attributes_and_is_not_correct():
    frames = np.zeros((FRAMES, 64, 64, 3), np.uint8)
    frames[3, 10, 10] = 40  # too dim to be foreground
    m = probe(frames)
    assert all(m[k] is None for k in ("colour", "shape", "size", "motion", "fill_ratio", "displacement", "area_cv"))
    assert m["present_all_frames"] is False and m["area"] == [0] * FRAMES
    result = score(frames, "a small red circle moving right")
    assert result["correct"] is False and not any(result[k] for k in ("colour", "shape", "motion", "size"))


def test_an_object_that_vanishes_is_not_present_in_all_frames():
    _, frames = clip(colour="cyan", shape="circle", size="large", motion="down")
    frames = frames.copy()
    frames[8] = 0
    m = probe(frames)
    assert m["present_all_frames"] is False and m["area"][8] == 0 and m["centroid"][8] is None
    assert m["area_cv"] > 0.2 and m["shape"] == "circle" and m["motion"] == "down"


def test_dim_object_has_no_colour():
    _, frames = clip(colour="white", shape="square", size="large", motion="still")
    m = probe((frames // 2).astype(np.uint8))  # 120: foreground, but never bright enough to vote
    assert m["colour"] is None and m["shape"] == "square"


def test_parse_caption():
    assert parse_caption("a small red circle moving right") == {
        "size": "small", "colour": "red", "shape": "circle", "motion": "right",
    }  # fmt: skip
    assert parse_caption("A large white triangle staying still.")["motion"] == "still"
    assert parse_caption("red square moving up")["size"] is None
    two = "a small red circle moving right and a large blue square staying still"
    assert [o["colour"] for o in parse_captions(two)] == ["red", "blue"]
    with pytest.raises(KinemaError, match="2 objects.*parse_captions"):
        parse_caption(two)
    with pytest.raises(KinemaError, match="cannot read 'a purple circle moving right'"):
        parse_caption("a purple circle moving right")
    with pytest.raises(KinemaError, match="2 objects"):
        score(np.zeros((3, 64, 64, 3), np.uint8), two)


def test_probe_refuses_the_wrong_input():
    with pytest.raises(KinemaError, match="uint8"):
        probe(np.zeros((3, 64, 64, 3), np.float32))
    with pytest.raises(KinemaError, match=r"\(T, S, S, 3\)"):
        probe(np.zeros((3, 3, 64, 64), np.uint8))
