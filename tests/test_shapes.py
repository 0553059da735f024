"""The shapes dataset follows SHAPES.md: determinism, captions, split, geometry, loading."""

import re

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from kinema.data import get_dataset
from kinema.data.shapes import (
    ALL_COMBOS,
    COLOURS,
    HELDOUT_COMBOS,
    MOTIONS,
    PALETTE,
    SHAPES,
    TRAIN_COMBOS,
    ShapesDataset,
    caption_for,
    is_bouncing,
    is_heldout,
    make_object,
    render_clip,
    side_pixels,
    track,
)
from kinema.errors import KinemaError

ONE = r"a (small|large) ({c}) ({s}) (moving (left|right|up|down)|staying still|bouncing (left and right|up and down))".format(
    c="|".join(COLOURS), s="|".join(SHAPES)
)


def combo(a):
    return a["colour_index"], a["shape_index"], a["motion_index"]


def test_same_seed_same_clip_and_different_index_or_seed_differ():
    a, b = ShapesDataset(size=32, frames=5, seed=3), ShapesDataset(size=32, frames=5, seed=3)
    for i in (0, 7, 123):
        assert torch.equal(a[i]["video"], b[i]["video"])
        assert a[i]["caption"] == b[i]["caption"] and a.attributes(i) == b.attributes(i)
    assert not torch.equal(a[0]["video"], a[1]["video"])
    other = ShapesDataset(size=32, frames=5, seed=4)
    assert not torch.equal(a[0]["video"], other[0]["video"])
    assert a.attributes(-1) == a.attributes(len(a) - 1)


def test_item_is_the_rendered_clip_in_minus_one_to_one():
    ds = ShapesDataset(size=32, frames=5, length=10)
    item = ds[2]
    video = item["video"]
    assert video.shape == (3, 5, 32, 32) and video.dtype == torch.float32
    assert video.min() >= -1 and video.max() <= 1 and video.min() == -1  # black background
    frames = render_clip(ds.attributes(2), 32, 5)
    expected = torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 127.5 - 1
    torch.testing.assert_close(video, expected)
    assert item["caption"] == caption_for(ds.attributes(2))
    with pytest.raises(IndexError):
        ds[10]


@pytest.mark.parametrize("objects", [1, 2])
def test_captions_follow_the_grammar(objects):
    ds = ShapesDataset(objects=objects, length=300)
    pattern = re.compile("^" + " and ".join([ONE] * objects) + "$")
    for i in range(len(ds)):
        attrs = ds.attributes(i)
        caption = caption_for(attrs)
        assert pattern.match(caption), caption
        for part, a in zip(re.split(r" and (?=a )", caption), attrs):
            action = "staying still" if a["motion"] == "still" else a["motion"] if a["bouncing"] else f"moving {a['motion']}"
            assert part == f"a {a['size']} {a['colour']} {a['shape']} {action}"
    assert caption_for(make_object(colour=0, shape=0, size=0, motion=1, canvas=64, frames=17)) == (
        "a small red circle moving right"
    )


def test_heldout_rule_selects_21_of_168_combinations_and_keeps_the_first_15():
    assert len(ALL_COMBOS) == 168
    held = [(c, s, m) for c in range(8) for s in range(3) for m in range(7) if (c + 3 * s + 2 * m) % 8 == 5]
    assert sorted(HELDOUT_COMBOS) == held and len(held) == 21
    assert len([k for k in HELDOUT_COMBOS if k[2] < 5]) == 15  # the one-way and still ones, as before bouncing
    assert set(TRAIN_COMBOS) | set(HELDOUT_COMBOS) == set(ALL_COMBOS)
    assert not set(TRAIN_COMBOS) & set(HELDOUT_COMBOS)
    assert is_heldout(5, 0, 0) and not is_heldout(0, 0, 0)
    # Every colour, shape and motion still has training partners.
    for axis, n in ((0, 8), (1, 3), (2, 7)):
        assert {k[axis] for k in TRAIN_COMBOS} == set(range(n))


