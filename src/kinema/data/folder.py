"""Your own clips: a manifest of files and captions as a dataset of fixed-length windows.

A manifest is a CSV file with a header row, or a JSONL file (one JSON object a
line), with the fields
    path     the clip or image, relative to the manifest's folder
    caption  its text (may be empty)
    start, end (optional)  seconds: use only this part of the clip
Any format `kinema.video.read_video` reads works: videos, GIFs, images, PNG folders.

`FolderDataset` reads only the headers when it is built: each clip is trimmed
to [start, end], counted in frames at the target fps and cut into windows of
`frames` frames; a window is decoded when it is asked for. Files that cannot be
used are skipped, counted, listed in `ds.skipped` and named in one warning; the
run never stops for them. The manifest is read one row at a time, with a progress
bar, so a million rows take seconds of parsing and little memory.

A manifest may come from someone else, so its paths must stay inside its folder:
an absolute path, `..` or a symlink that leads out is refused unless the user
passes `allow_outside=True` (`--allow-outside` on the command line).
"""

from __future__ import annotations

import contextlib
import csv
import functools
import json
import math
import os
import statistics
import sys
import warnings
from array import array
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
    offset: int
    """Byte offset of the row in the manifest, to read it again."""


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


def _outside(path: str, root: Path) -> bool:
    """Whether `path` (absolute) ends, symlinks followed, outside the folder `root` (resolved)."""
    real, top = os.path.realpath(os.path.expanduser(path)), str(root)
    return real != top and not real.startswith(top.rstrip(os.sep) + os.sep)  # os.path: 3x faster than Path here


def _row(record: Mapping[str, Any], manifest: Path, line: int, offset: int, root: Path | None) -> ManifestRow:
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
    # A manifest may come from someone else: it names files in its own folder unless the user says otherwise.
    if root is not None and not looks_like_url(path) and _outside(path, root):
        raise KinemaError(
            f"{where}: {record['path'].strip()!r} is outside the manifest's folder {root} (an absolute path, `..` "
            "or a symlink out); move the files under it, or if you trust this manifest pass --allow-outside "
            "(kinema train: --set data.allow_outside=true; Python: allow_outside=True)"
        )
    return ManifestRow(path=path, caption=(caption or "").strip(), start=start, end=end, line=line, offset=offset)


def _lines(manifest: Path, start: int = 0) -> Iterator[tuple[int, int, str]]:
    """(byte offset, byte length, text) of each line from byte `start` on, decoded as UTF-8 one line at a time."""
    with open(manifest, "rb") as f:
        f.seek(start)
        offset = start
        for raw in f:
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                line = _line_number(manifest, offset)
                raise KinemaError(
                    f"{manifest}, line {line}: not UTF-8 text (byte 0x{raw[e.start]:02x}); save the manifest as "
                    f"UTF-8, e.g. `iconv -f latin1 -t utf-8 {manifest.name} > fixed{manifest.suffix}`"
                ) from None
            yield offset, len(raw), text.removeprefix("\ufeff") if offset == 0 else text  # spreadsheets write a BOM
            offset += len(raw)


def _line_number(manifest: Path, offset: int) -> int:
    """The 1-based line number of the byte at `offset` (read in blocks: only for messages)."""
    count, done = 1, 0
    with open(manifest, "rb") as f:
        while done < offset:
            block = f.read(min(1 << 20, offset - done))
            if not block:
                break
            count, done = count + block.count(b"\n"), done + len(block)
    return count


