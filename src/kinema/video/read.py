"""Reading videos: `probe_video` (headers only) and `read_video` (frames).

A file is opened as a *source* that knows what its headers say (`VideoInfo`)
and yields `(time, duration, frame)` in display order. Limits (frame size,
frame count) are checked against the headers before any frame is decoded.
Frames are resampled in time by `ops.select_frames` while they stream, so only
the chosen ones are converted to RGB.

Sources: PyAV for containers (.mp4 .mov .mkv .webm .avi), Pillow for .gif and
images (an animated PNG or WebP is a clip too), and a list of PNG files for a
frame folder or a pattern such as `frames/%05d.png`.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import av.error
import numpy as np
from PIL import Image, ImageOps, PngImagePlugin

from kinema.video import meta
from kinema.video.core import MetadataValue, Video, VideoError
from kinema.video.ops import frame_count, resize, select_frames
from kinema.video.paths import CONTAINERS, IMAGES, SUPPORTED, frame_pattern, local_path, numbered

DEFAULT_FPS = 8.0
"""Frame rate of frames that carry none: a still image, a PNG folder not written by kinema."""
_DEMUXERS = "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,avi"  # FFmpeg may not probe a file into anything else
_MIN_GIF_DELAY_MS = 20  # browsers show shorter GIF delays as 100 ms
# What FFmpeg and Pillow raise on files they cannot parse; read_video turns them into VideoError.
_DECODE_ERRORS = (av.error.FFmpegError, OSError, EOFError, SyntaxError, ValueError, Image.DecompressionBombError)


@dataclass(frozen=True)
class VideoInfo:
    """What a file's headers say, read without decoding frames (except a GIF's, whose delays sit between them)."""

    path: Path
    """The file (or frame folder) as an absolute path."""
    num_frames: int
    """Frames at `fps`: the stored count, or duration * fps where the header has none."""
    fps: float
    """Frames per second (the mean rate of a GIF with uneven delays)."""
    duration: float
    """Seconds."""
    height: int
    """Frame height in pixels, as stored (a phone clip's display rotation is applied only by read_video)."""
    width: int
    """Frame width in pixels, as stored."""
    metadata: dict[str, MetadataValue]
    """Metadata stored in the file (see `kinema.video.meta`)."""
    is_image: bool
    """A single still image: one frame, no timing."""


def _check_size(path: Path, height: int, width: int, max_pixels: tuple[int, int] | None) -> None:
    if max_pixels is not None and (height > max_pixels[0] or width > max_pixels[1]):
        raise VideoError(
            f"{path}: frames too large: {width}x{height} (width x height) is over the limit of "
            f"{max_pixels[1]}x{max_pixels[0]}; resize the video first, or raise max_pixels=(height, width) if you trust the file"
        )


class _AVSource:
    """A container file read through PyAV (FFmpeg)."""

    def __init__(self, path: Path, max_pixels: tuple[int, int] | None) -> None:
        self.path = path
        try:
            self.container = av.open(
                str(path), container_options={"format_whitelist": _DEMUXERS, "protocol_whitelist": "file"},
                metadata_errors="replace",
            )
        except _DECODE_ERRORS as e:
            raise VideoError(
                f"{path} is not a readable {path.suffix} video ({e.__class__.__name__}: {e}); "
                "it may be another kind of file with a video extension, or cut short before its header: "
                "check it with `ffprobe`, or re-export it"
            ) from e
        try:
            self._inspect(max_pixels)
        except BaseException:
            self.container.close()
            raise

    def _inspect(self, max_pixels: tuple[int, int] | None) -> None:
        container, path = self.container, self.path
        if not container.streams.video:
            found = ", ".join(sorted({s.type for s in container.streams})) or "no streams at all"
            raise VideoError(f"{path} has no video stream (it holds: {found}); pass a file that contains video")
        stream = self.stream = container.streams.video[0]
        if stream.codec_context is None:
            raise VideoError(
                f"{path}: its video codec cannot be decoded by the FFmpeg in PyAV {av.__version__}; "
                "re-encode it, e.g. `ffmpeg -i IN -c:v libx264 -pix_fmt yuv420p OUT.mp4`"
            )
        stream.thread_type = "AUTO"
        stored = meta.decode(dict(container.metadata))
        coded_h, coded_w = stream.codec_context.height, stream.codec_context.width
        _check_size(path, coded_h, coded_w, max_pixels)
        self.time_base = stream.time_base
        self.t0 = stream.start_time or 0
        rate = stored.fps or float(stream.average_rate or stream.guessed_rate or stream.base_rate or 25)
        if stream.duration:
            duration, self.exact_duration = float(stream.duration * stream.time_base), True
        else:  # e.g. WebM: only the container knows, and its duration may include other streams
            duration, self.exact_duration = (container.duration or 0) / av.time_base, False
        self.constant_fps = rate
        self.crop = (stored.height or coded_h, stored.width or coded_w)
        num = frame_count(duration, rate) if stored.fps or not stream.frames else stream.frames
        self.info = VideoInfo(
            path=path, num_frames=num, fps=rate, duration=duration or num / rate,
            height=self.crop[0], width=self.crop[1], metadata=stored.metadata, is_image=False,
        )

    def frames(self, start: float) -> Iterator[tuple[float, float, av.VideoFrame]]:
        tb, step = self.time_base, 1.0 / self.constant_fps
        if start > 0:
            try:  # to the keyframe at or before `start`; frames before it are skipped by the selector
                self.container.seek(int(start / tb) + self.t0, stream=self.stream, backward=True)
            except av.error.FFmpegError:
                pass  # not seekable: decode from the beginning
        t = -step
        for frame in self.container.decode(self.stream):
            t = float((frame.pts - self.t0) * tb) if frame.pts is not None else t + step
            dur = float(frame.duration * tb) if frame.duration else step
            yield t, dur, frame

    def to_rgb(self, frame: av.VideoFrame) -> np.ndarray:
        # Honour a full-range tag; the colour matrix comes from the frame's own tag.
        rgb = frame.to_ndarray(format="rgb24", src_color_range=frame.color_range or None)
        rgb = rgb[: self.crop[0], : self.crop[1]]
        turns = round(frame.rotation / 90) % 4  # phones store portrait clips as landscape plus a rotation
        return np.ascontiguousarray(np.rot90(rgb, turns)) if turns else rgb

    def close(self) -> None:
        self.container.close()


def _open_image(path: Path, max_pixels: tuple[int, int] | None) -> Image.Image:
    """Open an image file, reading its header only, and check its size."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit applies below
            image = Image.open(path)
    except Image.DecompressionBombError as e:
        raise VideoError(f"{path}: frame too large, refused before decoding ({e}); resize the image first") from e
    except _DECODE_ERRORS as e:
        raise VideoError(
            f"{path} is not a readable {path.suffix} image ({e.__class__.__name__}: {e}); "
            "it may be damaged or another kind of file with an image extension: re-export it"
        ) from e
    try:
        _check_size(path, image.height, image.width, max_pixels)
    except VideoError:
        image.close()
        raise
    return image


def _stored(image: Image.Image) -> meta.Stored:
    """A kinema record or plain text from a PNG's text chunks or a GIF/JPEG comment."""
    comment = image.info.get("comment")
    if isinstance(comment, bytes):
        comment = comment.decode("utf-8", "replace")
    if isinstance(image, PngImagePlugin.PngImageFile):  # text chunks before the pixels (`.text` would decode)
        return meta.decode({k: v for k, v in image.info.items() if isinstance(v, str)})
    if comment:
        stored = meta.decode({meta.KEY: comment})
        return stored if stored.fps is not None else meta.Stored(metadata={"comment": comment})
    return meta.Stored()


def _rgb(image: Image.Image) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "palette images with transparency...": alpha is dropped anyway
        return np.asarray(image.convert("RGB"))


class _PillowSource:
    """A GIF, or an image file (animated PNG/WebP are clips too), read through Pillow."""

    def __init__(self, path: Path, max_pixels: tuple[int, int] | None) -> None:
        self.path = path
        self.image = _open_image(path, max_pixels)
        try:
            stored = _stored(self.image)  # before n_frames: seeking back to frame 0 drops a GIF's comment
            n = getattr(self.image, "n_frames", 1)
            still = n == 1 and (stored.num_frames or 1) == 1  # a static clip's GIF also has one (long) frame
            if still:
                self.delays = [1.0 / (stored.fps or DEFAULT_FPS)]
                self.constant_fps: float | None = stored.fps or DEFAULT_FPS
            else:
                self.delays = [self._delay(k) for k in range(n)]
                uneven = max(self.delays) - min(self.delays) > 1e-3
                self.constant_fps = stored.fps or (None if uneven else 1.0 / self.delays[0])
        except _DECODE_ERRORS as e:
            self.image.close()
            raise VideoError(f"{path} is truncated or damaged ({e.__class__.__name__}: {e}); re-export it") from e
        self.exact_duration = True
        duration = sum(self.delays)
        fps = self.constant_fps or n / duration
        self.info = VideoInfo(
            path=path, num_frames=frame_count(duration, fps) if self.constant_fps else n, fps=fps,
            duration=duration, height=self.image.height, width=self.image.width,
            metadata=stored.metadata, is_image=still,
        )

    def _delay(self, k: int) -> float:
        self.image.seek(k)
        ms = self.image.info.get("duration") or 0
        return (ms if ms >= _MIN_GIF_DELAY_MS else 100) / 1000

    def frames(self, start: float) -> Iterator[tuple[float, float, np.ndarray]]:
        if self.info.is_image:  # EXIF orientation, as phones store photos
            yield 0.0, self.delays[0], _rgb(ImageOps.exif_transpose(self.image))
            return
        t = 0.0
        for k, delay in enumerate(self.delays):
            if t + delay > start:  # a GIF frame depends on the ones before: seek decodes them anyway
                self.image.seek(k)
                yield t, delay, _rgb(self.image)
            t += delay

    def to_rgb(self, frame: np.ndarray) -> np.ndarray:
        return frame

    def close(self) -> None:
        self.image.close()


class _SequenceSource:
    """Numbered PNG files: a folder of them or a printf pattern; all frames must share one size."""

    def __init__(self, files: list[Path], max_pixels: tuple[int, int] | None) -> None:
        self.files, self.max_pixels = files, max_pixels
        with _open_image(files[0], max_pixels) as first:
            stored = _stored(first)
            self.size = first.size
        self.path = files[0].parent
        self.constant_fps = stored.fps or DEFAULT_FPS
        self.exact_duration = True
        self.info = VideoInfo(
            path=self.path, num_frames=len(files), fps=self.constant_fps, duration=len(files) / self.constant_fps,
            height=self.size[1], width=self.size[0], metadata=stored.metadata, is_image=False,
        )

    def frames(self, start: float) -> Iterator[tuple[float, float, Path]]:
        step = 1.0 / self.constant_fps
        first = max(0, math.floor(start * self.constant_fps) - 1)
        for k in range(first, len(self.files)):
            yield k * step, step, self.files[k]

    def to_rgb(self, file: Path) -> np.ndarray:
        with _open_image(file, self.max_pixels) as image:
            if image.size != self.size:
                raise VideoError(
                    f"{file} is {image.width}x{image.height} but {self.files[0].name} is {self.size[0]}x{self.size[1]}; "
                    "every frame of a PNG sequence must have the same size"
                )
            return _rgb(image)

    def close(self) -> None:
        pass


_Source = _AVSource | _PillowSource | _SequenceSource


def _sequence_files(path: Path) -> list[Path] | None:
    """The PNG files of a frame folder or pattern, in order; None if `path` is neither."""
    pattern = frame_pattern(path)
    if pattern is not None:
        folder = path.parent
        if not folder.is_dir():
            raise VideoError(f"{path}: the folder {folder} does not exist; check the frame pattern")
        matches = [(int(m.group(1)), n) for n in os.listdir(folder) if (m := pattern.fullmatch(n))]
        if not matches:
            raise VideoError(f"{path}: no file in {folder} matches the pattern {path.name}; check the pattern")
        return [folder / name for _, name in sorted(matches)]
    if path.is_dir():
        names = numbered([n for n in os.listdir(path) if n.lower().endswith(".png") and not n.startswith(".")])
        if not names:
            raise VideoError(f"{path} is a folder without PNG files; a frame folder holds 00000.png, 00001.png, ...")
        return [path / name for name in names]
    return None


def _open(path: Path, max_pixels: tuple[int, int] | None) -> _Source:
    """The source for `path`; every problem found in its headers raises VideoError."""
    try:
        return _open_source(path, max_pixels)
    except _DECODE_ERRORS as e:
        raise VideoError(f"{path} is not readable ({e.__class__.__name__}: {e}); check the file, or re-export it") from e


def _open_source(path: Path, max_pixels: tuple[int, int] | None) -> _Source:
    files = _sequence_files(path)
    if files is not None:
        return _SequenceSource(files, max_pixels)
    suffix = path.suffix.lower()
    if suffix not in CONTAINERS and suffix not in IMAGES:
        raise VideoError(f"{path}: unknown extension {path.suffix or '(none)'!r}; kinema reads {SUPPORTED}")
    if not path.exists():
        raise VideoError(f"{path}: no such file; check the path")
    if not path.is_file():
        raise VideoError(f"{path} is not a regular file")
    if path.stat().st_size == 0:
        raise VideoError(f"{path} is empty (0 bytes): the program that wrote it probably failed; write it again")
    return _AVSource(path, max_pixels) if suffix in CONTAINERS else _PillowSource(path, max_pixels)


def probe_video(path: str | os.PathLike[str], *, max_pixels: tuple[int, int] | None = (4096, 4096)) -> VideoInfo:
    """What a video's headers say (frame count, fps, duration, size, metadata), without decoding it."""
    source = _open(local_path(path), max_pixels)
    try:
        return source.info
    finally:
        source.close()


def read_video(
    path: str | os.PathLike[str],
    *,
    start: float = 0.0,
    end: float | None = None,
    fps: float | None = None,
    size: int | tuple[int, int] | None = None,
    max_frames: int | None = None,
    max_pixels: tuple[int, int] | None = (4096, 4096),
) -> Video:
    """Read a video, GIF, image, PNG folder or pattern (`frames/%05d.png`) into a `Video`.

    start, end: seconds; keep the frames in [start, end) (a still image ignores them).
    fps: resample in time to this rate (each output frame shows the source frame
        on screen at its middle, see `ops.select_frames`); None keeps the file's
        rate (a GIF with uneven delays keeps its frames as they are).
    size: resize every frame to (height, width), or to (size, size) for an int;
        no cropping here (`kinema.data.transforms.resize_center_crop` crops).
    max_frames: refuse a clip that would give more frames than this, from the
        header before decoding (and again while decoding, should the header lie).
    max_pixels: (height, width) limit, checked on the header; None for no limit.

    `metadata` holds what the file stores; files written by kinema give back keys
    and value types exactly, other files' tags come back as strings. Every
    problem with the file raises `VideoError` naming the file and the fix.
    """
    if fps is not None and not (fps > 0 and math.isfinite(fps)):
        raise VideoError(f"read_video: fps must be a positive number or None, got {fps!r}")
    if start < 0 or (end is not None and end <= start):
        raise VideoError(f"read_video: need 0 <= start < end, got start={start}, end={end}")
    if isinstance(size, int):
        size = (size, size)
    if size is not None and min(size) < 1:
        raise VideoError(f"read_video: size must be positive (height, width) or an int, got {size}")
    path = local_path(path)
    source = _open(path, max_pixels)
    try:
        end = math.inf if end is None else end
        return _read(source, start=start, end=end, fps=fps, size=size, max_frames=max_frames)
    except _DECODE_ERRORS as e:
        raise VideoError(
            f"{path} is truncated or damaged: decoding failed ({e.__class__.__name__}: {e}); "
            "re-export or re-download it"
        ) from e
    finally:
        source.close()


def _read(
    source: _Source,
    *,
    start: float,
    end: float,
    fps: float | None,
    size: tuple[int, int] | None,
    max_frames: int | None,
) -> Video:
    info = source.info
    out_fps = fps or source.constant_fps
    if info.is_image:
        expected = 1
    elif out_fps is None:  # uneven GIF delays: its frames as stored
        times = np.cumsum([0.0, *source.delays[:-1]])
        expected = int(np.count_nonzero((times + 1e-6 >= start) & (times < end)))
    else:
        expected = frame_count(min(end, info.duration) - start, out_fps)
    if max_frames is not None and expected > max_frames:
        raise VideoError(
            f"{info.path}: {expected} frames at {out_fps or info.fps:g} fps is over max_frames={max_frames}; "
            "read a shorter span (start, end), a lower fps, or raise max_frames"
        )
    stream = source.frames(0.0 if info.is_image else start)
    if info.is_image:
        chosen = (item for _, _, item in stream)
    elif out_fps is None:
        chosen = (item for t, _, item in stream if start <= t + 1e-6 and t < end)
    else:
        chosen = select_frames(stream, fps=out_fps, start=start, end=end)
    frames: list[np.ndarray] = []
    last: tuple[object, np.ndarray] | None = None  # an upsampled frame is chosen several times: convert it once
    for item in chosen:
        if last is None or last[0] is not item:
            rgb = source.to_rgb(item)
            last = (item, resize(rgb[None], size)[0] if size else rgb)
        frames.append(last[1])
        if max_frames is not None and len(frames) > max_frames:
            raise VideoError(
                f"{info.path}: more than max_frames={max_frames} frames (the header said {expected}); raise max_frames"
            )
    if not frames:
        raise VideoError(
            f"{info.path}: no frames between start={start} and end={end} s (the clip lasts {info.duration:.3f} s)"
        )
    if source.exact_duration and len(frames) < expected - 1:
        raise VideoError(
            f"{info.path} is truncated: decoded {len(frames)} of the {expected} frames its header promises; "
            "re-export or re-download it"
        )
    return Video(np.stack(frames), fps=float(out_fps or info.fps), metadata=dict(info.metadata))
