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
import mmap
import numbers
import os
import struct
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
MAX_TOTAL_PIXELS = 2**30
"""Default `max_total_pixels`: frames x height x width one read may decode (3 GiB as RGB frames)."""
_DEMUXERS = "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,avi"  # FFmpeg may not probe a file into anything else
_MIN_GIF_DELAY_MS = 20  # browsers show shorter GIF delays as 100 ms
# What FFmpeg and Pillow raise on files they cannot parse; read_video turns them into VideoError.
_DECODE_ERRORS = (av.error.FFmpegError, OSError, EOFError, SyntaxError, ValueError, Image.DecompressionBombError)
# What Pillow's parsers raise on a file cut short inside a block (it indexes past the bytes it read).
_PILLOW_CUT = (IndexError, struct.error)
_GIF_SIGNATURES = (b"GIF87a", b"GIF89a")


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
                "it is truncated (cut short before its header) or another kind of file with a video extension: "
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
            found = ", ".join(sorted({s.type for s in container.streams}))
            if not found:  # e.g. an MP4 cut inside its first boxes
                raise VideoError(
                    f"{path} holds no streams at all: it is truncated or not a video; re-export or re-download it"
                )
            raise VideoError(
                f"{path} has no video stream (it holds: {found}); it is truncated or not a video: "
                "pass a file that contains video"
            )
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
        self.canvas = [coded_h, coded_w]
        self.time_base = stream.time_base
        self.t0 = stream.start_time or 0
        rate = stored.fps or float(stream.average_rate or stream.guessed_rate or stream.base_rate or 25)
        if stream.duration:
            duration, self.exact_duration = float(stream.duration * stream.time_base), True
        else:  # e.g. WebM: only the container knows, and its duration may include other streams
            duration, self.exact_duration = (container.duration or 0) / av.time_base, False
        self.stored_frames: int | None = None  # the frame count kinema's record gives, where the file agrees
        if stored.num_frames and stored.fps:
            recorded = stored.num_frames / stored.fps
            if not duration or abs(duration - recorded) <= 1.5 / stored.fps:  # not trimmed by another tool since
                duration, self.exact_duration, self.stored_frames = recorded, True, stored.num_frames
        self.constant_fps = rate
        self.crop = (stored.height or coded_h, stored.width or coded_w)
        num = frame_count(duration, rate) if stored.fps or not stream.frames else stream.frames
        self.info = VideoInfo(
            path=path, num_frames=num, fps=rate, duration=duration or num / rate,
            height=self.crop[0], width=self.crop[1], metadata=stored.metadata, is_image=False,
        )

    def decoded_frames(self, start: float, end: float) -> int:
        """Frames decoded to read [start, end), at the file's own rate (from the keyframe before start: not counted)."""
        return max(1, frame_count(min(end, self.info.duration) - start, self.info.fps))

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
    except (*_DECODE_ERRORS, *_PILLOW_CUT) as e:
        raise VideoError(
            f"{path} is not a readable {path.suffix} image ({e.__class__.__name__}: {e}); "
            "it is truncated, damaged or another kind of file with an image extension: re-export it"
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


def _is_gif(path: Path) -> bool:
    """Whether `path` holds a GIF by its signature (a .gif cut inside its 6-byte signature counts too)."""
    with open(path, "rb") as f:
        head = f.read(6)
    cut_in_signature = path.suffix.lower() == ".gif" and any(s.startswith(head) for s in _GIF_SIGNATURES)
    return head in _GIF_SIGNATURES or cut_in_signature


def _scan_gif(path: Path) -> tuple[list[int], int, int]:
    """(delay of each frame in ms, as its graphic control block gives it or 0; canvas height; canvas width).

    Walks the GIF's blocks without decoding a pixel, so a small file with thousands of frames on a huge
    canvas costs nothing to probe (Pillow decodes every frame to learn its delay). The canvas holds every
    frame (a frame may reach past the logical screen). A file that ends inside a block, or before the
    trailer, raises VideoError: it was cut short.
    """

    def cut(where: str) -> VideoError:
        return VideoError(
            f"{path} is truncated: the GIF ends inside {where} (byte {len(data)} of it); re-export or re-download it"
        )

    def skip_sub_blocks(pos: int, where: str) -> int:  # data sub-blocks: a length byte, that many bytes; 0 ends
        while pos < len(data):
            size = data[pos]
            pos += 1 + size
            if size == 0:
                return pos
        raise cut(where)

    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        if len(data) < 13:
            raise cut("its header")
        width, height, flags = struct.unpack_from("<HHB", data, 6)
        pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)  # the global colour table
        delays: list[int] = []
        delay = 0
        while True:
            if pos >= len(data):
                raise cut(f"frame {len(delays)} (or before its trailer)")
            kind = data[pos]
            if kind == 0x3B:  # the trailer
                break
            if kind == 0x21:  # an extension: its label, then sub-blocks
                if pos + 2 > len(data):
                    raise cut(f"the extension before frame {len(delays)}")
                if data[pos + 1] == 0xF9 and pos + 6 <= len(data) and data[pos + 2] >= 4:  # graphic control
                    delay = struct.unpack_from("<H", data, pos + 4)[0] * 10
                pos = skip_sub_blocks(pos + 2, f"the extension before frame {len(delays)}")
            elif kind == 0x2C:  # an image: descriptor, local colour table, LZW code size, data sub-blocks
                if pos + 11 > len(data):
                    raise cut(f"the header of frame {len(delays)}")
                x, y, w, h, frame_flags = struct.unpack_from("<HHHHB", data, pos + 1)
                width, height = max(width, x + w), max(height, y + h)
                pos += 10 + (3 << ((frame_flags & 7) + 1) if frame_flags & 0x80 else 0) + 1
                pos = skip_sub_blocks(pos, f"frame {len(delays)}")
                delays.append(delay)
                delay = 0  # a graphic control block applies to the next image only
            else:
                raise VideoError(
                    f"{path} is damaged: byte {pos} starts no GIF block (0x{kind:02x}); re-export or re-download it"
                )
        if not delays:
            raise VideoError(f"{path} is a GIF without any image in it; re-export it")
        return delays, height, width


