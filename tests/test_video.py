"""kinema.video: round trips of every format, metadata, resampling, limits, errors, atomic writes."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from kinema.video import Video, VideoError, probe_video, read_video, write_video
from kinema.video.ops import frame_count, resize, select_frames


def smooth_clip(t: int = 12, h: int = 32, w: int = 40) -> np.ndarray:
    """Natural-ish content: smooth moving colour gradients, uint8 (T, H, W, 3)."""
    tt, yy, xx = np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing="ij")
    r = 128 + 60 * np.sin(xx / 12 + tt / 4) + 30 * np.cos(yy / 10)
    g = 128 + 50 * np.cos(yy / 9 - tt / 5) + 20 * np.sin(xx / 15)
    b = 100 + 40 * np.sin((xx + yy) / 14 + tt / 6)
    return np.stack([r, g, b], axis=-1).clip(0, 255).astype(np.uint8)


def indexed_clip(t: int = 16, h: int = 16, w: int = 16) -> np.ndarray:
    """Frame k is flat grey level 12 * k, so the frame index survives lossy codecs."""
    return np.broadcast_to((np.arange(t) * 12).astype(np.uint8)[:, None, None, None], (t, h, w, 3)).copy()


def frame_index(frames: np.ndarray) -> list[int]:
    return [int(round(float(f.mean()) / 12)) for f in frames]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def few_colours(t: int = 6, h: int = 20, w: int = 30) -> np.ndarray:
    """At most 200 colours a frame, different colours in every frame."""
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (200, 3), dtype=np.uint8)[rng.integers(0, 200, (h, w))] for _ in range(t)]
    return np.stack(frames)


META = {"prompt": "a red circle moving right", "seed": 3, "cfg": 4.5, "MixedCase": "ünïcode"}


# --- the Video value ---------------------------------------------------------------


def test_video_properties_and_tensor_round_trip():
    frames = smooth_clip(5, 6, 7)
    v = Video(frames, fps=10.0)
    assert (v.num_frames, v.height, v.width, v.duration) == (5, 6, 7, 0.5)
    x = v.to_tensor()
    assert x.shape == (3, 5, 6, 7) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    back = Video.from_tensor(x, fps=10.0, metadata={"a": 1})
    assert np.array_equal(back.frames, frames) and back.metadata == {"a": 1}
    assert Video.from_tensor(x[None]).num_frames == 5  # (1, 3, T, H, W)
    assert Video.from_tensor(x[:, 0]).num_frames == 1  # an image is a one-frame video
    assert Video.from_tensor(torch.full((3, 1, 2, 2), 7.0)).frames.max() == 255  # clamped


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"frames": np.zeros((2, 4, 4, 3), np.float32)}, "uint8"),
        ({"frames": np.zeros((4, 4, 3), np.uint8)}, "frames[None]"),
        ({"frames": np.zeros((2, 4, 4, 4), np.uint8)}, "(T, H, W, 3)"),
        ({"frames": np.zeros((0, 4, 4, 3), np.uint8)}, "at least one frame"),
        ({"frames": np.zeros((1, 4, 4, 3), np.uint8), "fps": 0}, "fps"),
        ({"frames": np.zeros((1, 4, 4, 3), np.uint8), "metadata": {"a": [1]}}, "JSON string"),
        ({"frames": torch.zeros(1, 4, 4, 3)}, "Video.from_tensor"),
    ],
)
def test_video_validates(kwargs, message):
    with pytest.raises(VideoError) as info:
        Video(**kwargs)
    assert message in str(info.value)


def test_numpy_numbers_are_accepted(tmp_path):
    v = Video(indexed_clip(2), fps=np.float32(12.5), metadata={"seed": np.int64(7), "scale": np.float32(0.5)})
    assert type(v.fps) is float and type(v.metadata["seed"]) is int
    assert read_video(v.save(tmp_path / "a.mp4")).metadata["seed"] == 7


def test_from_tensor_rejects_batches():
    with pytest.raises(VideoError, match="batch of 2"):
        Video.from_tensor(torch.zeros(2, 3, 1, 4, 4))


# --- round trips --------------------------------------------------------------------


@pytest.mark.parametrize("target", ["frames/", "pattern/%04d.png", "clip.gif"])
def test_lossless_formats_are_frame_exact(tmp_path, target):
    v = Video(few_colours(), fps=12.5, metadata=META)
    written = write_video(f"{tmp_path}/{target}", v)
    back = read_video(written)
    assert np.array_equal(back.frames, v.frames)
    assert back.fps == 12.5
    assert back.metadata == {**META, "kinema_version": back.metadata["kinema_version"]}


@pytest.mark.parametrize("ext", ["mp4", "webm", "mkv", "mov"])
def test_lossy_formats_keep_quality_size_fps_and_metadata(tmp_path, ext):
    v = Video(smooth_clip(12, 33, 47), fps=8.0, metadata=META)  # odd size: H.264 pads, the read crops back
    path = v.save(tmp_path / f"clip.{ext}")
    back = read_video(path)
    assert back.frames.shape == v.frames.shape
    assert psnr(back.frames, v.frames) >= 35.0
    assert back.fps == 8.0
    assert back.metadata == {**META, "kinema_version": back.metadata["kinema_version"]}


def test_metadata_gets_kinema_version_and_plain_tags(tmp_path):
    import kinema

    path = Video(smooth_clip(2, 8, 8), metadata={"prompt": "p"}).save(tmp_path / "a.mp4")
    assert read_video(path).metadata == {"prompt": "p", "kinema_version": kinema.__version__}
    with av.open(str(path)) as container:  # other tools see each key as its own tag
        assert container.metadata["prompt"] == "p"


def test_gif_keeps_repeated_frames(tmp_path):
    # Pillow stores identical neighbouring frames once with a longer delay; the read restores them.
    frames = few_colours(3, 8, 8)
    v = Video(np.stack([frames[0], frames[0], frames[1], frames[2], frames[2], frames[2]]), fps=12.5)
    assert np.array_equal(read_video(v.save(tmp_path / "a.gif")).frames, v.frames)
    still = Video(np.repeat(frames[:1], 10, axis=0), fps=7)
    back = read_video(still.save(tmp_path / "still.gif"))
    assert back.num_frames == 10 and np.array_equal(back.frames, still.frames)


@pytest.mark.parametrize("fps", [7.0, 24.0, 29.97])
def test_gif_timing_does_not_drift(tmp_path, fps):
    v = Video(few_colours(40, 4, 4), fps=fps)
    back = read_video(v.save(tmp_path / "a.gif"))
    assert np.array_equal(back.frames, v.frames)


@pytest.mark.parametrize("ext", ["png", "jpg", "webp"])
def test_single_images_are_one_frame_videos(tmp_path, ext):
    v = Video(smooth_clip(1, 16, 24), metadata={"prompt": "still"})
    back = read_video(v.save(tmp_path / f"image.{ext}"))
    assert back.frames.shape == (1, 16, 24, 3)
    assert psnr(back.frames, v.frames) >= 35.0
    assert probe_video(tmp_path / f"image.{ext}").is_image
    if ext != "webp":  # Pillow has no text metadata for WebP
        assert back.metadata["prompt"] == "still"


def test_image_holds_one_frame_only(tmp_path):
    with pytest.raises(VideoError, match="holds one frame"):
        Video(smooth_clip(2, 4, 4)).save(tmp_path / "a.png")
    assert list(tmp_path.iterdir()) == []


def test_foreign_video_tags_and_rate(tmp_path):
    path = tmp_path / "foreign.mkv"
    with av.open(str(path), "w") as container:
        container.metadata["title"] = "holiday"
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv420p"
        for frame in indexed_clip(10):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    back = read_video(path)
    assert back.fps == 25.0 and frame_index(back.frames) == list(range(10))
    assert back.metadata == {"title": "holiday"}  # as strings, without the muxer's own tags


@pytest.mark.parametrize("degrees, corner", [(90, (-1, 0)), (-90, (0, -1)), (180, (-1, -1))])
def test_display_rotation_is_applied(tmp_path, degrees, corner):
    # Phones store portrait clips as landscape frames plus a display rotation (counterclockwise degrees).
    frames = np.zeros((2, 16, 32, 3), np.uint8)
    frames[:, :4, :4] = 255  # a marker in the top-left corner as stored
    path = tmp_path / "phone.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 32, 16, "yuv420p"
        stream.set_display_rotation(degrees)
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    shown = read_video(path).frames
    assert shown.shape == ((2, 16, 32, 3) if degrees == 180 else (2, 32, 16, 3))
    assert shown[0, corner[0], corner[1]].min() > 200  # the marker moved to where the rotation puts it
    assert shown[0, 0, 0].max() < 50


def test_probe_reads_headers(tmp_path):
    path = Video(indexed_clip(16), fps=8.0, metadata={"a": "b"}).save(tmp_path / "a.mp4")
    info = probe_video(path)
    assert (info.num_frames, info.fps, info.duration, info.height, info.width) == (16, 8.0, 2.0, 16, 16)
    assert info.metadata["a"] == "b" and not info.is_image


# --- time: resampling and trimming ---------------------------------------------------


def _resampled(n: int, src: float, dst: float, **kw) -> list[int]:
    return list(select_frames(((k / src, 1 / src, k) for k in range(n)), fps=dst, **kw))


def test_select_frames_examples():
    assert _resampled(10, 10, 10) == list(range(10))
    assert _resampled(4, 8, 24) == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert _resampled(16, 16, 8) == [0, 2, 4, 6, 8, 10, 12, 14]
    assert _resampled(30, 30, 10) == [1, 4, 7, 10, 13, 16, 19, 22, 25, 28]
    assert _resampled(20, 10, 10, start=0.5, end=1.2) == [5, 6, 7, 8, 9, 10, 11]
    assert _resampled(39, 30, 1) == [14]  # 1.3 s at 1 fps is one frame


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 60),
    src=st.sampled_from([5.0, 8.0, 12.5, 24.0, 30000 / 1001, 60.0]),
    dst=st.sampled_from([1.0, 4.0, 8.0, 15.0, 24.0]),
)
def test_select_frames_count_and_order(n, src, dst):
    index = _resampled(n, src, dst)
    assert len(index) == frame_count(n / src, dst)
    assert index == sorted(index) and all(0 <= k < n for k in index)
    # each output frame shows the source frame on screen at its middle
    middles = [(i + 0.5) * src / dst for i in range(len(index))]
    assert all(k == min(n - 1, int(m)) for k, m in zip(index, middles) if abs(m - round(m)) > 1e-6)


@pytest.mark.parametrize("ext", ["mp4", "webm", "gif", "frames/"])
def test_read_resamples_and_trims(tmp_path, ext):
    target = f"{tmp_path}/{ext}" if ext.endswith("/") else f"{tmp_path}/a.{ext}"
    path = write_video(target, Video(indexed_clip(16), fps=8.0))
    # Target rates whose frame middles fall inside source frames, not on their (rounded) edges.
    assert frame_index(read_video(path, fps=8 / 3).frames) == [1, 4, 7, 10, 13]
    assert frame_index(read_video(path, fps=16, end=0.5).frames) == [0, 0, 1, 1, 2, 2, 3, 3]
    trimmed = read_video(path, start=0.5, end=1.25)
    assert trimmed.fps == 8.0 and frame_index(trimmed.frames) == [4, 5, 6, 7, 8, 9]
    assert frame_index(read_video(path, start=1.0, fps=8 / 3).frames) == [9, 12, 15]


@pytest.mark.parametrize("ext, codec", [("mp4", "libx264"), ("webm", "libvpx-vp9")])
def test_read_seeks_to_start_across_keyframes(tmp_path, ext, codec):
    # 120 frames at 24 fps with a keyframe every 10: frame k shows k % 20 on the left and k // 20 on the right.
    k = np.arange(120)[:, None, None]
    frames = np.zeros((120, 16, 16, 3), np.uint8)
    frames[:, :, :8] = (k % 20 * 12)[..., None]
    frames[:, :, 8:] = (k // 20 * 40)[..., None]
    path = tmp_path / f"long.{ext}"
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=24)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv420p"
        stream.options = {"g": "10", "crf": "10", "b": "0"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    for start in (1.0, 2.3, 4.9):
        got = read_video(path, start=start, end=start + 0.5).frames
        index = [round(f[:, :8].mean() / 12) + 20 * round(f[:, 8:].mean() / 40) for f in got]
        first = int((start + 0.5 / 24) * 24)
        assert index == list(range(first, min(first + 12, 120)))


def test_read_resizes(tmp_path):
    path = Video(smooth_clip(2, 32, 40)).save(tmp_path / "a.gif")
    assert read_video(path, size=16).frames.shape == (2, 16, 16, 3)
    assert read_video(path, size=(8, 12)).frames.shape == (2, 8, 12, 3)


def test_resize_averages_when_shrinking():
    frames = np.zeros((1, 4, 4, 3), np.uint8)
    frames[:, ::2, ::2] = 255  # a checkerboard of single pixels averages to a flat quarter grey
    assert np.all(np.abs(resize(frames, (2, 2)).astype(int) - 64) <= 1)
    assert resize(frames, (8, 6)).shape == (1, 8, 6, 3)


# --- bad input ----------------------------------------------------------------------


def _png_header(path: Path, width: int, height: int) -> None:
    """A valid PNG signature and IHDR (with its CRC) claiming width x height, and no real image data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def _audio_only(path: Path) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=8000)
        for k in range(4):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 8000, k * 1024
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def _mp4_cut_in_half(path: Path, faststart: bool) -> None:
    options = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(path), "w", container_options=options) as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for frame in smooth_clip(40, 48, 64):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    "make, kwargs, message",
    [
        (lambda p: None, {}, "no such file"),
        (lambda p: p.write_bytes(b""), {}, "empty (0 bytes)"),
        (lambda p: p.write_text("this is not a video\n" * 20), {}, "not a readable .mp4 video"),
        (lambda p: _mp4_cut_in_half(p, faststart=False), {}, "cut short before its header"),
        (lambda p: _mp4_cut_in_half(p, faststart=True), {}, "truncated"),
        (_audio_only, {}, "no video stream (it holds: audio)"),
        (lambda p: Video(indexed_clip(16)).save(p), {"max_frames": 10}, "16 frames at 8 fps is over max_frames=10"),
        (lambda p: Video(indexed_clip(16)).save(p), {"max_pixels": (8, 8)}, "frames too large: 16x16"),
        (lambda p: Video(indexed_clip(16)).save(p), {"start": 5.0}, "no frames between start=5"),
    ],
    ids=["missing", "empty", "text", "cut-moov-at-end", "cut-faststart", "audio-only", "max-frames", "max-pixels", "past-end"],
)
def test_bad_video_files(tmp_path, make, kwargs, message):
    path = tmp_path / "clip.mp4"
    make(path)
    with pytest.raises(VideoError) as info:
        read_video(path, **kwargs)
    assert message in str(info.value) and str(path) in str(info.value)


