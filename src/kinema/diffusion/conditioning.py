"""The conditioning timeline: every task is "generate the latents that are not given".

A `Conditioning` holds the known latents and a mask (1 = known) over the latent video:

    text-to-video    nothing known
    image-to-video   latent frame 0
    interpolation    the first and the last latent frame
    extension        the first k latent frames (the tail of an earlier clip)
    inpainting       everything outside a region to repaint (a spatial mask, per frame or for all)

The denoiser sees it as extra input channels, `channels(cond) = cat(latents * mask, mask)`
(C + 1 channels, `num_channels(C)`), next to the noisy latents; training draws a mix of these
masks (`sample_conditioning`) so that one model serves every task.

Everything here is in latent frames. With kinema's causal VAE (temporal factor 4) latent
frame 0 encodes pixel frame 0 alone and latent frame j >= 1 encodes pixel frames 4j-3 .. 4j,
so an image is one latent frame and a prefix of 1 + 4m pixel frames is 1 + m latent frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from kinema.errors import KinemaError

KINDS = ("text_to_video", "image_to_video", "interpolation", "extension", "inpainting")


@dataclass(frozen=True, eq=False)
class Conditioning:
    """Known latents and where they are known.

    latents: (B, C, T, H, W) the given latent values (anything where mask is 0).
    mask: (B, 1, T, H, W) float, 1 where the latents are given, 0 where they are generated.
    """

    latents: Tensor
    mask: Tensor

    def __post_init__(self) -> None:
        if self.latents.ndim != 5:
            raise KinemaError(f"conditioning latents must be (B, C, T, H, W), got shape {tuple(self.latents.shape)}")
        b, _, t, h, w = self.latents.shape
        if tuple(self.mask.shape) != (b, 1, t, h, w):
            raise KinemaError(
                f"conditioning mask must be (B, 1, T, H, W) = {(b, 1, t, h, w)}, got {tuple(self.mask.shape)}"
            )


def channels(cond: Conditioning) -> Tensor:
    """The denoiser's extra input: cat(latents * mask, mask) along channels, (B, C + 1, T, H, W)."""
    mask = cond.mask.to(cond.latents.dtype)
    return torch.cat([cond.latents * mask, mask], dim=1)


def num_channels(latent_channels: int) -> int:
    """How many channels `channels` adds for latents of `latent_channels`: the model input has C + (C + 1)."""
    return latent_channels + 1


def paste_known(x: Tensor, cond: Conditioning) -> Tensor:
    """x with the known latents put back where the mask is 1. x: (B, C, T, H, W)."""
    mask = cond.mask.to(x.dtype)
    return x * (1 - mask) + cond.latents.to(x.dtype) * mask


# ----------------------------------------------------------------------------------------------
# Builders, one per task


