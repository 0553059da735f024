"""Writing videos: MP4/MOV/MKV (H.264), WebM (VP9), GIF, PNG frames, single images.

Every write goes to a temp file (or folder) beside the target and is renamed
over it only once complete, so a failed write leaves no partial file and an
existing file untouched. Metadata goes into the file (see `kinema.video.meta`).
"""

from __future__ import annotations

import os
import re
from fractions import Fraction
from pathlib import Path

import av
import av.error
import numpy as np
from PIL import Image, PngImagePlugin

from kinema.video import meta
from kinema.video.core import Video, VideoError
from kinema.video.paths import atomic_output, frame_pattern, local_path

DEFAULT_CRF = {"libx264": 18, "libvpx-vp9": 24}
"""Constant-quality level per encoder when `crf` is not given (lower is better; ~39 dB PSNR on smooth clips)."""
_CRF_RANGE = {"libx264": 51, "libvpx-vp9": 63}
_CODECS = {  # extension -> (FFmpeg muxer, encoder)
    ".mp4": ("mp4", "libx264"),
    ".mov": ("mov", "libx264"),
    ".mkv": ("matroska", "libx264"),
    ".webm": ("webm", "libvpx-vp9"),
}
_STILLS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
_WRITABLE = (
    ".mp4 .mov .mkv (H.264), .webm (VP9), .gif, a folder of PNG frames (a path ending in / or a pattern "
    "such as frames/%05d.png), or .png .jpg .webp for a one-frame video"
)
FPS_RANGE = (0.001, 1000.0)
"""Frame rates .mp4 .mov .mkv .webm are written at and read back: Matroska and WebM count time in
milliseconds (so at most 1000 fps), and the rate is stored as a fraction with a denominator of at most
1001 (so at least 1/1000 fps)."""
GIF_FPS_RANGE = (100 / 65535, 50.0)
"""A GIF frame's delay is a whole number of centiseconds from 2 (browsers show shorter ones as 10) to 65535."""
_PNG_LEVEL = 3  # zlib level: a third of the time of Pillow's default 6 for ~15% larger files
_BT709 = 1  # AVCOL_SPC/PRI/TRC_BT709: the matrix used to convert, tagged so players convert back the same way


def write_video(path: str | os.PathLike[str], video: Video, *, crf: int | None = None) -> Path:
    """Write `video` to `path`, the format chosen by the extension; returns the absolute path.

    crf: constant-quality level for H.264 (0-51, default 18) and VP9 (0-63,
        default 24); lower is better and larger. GIF (lossless up to 256 colours
        a frame) and PNG are not affected.
    A path ending in `/`, an existing folder or a name with `%05d` writes PNG frames
    `00000.png ...` into a folder that holds nothing else. The parent folder is created.
    """
    if not isinstance(video, Video):
        raise TypeError(
            f"write_video expects a Video, got {type(video).__name__}; wrap frames with Video(...) or Video.from_tensor(...)"
        )
    text = os.fspath(path)
    target = local_path(path)
    folder_target = text.endswith(("/", os.sep)) or target.is_dir() or frame_pattern(target) is not None
    suffix = target.suffix.lower()
    if not folder_target and suffix not in _CODECS and suffix not in _STILLS and suffix != ".gif":
        raise VideoError(f"{target}: cannot write extension {target.suffix or '(none)'!r}; kinema writes {_WRITABLE}")
    top = _CRF_RANGE[_CODECS[suffix][1]] if suffix in _CODECS else max(_CRF_RANGE.values())
    if crf is not None and not (isinstance(crf, int) and 0 <= crf <= top):
        raise VideoError(
            f"write_video: crf for {suffix or 'this output'} must be an int 0-{top} (lower is better), got {crf!r}"
        )
    if not folder_target and suffix in _STILLS and video.num_frames != 1:
        raise VideoError(
            f"{target}: a {suffix} file holds one frame but the video has {video.num_frames}; "
            "write .mp4 or .gif, a folder (frames/) or a pattern (frames/%05d.png)"
        )
    if not folder_target:
        check_fps(video.fps, suffix, str(target))
    try:
        if folder_target:
            return _write_frames(target, video)
        with atomic_output(target) as tmp:
            if suffix in _CODECS:
                _write_av(tmp, video, *_CODECS[suffix], crf=crf)
            elif suffix == ".gif":
                _write_gif(tmp, video)
            else:
                _write_still(tmp, video, _STILLS[suffix])
        return target
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise VideoError(
            f"could not write {target} ({e.__class__.__name__}: {e}); check that the folder is writable "
            "and the disk has space. Nothing was written, an existing file was left as it was"
        ) from e


def check_fps(fps: float, suffix: str, where: str = "fps") -> None:
    """Raise VideoError unless a file with this extension can hold `fps` frames per second (and read back)."""
    suffix = suffix.lower()
    if suffix == ".gif":
        lo, hi = GIF_FPS_RANGE
        why = "GIF frame delays are whole centiseconds from 2 to 65535"
        fix = "resample the video, or write .mp4" if fps > hi else "write .mp4, or PNG frames"
    elif suffix in _CODECS:
        (lo, hi), why = FPS_RANGE, "video files store time in milliseconds and the rate as a fraction"
        fix = "resample the video" if fps > hi else "write PNG frames (a folder ending in /)"
    else:
        return
    if not lo <= fps <= hi:
        raise VideoError(f"{where}: a {suffix} file holds {lo:.4g} up to at most {hi:g} fps ({why}); got {fps:g}: {fix}")