def test_unknown_codec(tmp_path):
    # An FFV1 Matroska file whose codec id is renamed to one FFmpeg does not know.
    path = tmp_path / "clip.mkv"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=8)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv420p"
        for frame in indexed_clip(3):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    data = path.read_bytes()
    assert data.count(b"V_FFV1") == 1
    path.write_bytes(data.replace(b"V_FFV1", b"V_ZZZZ"))
    with pytest.raises(VideoError, match="codec cannot be decoded.*re-encode it"):
        read_video(path)


def test_png_bomb_is_refused_from_its_header(tmp_path):
    huge, big = tmp_path / "huge.png", tmp_path / "big.png"
    _png_header(huge, 100_000, 100_000)  # over Pillow's own bomb limit
    _png_header(big, 5000, 100)  # under Pillow's, over ours
    for path, size in [(huge, "10000000000 pixels"), (big, "5000x100")]:
        with pytest.raises(VideoError) as info:
            probe_video(path)
        assert "too large" in str(info.value) and size in str(info.value)
    assert probe_video(big, max_pixels=None).width == 5000  # a trusted file: the limit can be lifted


@pytest.mark.parametrize(
    "url", ["http://example.com/a.mp4", "rtmp://host/live", "file:/etc/passwd", "concat:a.mp4|b.mp4", "pipe:0"]
)
def test_urls_and_protocols_are_refused(url):
    with pytest.raises(VideoError, match="local files only"):
        read_video(url)
    with pytest.raises(VideoError, match="local files only"):
        write_video(url, Video(indexed_clip(1)))


