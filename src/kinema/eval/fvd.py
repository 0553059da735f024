"""Fréchet Video Distance with a pluggable feature network, and the small networks kinema trains itself.

    videos (N, 3, T, H, W) in [-1, 1] ──feature network──▶ features (N, D) ──mean, covariance──▶ (mu, sigma)
    FVD = |mu_1 - mu_2|^2 + tr(sigma_1 + sigma_2 - 2 (sigma_1 sigma_2)^(1/2))

Two feature networks:
- the standard I3D (Kinetics-400 logits, as in StyleGAN-V's `i3d_torchscript.pt`),
  from a local TorchScript file the user gives (`--i3d PATH`); clips are resized
  to 224x224 and passed in [-1, 1] with `rescale=False, resize=False,
  return_features=True`, the settings of the published FVD code;
- otherwise `VideoFeatureNet`, a tiny 3D CNN trained by `kinema eval
  train-video-features` to tell the colour, shape, size and motion of `shapes`
  clips, whose embedding (the layer before the classifier heads) gives the
  features. Numbers from it are NOT comparable with published FVD and every
  report labels them "FVD (kinema-shapes features, non-standard)".

FVD needs many clips: with fewer clips than feature dimensions the covariances
are rank-deficient and the number is biased upwards; compare FVDs only at the
same N.

The training loop, saving and loading below are shared with the digit
classifier (`kinema.eval.digits`).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kinema import config as cfg
from kinema.errors import KinemaError
from kinema.models.checkpoint import load_weights, read_meta, save_weights

ASSETS = Path(__file__).resolve().parents[1] / "assets"
VIDEO_FEATURES_DIR = ASSETS / "video_features"
"""Where the shipped VideoFeatureNet weights live (video_features.safetensors + .json)."""
I3D_SIZE = 224
NON_STANDARD_LABEL = "FVD (kinema-shapes features, non-standard)"
I3D_LABEL = "FVD (I3D, standard)"

# ----------------------------------------------------------------------------- Fréchet distance


def feature_stats(features: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D), float64, of features (N, D), N >= 2."""
    f = np.asarray(features.detach().cpu() if isinstance(features, torch.Tensor) else features, np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise KinemaError(f"Fréchet statistics need features (N, D) of N >= 2 clips, got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def _psd_sqrt(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between Gaussians N(mu1, sigma1) and N(mu2, sigma2).

    tr((sigma1 sigma2)^(1/2)) is computed as the sum of the square roots of the
    eigenvalues of the symmetric s sigma2 s, s = sigma1^(1/2): the same number
    as scipy's sqrtm of the (non-symmetric) product, but real and stable for the
    singular covariances that a few clips give.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise KinemaError(
            f"Fréchet distance needs means (D,) and covariances (D, D) of one D; got {mu1.shape}, "
            f"{sigma1.shape}, {mu2.shape}, {sigma2.shape}"
        )
    root = _psd_sqrt(sigma1)
    product = root @ sigma2 @ root
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((product + product.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    # Never negative in exact arithmetic; rounding can give -1e-4 for two identical sets.
    return max(0.0, float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt))


def fvd_from_features(real: np.ndarray | torch.Tensor, generated: np.ndarray | torch.Tensor) -> float:
    """Fréchet distance between the feature distributions of two sets of clips: (N, D) and (M, D)."""
    return frechet_distance(*feature_stats(real), *feature_stats(generated))


# ----------------------------------------------------------------------------- feature networks


@dataclass(frozen=True)
class FeatureExtractor:
    """A feature network for FVD: `extractor(videos (N, 3, T, H, W) in [-1, 1]) -> (N, D)` float32."""

    label: str
    """How reports name the distance, e.g. "FVD (I3D, standard)"."""
    standard: bool
    """Whether numbers are comparable with published FVD (only the I3D is)."""
    embed: Callable[[torch.Tensor], torch.Tensor]
    """One batch of videos -> features."""
    batch_size: int = 16
    """Clips per call of `embed`."""

    @torch.inference_mode()
    def __call__(self, videos: torch.Tensor) -> torch.Tensor:
        if videos.ndim != 5 or videos.shape[1] != 3:
            raise KinemaError(f"feature networks take videos (N, 3, T, H, W) in [-1, 1], got {tuple(videos.shape)}")
        parts = [self.embed(videos[i : i + self.batch_size]).float().cpu() for i in range(0, len(videos), self.batch_size)]
        return torch.cat(parts).flatten(1)


def i3d_extractor(path: str | os.PathLike, device: str | torch.device = "cpu") -> FeatureExtractor:
    """The standard FVD network from a local TorchScript file (StyleGAN-V's `i3d_torchscript.pt`)."""
    path = Path(path)
    if not path.is_file():
        raise KinemaError(
            f"--i3d {path}: no such file; give the local TorchScript I3D used by FVD (i3d_torchscript.pt), "
            "or leave --i3d out to use kinema's non-standard shapes features"
        )
    try:
        model = torch.jit.load(str(path), map_location=device).eval()
    except Exception as e:  # TorchScript raises its own error types for foreign files
        raise KinemaError(f"--i3d {path}: cannot load it as TorchScript ({e}); give the i3d_torchscript.pt file") from None

    def embed(videos: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = videos.shape
        frames = videos.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w).float()
        frames = F.interpolate(frames, size=(I3D_SIZE, I3D_SIZE), mode="bilinear", align_corners=False)
        x = frames.reshape(b, t, c, I3D_SIZE, I3D_SIZE).permute(0, 2, 1, 3, 4).to(device)
        try:
            return model(x, rescale=False, resize=False, return_features=True)
        except RuntimeError as e:
            raise KinemaError(
                f"--i3d {path}: the network did not accept (B, 3, T, 224, 224) with rescale/resize/return_features "
                f"keywords ({str(e).splitlines()[0]}); it must be the StyleGAN-V i3d_torchscript.pt"
            ) from None

    return FeatureExtractor(label=I3D_LABEL, standard=True, embed=embed, batch_size=8)


@dataclass(frozen=True, kw_only=True)
class VideoFeatureConfig:
    """Shape of VideoFeatureNet, the small 3D CNN behind kinema's non-standard FVD."""

    width: int = 16
    """Channels of the first convolution; doubled at each of the next two."""
    feature_dim: int = 64
    """Size of the embedding that FVD uses."""
    frames: int = 8
    """Clips are resampled to this many frames before the network."""
    size: int = 32
    """... and to size x size pixels."""
    heads: tuple[tuple[str, int], ...] = (("colour", 8), ("shape", 3), ("size", 2), ("motion", 5))
    """Classifier heads (attribute, number of classes) trained on top of the embedding."""

    def __post_init__(self) -> None:
        for name in ("width", "feature_dim", "frames", "size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"VideoFeatureConfig.{name} must be a positive int, got {getattr(self, name)!r}")
        if self.width % 8:
            raise ValueError(f"VideoFeatureConfig.width must be a multiple of 8 (GroupNorm groups), got {self.width}")
        if self.frames < 4 or self.size < 16:
            raise ValueError(f"VideoFeatureConfig: frames must be >= 4 and size >= 16, got {self.frames}, {self.size}")
        if not self.heads or any(n < 2 for _, n in self.heads):
            raise ValueError(f"VideoFeatureConfig.heads must be (name, classes >= 2) pairs, got {self.heads!r}")


def resample(x: torch.Tensor, config: VideoFeatureConfig) -> torch.Tensor:
    """x: (B, 3, T, H, W) -> (B, 3, frames, size, size) of the config (linear in time and space; a no-op at that size)."""
    shape = (config.frames, config.size, config.size)
    return x.float() if tuple(x.shape[2:]) == shape else F.interpolate(x.float(), size=shape, mode="trilinear", align_corners=False)


def _conv_block(cin: int, cout: int, stride: tuple[int, int, int]) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(cin, cout, 3, stride=stride, padding=1), nn.GroupNorm(8, cout), nn.SiLU())


class VideoFeatureNet(nn.Module):
    """A tiny 3D CNN: video -> embedding -> one logit vector per attribute head.

    x: (B, 3, T, H, W) in [-1, 1], any T and H = W; it is resampled to
    (config.frames, config.size, config.size) first.
    """

    config_class = VideoFeatureConfig

    def __init__(self, config: VideoFeatureConfig) -> None:
        super().__init__()
        self.config = config
        w = config.width
        self.body = nn.Sequential(
            _conv_block(3, w, (1, 2, 2)),
            _conv_block(w, 2 * w, (1, 2, 2)),
            _conv_block(2 * w, 4 * w, (2, 2, 2)),
            _conv_block(4 * w, 4 * w, (1, 1, 1)),
        )
        self.embed = nn.Linear(8 * w, config.feature_dim)
        self.heads = nn.ModuleDict({name: nn.Linear(config.feature_dim, n) for name, n in config.heads})

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, T, H, W) -> (B, feature_dim), the embedding before its activation."""
        h = self.body(resample(x, self.config))  # (B, 4w, T', H', W')
        # Mean and max over space and time: the mean carries amounts (area, colour), the max
        # the presence of a local pattern anywhere (a corner, an apex), which tells shapes apart.
        return self.embed(torch.cat([h.mean(dim=(2, 3, 4)), h.amax(dim=(2, 3, 4))], dim=1))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x: (B, 3, T, H, W) -> {attribute: logits (B, classes)}."""
        h = F.silu(self.features(x))
        return {name: head(h) for name, head in self.heads.items()}


def video_features_extractor(directory: str | os.PathLike | None = None) -> FeatureExtractor:
    """kinema's non-standard FVD network, from `directory` (default: the weights shipped in the package)."""
    model = load_network(VideoFeatureNet, directory or VIDEO_FEATURES_DIR, "video_features")
    return FeatureExtractor(label=NON_STANDARD_LABEL, standard=False, embed=model.features, batch_size=32)


def feature_extractor(i3d: str | os.PathLike | None = None) -> FeatureExtractor:
    """The I3D from a local TorchScript file when given, else kinema's shapes features (non-standard)."""
    return i3d_extractor(i3d) if i3d is not None else video_features_extractor()


# ----------------------------------------------------------------------------- training the shapes features


def _shapes_batch(
    rng: np.random.Generator, batch: int, config: VideoFeatureConfig, size: int, frames: int
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Random single-object clips over the 120 one-way combinations (the shipped features predate the bouncing
    motions, and the network's motion head has 5 classes) and both sizes, lightly corrupted.

    Clips are rendered at `size` pixels and `frames` frames (what the evaluation
    feeds) and resampled as the network does. The corruption (a brightness
    change, blur, noise) stands in for a generator's imperfect clips, so the
    features stay smooth around real ones.
    """
    from kinema.data.shapes import COLOURS, ONE_WAY_MOTIONS, SHAPES, SIZES, make_object, render_clip

    classes = {"colour": len(COLOURS), "shape": len(SHAPES), "size": len(SIZES), "motion": len(ONE_WAY_MOTIONS)}
    labels = {k: rng.integers(n, size=batch) for k, n in classes.items()}
    clips = []
    for i in range(batch):
        start, distance = rng.random(2), float(rng.random())
        attrs = make_object(**{k: int(v[i]) for k, v in labels.items()}, canvas=size, frames=frames, start=tuple(start), distance=distance)
        clips.append(render_clip(attrs, size, frames))
    x = resample(torch.from_numpy(np.stack(clips)).permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0, config)
    draws = torch.from_numpy(rng.random((3, batch, 1, 1, 1, 1))).float()
    x = (x + 1) * (0.75 + 0.35 * draws[0]) - 1  # brightness gain in [0.75, 1.1]
    blurred = F.avg_pool3d(x, (1, 3, 3), stride=1, padding=(0, 1, 1), count_include_pad=False)
    x = torch.where(draws[1] < 0.3, blurred, x)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(int(rng.integers(2**62))))
    x = x + 0.15 * draws[2] * noise
    return x.clamp(-1, 1), {k: torch.from_numpy(v) for k, v in labels.items()}


def _multi_head_loss(logits: dict[str, torch.Tensor], labels: dict[str, torch.Tensor]) -> torch.Tensor:
    return sum(F.cross_entropy(logits[k], labels[k]) for k in logits)


def train_video_features(
    *, steps: int = 1500, batch_size: int = 32, lr: float = 2e-3, seed: int = 0, size: int = 64, frames: int = 17,
    config: VideoFeatureConfig | None = None, log: Callable[[str], None] = print,
) -> tuple[VideoFeatureNet, dict[str, Any]]:
    """Train VideoFeatureNet on freshly rendered shapes clips; returns it and its validation accuracy per head."""
    torch.manual_seed(seed)
    model = VideoFeatureNet(config or VideoFeatureConfig())
    rng = np.random.default_rng([seed, 1])
    batches = (_shapes_batch(rng, batch_size, model.config, size, frames) for _ in itertools.count())
    start = time.perf_counter()
    losses = fit(model, batches, _multi_head_loss, steps=steps, lr=lr, log=log)
    x, labels = _shapes_batch(np.random.default_rng([seed, 2]), 512, model.config, size, frames)  # unseen clips
    with torch.inference_mode():
        logits = model.eval()(x)
    accuracy = {k: float((logits[k].argmax(1) == labels[k]).float().mean()) for k in logits}
    info = {
        "validation_accuracy": accuracy, "validation_clips": 512, "final_loss": float(np.mean(losses[-50:])),
        "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed, "clip": [frames, size, size],
        "train_seconds": round(time.perf_counter() - start, 1),
    }  # fmt: skip
    return model, info


# ----------------------------------------------------------------------------- shared: fit, save, load

N = TypeVar("N", bound=nn.Module)


def fit(
    model: nn.Module,
    batches: Iterator[tuple[Any, Any]],
    loss_fn: Callable[[Any, Any], torch.Tensor],
    *,
    steps: int,
    lr: float,
    warmup: int = 50,
    log: Callable[[str], None] = print,
    log_every: int = 100,
) -> list[float]:
    """AdamW with a linear warmup and a cosine decay to zero; returns the loss of every step."""
    if steps < 1:
        raise KinemaError(f"steps must be >= 1, got {steps}")
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    warmup = min(warmup, steps // 4)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / (warmup + 1) if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / (steps - warmup)))
    )
    model.train()
    losses = []
    for step, (x, y) in zip(range(steps), batches):
        loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        schedule.step()
        losses.append(loss.item())
        if (step + 1) % log_every == 0 or step + 1 == steps:
            log(f"step {step + 1}/{steps}  loss {np.mean(losses[-log_every:]):.4f}")
    return losses


def save_network(model: nn.Module, directory: str | os.PathLike, name: str, info: dict[str, Any]) -> Path:
    """Write `{name}.safetensors` and `{name}.json` (config and `info`) atomically into `directory`."""
    save_weights(model, directory, name, {"config": cfg.to_dict(model.config), **info})
    return Path(directory) / f"{name}.safetensors"


def load_network(cls: type[N], directory: str | os.PathLike, name: str) -> N:
    """Build `cls` from `{name}.json` and load `{name}.safetensors` (checked as any model's); evaluation mode."""
    command = f"`kinema eval train-{name.replace('_', '-')} --out {directory}`"
    meta, meta_path, weights = read_meta(directory, name, f"train the network with {command}")
    return load_weights(cls, meta, meta_path, weights).eval()


def network_info(directory: str | os.PathLike, name: str) -> dict[str, Any]:
    """The JSON saved beside a network's weights (config, training settings, accuracy)."""
    return json.loads((Path(directory) / f"{name}.json").read_text())
