"""Your own clips: a manifest of files and captions as a dataset of fixed-length windows.

A manifest is a CSV file with a header row, or a JSONL file (one JSON object a
line), with the fields
    path     the clip or image, relative to the manifest's folder (or absolute)
    caption  its text (may be empty)
    start, end (optional)  seconds: use only this part of the clip
Any format `kinema.video.read_video` reads works: videos, GIFs, images, PNG folders.

`FolderDataset` reads only the headers when it is built: each clip is trimmed
to [start, end], counted in frames at the target fps and cut into windows of
`frames` frames; a window is decoded when it is asked for. Files that cannot be
used are skipped, listed in `ds.skipped` and named in one warning; the run
never stops for them.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from kinema.data.transforms import resize_center_crop, to_tensor, windows
from kinema.errors import KinemaError
from kinema.video import VideoError, VideoInfo, probe_video, read_video
from kinema.video.ops import frame_count
from kinema.video.paths import atomic_output, looks_like_url


@dataclass(frozen=True)
class ManifestRow:
    """One line of a manifest."""

    path: str
    """The file, made absolute against the manifest's folder (a URL is kept as written, and refused on read)."""
    caption: str
    """Its text."""
    start: float | None
    """Seconds into the clip to start from, or None for the beginning."""
    end: float | None
    """Seconds into the clip to stop at, or None for its end."""
    line: int
    """Line number in the manifest, for messages."""


def _seconds(value: Any, field: str, where: str) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise KinemaError(f"{where}: {field} must be a number of seconds, got {value!r}") from None
    if not (math.isfinite(seconds) and seconds >= 0):
        raise KinemaError(f"{where}: {field} must be a number of seconds >= 0, got {value!r}")
    return seconds


def _row(record: Mapping[str, Any], manifest: Path, line: int) -> ManifestRow:
    where = f"{manifest}, line {line}"
    path = record.get("path")
    if not isinstance(path, str) or not path.strip():
        raise KinemaError(f"{where}: every row needs a path (the clip's file, relative to the manifest's folder)")
    if "caption" not in record:
        raise KinemaError(f"{where}: every row needs a caption (it may be empty)")
    caption = record["caption"]
    if caption is not None and not isinstance(caption, str):
        raise KinemaError(f"{where}: caption must be text, got {caption!r}")
    start, end = _seconds(record.get("start"), "start", where), _seconds(record.get("end"), "end", where)
    if start is not None and end is not None and end <= start:
        raise KinemaError(f"{where}: end ({end}) must be after start ({start})")
    path = path.strip()
    if not looks_like_url(path) and not Path(path).expanduser().is_absolute():
        path = str(manifest.parent / path)
    return ManifestRow(path=path, caption=(caption or "").strip(), start=start, end=end, line=line)


def _utf8_text(manifest: Path) -> str:
    """The manifest's text; bytes that are not UTF-8 raise KinemaError naming the line (a BOM is dropped)."""
    data = manifest.read_bytes()
    try:
        return data.decode("utf-8-sig")  # utf-8-sig: spreadsheets write a BOM
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise KinemaError(
            f"{manifest}, line {line}: not UTF-8 text (byte 0x{data[e.start]:02x}); save the manifest as UTF-8, "
            f"e.g. `iconv -f latin1 -t utf-8 {manifest.name} > fixed{manifest.suffix}`"
        ) from None


def read_manifest(manifest: str | Path) -> list[ManifestRow]:
    """The rows of a CSV (with a header row) or JSONL manifest; a malformed manifest raises KinemaError."""
    manifest = Path(manifest).expanduser().absolute()
    if manifest.suffix.lower() not in (".csv", ".jsonl"):
        raise KinemaError(f"{manifest}: a manifest is a .csv (with a header row) or a .jsonl file")
    if not manifest.is_file():
        raise KinemaError(f"{manifest}: no such manifest; check the path")
    with io.StringIO(_utf8_text(manifest), newline="") as f:
        if manifest.suffix.lower() == ".csv":
            reader = csv.DictReader(f, skipinitialspace=True)
            columns = [c.strip() for c in reader.fieldnames or []]
            if "path" not in columns or "caption" not in columns:
                raise KinemaError(
                    f"{manifest}: the first row must name the columns, with at least path and caption "
                    f"(found: {', '.join(columns) or 'nothing'})"
                )
            reader.fieldnames = columns
            return [_row(record, manifest, reader.line_num) for record in reader]
        rows = []
        for line, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as e:
                raise KinemaError(f"{manifest}, line {line}: not valid JSON ({e.msg}); each line is one object") from None
            if not isinstance(record, dict):
                raise KinemaError(f"{manifest}, line {line}: each line must be a JSON object with path and caption")
            rows.append(_row(record, manifest, line))
        return rows