@pytest.mark.parametrize("objects", [1, 2])
def test_train_split_never_shows_a_heldout_combination(objects):
    ds = ShapesDataset(split="train", objects=objects, length=3000)
    seen = set()
    for i in range(len(ds)):
        attrs = ds.attributes(i)
        assert len(attrs) == objects
        for a in attrs:
            assert not is_heldout(*combo(a)) and not a["heldout"]
            seen.add(combo(a))
        if objects == 2:
            assert attrs[0]["colour"] != attrs[1]["colour"]
    assert seen == set(TRAIN_COMBOS)  # every training combination, hence every colour, shape, motion


@pytest.mark.parametrize("objects", [1, 2])
def test_heldout_split_shows_heldout_combinations(objects):
    ds = ShapesDataset(split="heldout", objects=objects, length=600)
    seen = set()
    for i in range(len(ds)):
        attrs = ds.attributes(i)
        flags = [is_heldout(*combo(a)) for a in attrs]
        assert all(flags) if objects == 1 else any(flags)
        seen.update(combo(a) for a in attrs if is_heldout(*combo(a)))
    assert seen == set(HELDOUT_COMBOS)


def test_all_split_draws_from_both():
    ds = ShapesDataset(split="all", length=400)
    flags = {ds.attributes(i)[0]["heldout"] for i in range(len(ds))}
    assert flags == {True, False}


@pytest.mark.parametrize("size", [32, 64, 128])
def test_sizes_and_displacement_bounds(size):
    assert side_pixels("small", size) == round(0.20 * size)
    assert side_pixels("large", size) == round(0.32 * size)
    ds = ShapesDataset(size=size, split="all", length=400)
    for i in range(len(ds)):
        (a,) = ds.attributes(i)
        dx, dy = a["displacement"]
        assert a["side"] == side_pixels(a["size"], size)
        if a["motion"] == "still":
            assert (dx, dy) == (0, 0) and a["velocity"] == (0, 0)
            continue
        if a["bouncing"]:
            continue  # test_bouncing_objects_reflect_at_constant_speed
        ux, uy = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}[a["motion"]]
        travel = dx * ux + dy * uy
        assert 0.30 * size <= travel <= 0.50 * size
        assert dx * uy == 0 and dy * ux == 0  # along one axis only
        assert a["velocity"] == pytest.approx((dx / 16, dy / 16))


def _box_per_frame(a, frames):
    if a["bouncing"]:
        return track(a, frames)
    t = np.arange(frames) / (frames - 1)
    x = a["start"][0] + a["displacement"][0] * t
    y = a["start"][1] + a["displacement"][1] * t
    return x, y


def _bounce_step_by_step(position, velocity, frames, room):
    out = []
    for _ in range(frames):
        out.append(position)
        position += velocity
        if position > room:
            position, velocity = 2 * room - position, -velocity
        elif position < 0:
            position, velocity = -position, -velocity
    return np.array(out)


@pytest.mark.parametrize("size", [64, 128])
def test_bouncing_objects_reflect_at_constant_speed(size):
    """SHAPES.md: speed uniform in [0.90, 1.20] S per 16 frames along one axis, reflecting so that the whole
    object stays inside; any length with the same physics; every 17-frame window holds a reversal."""
    ds = ShapesDataset(size=size, split="all", frames=129, length=600)
    speeds, phases = [], []
    for i in range(len(ds)):
        (a,) = ds.attributes(i)
        if not a["bouncing"]:
            continue
        room = size - a["side"]
        axis = 0 if a["motion"] == "bouncing left and right" else 1
        speed = abs(a["velocity"][axis])
        assert a["velocity"][1 - axis] == 0 and 0.90 * size / 16 - 1e-9 <= speed <= 1.20 * size / 16 + 1e-9
        corners = np.stack(track(a, 129), axis=1)
        np.testing.assert_allclose(corners[:, axis], _bounce_step_by_step(a["start"][axis], a["velocity"][axis], 129, room), atol=1e-9)
        np.testing.assert_allclose(corners[:, 1 - axis], a["start"][1 - axis], atol=1e-9)
        assert corners.min() >= 0 and corners.max() <= room + 1e-9
        steps = np.sign(np.diff(corners[:, axis]))
        for w in range(0, 129 - 16, 16):  # a reversal in every window of 17 frames
            assert len(set(steps[w : w + 16]) - {0}) == 2
        # the same scene at another length is the same track, cut
        short = make_object(**{k: a[k] for k in ("colour", "shape", "size", "motion")}, canvas=size, frames=17)
        assert short["bouncing"]
        speeds.append(speed / size * 16)
        phases.append(a["start"][axis] / room * (1 if a["velocity"][axis] > 0 else -1))
    assert min(speeds) < 0.95 and max(speeds) > 1.15  # the whole speed range is drawn
    assert min(phases) < -0.8 and max(phases) > 0.8  # both directions, from edge to edge


