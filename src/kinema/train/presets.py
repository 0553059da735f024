"""Named training recipes, each a function returning a TrainConfig.

    shapes-vae       the shapes VAE: 64x64x17 clips -> latents (8, 5, 16, 16)
    shapes-dit       a DiT on the shapes VAE's latents, built-in text encoder trained with it (the shipped model)
    shapes-dit-gpu   the same recipe scaled for one large GPU (batch 128, compiled, latent store): minutes
    shapes-unet3d    the same with a factorized 3D U-Net
    *-debug          tiny versions (32x32x5 clips, tiny models, a few steps) for tests and smoke runs

The full diffusion recipes read the VAE from `runs/shapes-vae/pipeline`: train it first
(`kinema train shapes-vae --out runs/shapes-vae`), or point them elsewhere with
`--set diffusion.vae_path=DIR/pipeline` (or `=shapes`, the shipped model's VAE). The debug ones
use the shipped model's VAE, so they run on a fresh install; its latents at 32x32x5 are
(8, 2, 8, 8), as are the debug VAE's (`--set diffusion.vae_path=runs/shapes-vae-debug/pipeline`).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable

from kinema.diffusion.conditioning import ConditioningMix
from kinema.diffusion.processes import FlowMatching
from kinema.errors import KinemaError
from kinema.models.dit import dit_shapes, dit_tiny
from kinema.models.text import TextEncoderConfig, text_shapes, text_small, text_tiny
from kinema.models.unet3d import unet_shapes, unet_tiny
from kinema.models.vae import vae_shapes, vae_tiny
from kinema.models.vae_loss import VAELossConfig
from kinema.train.config import (
    CheckpointConfig,
    DataConfig,
    DiffusionConfig,
    LogConfig,
    OptimConfig,
    SampleConfig,
    TrainConfig,
)

SHAPES_PROMPTS = (
    "a red circle moving right",
    "a large blue square moving up",
    "a small yellow triangle moving left",
    "a large green circle staying still",
    "a small cyan square bouncing left and right",
)


def shapes_vae() -> TrainConfig:
    """The shapes VAE (~1.8M parameters), 4x spatial and 4x temporal compression, 8 latent channels.

    Trained on one- and two-object clips (`shapes-mixed`, bouncing motions included): a VAE that only
    ever saw one object mixes the colours of two. One image (a single frame) per ten samples teaches the
    first-frame path that image-to-video uses. Its causal convs replicate frame 0 into the past
    (`vae_shapes`): the first shipped VAE padded with zeros and kept colours 5-7x closer in latent frame 0
    than later (`benchmarks/latent_colours.py`), and its model drew frame 0 in another colour in 11% of
    clips. 4,000 steps: about 1.6 s a step on a 2-core CPU with AVX-512 BF16, where `precision` auto
    trains in bf16 (1.8 hours); fp32 on other CPUs.
    """
    return TrainConfig(
        stage="vae",
        steps=4000,
        vae=vae_shapes(),
        vae_loss=VAELossConfig(),
        optim=OptimConfig(lr=3e-4, warmup_steps=200, ema_decay=0.999),
        data=DataConfig(dataset="shapes-mixed", size=64, frames=17, batch_size=8, num_workers=1, image_ratio=0.1),
        checkpoint=CheckpointConfig(every=250, keep=3),
        sample=SampleConfig(every=500, count=2),
    )


def _shapes_diffusion(
    *, text: TextEncoderConfig, steps: int, sample: SampleConfig | None = None, **denoiser
) -> TrainConfig:
    return TrainConfig(
        stage="diffusion",
        steps=steps,
        **denoiser,
        diffusion=DiffusionConfig(
            vae_path="runs/shapes-vae/pipeline",
            # A wide logit-normal centred above 0 puts about a quarter of the training noise levels at
            # sigma >= 0.95, where only the caption can say which way an object moves (below that the noisy
            # frames show it), while keeping about a fifth below 0.5 for the details.
            flow=FlowMatching(shift=2.0, logit_mean=1.0, logit_std=2.0),
            # text-to-video is where the words alone must say where a clip starts and which way it goes (every
            # other task shows it in its known frames), so it gets over half the samples; extension with one
            # known latent frame is image-to-video
            conditioning=ConditioningMix(
                text_to_video=0.55, image_to_video=0.15, interpolation=0.075, extension=0.15, inpainting=0.075
            ),
            text_encoder="builtin",
            text=text,
            text_dropout=0.1,
        ),
        optim=OptimConfig(lr=3e-4, warmup_steps=500, ema_decay=0.999),
        data=DataConfig(
            dataset="shapes-mixed", size=64, frames=17, batch_size=16, num_workers=1, cache=True,
            # images are first frames: text-to-video can then make frame 0 first (image_first) in a place
            # the prompted motion has room to go, as the data places it; a quarter of the samples, since
            # where a clip starts is learnt from the words alone only there (known frames show it)
            image_ratio=0.25, image_frame="first",
        ),
        checkpoint=CheckpointConfig(every=250, keep=3),
        sample=sample or SampleConfig(every=1000, prompts=SHAPES_PROMPTS, steps=20, guidance=4.0),
    )


def shapes_dit() -> TrainConfig:
    """The shipped shapes model: a ~4M-parameter DiT and a ~1.4M-parameter built-in text encoder trained
    with it, flow matching, on one- and two-object clips (bouncing motions included) with every
    conditioning task mixed in; extension (the first 1-4 latent frames known) is how long video continues
    a clip, and a 17-frame window of a long bouncing clip is a clip of the data (uniform phase).

    40,000 steps of batch 16, each denoiser block compiled: about 0.38 s a step on a 2-core CPU with
    AVX-512 BF16 and AMX, in bf16, from the latent store (0.52 s without compile; about 4.5 hours;
    `precision` auto trains in fp32 on other CPUs, `--dry-run` measures it; `benchmarks/train.py`).

    The first shipped model (version 1, on a VAE that padded time with zeros, before bouncing) was
    trained with this recipe, its run lengthened three times on resume: from 10,000 steps at step 3,095 (at 2,750 steps no clip
    was fully right), to 30,000 at step 10,475 (16% of clips fully right at 10,000) and to 40,000 at step
    30,000 (89% of train prompts fully right; the cosine schedule is recomputed for the new length, so the
    learning rate rose from 3e-5 to 7e-5 there and decayed again). Until step 8,404 it drew
    noise levels from the plain logit-normal (mean 0, std 1) and learned colour and shape but ignored the
    motion words; it then resumed with the preset's mean 1, std 2 (`--allow-change diffusion.flow`). Its
    image samples were any frame of a clip until step 13,750, then first frames (`--allow-change data.image_frame`),
    a tenth of the samples until step 15,260, then a quarter (`--allow-change data.image_ratio`): at step
    15,000 text-to-image put only 56% of moving objects where their motion had room, as if by chance. Until
    step 18,045 it drew text-to-video for 40% of the samples (`ConditioningMix()`), then 55%
    (`--allow-change diffusion.conditioning`): at 18,000 nearly every wrong motion was a reversal, the
    object placed where its motion had no room.

    A fourth lengthening, to 60,000 steps from step 40,000, reached step 51,343 and was lost with the
    machine it ran on; at step 49,499 it was no better than the shipped 40,000-step weights. Sampling
    shipped at guidance 4 and moved to 2 (`benchmarks/default_settings.py`): guidance rounds the corners of
    small squares, and 2 took train-split text-to-video from 91% to 96% at the same cost. The shipped weights
    are then a 3,000-step fine-tune of the 40,000-step ones with latent frame 0 weighted 4 in the loss
    (`--set diffusion.init_from=... --set diffusion.first_frame_weight=4 --set optim.lr=3e-5 --steps 3000`):
    held-out text-to-video 92% -> 97%, frame 0 in another colour 16% -> 9% held out, area CV 0.058 -> 0.049.
    """
    # the shipped model's sampling defaults (benchmarks/default_settings.json), so a rerun exports them too
    sample = SampleConfig(every=1000, prompts=SHAPES_PROMPTS, method="dpmpp_2m", steps=10, guidance=2.0, shift=6.0)
    config = _shapes_diffusion(dit=dit_shapes(latent_channels=8), text=text_shapes(), steps=40_000, sample=sample)
    return dataclasses.replace(config, compile=True)


def shapes_dit_gpu() -> TrainConfig:
    """The shipped model's recipe scaled for one large GPU (an H100 or H200), meant to reach its quality in
    under 10 minutes: batch 128 (8x) at learning rate 8e-4 (about the square-root rule from 3e-4 at 16),
    10,000 steps (1.28M samples, twice the shipped run's 640k), on 40,000 clips held in the latent store on
    the GPU, each denoiser block compiled. On the shipped VAE, so it retrains the shipped denoiser.
    `benchmarks/gpu_session.sh` trains it and evaluates the result within a lent GPU's 15 minutes.
    """
    base = shapes_dit()
    return dataclasses.replace(
        base,
        steps=10_000,
        compile=True,
        diffusion=dataclasses.replace(base.diffusion, vae_path="shapes"),
        optim=dataclasses.replace(base.optim, lr=8e-4, warmup_steps=300),
        data=dataclasses.replace(base.data, batch_size=128, length=40_000, num_workers=8, store="memory", cache=False),
        checkpoint=dataclasses.replace(base.checkpoint, every=1000),
        sample=dataclasses.replace(base.sample, every=2500),
    )


def shapes_unet3d() -> TrainConfig:
    """A ~11M-parameter factorized 3D U-Net with a ~3M-parameter built-in text encoder, flow matching."""
    return _shapes_diffusion(unet=unet_shapes(latent_channels=8, text_dim=256), text=text_small(), steps=20_000)


DEBUG_LATENT_CHANNELS = 8
"""The shipped VAE's latent channels: the debug denoisers fit it, and the debug VAE has as many."""


def _debug(**fields) -> dict:
    return dict(
        steps=4,
        precision="fp32",
        optim=OptimConfig(lr=1e-3, warmup_steps=1, ema_decay=0.9),
        data=DataConfig(dataset="shapes", size=32, frames=5, length=16, batch_size=2),
        checkpoint=CheckpointConfig(every=2, keep=2),
        log=LogConfig(every=1, plot_every=2, progress=False, tensorboard=False),
        **fields,
    )


def shapes_vae_debug() -> TrainConfig:
    """A ~0.1M-parameter VAE on 32x32x5 clips for 4 steps: latents (8, 2, 8, 8), as the shipped VAE's there."""
    return TrainConfig(
        stage="vae",
        vae=vae_tiny(latent_channels=DEBUG_LATENT_CHANNELS),
        vae_loss=VAELossConfig(),
        **_debug(sample=SampleConfig(every=4, count=1)),
    )


def _diffusion_debug(**denoiser) -> TrainConfig:
    return TrainConfig(
        stage="diffusion",
        **denoiser,
        # the shipped model's VAE, so that a debug run needs nothing trained first (4x4x4 compression, 8 channels)
        diffusion=DiffusionConfig(vae_path="shapes", flow=FlowMatching(), text=text_tiny()),
        **_debug(sample=SampleConfig(every=4, prompts=SHAPES_PROMPTS[:1], steps=2, guidance=2.0)),
    )


def shapes_dit_debug() -> TrainConfig:
    """A tiny DiT and text encoder on the shipped VAE's latents (8, 2, 8, 8) for 4 steps."""
    return _diffusion_debug(dit=dit_tiny(latent_channels=DEBUG_LATENT_CHANNELS, text_dim=32))


def shapes_unet3d_debug() -> TrainConfig:
    """A tiny 3D U-Net and text encoder on the shipped VAE's latents (8, 2, 8, 8) for 4 steps."""
    return _diffusion_debug(unet=unet_tiny(latent_channels=DEBUG_LATENT_CHANNELS, text_dim=32))


PRESETS: dict[str, Callable[[], TrainConfig]] = {
    "shapes-vae": shapes_vae,
    "shapes-dit": shapes_dit,
    "shapes-dit-gpu": shapes_dit_gpu,
    "shapes-unet3d": shapes_unet3d,
    "shapes-vae-debug": shapes_vae_debug,
    "shapes-dit-debug": shapes_dit_debug,
    "shapes-unet3d-debug": shapes_unet3d_debug,
}


def preset(name: str) -> TrainConfig:
    if name not in PRESETS:
        raise KinemaError(
            f"unknown training preset {name!r}; presets: {', '.join(PRESETS)} (or give a .toml or .json config file)"
        )
    return PRESETS[name]()


def load_config(source: str, overrides: dict[str, object] | None = None) -> TrainConfig:
    """A preset name, or a .toml / .json config file, then `overrides` by dotted name.

    A file gives a whole config (fields it leaves out keep their defaults), or names a base
    with `preset = "shapes-dit"` and sets only what differs, in tables: `[optim]` / `lr = 1e-4`.
    A run's DIR/config.json is such a file.
    """
    from kinema import config as cfg
    from kinema.train.config import build, override

    path = Path(source)
    if source in PRESETS or path.suffix not in (".toml", ".json"):
        config = preset(source)
    else:
        data = _read_config_file(path)
        base = data.pop("preset", None)
        if base is not None:
            data = _merge(cfg.to_dict(preset(str(base))), data)
        config = build(data, source=str(path))
    return override(config, dict(overrides or {}))


def _read_config_file(path: Path) -> dict:
    if not path.is_file():
        raise KinemaError(f"{path}: no such config file")
    try:
        if path.suffix == ".json":
            data = json.loads(path.read_text())
        else:
            try:
                import tomllib
            except ImportError:  # Python 3.10: the same parser, from PyPI (a dependency there)
                import tomli as tomllib

            data = tomllib.loads(path.read_text())
    except ValueError as e:  # JSONDecodeError, TOMLDecodeError and UnicodeDecodeError are ValueErrors
        raise KinemaError(f"{path}: cannot parse the config ({e})") from None
    if not isinstance(data, dict):
        raise KinemaError(f"{path}: a config is a table of fields (a JSON object), got {type(data).__name__}")
    return data


def _merge(base: dict, changes: dict) -> dict:
    """`changes` laid over `base`, tables merged key by key."""
    out = dict(base)
    for key, value in changes.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out