def _probe(rows: Iterable[ManifestRow]) -> Iterator[tuple[ManifestRow, VideoInfo | VideoError]]:
    """Each row with its file's header info, or the VideoError that says why it cannot be read."""
    for row in rows:
        try:
            yield row, probe_video(row.path)
        except VideoError as e:
            yield row, e


def _span(row: ManifestRow, info: VideoInfo) -> tuple[float, float]:
    """The part of the clip the row asks for, in seconds, clipped to the clip."""
    start = row.start or 0.0
    return start, min(info.duration, math.inf if row.end is None else row.end)


def _warn_skipped(skipped: list[tuple[str, str]], where: str) -> None:
    if not skipped:
        return
    shown = "; ".join(reason for _, reason in skipped[:5])  # each reason names its file
    more = f"; and {len(skipped) - 5} more" if len(skipped) > 5 else ""
    warnings.warn(f"{where}: skipped {len(skipped)} file(s) (listed in .skipped): {shown}{more}", stacklevel=3)


class FolderDataset(Dataset):
    """Windows of `frames` frames from the clips (and images) of a manifest.

    Items: `{"video": float (3, T, H, W) in [-1, 1], "caption": str}`, T = `frames`
    for a clip and `image_frames` for an image. Safe for a DataLoader with
    workers: it holds paths and numbers, no open files.
    """

    def __init__(
        self,
        manifest: str | Path,
        *,
        size: int | tuple[int, int] = 64,
        frames: int = 17,
        fps: float = 8.0,
        stride: int | None = None,
        image_frames: int = 1,
    ) -> None:
        """
        manifest: a .csv or .jsonl file (see the module docstring).
        size: output (height, width), or an int for square frames; clips are centre-cropped to its shape, then resized.
        frames: frames per window, T.
        fps: frame rate the clips are resampled to.
        stride: frames between the starts of neighbouring windows; None for `frames` (no overlap).
        image_frames: frames an image is repeated to; set it to `frames` to batch images with clips.
        """
        h, w = (size, size) if isinstance(size, int) else size
        checks = {
            "size": (min(h, w) >= 1, size),
            "frames": (frames >= 1, frames),
            "fps": (fps > 0 and math.isfinite(fps), fps),
            "stride": (stride is None or stride >= 1, stride),
            "image_frames": (image_frames >= 1, image_frames),
        }
        for name, (ok, value) in checks.items():
            if not ok:
                raise KinemaError(f"FolderDataset: {name} must be positive, got {value!r}")
        self.manifest = Path(manifest).expanduser().absolute()
        self.size, self.frames, self.fps = (h, w), frames, float(fps)
        self.stride, self.image_frames = stride or frames, image_frames
        self.skipped: list[tuple[str, str]] = []
        """(path, reason) of every file that was skipped, at build time or when a window failed to decode."""
        self._items: list[tuple[str, str, float | None]] = []  # (path, caption, window start in s; None for an image)
        self._bad: set[str] = set()  # files that failed while decoding in this process

        rows = read_manifest(self.manifest)
        unreadable = short = 0
        longest = 0
        for row, info in _probe(rows):
            if isinstance(info, VideoError):
                unreadable += 1
                self.skipped.append((row.path, str(info)))
                continue
            if info.is_image:
                self._items.append((row.path, row.caption, None))
                continue
            start, end = _span(row, info)
            n = frame_count(end - start, self.fps)
            longest = max(longest, n)
            if n < frames:
                short += 1
                reason = f"{row.path}: too short, {n} frames at {self.fps:g} fps in [{start:g}, {end:g}] s, need {frames}"
                self.skipped.append((row.path, reason))
                continue
            self._items += [(row.path, row.caption, start + k / self.fps) for k in windows(n, frames, self.stride)]
        _warn_skipped(self.skipped, str(self.manifest))
        if not self._items:
            raise KinemaError(self._why_empty(len(rows), unreadable, short, longest))

    def _why_empty(self, rows: int, unreadable: int, short: int, longest: int) -> str:
        where = f"{self.manifest} gives no samples"
        if rows == 0:
            return f"{where}: it lists no clips; add rows with path and caption"
        if unreadable == rows:
            path, reason = self.skipped[0]
            return (
                f"{where}: none of its {rows} files could be read (first: {reason}); "
                "check the paths, which are relative to the manifest's folder"
            )
        fix = f"lower --frames (the longest clip gives {longest} frames at {self.fps:g} fps) or --fps, or add longer clips"
        if unreadable == 0:
            return f"{where}: every clip is shorter than {self.frames} frames at {self.fps:g} fps; {fix}"
        return f"{where}: {unreadable} file(s) are unreadable and {short} clip(s) shorter than {self.frames} frames; {fix}"

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """The window at `index`; if its file fails to decode, the next readable window (recorded in `skipped`)."""
        n = len(self._items)
        index = range(n)[index]  # IndexError past the end, as iteration expects
        for k in ((index + j) % n for j in range(n)):
            path = self._items[k][0]
            if path in self._bad:
                continue
            try:
                return self._load(k)
            except VideoError as e:
                self._bad.add(path)
                self.skipped.append((path, str(e)))
                _warn_skipped([(path, str(e))], f"{self.manifest} (while reading)")
        raise KinemaError(f"{self.manifest}: no file in it can be decoded any more; see the warnings for each")

    def _load(self, k: int) -> dict[str, Any]:
        path, caption, start = self._items[k]
        if start is None:
            frames = np.repeat(read_video(path).frames[:1], self.image_frames, axis=0)
        else:
            clip = read_video(path, start=start, end=start + self.frames / self.fps, fps=self.fps)
            frames = _exact_length(clip.frames, self.frames, path)
        return {"video": to_tensor(resize_center_crop(frames, self.size)), "caption": caption}