def _write_av(tmp: Path, video: Video, fmt: str, codec: str, *, crf: int | None) -> None:
    crf = DEFAULT_CRF[codec] if crf is None else crf
    frames = video.frames
    if codec == "libx264":  # 4:2:0 H.264 needs even sizes: pad with edge pixels, the true size goes in the record
        frames = np.pad(frames, ((0, 0), (0, video.height % 2), (0, video.width % 2), (0, 0)), mode="edge")
    options = {"movflags": "+faststart+use_metadata_tags"} if fmt in ("mp4", "mov") else {}
    with av.open(str(tmp), "w", format=fmt, container_options=options) as container:
        container.metadata.update(meta.plain_tags(video))
        container.metadata[meta.KEY] = meta.encode(video)
        stream = container.add_stream(codec, rate=Fraction(video.fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        cc = stream.codec_context
        cc.colorspace = cc.color_primaries = cc.color_trc = _BT709
        cc.color_range = 1  # MPEG (limited) range, what players expect
        if codec == "libx264":
            stream.options = {"crf": str(crf), "preset": "medium"}
        else:  # constant quality needs bitrate 0; cpu-used 4 keeps VP9 from being very slow
            stream.options = {"crf": str(crf), "b": "0", "deadline": "good", "cpu-used": "4", "row-mt": "1"}
        for rgb in frames:
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame = frame.reformat(format="yuv420p", dst_colorspace="ITU709", dst_color_range="MPEG")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def _gif_frame(rgb: np.ndarray) -> Image.Image:
    """A palette image: exact when the frame has at most 256 colours, else median-cut quantised."""
    codes = (rgb[..., 0].astype(np.uint32) << 16) | (rgb[..., 1].astype(np.uint32) << 8) | rgb[..., 2]
    colours, index = np.unique(codes, return_inverse=True)
    if len(colours) > 256:
        # Median cut on a copy of about 64x64 pixels (its cost grows fast with size), and no
        # dithering: its noise would crawl from frame to frame.
        image = Image.fromarray(rgb)
        small = image.reduce(max(1, round((rgb.shape[0] * rgb.shape[1] / 4096) ** 0.5)))
        palette = small.quantize(256, method=Image.Quantize.MEDIANCUT)
        return image.quantize(palette=palette, dither=Image.Dither.NONE)
    image = Image.fromarray(index.reshape(rgb.shape[:2]).astype(np.uint8), mode="P")
    palette = np.stack([(colours >> 16) & 255, (colours >> 8) & 255, colours & 255], axis=-1).astype(np.uint8)
    image.putpalette(palette.tobytes())
    return image


def _write_gif(tmp: Path, video: Video) -> None:
    # Delays that add up to the exact clip time (each a whole centisecond), so timing does not drift.
    ends = np.round(np.arange(video.num_frames + 1) * 100 / video.fps).astype(int)
    delays_ms = [int(d) * 10 for d in np.diff(ends)]
    images = [_gif_frame(rgb) for rgb in video.frames]
    # Pillow merges identical neighbouring frames by adding their delays; the fps in the record restores them on read.
    images[0].save(
        tmp, format="GIF", save_all=True, append_images=images[1:], duration=delays_ms, loop=0,
        disposal=1, optimize=False, comment=meta.encode(video),
    )


def _png_info(video: Video) -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    for key, value in meta.plain_tags(video).items():
        if 1 <= len(key) <= 79 and key.isascii():  # what a PNG keyword may be; every key is in the record anyway
            info.add_text(key, value)
    info.add_text(meta.KEY, meta.encode(video))
    return info


def _write_still(tmp: Path, video: Video, fmt: str) -> None:
    image = Image.fromarray(video.frames[0])
    if fmt == "PNG":
        image.save(tmp, format=fmt, pnginfo=_png_info(video), compress_level=_PNG_LEVEL)
    elif fmt == "JPEG":
        image.save(tmp, format=fmt, quality=95, comment=meta.encode(video))
    else:  # WebP: lossless; Pillow has no text metadata for it
        image.save(tmp, format=fmt, lossless=True)


def _write_frames(target: Path, video: Video) -> Path:
    """PNG frames into a folder of their own: written to a temp folder, then renamed into place."""
    pattern = frame_pattern(target)
    folder = target.parent if pattern is not None else target
    name = target.name if pattern is not None else "%05d.png"
    if pattern is None:
        pattern = re.compile(r"(\d+)\.png")
    if not name.lower().endswith(".png"):
        raise VideoError(f"{target}: frame patterns must end in .png, e.g. frames/%05d.png")
    if folder.is_dir():
        others = [n for n in os.listdir(folder) if not pattern.fullmatch(n)]
        if others:
            raise VideoError(
                f"{folder} holds files that are not frames of this pattern ({', '.join(sorted(others)[:3])}...); "
                "write PNG frames into a new or empty folder, since the whole folder is replaced"
            )
    elif folder.exists():
        raise VideoError(f"{folder} exists and is not a folder; choose another path for the PNG frames")
    info = _png_info(video)
    with atomic_output(folder) as tmp:
        tmp.mkdir()
        for k, rgb in enumerate(video.frames):
            Image.fromarray(rgb).save(tmp / (name % k), format="PNG", pnginfo=info, compress_level=_PNG_LEVEL)
    return target
