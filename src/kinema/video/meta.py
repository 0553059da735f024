"""How a `Video`'s metadata is stored in a file.

Every format kinema writes carries one JSON record under the key `kinema`
(a container tag in MP4/WebM/MKV/MOV, a text chunk in each PNG, the comment of
a GIF): `{"metadata": {...}, "fps": 8.0, "frames": T, "height": H, "width": W}`.
It gives back the metadata with its keys and value types exactly, the frame
rate exactly (GIF delays are centiseconds), the frame count (a GIF stores
identical neighbouring frames once) and the true frame size (H.264 needs even
sizes, so odd ones are padded on write and cropped back on read).
MP4/MOV/MKV/WebM and PNG also get one plain tag per key, so ffprobe and image
viewers show them.

Files that kinema did not write have their tags returned as strings, minus
the bookkeeping tags muxers add (`encoder`, `major_brand`...).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from kinema.video.core import MetadataValue, Video

KEY = "kinema"
_MUXER_TAGS = {"encoder", "software", "major_brand", "minor_version", "compatible_brands", "duration", "handler_name"}


def _kinema_version() -> str:
    import kinema  # the package imports this module while it loads; read the version only when writing

    return kinema.__version__


def encode(video: Video) -> str:
    """The JSON record for `video`; `kinema_version` is added to its metadata."""
    record = {
        "metadata": {**video.metadata, "kinema_version": _kinema_version()},
        "fps": video.fps,
        "frames": video.num_frames,
        "height": video.height,
        "width": video.width,
    }
    return json.dumps(record, ensure_ascii=True, sort_keys=True)


def plain_tags(video: Video) -> dict[str, str]:
    """One string tag per metadata key (for other tools; `kinema` itself is the record)."""
    tags = {key: str(value) for key, value in video.metadata.items() if key.lower() != KEY}
    tags["kinema_version"] = _kinema_version()
    return tags


@dataclass(frozen=True)
class Stored:
    """What a file's tags say about the video in it."""

    metadata: dict[str, MetadataValue] = field(default_factory=dict)
    fps: float | None = None
    num_frames: int | None = None
    height: int | None = None
    width: int | None = None


def decode(tags: dict[str, Any]) -> Stored:
    """Read the `kinema` record from a file's tags (any key case), or fall back to the plain tags."""
    by_lower = {str(k).lower(): v for k, v in tags.items()}
    raw = by_lower.get(KEY)
    if raw is not None:
        try:
            record = json.loads(raw)
            return Stored(
                metadata={str(k): v for k, v in record["metadata"].items() if isinstance(v, (str, int, float))},
                fps=float(record["fps"]),
                num_frames=int(record["frames"]),
                height=int(record["height"]),
                width=int(record["width"]),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            pass  # a damaged or foreign `kinema` tag: treat the file as foreign
    plain = {
        str(k): v if isinstance(v, str) else str(v)
        for k, v in tags.items()
        if str(k).lower() not in _MUXER_TAGS and isinstance(v, (str, int, float))
    }
    return Stored(metadata=plain)