def test_a_bouncing_clip_renders_at_any_length():
    a = make_object(colour="cyan", shape="triangle", size="small", motion="bouncing up and down", canvas=64, frames=17,
                    start=(0.2, 0.7), distance=0.4)  # fmt: skip
    np.testing.assert_array_equal(render_clip(a, 64, 129)[:17], render_clip(a, 64, 17))
    assert is_bouncing("bouncing up and down") and is_bouncing(6) and not is_bouncing("right")


def test_object_inside_canvas_in_every_frame_including_extremes():
    size, frames = 64, 9
    objects = [a for i in range(200) for a in ShapesDataset(split="all", frames=frames).attributes(i)]
    for m in MOTIONS:  # the extreme draws: corners and the longest displacement
        for u in (0.0, 1.0):
            for v in (0.0, 1.0):
                extreme = make_object(
                    colour=0, shape=1, size=1, motion=m, canvas=size, frames=frames, start=(u, v), distance=1.0
                )
                objects.append(extreme)
    for a in objects:
        x, y = _box_per_frame(a, frames)
        assert x.min() >= -1e-9 and y.min() >= -1e-9
        assert x.max() + a["side"] <= size + 1e-9 and y.max() + a["side"] <= size + 1e-9
        clip = render_clip(a, size, frames)
        fg = clip.max(axis=-1) > 0
        for t in range(frames):
            ys, xs = np.nonzero(fg[t])
            # Pixels lit lie within the box (rounded outwards), so nothing was cut off.
            assert xs.min() >= np.floor(x[t]) and xs.max() < np.ceil(x[t] + a["side"])
            assert ys.min() >= np.floor(y[t]) and ys.max() < np.ceil(y[t] + a["side"])


def test_square_moves_by_its_displacement_and_keeps_its_area():
    a = make_object(colour="white", shape="square", size="large", motion="down", canvas=64, frames=17, start=(0.3, 0.2))
    clip = render_clip(a, 64, 17).astype(np.float64)[..., 0] / PALETTE["white"][0]
    mass = clip.sum(axis=(1, 2))
    np.testing.assert_allclose(mass, a["side"] ** 2, atol=0.5)  # anti-aliased but area-preserving
    ys = np.arange(64)
    cy = (clip.sum(axis=2) * ys).sum(axis=1) / mass
    np.testing.assert_allclose(cy[-1] - cy[0], a["displacement"][1], atol=0.1)


def test_antialiased_edges_and_exact_palette_inside():
    a = make_object(
        colour="orange", shape="circle", size="large", motion="still", canvas=64, frames=1, start=(0.37, 0.61)
    )
    frame = render_clip(a, 64, 1)[0]
    red = frame[..., 0]
    assert ((red > 0) & (red < PALETTE["orange"][0])).sum() > 10  # partial-coverage edge pixels
    cx, cy = a["start"][0] + a["side"] / 2, a["start"][1] + a["side"] / 2
    assert tuple(frame[int(cy), int(cx)]) == PALETTE["orange"]


def test_second_object_is_drawn_on_top():
    first = make_object(colour="red", shape="square", size="large", motion="still", canvas=64, frames=2)
    second = make_object(colour="blue", shape="square", size="small", motion="still", canvas=64, frames=2)
    frame = render_clip([first, second], 64, 2)[0]
    assert tuple(frame[32, 32]) == PALETTE["blue"]
    assert tuple(frame[int(first["start"][1]) + 1, int(first["start"][0]) + 1]) == PALETTE["red"]