class _Records:
    """A manifest's records as (line, byte offset, mapping), read one line at a time.

    CSV records may span lines (a quoted caption with a newline): `csv.reader` pulls lines from
    `_feed` only as it needs them, so the offset where the previous record ended is where this one starts.
    """

    def __init__(self, manifest: Path, start: int = 0, columns: list[str] | None = None) -> None:
        self.manifest, self.columns = manifest, columns
        self.csv = manifest.suffix.lower() == ".csv"
        self._lines = _lines(manifest, start)
        self.start = self.end = start  # where the last line read starts and ends, in bytes
        self.line = 0  # lines read so far (counted from `start`)

    def _feed(self) -> Iterator[str]:
        for offset, length, text in self._lines:
            self.start, self.end, self.line = offset, offset + length, self.line + 1
            yield text

    def __iter__(self) -> Iterator[tuple[int, int, Mapping[str, Any]]]:
        return self._csv() if self.csv else self._jsonl()

    def rows(self, root: Path | None, bar: Any = None) -> Iterator[ManifestRow]:
        """The records as checked rows (see `_row`), moving the progress bar `bar` by the lines read."""
        for line, offset, record in self:
            if bar is not None:
                bar.update(self.line - bar.n)
            yield _row(record, self.manifest, line, offset, root)

    def _csv(self) -> Iterator[tuple[int, int, Mapping[str, Any]]]:
        reader = csv.reader(self._feed(), skipinitialspace=True)
        if self.columns is None:
            self.columns = [c.strip() for c in next(reader, [])]
            if "path" not in self.columns or "caption" not in self.columns:
                raise KinemaError(
                    f"{self.manifest}: the first row must name the columns, with at least path and caption "
                    f"(found: {', '.join(self.columns) or 'nothing'})"
                )
        while True:
            offset, line = self.end, self.line + 1
            values = next(reader, None)
            if values is None:
                return
            if values:  # a blank line is no record
                yield line, offset, dict(zip(self.columns, values + [None] * (len(self.columns) - len(values))))

    def _jsonl(self) -> Iterator[tuple[int, int, Mapping[str, Any]]]:
        for text in self._feed():
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as e:
                raise KinemaError(f"{self.manifest}, line {self.line}: not valid JSON ({e.msg}); each line is one object") from None
            if not isinstance(record, dict):
                raise KinemaError(f"{self.manifest}, line {self.line}: each line must be a JSON object with path and caption")
            yield self.line, self.start, record


def _manifest_path(manifest: str | Path) -> Path:
    manifest = Path(manifest).expanduser().absolute()
    if manifest.suffix.lower() not in (".csv", ".jsonl"):
        raise KinemaError(f"{manifest}: a manifest is a .csv (with a header row) or a .jsonl file")
    if not manifest.is_file():
        raise KinemaError(f"{manifest}: no such manifest; check the path")
    return manifest


def iter_manifest(manifest: str | Path, *, allow_outside: bool = False) -> Iterator[ManifestRow]:
    """The rows of a CSV (with a header row) or JSONL manifest, read one at a time (a manifest of millions of
    rows takes no more memory than one); a malformed row raises KinemaError naming its line.

    allow_outside: accept paths that leave the manifest's folder (absolute, `..`, symlinks out); by default
    such a row raises KinemaError, since a manifest may come from someone else.
    """
    manifest = _manifest_path(manifest)
    root = None if allow_outside else manifest.parent.resolve()
    yield from _Records(manifest).rows(root)


def read_manifest(manifest: str | Path, *, allow_outside: bool = False) -> list[ManifestRow]:
    """All the rows of a manifest as a list (see `iter_manifest`)."""
    return list(iter_manifest(manifest, allow_outside=allow_outside))


def _count_lines(manifest: Path) -> int:
    """Lines in the file, counted in 1 MB blocks: the total of the progress bar (a CSV's header is one more)."""
    count = 0
    with open(manifest, "rb") as f:
        while block := f.read(1 << 20):
            count += block.count(b"\n")
    return count


def _progress(manifest: Path, progress: bool | None) -> Any:
    """A bar over the manifest's rows, with rate and ETA; None shows it when stderr is a terminal."""
    from tqdm import tqdm

    return tqdm(
        total=_count_lines(manifest), desc=f"reading {manifest.name}", unit="row", disable=None if progress is None else not progress,
        file=sys.stderr, dynamic_ncols=True, mininterval=0.5,
    )  # fmt: skip


def _prober() -> Any:
    """probe_video for a row's file, remembered for the last 4096 files: manifests often cut many clips from one
    long video. Gives the VideoInfo, or the VideoError that says why the file cannot be read."""

    @functools.lru_cache(maxsize=4096)
    def probe(path: str) -> VideoInfo | VideoError:
        try:
            return probe_video(path)
        except VideoError as e:
            return e

    return probe


def _span(row: ManifestRow, info: VideoInfo) -> tuple[float, float]:
    """The part of the clip the row asks for, in seconds, clipped to the clip."""
    start = row.start or 0.0
    return start, min(info.duration, math.inf if row.end is None else row.end)


LISTED = 1000
"""Skipped files a FolderDataset lists by name (all are counted): a manifest of a million missing files stays small."""


