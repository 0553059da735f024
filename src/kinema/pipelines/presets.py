"""Randomly initialised pipelines of named shapes, for tests, smoke runs and benchmarks.

    pipe = random_pipeline("tiny", seed=0)      # ~0.3M parameters, 16x16 clips of 9 frames
    pipe = random_pipeline("shapes", seed=0)    # the shapes model's sizes, 64x64 clips of 17 frames

They make noise, not pictures: trained pipelines come from `kinema train` and `Pipeline.load`.
The denoiser's zero-initialised output head is drawn at random too, so that every output
depends on every input (a zero head would return the noise unchanged and hide bugs).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from kinema.errors import KinemaError
from kinema.pipelines.pipeline import Pipeline, SamplingSettings


def _tiny() -> dict[str, Any]:
    from kinema.models.dit import dit_tiny
    from kinema.models.text import text_tiny
    from kinema.models.vae import vae_tiny

    return dict(
        vae=vae_tiny(latent_channels=4),
        dit=dit_tiny(latent_channels=4, text_dim=32),
        text=text_tiny(),
        settings=SamplingSettings(sampler="euler", steps=4, guidance=3.0, num_frames=9, height=16, width=16, fps=8.0),
    )


def _shapes() -> dict[str, Any]:
    from kinema.models.dit import dit_shapes
    from kinema.models.text import text_shapes
    from kinema.models.vae import vae_shapes

    return dict(
        vae=vae_shapes(latent_channels=8),
        dit=dit_shapes(latent_channels=8),
        text=text_shapes(),
        settings=SamplingSettings(sampler="euler", steps=30, guidance=4.0, num_frames=17, height=64, width=64, fps=8.0),
    )


PRESETS: dict[str, Callable[[], dict[str, Any]]] = {"tiny": _tiny, "shapes": _shapes}


def random_pipeline(preset: str = "tiny", *, seed: int = 0, head_std: float = 0.02) -> Pipeline:
    """A pipeline of `preset`'s shapes with random weights drawn from `seed` (flow matching, shift 1)."""
    from kinema.diffusion import FlowMatching
    from kinema.models.dit import DiT
    from kinema.models.text import TextEncoder
    from kinema.models.vae import VideoVAE

    if preset not in PRESETS:
        raise KinemaError(f"unknown pipeline preset {preset!r}; choose one of {', '.join(PRESETS)}")
    shapes = PRESETS[preset]()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = VideoVAE(shapes["vae"])
        denoiser = DiT(shapes["dit"])
        torch.nn.init.normal_(denoiser.head.linear.weight, std=head_std)
        text = TextEncoder(shapes["text"])
    return Pipeline(
        vae=vae,
        denoiser=denoiser,
        text_encoder=text,
        process=FlowMatching(shift=1.0),
        settings=shapes["settings"],
        provenance={"preset": preset, "seed": seed, "weights": "random"},
    )