def text_to_video(
    shape: tuple[int, int, int, int, int],
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Conditioning:
    """Nothing known, for latents of `shape` (B, C, T, H, W)."""
    if len(shape) != 5:
        raise KinemaError(f"shape must be (B, C, T, H, W), got {tuple(shape)}")
    b, _, t, h, w = shape
    zeros = torch.zeros(shape, device=device, dtype=dtype)
    return Conditioning(latents=zeros, mask=torch.zeros((b, 1, t, h, w), device=device, dtype=dtype))


def image_to_video(first: Tensor, num_frames: int) -> Conditioning:
    """Latent frame 0 known. first: (B, C, 1, H, W), the encoded image (a one-frame video)."""
    _check_frames("first", first, 1)
    _check_length(num_frames, 2, "image-to-video")
    return _given_frames(num_frames, (0, first))


def interpolation(first: Tensor, last: Tensor, num_frames: int) -> Conditioning:
    """The first and the last latent frames known. first, last: (B, C, 1, H, W)."""
    _check_frames("first", first, 1)
    _check_frames("last", last, 1)
    if first.shape != last.shape:
        raise KinemaError(f"first and last must have the same shape, got {tuple(first.shape)} and {tuple(last.shape)}")
    _check_length(num_frames, 3, "interpolation")
    return _given_frames(num_frames, (0, first), (num_frames - 1, last))


def extension(prefix: Tensor, num_frames: int) -> Conditioning:
    """The first k latent frames known. prefix: (B, C, k, H, W), k < num_frames."""
    if prefix.ndim != 5:
        raise KinemaError(f"prefix must be latents (B, C, k, H, W), got shape {tuple(prefix.shape)}")
    _check_length(num_frames, prefix.shape[2] + 1, "extension")
    return _given_frames(num_frames, (0, prefix))


def inpainting(latents: Tensor, repaint: Tensor) -> Conditioning:
    """Everything known except the region to repaint.

    latents: (B, C, T, H, W) the clip to edit; repaint: (B, 1, 1 or T, H, W), 1 where new content is
    generated (one mask for every frame, or one per frame), in latent resolution.
    """
    if latents.ndim != 5:
        raise KinemaError(f"latents must be (B, C, T, H, W), got shape {tuple(latents.shape)}")
    b, _, t, h, w = latents.shape
    if repaint.ndim != 5 or repaint.shape[0] != b or repaint.shape[1] != 1 or repaint.shape[2] not in (1, t) or tuple(
        repaint.shape[3:]
    ) != (h, w):
        raise KinemaError(
            f"repaint mask must be (B, 1, 1 or T, H, W) = ({b}, 1, 1 or {t}, {h}, {w}) in latent resolution, "
            f"got {tuple(repaint.shape)}"
        )
    mask = (1 - repaint.to(latents.dtype)).expand(b, 1, t, h, w).contiguous()
    return Conditioning(latents=latents.clone(), mask=mask)


def _given_frames(num_frames: int, *parts: tuple[int, Tensor]) -> Conditioning:
    """num_frames latent frames with each part (start frame, latents (B, C, k, H, W)) known."""
    b, c, _, h, w = parts[0][1].shape
    like = parts[0][1]
    latents = torch.zeros((b, c, num_frames, h, w), device=like.device, dtype=like.dtype)
    mask = torch.zeros((b, 1, num_frames, h, w), device=like.device, dtype=like.dtype)
    for start, known in parts:
        latents[:, :, start : start + known.shape[2]] = known
        mask[:, :, start : start + known.shape[2]] = 1
    return Conditioning(latents=latents, mask=mask)


def _check_frames(name: str, x: Tensor, frames: int) -> None:
    if x.ndim != 5 or x.shape[2] != frames:
        hint = " (an image is a one-frame video: x.unsqueeze(2))" if x.ndim == 4 else ""
        raise KinemaError(f"{name} must be latents (B, C, {frames}, H, W), got shape {tuple(x.shape)}{hint}")


def _check_length(num_frames: int, least: int, task: str) -> None:
    if num_frames < least:
        raise KinemaError(f"{task} needs num_frames >= {least} latent frames, got {num_frames}")


# ----------------------------------------------------------------------------------------------
# Training: a mix of tasks


@dataclass(frozen=True, kw_only=True)
class ConditioningMix:
    """How often training shows each task; the probabilities sum to 1."""

    text_to_video: float = 0.4
    """Probability of nothing known."""
    image_to_video: float = 0.25
    """Probability of latent frame 0 known (needs T >= 2)."""
    interpolation: float = 0.1
    """Probability of the first and last latent frames known (needs T >= 3)."""
    extension: float = 0.15
    """Probability of the first k latent frames known, k uniform in 1 .. min(max_extension_frames, T - 1)."""
    inpainting: float = 0.1
    """Probability of a random box repainted in every frame, the rest known."""
    max_extension_frames: int = 4
    """Largest k for extension, in latent frames."""
    repaint_size: tuple[float, float] = (0.25, 0.75)
    """Range of the repainted box's height and width as fractions of H and W (each drawn uniformly)."""

    def __post_init__(self) -> None:
        for kind in KINDS:
            if getattr(self, kind) < 0:
                raise ValueError(f"ConditioningMix.{kind} must be >= 0, got {getattr(self, kind)}")
        total = sum(self.probabilities())
        if abs(total - 1.0) > 1e-6:
            named = dict(zip(KINDS, self.probabilities()))
            raise ValueError(f"ConditioningMix probabilities {named} must sum to 1, got {total}")
        if self.max_extension_frames < 1:
            raise ValueError(f"ConditioningMix.max_extension_frames must be >= 1, got {self.max_extension_frames}")
        lo, hi = self.repaint_size
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"ConditioningMix.repaint_size must satisfy 0 < lo <= hi <= 1, got {self.repaint_size}")

    def probabilities(self) -> tuple[float, ...]:
        """The probabilities in the order of `KINDS`."""
        return tuple(getattr(self, kind) for kind in KINDS)