def test_two_object_clips_render_both():
    ds = ShapesDataset(objects=2, size=64, frames=5, length=20)
    for i in range(len(ds)):
        attrs = ds.attributes(i)
        frames = render_clip(attrs, 64, 5)
        colours = frames[frames.max(axis=-1) > 0]
        for a in attrs[1:]:  # the top object is always fully visible
            assert (colours == np.asarray(a["rgb"], np.uint8)).all(axis=1).any()


def test_render_refuses_attributes_from_another_canvas():
    a = make_object(colour=0, shape=0, size=0, motion=0, canvas=64, frames=17)
    with pytest.raises(KinemaError, match="64-pixel canvas"):
        render_clip(a, 128, 17)


def test_bad_settings_raise_kinema_error():
    with pytest.raises(KinemaError, match="split must be one of train, heldout, all"):
        ShapesDataset(split="test")
    with pytest.raises(KinemaError, match="objects must be 1, 2 or a tuple"):
        ShapesDataset(objects=3)
    with pytest.raises(KinemaError, match="size"):
        ShapesDataset(size=8)
    with pytest.raises(KinemaError, match="colour"):
        make_object(colour="purple", shape=0, size=0, motion=0, canvas=64, frames=17)
    with pytest.raises(KinemaError, match=r"must lie in \[0, 1\]"):
        make_object(colour=0, shape=0, size=0, motion=0, canvas=64, frames=17, start=(1.5, 0))


def test_dataloader_with_two_workers():
    ds = ShapesDataset(size=32, frames=5, length=8, objects=2)
    batches = list(DataLoader(ds, batch_size=4, num_workers=2))
    videos = torch.cat([b["video"] for b in batches])
    captions = [c for b in batches for c in b["caption"]]
    assert videos.shape == (8, 3, 5, 32, 32)
    for i in range(8):
        assert torch.equal(videos[i], ds[i]["video"]) and captions[i] == ds[i]["caption"]


def test_get_dataset_resolves_names_and_refuses_others():
    one, two = get_dataset("shapes", size=32, frames=5), get_dataset("shapes2", size=32, frames=5)
    assert isinstance(one, ShapesDataset) and one.objects == 1 and two.objects == 2
    assert " and " in two[0]["caption"] and " and " not in one[0]["caption"]
    with pytest.raises(KinemaError, match="shapes, shapes2, shapes-mixed, digits"):
        get_dataset("cifar")
    with pytest.raises(KinemaError, match="does not take objects"):
        get_dataset("shapes2", objects=1)


def test_mixed_object_counts_reuse_the_fixed_count_clips():
    mixed = get_dataset("shapes-mixed", size=32, frames=5, length=60)
    fixed = {n: ShapesDataset(size=32, frames=5, length=60, objects=n) for n in (1, 2)}
    counts = []
    unsized = 0
    for i in range(60):
        n = len(mixed.attributes(i))
        counts.append(n)
        item = mixed[i]
        assert torch.equal(item["video"], fixed[n][i]["video"])
        assert item["caption"] == mixed.caption(i)
        sizes = [a["size"] for a in mixed.attributes(i)]
        if any(f" {z} " in item["caption"] for z in ("small", "large")):
            assert item["caption"] == fixed[n].caption(i)
        else:  # the same caption with every size left out
            unsized += 1
            assert item["caption"] == " and ".join(
                p.replace(f"a {z} ", "a ", 1) for p, z in zip(re.split(r" and (?=an? )", fixed[n].caption(i)), sizes)
            )
    assert 30 <= counts.count(1) <= 50 and counts.count(2) >= 10  # (1, 1, 2): about two in three single
    assert 6 <= unsized <= 25  # one caption in four leaves the sizes out
    with pytest.raises(KinemaError, match=r"tuple of them"):
        ShapesDataset(objects=(1, 3))
    with pytest.raises(KinemaError, match=r"sized_captions must be in \[0, 1\]"):
        ShapesDataset(sized_captions=1.5)


def test_get_dataset_routes_manifests_to_folder_dataset(tmp_path):
    import kinema.data
    from kinema.data import folder

    assert kinema.data.FolderDataset is folder.FolderDataset
    manifest = tmp_path / "clips.jsonl"
    manifest.write_text("")
    with pytest.raises(KinemaError):  # an empty manifest yields no sample
        get_dataset(str(manifest))