def test_unknown_extension_lists_supported(tmp_path):
    path = tmp_path / "clip.xyz"
    path.write_bytes(b"data")
    with pytest.raises(VideoError, match=r"unknown extension '\.xyz'.*\.mp4.*\.gif.*%05d\.png"):
        read_video(path)
    with pytest.raises(VideoError, match=r"cannot write extension '\.xyz'.*\.webm"):
        write_video(tmp_path / "out.xyz", Video(indexed_clip(1)))


def test_png_sequence_errors(tmp_path):
    with pytest.raises(VideoError, match="does not exist"):
        read_video(tmp_path / "none" / "%05d.png")
    (tmp_path / "empty").mkdir()
    with pytest.raises(VideoError, match="without PNG files"):
        read_video(tmp_path / "empty")
    folder = write_video(str(tmp_path / "seq") + "/", Video(few_colours(3, 8, 8)))
    Image.new("RGB", (9, 9)).save(folder / "00001.png")
    with pytest.raises(VideoError, match="same size"):
        read_video(folder)


# --- writing ------------------------------------------------------------------------


class _BrokenVideoFrame:
    """Stands in for av.VideoFrame to make an encode fail after the output file was opened."""

    @staticmethod
    def from_ndarray(*args, **kwargs):
        raise OSError(28, "No space left on device")