def _exact_length(frames: np.ndarray, length: int, path: str) -> np.ndarray:
    """Exactly `length` frames: a header that rounds the duration up may leave a window one frame short."""
    if len(frames) >= length:
        return frames[:length]
    if len(frames) == length - 1:
        return np.concatenate([frames, frames[-1:]])
    raise VideoError(f"{path}: decoded {len(frames)} of the {length} frames its header promised; the file may be truncated")


def manifest_stats(manifest: str | Path) -> dict[str, Any]:
    """What `kinema data stats` prints: counts, durations of the [start, end] spans, frame sizes, rates, unreadable files."""
    rows = read_manifest(manifest)
    durations: list[float] = []
    sizes: Counter[str] = Counter()
    rates: Counter[str] = Counter()
    unreadable: list[dict[str, str]] = []
    images = 0
    for row, info in _probe(rows):
        if isinstance(info, VideoError):
            unreadable.append({"path": row.path, "reason": str(info)})
            continue
        sizes[f"{info.width}x{info.height}"] += 1
        if info.is_image:
            images += 1
            continue
        start, end = _span(row, info)
        durations.append(max(0.0, end - start))
        rates[f"{info.fps:g}"] += 1
    return {
        "manifest": str(Path(manifest).expanduser().absolute()),
        "rows": len(rows),
        "videos": len(durations),
        "images": images,
        "duration_s": {
            "total": sum(durations),
            "min": min(durations),
            "median": statistics.median(durations),
            "max": max(durations),
        } if durations else None,
        "frame_sizes": dict(sizes.most_common()),
        "fps": dict(rates.most_common()),
        "unreadable": unreadable,
    }


def write_manifest(path: str | Path, rows: Iterable[Mapping[str, Any]]) -> Path:
    """Write `rows` (each with path and caption, optionally start/end) as a JSONL manifest, atomically."""
    path = Path(path).expanduser().absolute()
    if path.suffix.lower() != ".jsonl":
        raise KinemaError(f"{path}: write_manifest writes JSONL; name the file *.jsonl")
    lines = []
    for i, row in enumerate(rows):
        if not isinstance(row.get("path"), (str, Path)) or not isinstance(row.get("caption"), str):
            raise KinemaError(
                f"write_manifest: row {i} needs a path (str or Path) and a caption (str), got {dict(row)!r}"
            )
        lines.append(json.dumps({**row, "path": str(row["path"])}, ensure_ascii=False))
    with atomic_output(path) as tmp:
        tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path