def text_only() -> ConditioningMix:
    """A mix for a text-to-video-only model (the conditioning channels stay empty)."""
    return ConditioningMix(text_to_video=1.0, image_to_video=0.0, interpolation=0.0, extension=0.0, inpainting=0.0)


def sample_conditioning(x0: Tensor, mix: ConditioningMix, *, generator: torch.Generator | None = None) -> Conditioning:
    """Draw a task per batch item and build its conditioning from the clean latents x0: (B, C, T, H, W).

    Tasks a clip is too short for (see `ConditioningMix`) are left out and the others renormalised.
    Randomness comes from `generator` (torch's global generator when None).
    """
    if x0.ndim != 5:
        raise KinemaError(f"x0 must be latents (B, C, T, H, W), got shape {tuple(x0.shape)}")
    b, _, t, h, w = x0.shape
    mask = sample_known_mask(b, t, h, w, mix, generator=generator).to(device=x0.device, dtype=x0.dtype)
    return Conditioning(latents=x0 * mask, mask=mask)


def sample_known_mask(
    b: int, t: int, h: int, w: int, mix: ConditioningMix, *, generator: torch.Generator | None = None
) -> Tensor:
    """The known-position masks of `b` tasks drawn from `mix`: (b, 1, t, h, w) float, 1 = known.

    Drawn and built on the generator's device (the CPU when None) without a host round trip, so a training
    step on a GPU does not wait on it.
    """
    dev = generator.device if generator is not None else torch.device("cpu")
    least = {"image_to_video": 2, "interpolation": 3, "extension": 2}
    probs = torch.tensor([p if t >= least.get(k, 1) else 0.0 for k, p in zip(KINDS, mix.probabilities())])
    if probs.sum() == 0:
        probs[KINDS.index("text_to_video")] = 1.0
    kind = torch.multinomial(probs.to(dev), b, replacement=True, generator=generator)
    k = torch.randint(1, max(min(mix.max_extension_frames, t - 1), 1) + 1, (b,), generator=generator, device=dev)
    size = torch.empty(b, 2, device=dev).uniform_(*mix.repaint_size, generator=generator)
    corner = torch.rand(b, 2, generator=generator, device=dev)

    frame = torch.arange(t, device=dev)
    is_kind = {name: (kind == i)[:, None] for i, name in enumerate(KINDS)}
    known_frames = (
        (is_kind["image_to_video"] & (frame == 0))
        | (is_kind["interpolation"] & ((frame == 0) | (frame == t - 1)))
        | (is_kind["extension"] & (frame[None] < k[:, None]))
    )  # (B, T)
    box_h = (size[:, 0] * h).round().clamp(1, h)
    box_w = (size[:, 1] * w).round().clamp(1, w)
    top = (corner[:, 0] * (h - box_h + 1)).floor()
    left = (corner[:, 1] * (w - box_w + 1)).floor()
    ys, xs = torch.arange(h, device=dev)[None, :, None], torch.arange(w, device=dev)[None, None, :]
    box = (
        (ys >= top[:, None, None]) & (ys < (top + box_h)[:, None, None])
        & (xs >= left[:, None, None]) & (xs < (left + box_w)[:, None, None])
    )  # (B, H, W)
    mask = torch.where(
        is_kind["inpainting"][:, :, None, None],  # (B, 1, 1, 1) over (T, H, W)
        ~box[:, None],
        known_frames[:, :, None, None].expand(b, t, h, w),
    )
    return mask[:, None].float()


__all__ = [
    "KINDS",
    "Conditioning",
    "ConditioningMix",
    "channels",
    "extension",
    "image_to_video",
    "inpainting",
    "interpolation",
    "num_channels",
    "paste_known",
    "sample_conditioning",
    "sample_known_mask",
    "text_only",
    "text_to_video",
]