def _check_total(path: Path, frames: int, height: int, width: int, limit: int | None, doing: str) -> None:
    if limit is not None and frames * height * width > limit:
        raise VideoError(
            f"{path}: {doing} {frames} frames of {width}x{height}, {frames * height * width:,} pixels, over "
            f"max_total_pixels={limit:,}; read a shorter span, a lower fps or a smaller size, trim or downscale "
            "the file first (e.g. with ffmpeg), or raise max_total_pixels if you trust it"
        )


class _PillowSource:
    """A GIF, or an image file (animated PNG/WebP are clips too), read through Pillow."""

    def __init__(self, path: Path, max_pixels: tuple[int, int] | None, max_total_pixels: int | None) -> None:
        self.path = path
        self.stored_frames = None
        gif = _is_gif(path)
        if gif:  # its frames and delays from its blocks: Pillow would decode every frame for them
            delays_ms, *self.canvas = _scan_gif(path)
            _check_size(path, *self.canvas, max_pixels)
        self.image = _open_image(path, max_pixels)
        try:
            stored = _stored(self.image)  # before n_frames: seeking back to frame 0 drops a GIF's comment
            n = len(delays_ms) if gif else getattr(self.image, "n_frames", 1)
            if not gif:
                self.canvas = [self.image.height, self.image.width]
            still = n == 1 and (stored.num_frames or 1) == 1  # a static clip's GIF also has one (long) frame
            if still:
                self.delays = [1.0 / (stored.fps or DEFAULT_FPS)]
                self.constant_fps: float | None = stored.fps or DEFAULT_FPS
            else:
                if gif:
                    self.delays = [(ms if ms >= _MIN_GIF_DELAY_MS else 100) / 1000 for ms in delays_ms]
                else:  # an animated PNG or WebP: its delays are known only by decoding each frame
                    _check_total(path, n, *self.canvas, max_total_pixels, "reading its frame delays decodes")
                    self.delays = [self._delay(k) for k in range(n)]
                uneven = max(self.delays) - min(self.delays) > 1e-3
                self.constant_fps = stored.fps or (None if uneven else 1.0 / self.delays[0])
        except (*_DECODE_ERRORS, *_PILLOW_CUT) as e:
            self.image.close()
            raise VideoError(f"{path} is truncated or damaged ({e.__class__.__name__}: {e}); re-export it") from e
        except BaseException:
            self.image.close()
            raise
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

    def decoded_frames(self, start: float, end: float) -> int:
        """Frames decoded to read [start, end): every one from the first (each frame is drawn over the last)."""
        if self.info.is_image:
            return 1
        starts = np.cumsum([0.0, *self.delays[:-1]])
        return max(1, int(np.searchsorted(starts, end - 1e-6)))  # 1e-6: sums of delays carry float error

    def frames(self, start: float) -> Iterator[tuple[float, float, np.ndarray]]:
        if self.info.is_image:  # EXIF orientation, as phones store photos
            yield 0.0, self.delays[0], _rgb(ImageOps.exif_transpose(self.image))
            return
        t = 0.0
        for k, delay in enumerate(self.delays):
            if t + delay > start:  # a GIF frame depends on the ones before: seek decodes them anyway
                try:
                    self.image.seek(k)
                except _PILLOW_CUT as e:
                    raise VideoError(f"{self.path} is truncated or damaged at frame {k} ({e}); re-export it") from e
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
        self.stored_frames = None
        self.canvas = [self.size[1], self.size[0]]
        self.info = VideoInfo(
            path=self.path, num_frames=len(files), fps=self.constant_fps, duration=len(files) / self.constant_fps,
            height=self.size[1], width=self.size[0], metadata=stored.metadata, is_image=False,
        )

    def decoded_frames(self, start: float, end: float) -> int:
        """Frames read for [start, end)."""
        return max(1, frame_count(min(end, self.info.duration) - start, self.constant_fps))

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