def _warn_skipped(skipped: list[tuple[str, str]], count: int, where: str) -> None:
    if not count:
        return
    shown = "; ".join(reason for _, reason in skipped[:5])  # each reason names its file
    more = f"; and {count - 5} more" if count > 5 else ""
    warnings.warn(f"{where}: skipped {count} file(s) (listed in .skipped): {shown}{more}", stacklevel=3)


class FolderDataset(Dataset):
    """Windows of `frames` frames from the clips (and images) of a manifest.

    Items: `{"video": float (3, T, H, W) in [-1, 1], "caption": str}`, T = `frames`
    for a clip and `image_frames` for an image. It holds numbers, not rows: each window is its row's number and its
    start time, each row its byte offset in the manifest and line (16 bytes each), and the row is read again when
    the window is asked for; so a manifest of millions of rows fits, and DataLoader workers share the arrays instead of copying
    Python objects. No open files.
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
        allow_outside: bool = False,
        progress: bool | None = None,
    ) -> None:
        """
        manifest: a .csv or .jsonl file (see the module docstring).
        size: output (height, width), or an int for square frames; clips are centre-cropped to its shape, then resized.
        frames: frames per window, T.
        fps: frame rate the clips are resampled to.
        stride: frames between the starts of neighbouring windows; None for `frames` (no overlap).
        image_frames: frames an image is repeated to; set it to `frames` to batch images with clips.
        allow_outside: accept files outside the manifest's folder (see `iter_manifest`).
        progress: a progress bar while the files' headers are read; None shows it when stderr is a terminal.
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
        self.manifest = _manifest_path(manifest)
        self.size, self.frames, self.fps = (h, w), frames, float(fps)
        self.stride, self.image_frames = stride or frames, image_frames
        self.skipped: list[tuple[str, str]] = []
        """(path, reason) of the first LISTED files skipped, at build time or when a window failed to decode."""
        self.skipped_count = 0
        """How many files were skipped in all."""
        self._root = None if allow_outside else self.manifest.parent.resolve()
        self._bad: set[str] = set()  # files that failed while decoding in this process
        self._stamp = self._manifest_stamp()

        offsets, lines = array("q"), array("q")  # per row
        item_rows, item_starts = array("q"), array("d")  # per window; start NaN for an image
        rows = unreadable = short = longest = 0
        records, probe = _Records(self.manifest), _prober()
        with _progress(self.manifest, progress) as bar:
            for row in records.rows(self._root, bar):
                rows += 1
                info = probe(row.path)
                if isinstance(info, VideoError):
                    unreadable += 1
                    self._skip(row.path, str(info))
                    continue
                offsets.append(row.offset)
                lines.append(row.line)
                if info.is_image:
                    item_rows.append(len(offsets) - 1)
                    item_starts.append(math.nan)
                    continue
                start, end = _span(row, info)
                n = frame_count(end - start, self.fps)
                longest = max(longest, n)
                if n < frames:
                    short += 1
                    self._skip(row.path, f"{row.path}: too short, {n} frames at {self.fps:g} fps in [{start:g}, {end:g}] s, need {frames}")
                    continue
                for k in windows(n, frames, self.stride):
                    item_rows.append(len(offsets) - 1)
                    item_starts.append(start + k / self.fps)
        self._columns = records.columns  # a CSV's header, to read a row again by its offset
        self._offsets, self._lines = np.frombuffer(offsets, np.int64), np.frombuffer(lines, np.int64)
        self._item_rows, self._item_starts = np.frombuffer(item_rows, np.int64), np.frombuffer(item_starts, np.float64)
        _warn_skipped(self.skipped, self.skipped_count, str(self.manifest))
        if not len(self._item_rows):
            raise KinemaError(self._why_empty(rows, unreadable, short, longest))

    def _skip(self, path: str, reason: str) -> None:
        self.skipped_count += 1
        if len(self.skipped) < LISTED:
            self.skipped.append((path, reason))

    def _manifest_stamp(self) -> tuple[int, int]:
        stat = self.manifest.stat()
        return stat.st_size, stat.st_mtime_ns

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
        return len(self._item_rows)

    def row(self, index: int) -> ManifestRow:
        """The manifest row of window `index`, read again from the manifest."""
        if self._manifest_stamp() != self._stamp:
            raise KinemaError(
                f"{self.manifest} changed after the dataset was built from it; its rows would no longer match. "
                "Edit a copy of a manifest while it is in use, and start again"
            )
        r = int(self._item_rows[index])
        offset, line = int(self._offsets[r]), int(self._lines[r])
        _, _, record = next(iter(_Records(self.manifest, offset, self._columns)))
        return _row(record, self.manifest, line, offset, self._root)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """The window at `index`; if its file fails to decode, the next readable window (recorded in `skipped`)."""
        n = len(self)
        index = range(n)[index]  # IndexError past the end, as iteration expects
        for k in ((index + j) % n for j in range(n)):
            row = self.row(k)
            if row.path in self._bad:
                continue
            try:
                return self._load(row, float(self._item_starts[k]))
            except VideoError as e:
                self._bad.add(row.path)
                self._skip(row.path, str(e))
                _warn_skipped([(row.path, str(e))], 1, f"{self.manifest} (while reading)")
        raise KinemaError(f"{self.manifest}: no file in it can be decoded any more; see the warnings for each")

    def _load(self, row: ManifestRow, start: float) -> dict[str, Any]:
        if math.isnan(start):
            frames = np.repeat(read_video(row.path).frames[:1], self.image_frames, axis=0)
        else:
            clip = read_video(row.path, start=start, end=start + self.frames / self.fps, fps=self.fps)
            frames = _exact_length(clip.frames, self.frames, row.path)
        return {"video": to_tensor(resize_center_crop(frames, self.size)), "caption": row.caption}


