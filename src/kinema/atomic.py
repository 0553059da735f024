"""Atomic file writes: a temporary file in the same folder, flushed to disk, then renamed.

A crash at any moment leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

from kinema.errors import KinemaError


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call `write(tmp_path)`, fsync the result, then rename it onto `path`; returns `path`.

    The temporary file keeps `path`'s suffix, for writers that choose the format by it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix or ".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes files private; ours are meant to be read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Indented, key-sorted JSON; NaN and infinities are refused (they are not JSON)."""
    return write_text(path, json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n")


def check_writable(path: str | os.PathLike, option: str = "--out", *, folder: bool = False) -> None:
    """Raise a KinemaError unless a file (with `folder`, a folder) can be written at `path`, creating the missing
    folders above it: checked before any work, by writing a temp file into the nearest existing folder, since
    permission bits say nothing to root or about a read-only mount. `option` names it in the message."""
    target = Path(path).absolute()
    if not folder and target.is_dir():
        raise KinemaError(f"{option} {path}: {target} is a folder; give a file name")
    place = target if folder else target.parent
    while not os.path.lexists(place) and place != place.parent:
        place = place.parent
    if not place.is_dir():
        raise KinemaError(f"{option} {path}: {place} is a file, not a folder; choose another {option}")
    try:
        with tempfile.TemporaryFile(dir=place):
            pass
    except OSError as e:
        raise KinemaError(
            f"{option} {path}: cannot write into {place} ({e.strerror}); make it writable or choose another {option}"
        ) from None