def _open(path: Path, max_pixels: tuple[int, int] | None, max_total_pixels: int | None) -> _Source:
    """The source for `path`; every problem found in its headers raises VideoError."""
    try:
        return _open_source(path, max_pixels, max_total_pixels)
    except _DECODE_ERRORS as e:
        raise VideoError(f"{path} is not readable ({e.__class__.__name__}: {e}); check the file, or re-export it") from e


def _open_source(path: Path, max_pixels: tuple[int, int] | None, max_total_pixels: int | None) -> _Source:
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
    if suffix in CONTAINERS:
        return _AVSource(path, max_pixels)
    return _PillowSource(path, max_pixels, max_total_pixels)


def probe_video(
    path: str | os.PathLike[str],
    *,
    max_pixels: tuple[int, int] | None = (4096, 4096),
    max_total_pixels: int | None = MAX_TOTAL_PIXELS,
) -> VideoInfo:
    """What a video's headers say (frame count, fps, duration, size, metadata), without decoding it.

    A GIF's blocks are walked for its frame delays (no pixel decoded); an animated PNG or WebP is decoded
    frame by frame for them, refused when that is more than `max_total_pixels` (see `read_video`).
    """
    max_pixels, max_total_pixels = _check_limits("probe_video", max_pixels, max_total_pixels)
    source = _open(local_path(path), max_pixels, max_total_pixels)
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
    max_total_pixels: int | None = MAX_TOTAL_PIXELS,
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
    max_total_pixels: refuse a read that would decode, or return, more than this
        many pixels (frames x height x width), from the header before decoding; a
        GIF or animated PNG decodes every frame up to `end`, since each is drawn
        over the last. The default, 2**30, is 3 GiB of RGB frames; None for no limit.

    `metadata` holds what the file stores; files written by kinema give back keys
    and value types exactly, other files' tags come back as strings. Every
    problem with the file raises `VideoError` naming the file and the fix; every
    bad argument raises `VideoError` naming the argument.
    """
    start, end, fps, size, max_frames = _check_span(start, end, fps, size, max_frames)
    max_pixels, max_total_pixels = _check_limits("read_video", max_pixels, max_total_pixels)
    path = local_path(path)
    source = _open(path, max_pixels, max_total_pixels)
    try:
        return _read(
            source, start=start, end=end, fps=fps, size=size, max_frames=max_frames, max_total_pixels=max_total_pixels
        )
    except (*_DECODE_ERRORS, *_PILLOW_CUT) as e:
        raise VideoError(
            f"{path} is truncated or damaged: decoding failed ({e.__class__.__name__}: {e}); "
            "re-export or re-download it"
        ) from e
    finally:
        source.close()


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_pair(value: object) -> bool:
    """(height, width): two ints >= 1."""
    return isinstance(value, (tuple, list)) and len(value) == 2 and all(_is_int(v) and v >= 1 for v in value)


def _check_span(
    start: object, end: object, fps: object, size: object, max_frames: object
) -> tuple[float, float, float | None, tuple[int, int] | None, int | None]:
    """read_video's arguments checked (each error names its argument) and normalised; end None -> inf."""
    real = lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool)  # noqa: E731
    if not (real(start) and math.isfinite(start) and start >= 0):
        raise VideoError(f"read_video: start must be a finite number of seconds >= 0, got {start!r}")
    if end is not None and not (real(end) and end > start):  # NaN fails this too; inf is "to the end"
        raise VideoError(f"read_video: end must be a number of seconds after start={start:g}, or None, got {end!r}")
    if fps is not None and not (real(fps) and math.isfinite(fps) and fps > 0):
        raise VideoError(f"read_video: fps must be a positive number or None, got {fps!r}")
    hw = (size, size) if _is_int(size) else size
    if hw is not None and not _is_pair(hw):
        raise VideoError(f"read_video: size must be an int >= 1 or (height, width) of ints >= 1, or None, got {size!r}")
    if max_frames is not None and not (_is_int(max_frames) and max_frames >= 1):
        raise VideoError(f"read_video: max_frames must be an int >= 1 or None (no limit), got {max_frames!r}")
    return (
        float(start), math.inf if end is None else float(end), None if fps is None else float(fps),
        None if hw is None else (int(hw[0]), int(hw[1])), None if max_frames is None else int(max_frames),
    )  # fmt: skip