def _exact_length(frames: np.ndarray, length: int, path: str) -> np.ndarray:
    """Exactly `length` frames: a header that rounds the duration up may leave a window one frame short."""
    if len(frames) >= length:
        return frames[:length]
    if len(frames) == length - 1:
        return np.concatenate([frames, frames[-1:]])
    raise VideoError(f"{path}: decoded {len(frames)} of the {length} frames its header promised; the file may be truncated")


def manifest_stats(
    manifest: str | Path,
    *,
    allow_outside: bool = False,
    listed: int = 20,
    unreadable_out: str | Path | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    """What `kinema data stats` prints: counts, durations of the [start, end] spans, frame sizes, rates, unreadable
    files; read streaming, so its memory does not grow with the rows (a float per clip for the median).

    listed: unreadable files named in the result (all are counted); unreadable_out: a .jsonl file that gets every
    one (path, line, reason), written atomically.
    """
    manifest = _manifest_path(manifest)
    root = None if allow_outside else manifest.parent.resolve()
    durations = array("d")
    sizes: Counter[str] = Counter()
    rates: Counter[str] = Counter()
    unreadable: list[dict[str, Any]] = []
    rows = images = bad = 0
    records, probe = _Records(manifest), _prober()
    with contextlib.ExitStack() as stack:
        out = None
        if unreadable_out is not None:
            unreadable_out = Path(unreadable_out).expanduser().absolute()
            if unreadable_out.suffix.lower() != ".jsonl":
                raise KinemaError(f"{unreadable_out}: the list of unreadable files is written as JSONL; name it *.jsonl")
            out = stack.enter_context(open(stack.enter_context(atomic_output(unreadable_out)), "w", encoding="utf-8"))
        bar = stack.enter_context(_progress(manifest, progress))
        for row in records.rows(root, bar):
            rows += 1
            info = probe(row.path)
            if isinstance(info, VideoError):
                bad += 1
                entry = {"path": row.path, "line": row.line, "reason": str(info)}
                if len(unreadable) < listed:
                    unreadable.append(entry)
                if out is not None:
                    out.write(json.dumps(entry, ensure_ascii=False) + "\n")
                continue
            sizes[f"{info.width}x{info.height}"] += 1
            if info.is_image:
                images += 1
                continue
            start, end = _span(row, info)
            durations.append(max(0.0, end - start))
            rates[f"{info.fps:g}"] += 1
    return {
        "manifest": str(manifest),
        "rows": rows,
        "videos": len(durations),
        "images": images,
        "duration_s": {
            "total": math.fsum(durations),
            "min": min(durations),
            "median": statistics.median(durations),
            "max": max(durations),
        } if durations else None,
        "frame_sizes": dict(sizes.most_common()),
        "fps": dict(rates.most_common()),
        "unreadable_count": bad,
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
