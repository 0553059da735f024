"""Which paths are videos of which kind, refusing URLs, and atomic writes.

Only local files are read or written: a string that starts with `scheme:`
(`http:`, `rtmp:`, `file:`, `concat:`, `pipe:` ...) would make FFmpeg open a
network stream or a protocol, so it is refused before FFmpeg sees it.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kinema.video.core import VideoError

CONTAINERS = (".mp4", ".mov", ".mkv", ".webm", ".avi")
"""Container extensions read through PyAV (FFmpeg)."""
IMAGES = (".gif", ".png", ".jpg", ".jpeg", ".webp")
"""Extensions read through Pillow: GIF (and animated PNG/WebP) as clips, the rest as one-frame videos."""
SUPPORTED = (
    "video files (.mp4 .mov .mkv .webm .avi), .gif, images (.png .jpg .jpeg .webp), "
    "a folder of PNG frames, or a frame pattern such as frames/%05d.png"
)

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")
_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")
_PATTERN = re.compile(r"%(0\d+)?d")


def looks_like_url(text: str) -> bool:
    """True for `scheme:...` (a URL or an FFmpeg protocol), False for a Windows drive letter."""
    return bool(_SCHEME.match(text)) and not _DRIVE.match(text)


def local_path(path: str | os.PathLike[str]) -> Path:
    """`path` as an absolute local Path; URLs and FFmpeg protocol strings raise VideoError.

    An absolute path starts with `/` (or a drive letter), so FFmpeg can never
    read a protocol prefix out of it.
    """
    text = os.fspath(path) if isinstance(path, (str, os.PathLike)) else None  # fspath raises a TypeError
    if not isinstance(text, str):
        raise VideoError(f"path must be a str or pathlib.Path, got {type(path).__name__}: pass the file's path")
    if looks_like_url(text):
        scheme = text.split(":", 1)[0]
        raise VideoError(
            f"{text!r} looks like a URL or FFmpeg protocol ('{scheme}:'); kinema reads and writes local files only: "
            "download the file first, or write ./name for a local file whose name contains a colon"
        )
    return Path(text).expanduser().absolute()


def frame_pattern(path: Path) -> re.Pattern[str] | None:
    """For `frames/%05d.png`, a regex matching its file names (number in group 1); else None."""
    match = _PATTERN.search(path.name)
    if match is None:
        return None
    head, tail = path.name[: match.start()], path.name[match.end() :]
    return re.compile(re.escape(head) + r"(\d+)" + re.escape(tail))


def numbered(names: list[str]) -> list[str]:
    """Names in natural order, so frame 2 comes before frame 10."""

    def key(name: str) -> list[int | str]:
        return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]

    return sorted(names, key=key)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yield a fresh temp path beside `path` (same extension); on success it replaces `path`.

    The caller writes a file, or creates a folder, at the temp path. On any
    failure the temp is removed and an existing `path` is left untouched. A
    folder replaces an existing folder by two renames, the old one removed last.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{secrets.token_hex(4)}{path.suffix}")
    try:
        yield tmp
        if tmp.is_dir() and path.is_dir():
            old = path.with_name(f".{path.name}.old-{secrets.token_hex(4)}")
            os.replace(path, old)
            try:
                os.replace(tmp, path)
            except BaseException:
                os.replace(old, path)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