def _check_limits(
    function: str, max_pixels: object, max_total_pixels: object
) -> tuple[tuple[int, int] | None, int | None]:
    if max_pixels is not None and not _is_pair(max_pixels):
        raise VideoError(
            f"{function}: max_pixels must be (height, width) of ints >= 1, or None (no limit), got {max_pixels!r}"
        )
    if max_total_pixels is not None and not (_is_int(max_total_pixels) and max_total_pixels >= 1):
        raise VideoError(
            f"{function}: max_total_pixels must be an int >= 1 or None (no limit), got {max_total_pixels!r}"
        )
    return (None if max_pixels is None else (int(max_pixels[0]), int(max_pixels[1])), max_total_pixels)


def _read(
    source: _Source,
    *,
    start: float,
    end: float,
    fps: float | None,
    size: tuple[int, int] | None,
    max_frames: int | None,
    max_total_pixels: int | None,
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
    _check_total(info.path, source.decoded_frames(start, end), *source.canvas, max_total_pixels, "reading it decodes")
    _check_total(info.path, expected, *(size or source.canvas), max_total_pixels, "reading it returns")
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
    if not frames and expected > 0 and source.exact_duration:
        raise VideoError(
            f"{info.path} is truncated: no frame decodes from {start:g} s, where its header promises "
            f"{info.duration:.3f} s; re-export or re-download it"
        )
    if not frames:
        raise VideoError(
            f"{info.path}: no frames between start={start:g} and end={end:g} s (the clip lasts {info.duration:.3f} s)"
        )
    whole = start == 0 and end >= info.duration and out_fps == source.constant_fps  # the file as written
    promised = source.stored_frames if whole and source.stored_frames else None
    if promised is not None and len(frames) < promised:
        raise VideoError(
            f"{info.path} is truncated: decoded {len(frames)} of the {promised} frames kinema's metadata in it "
            "records; re-export or re-download it"
        )
    if source.exact_duration and len(frames) < expected - 1:
        raise VideoError(
            f"{info.path} is truncated: decoded {len(frames)} of the {expected} frames its header promises; "
            "re-export or re-download it"
        )
    return Video(np.stack(frames), fps=float(out_fps or info.fps), metadata=dict(info.metadata))
