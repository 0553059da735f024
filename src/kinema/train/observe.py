"""What a run shows and leaves behind: progress bar, metrics (JSONL, TensorBoard), loss curve, sample clips.

Only rank 0 makes an `Observer`; the other ranks log nothing.

    DIR/metrics.jsonl   one JSON object per logged step (a resumed run appends; the last line per step wins)
    DIR/loss.png        the loss curve, redrawn as the run goes (drawn with Pillow)
    DIR/tensorboard/    the same scalars, when the tensorboard package is installed
    DIR/samples/        sample clips or reconstructions, step-N-*.gif
"""

from __future__ import annotations

import json
import math
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch

from kinema.atomic import atomic_write


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process: CUDA allocator peak on a GPU, else the max resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The metrics lines of a run, one per step (a line re-logged after a resume replaces the earlier one)."""
    rows: dict[int, dict[str, Any]] = {}
    path = Path(path)
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
                rows[int(row["step"])] = row
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by a kill
    return [rows[k] for k in sorted(rows)]


class Meter:
    """Sums of a log interval's losses, steps and samples; `read` gives the means and starts a new interval.

    Losses are summed as tensors on their device: only `read` and `last_loss` wait for the device.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.finite_steps: torch.Tensor | int = 0
        self.steps = self.samples = 0
        self.last: torch.Tensor | None = None
        self.started = time.perf_counter()

    def add(self, losses: dict[str, torch.Tensor], bad: torch.Tensor, samples: int) -> None:
        """One step: its losses, whether it was skipped as non-finite (0-dim bool), the samples it used."""
        self.steps += 1
        self.samples += samples
        self.finite_steps = self.finite_steps + (~bad).long()
        for key, value in losses.items():
            self.sums[key] = self.sums.get(key, 0.0) + torch.where(bad, 0.0, value)
        self.last = losses["loss"]

    def samples_per_s(self) -> float:
        return self.samples / max(time.perf_counter() - self.started, 1e-9)

    def last_loss(self) -> float:
        return float(self.last) if self.last is not None else math.nan

    def read(self) -> dict[str, float]:
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        finite = max(int(self.finite_steps), 1)
        row = {k: float(v) / finite for k, v in self.sums.items()}
        row.update(steps_per_s=self.steps / elapsed, samples_per_s=self.samples / elapsed)
        self.reset()
        return row


class Observer:
    """Rank 0's progress bar, metrics file, TensorBoard writer and loss-curve plot."""

    def __init__(self, out_dir: Path, *, total_steps: int, start_step: int, progress: bool, tensorboard: bool) -> None:
        self.out_dir = out_dir
        self.metrics_path = out_dir / "metrics.jsonl"
        self.bar = None
        if progress:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True, file=sys.stderr)
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out_dir / "tensorboard"))
            except ImportError:  # tensorboard is optional
                self.tb = None

    def progress(self, loss: float | None, samples_per_s: float) -> None:
        """One step done: the bar shows step, it/s, samples/s, the ETA and the loss (given at log intervals,
        so that showing it does not make every step wait for the device)."""
        if self.bar is not None:
            if loss is not None:
                self.bar.set_postfix(loss=f"{loss:.4g}", samples_s=f"{samples_per_s:.1f}", refresh=False)
            self.bar.update(1)

    def write(self, row: dict[str, Any]) -> None:
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.tb.add_scalar(key, value, row["step"])

    def message(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def plot(self) -> None:
        rows = read_metrics(self.metrics_path)
        points = [
            (r["step"], r["loss"]) for r in rows if isinstance(r.get("loss"), (int, float)) and math.isfinite(r["loss"])
        ]
        if points:
            draw_loss_curve(points, self.out_dir / "loss.png")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()


def _nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    span = hi - lo if hi > lo else abs(hi) or 1.0
    raw = span / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step) * step
    return [start + i * step for i in range(int((hi - start) / step) + 1)]


def draw_loss_curve(points: list[tuple[int, float]], path: Path, *, size: tuple[int, int] = (720, 400)) -> None:
    """Loss against step as a PNG: raw values in light grey, a smoothed curve in blue, log10 y axis when
    the loss spans more than a decade. Written atomically."""
    from PIL import Image, ImageDraw

    W, H = size
    left, right, top, bottom = 70, 20, 20, 40
    steps = [s for s, _ in points]
    log_y = max(v for _, v in points) > 10 * max(min(v for _, v in points), 1e-12) and min(v for _, v in points) > 0
    ys = [math.log10(v) if log_y else v for _, v in points]
    smooth, acc = [], ys[0]
    alpha = 2.0 / (1 + max(2, len(ys) // 20))
    for y in ys:
        acc = acc + alpha * (y - acc)
        smooth.append(acc)
    x0, x1 = min(steps), max(steps) if max(steps) > min(steps) else min(steps) + 1
    y0, y1 = min(ys), max(ys)
    if y1 - y0 < 1e-12:
        y0, y1 = y0 - 0.5, y1 + 0.5
    pad = 0.05 * (y1 - y0)
    y0, y1 = y0 - pad, y1 + pad

    def px(s: float, y: float) -> tuple[float, float]:
        return (left + (s - x0) / (x1 - x0) * (W - left - right), top + (y1 - y) / (y1 - y0) * (H - top - bottom))

    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    for tick in _nice_ticks(y0, y1):
        _, y = px(x0, tick)
        draw.line([(left, y), (W - right, y)], fill=(230, 230, 230))
        label = f"{10 ** tick:.3g}" if log_y else f"{tick:.3g}"
        draw.text((5, y - 6), label, fill="black")
    for tick in _nice_ticks(x0, x1):
        x, _ = px(tick, y0)
        draw.line([(x, top), (x, H - bottom)], fill=(230, 230, 230))
        draw.text((x - 10, H - bottom + 5), f"{tick:g}", fill="black")
    draw.rectangle([left, top, W - right, H - bottom], outline="black")
    if len(points) > 1:
        draw.line([px(s, y) for s, y in zip(steps, ys)], fill=(190, 190, 190), width=1)
        draw.line([px(s, y) for s, y in zip(steps, smooth)], fill=(30, 90, 200), width=2)
    else:
        x, y = px(steps[0], ys[0])
        draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=(30, 90, 200))
    draw.text((left + 5, top + 3), "loss (log scale)" if log_y else "loss", fill="black")
    draw.text((W - right - 40, H - 15), "step", fill="black")
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def write_clip(video: torch.Tensor, path: Path, *, fps: float) -> Path:
    """Write one clip x: (3, T, H, W) in [-1, 1] as a video file (format from the extension)."""
    from kinema.video import Video

    return Video.from_tensor(video, fps=fps).save(path)


def side_by_side(videos: list[torch.Tensor]) -> torch.Tensor:
    """Clips (3, T, H, W) of one size, left to right, with a 2-pixel dark separator."""
    sep = torch.full_like(videos[0][..., :2], -1.0)
    parts: list[torch.Tensor] = []
    for v in videos:
        parts += [v, sep]
    return torch.cat(parts[:-1], dim=-1)