def _listing(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


def test_failed_write_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    path = Video(indexed_clip(4), metadata={"v": 1}).save(tmp_path / "a.mp4")
    before, listing = path.read_bytes(), _listing(tmp_path)
    monkeypatch.setattr(av, "VideoFrame", _BrokenVideoFrame)
    with pytest.raises(VideoError, match="could not write .*No space left on device"):
        Video(indexed_clip(8), metadata={"v": 2}).save(path)
    assert path.read_bytes() == before and _listing(tmp_path) == listing


def test_failed_frame_folder_write_leaves_old_folder(tmp_path, monkeypatch):
    folder = write_video(str(tmp_path / "frames") + "/", Video(few_colours(3, 8, 8)))
    before = {name: (folder / name).read_bytes() for name in _listing(folder)}
    listing = _listing(tmp_path)
    real_save, calls = Image.Image.save, []

    def failing_save(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real_save(self, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", failing_save)
    with pytest.raises(VideoError, match="could not write"):
        write_video(folder, Video(few_colours(5, 8, 8)))
    assert {name: (folder / name).read_bytes() for name in _listing(folder)} == before
    assert _listing(tmp_path) == listing


def test_frame_folder_is_replaced_whole_but_never_holds_other_files(tmp_path):
    folder = write_video(str(tmp_path / "frames") + "/", Video(few_colours(5, 8, 8)))
    write_video(folder, Video(few_colours(2, 8, 8)))  # a shorter clip: no stale frames stay behind
    assert _listing(folder) == ["00000.png", "00001.png"]
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(VideoError, match="not frames of this pattern"):
        write_video(folder, Video(few_colours(2, 8, 8)))
    assert (folder / "notes.txt").read_text() == "mine"


def test_write_creates_parent_and_returns_path(tmp_path):
    path = write_video(tmp_path / "new" / "dir" / "a.webm", Video(indexed_clip(2)))
    assert path == tmp_path / "new" / "dir" / "a.webm" and path.is_file()
    assert [n for n in _listing(path.parent) if n.startswith(".")] == []


def test_write_rejects_bad_arguments(tmp_path):
    with pytest.raises(TypeError, match="Video.from_tensor"):
        write_video(tmp_path / "a.mp4", np.zeros((1, 4, 4, 3), np.uint8))
    with pytest.raises(VideoError, match="crf for .mp4 must be an int 0-51"):
        write_video(tmp_path / "a.mp4", Video(indexed_clip(1)), crf=60)
    with pytest.raises(VideoError, match="at most 50 fps"):
        write_video(tmp_path / "a.gif", Video(indexed_clip(2), fps=60))
    assert _listing(tmp_path) == []


def test_lower_crf_is_better(tmp_path):
    v = Video(smooth_clip(8, 32, 32))
    fine = read_video(write_video(tmp_path / "fine.mp4", v, crf=10)).frames
    coarse = read_video(write_video(tmp_path / "coarse.mp4", v, crf=40)).frames
    assert psnr(fine, v.frames) > psnr(coarse, v.frames) + 3


def test_path_with_colon_can_be_written_as_relative(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write_video("./a:b.gif", Video(few_colours(2, 4, 4)))
    assert path.name == "a:b.gif" and read_video("./a:b.gif").num_frames == 2
