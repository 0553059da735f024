"""Metrics on videos: PSNR and SSIM for reconstructions, temporal flicker, and Wilson intervals.

Videos are float `(B, C, T, H, W)` in [-1, 1], as everywhere in kinema. PSNR
and SSIM are computed on each frame and averaged over frames, so a number for
a clip is the mean of its per-frame numbers (the usual convention for video
reconstructions). Flicker is measured in grey levels (0-255), so it reads as
"the average pixel changes by 3.1 levels from one frame to the next"; compare
it with the same number on real clips, never alone.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from kinema.errors import KinemaError

PSNR_MAX = 100.0
"""PSNR of identical frames (an infinite PSNR would make every average infinite)."""
SSIM_WINDOW = 11
"""Side of SSIM's Gaussian window (Wang et al. 2004)."""
SSIM_SIGMA = 1.5
"""Standard deviation of SSIM's Gaussian window, in pixels."""
SSIM_K1, SSIM_K2 = 0.01, 0.03
"""SSIM's stabilising constants, as fractions of the data range."""
DATA_RANGE = 2.0
"""Range of the library's pixel values, [-1, 1]."""


def _check_pair(x: torch.Tensor, y: torch.Tensor, what: str) -> None:
    if x.ndim != 5 or x.shape != y.shape:
        raise KinemaError(
            f"{what} takes two videos of the same shape (B, C, T, H, W); got {tuple(x.shape)} and {tuple(y.shape)}"
        )


def frame_psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of each frame. x, y: (B, C, T, H, W) in [-1, 1] -> (B, T), at most PSNR_MAX."""
    _check_pair(x, y, "psnr")
    mse = (x.double() - y.double()).pow(2).mean(dim=(1, 3, 4))  # (B, T)
    floor = DATA_RANGE**2 * 10 ** (-PSNR_MAX / 10)
    return (10 * torch.log10(DATA_RANGE**2 / mse.clamp_min(floor))).float()


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean over frames of the per-frame PSNR in dB. x, y: (B, C, T, H, W) in [-1, 1] -> (B,)."""
    return frame_psnr(x, y).mean(dim=1)


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def frame_ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """SSIM of each frame (Wang et al. 2004). x, y: (B, C, T, H, W) in [-1, 1] -> (B, T).

    An 11x11 Gaussian window (sigma 1.5) over the valid region (no padding),
    population statistics, each channel apart, then the mean over pixels and
    channels: the definition of the paper, and of scikit-image's
    `structural_similarity(gaussian_weights=True, use_sample_covariance=False)`.
    """
    _check_pair(x, y, "ssim")
    b, c, t, h, w = x.shape
    if min(h, w) < SSIM_WINDOW:
        raise KinemaError(f"ssim needs frames of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, got {h}x{w}")
    # Every (batch, frame, channel) is one image; the separable window runs as two 1D convolutions.
    x = x.double().permute(0, 2, 1, 3, 4).reshape(b * t * c, 1, h, w)
    y = y.double().permute(0, 2, 1, 3, 4).reshape(b * t * c, 1, h, w)
    g = _gaussian_window(SSIM_WINDOW, SSIM_SIGMA).to(x.device)

    def blur(z: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(z, g.view(1, 1, -1, 1)), g.view(1, 1, 1, -1))

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (SSIM_K1 * DATA_RANGE) ** 2, (SSIM_K2 * DATA_RANGE) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.mean(dim=(1, 2, 3)).view(b, t, c).mean(dim=2).float()


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean over frames of the per-frame SSIM. x, y: (B, C, T, H, W) in [-1, 1] -> (B,)."""
    return frame_ssim(x, y).mean(dim=1)


def flicker(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute change between consecutive frames, in grey levels (0-255).

    x: (B, C, T, H, W) in [-1, 1], T >= 2 -> (B,). Real motion moves pixels
    too, so this is only meaningful beside the same number on real clips.
    """
    if x.ndim != 5 or x.shape[2] < 2:
        raise KinemaError(f"flicker takes videos (B, C, T, H, W) with T >= 2 frames, got {tuple(x.shape)}")
    return (x[:, :, 1:].float() - x[:, :, :-1].float()).abs().mean(dim=(1, 2, 3, 4)) * 127.5


