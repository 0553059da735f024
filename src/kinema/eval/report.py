"""Writing evaluation reports: JSON (the record), Markdown (the summary) and a contact sheet (the look).

Every file is written atomically (a temporary file in the same folder, then
`os.replace`), so a report is either whole or absent. The JSON is the record;
the Markdown is made from the JSON alone, so the two cannot disagree.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kinema import atomic

PASS_RGB = (40, 190, 70)
FAIL_RGB = (220, 50, 50)
UNJUDGED_RGB = (110, 110, 110)


def write_json(path: str | os.PathLike, data: dict[str, Any]) -> Path:
    """Write `data` as indented JSON (NaN and infinities refused: they are not JSON)."""
    return atomic.write_json(path, data)


def write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic.write_text(path, text)


def write_png(path: str | os.PathLike, image: np.ndarray) -> Path:
    """image: uint8 (H, W, 3)."""
    from PIL import Image

    return atomic.atomic_write(path, lambda tmp: Image.fromarray(image).save(tmp, format="PNG"))


# ----------------------------------------------------------------------------- formatting


def percent(p: dict[str, Any] | None) -> str:
    """A `metrics.proportion` as `87.5% [80.1, 92.3]` (the 95% Wilson interval), or `-`."""
    if not p or p.get("rate") is None:
        return "-"
    lo, hi = p["ci95"]
    return f"{100 * p['rate']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"


def number(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}"


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, Callable[[dict[str, Any]], str]]]) -> str:
    """A Markdown table: one line per row, one cell per (header, how to show it from the row)."""
    lines = ["| " + " | ".join(h for h, _ in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(show(row) for _, show in columns) + " |" for row in rows]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- contact sheet


def contact_sheet(
    clips: Sequence[np.ndarray],
    captions: Sequence[str],
    passed: Sequence[bool | None],
    *,
    frames_per_clip: int = 5,
    scale: int = 2,
) -> np.ndarray:
    """One strip of evenly spaced frames per clip, framed green (pass), red (fail) or grey, with its caption.

    clips: uint8 (T, H, W, 3) each, one size; returns uint8 (H', W', 3).
    """
    from PIL import Image, ImageDraw

    if not clips:
        raise ValueError("contact_sheet needs at least one clip")
    h, w = clips[0].shape[1:3]
    h, w = h * scale, w * scale
    border, gap, text_h = 3, 2, 14
    strip_w = frames_per_clip * (w + gap) - gap + 2 * border
    row_h = h + 2 * border + text_h
    sheet = Image.new("RGB", (strip_w + 8, len(clips) * (row_h + 6) + 4), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    for i, (clip, caption, ok) in enumerate(zip(clips, captions, passed)):
        y = 4 + i * (row_h + 6)
        colour = UNJUDGED_RGB if ok is None else PASS_RGB if ok else FAIL_RGB
        draw.rectangle([4, y, 4 + strip_w - 1, y + h + 2 * border - 1], fill=colour)
        picks = np.linspace(0, len(clip) - 1, frames_per_clip).round().astype(int)
        for k, t in enumerate(picks):
            frame = Image.fromarray(clip[t]).resize((w, h), Image.NEAREST)
            sheet.paste(frame, (4 + border + k * (w + gap), y + border))
        mark = "" if ok is None else "PASS  " if ok else "FAIL  "
        draw.text((6, y + h + 2 * border + 1), f"{mark}{caption}", fill=colour if ok is not None else (220, 220, 220))
    return np.asarray(sheet)


def write_report(
    report: dict[str, Any],
    sheet: dict[str, Any] | None,
    out: str | os.PathLike,
    markdown: Callable[[dict[str, Any]], str],
    figures: dict[str, Callable[[dict[str, Any], Path], None]] | None = None,
) -> dict[str, str]:
    """Write `out` (the JSON), `out` with .md (the summary `markdown(report)` makes), given a sheet
    ({"clips", "captions", "passed"}) `out` with .png (the contact sheet), and for each figure NAME: draw
    `out`-NAME.png (draw(report, path)). Returns the paths, also in report["files"].
    """
    out = Path(out)
    if out.suffix.lower() != ".json":
        from kinema.errors import KinemaError

        raise KinemaError(f"--out {out}: the report is JSON; give a path ending in .json (the .md and .png go beside it)")
    paths = {"json": str(out), "markdown": str(out.with_suffix(".md"))}
    if sheet:
        paths["contact_sheet"] = str(out.with_suffix(".png"))
        write_png(paths["contact_sheet"], contact_sheet(sheet["clips"], sheet["captions"], sheet["passed"]))
    for name, draw in (figures or {}).items():
        paths[name] = str(out.with_name(f"{out.stem}-{name}.png"))
        draw(report, Path(paths[name]))
    report["files"] = paths
    write_text(paths["markdown"], markdown(report))
    write_json(out, report)
    return paths