def wilson_interval(successes: int, trials: int, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (95% for the default z).

    Unlike the normal approximation it stays inside [0, 1] and is honest at
    0 or n successes out of a few trials, which is where small evals live.
    """
    if trials < 0 or not 0 <= successes <= max(trials, 0):
        raise ValueError(f"need 0 <= successes <= trials, got {successes} of {trials}")
    if trials == 0:
        return (0.0, 1.0)
    p = successes / trials
    denom = 1 + z**2 / trials
    centre = (p + z**2 / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z**2 / (4 * trials**2)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def proportion(successes: int, trials: int) -> dict[str, float | int | list[float] | None]:
    """A rate with its 95% Wilson interval, as report data: {"rate", "ci95", "k", "n"}."""
    lo, hi = wilson_interval(successes, trials)
    return {"rate": successes / trials if trials else None, "ci95": [lo, hi], "k": successes, "n": trials}


# ----------------------------------------------------------------------------- a VAE's reconstructions


def evaluate_vae(
    vae: torch.nn.Module,
    dataset: Any,
    *,
    model: str = "vae",
    data: str = "dataset",
    n: int = 32,
    i3d: str | None = None,
    precision: str = "auto",
) -> dict[str, Any]:
    """Reconstruct the first `n` clips of `dataset` (items {"video": (3, T, H, W)}) through `vae`.

    Reports PSNR and SSIM (per frame, averaged), flicker of the reconstructions beside
    that of the real clips, FVD between the two sets (labelled with its feature
    network) and seconds per clip. Clips are encoded and decoded one at a time, on the CPU, in
    `precision` (auto, fp32 or bf16: `kinema.precision`).
    """
    import time

    from kinema import precision as precisions
    from kinema.eval.fvd import feature_extractor, fvd_from_features

    precision = precisions.resolve(precisions.check_precision(precision), "cpu")

    n = min(n, len(dataset))
    if n < 1:
        raise KinemaError("the dataset is empty; nothing to reconstruct")
    vae.eval()
    reals, recons, seconds = [], [], []
    for i in range(n):
        x = dataset[i]["video"][None]
        start = time.perf_counter()
        with torch.inference_mode(), precisions.autocast(precision, "cpu"):
            recon = vae.decode(vae.encode(x)).float()
        seconds.append(time.perf_counter() - start)
        # What a saved file would hold: both sides quantised to uint8 levels.
        reals.append(((x + 1) * 127.5).round() / 127.5 - 1)
        recons.append(((recon.clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1)
    shapes = {tuple(r.shape) for r in reals}
    if len(shapes) > 1:
        raise KinemaError(f"clips of different sizes {sorted(shapes)}; give --size and --frames so every clip is cut alike")
    real, rec = torch.cat(reals), torch.cat(recons)
    frames = real.shape[2]
    fvd = None
    label = None
    if n >= 2 and frames >= 2:
        extractor = feature_extractor(i3d)
        fvd, label = fvd_from_features(extractor(real), extractor(rec)), extractor.label
    return {
        "kind": "kinema-eval-vae",
        "model": model,
        "data": data,
        "n": n,
        "clip": {"frames": frames, "height": real.shape[3], "width": real.shape[4]},
        "psnr": float(psnr(rec, real).mean()),
        "ssim": float(ssim(rec, real).mean()),
        "psnr_per_clip": [float(v) for v in psnr(rec, real)],
        "flicker": None if frames < 2 else float(flicker(rec).mean()),
        "flicker_real": None if frames < 2 else float(flicker(real).mean()),
        "fvd": fvd,
        "fvd_label": label,
        "seconds_per_clip": float(sum(seconds) / n),
        "precision": precision,
    }


def vae_markdown(report: dict[str, Any]) -> str:
    """The Markdown summary of a VAE report."""
    from kinema.eval.report import number

    c = report["clip"]
    lines = [
        f"# VAE reconstruction: {report['model']}",
        "",
        f"{report['n']} clips of {report['data']}, {c['frames']} frames of {c['height']}x{c['width']}, {report['precision']}.",
        "",
        "| metric | reconstruction | real clips |",
        "|---|---|---|",
        f"| PSNR (dB, per frame, mean) | {number(report['psnr'])} | - |",
        f"| SSIM (per frame, mean) | {number(report['ssim'], 4)} | 1 |",
        f"| flicker (levels/frame) | {number(report['flicker'])} | {number(report['flicker_real'])} |",
        f"| {report['fvd_label'] or 'FVD'} | {number(report['fvd'], 1)} | - |",
        f"| seconds per clip (encode + decode) | {number(report['seconds_per_clip'], 3)} | - |",
    ]
    return "\n".join(lines) + "\n"
