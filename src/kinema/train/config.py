"""The training run's config: keyword-only dataclasses, one docstring per field, checked on construction.

`TrainConfig` nests the model's own config (the VAE's for the `vae` stage; a DiT's
or a U-Net's, the frozen VAE's path and the diffusion settings for the
`diffusion` stage) beside the optimiser, data, checkpoint, logging and sampling
configs. `override(config, {"optim.lr": 1e-4})` sets any field by dotted name;
`resume_conflicts(saved, new, allowed)` names the fields that may not change on resume.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kinema import config as cfg
from kinema.diffusion import ConditioningMix, FlowMatching, VPDiffusion
from kinema.errors import KinemaError
from kinema.models.dit import DiTConfig
from kinema.models.text import TextEncoderConfig
from kinema.models.unet3d import UNetConfig
from kinema.models.vae import VAEConfig
from kinema.models.vae_loss import VAELossConfig
from kinema.precision import PRECISIONS

STAGES = ("vae", "diffusion")
DEVICES = ("auto", "cpu", "cuda")
PARALLEL = ("ddp", "fsdp")
SCHEDULES = ("cosine", "constant")
OPTIMIZER_IMPLEMENTATIONS = ("auto", "fused", "foreach", "for-loop")
IMAGE_MODES = ("mixed", "separate")
IMAGE_FRAMES = ("any", "first")
STORES = ("auto", "memory", "stream")

SAFE_ON_RESUME = (
    "steps", "log", "sample", "checkpoint.every", "checkpoint.keep", "data.num_workers", "data.store", "data.store_dir",
    "data.allow_outside", "init_from", "diffusion.init_from",
)  # fmt: skip
"""Dotted names (and their sub-fields) that may change when a run resumes: they do not change what is learned
(init_from only starts a new run)."""


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


@dataclass(frozen=True, kw_only=True)
class OptimConfig:
    """AdamW, the LR schedule, clipping, accumulation and the weight average."""

    lr: float = 3e-4
    """Peak learning rate, reached at the end of warmup."""
    warmup_steps: int = 100
    """Steps of linear warmup from ~0 to `lr`."""
    schedule: str = "cosine"
    """After warmup: "cosine" (decay to min_lr_ratio * lr at the last step) or "constant"."""
    min_lr_ratio: float = 0.1
    """Final LR of the cosine decay, as a fraction of `lr`."""
    betas: tuple[float, float] = (0.9, 0.99)
    """AdamW's moment decay rates."""
    eps: float = 1e-8
    """AdamW's denominator epsilon."""
    weight_decay: float = 0.01
    """Decoupled weight decay on weight matrices and kernels; norms, biases and other 1-D parameters get none."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value; 0 disables clipping (the norm is still logged)."""
    grad_accum: int = 1
    """Micro-steps whose gradients add up to one optimiser step (the batch is split over them)."""
    ema_decay: float = 0.999
    """Decay of the exponential moving average of the weights (used for samples and the exported pipeline)."""
    max_nonfinite: int = 10
    """Consecutive steps with a non-finite loss or gradient (each skipped) after which the run stops."""
    implementation: str = "auto"
    """AdamW kernel: "fused", "foreach", "for-loop", or "auto" (fused where the device supports it)."""

    def __post_init__(self) -> None:
        _check(self.lr > 0, f"optim.lr must be > 0, got {self.lr}")
        _check(self.warmup_steps >= 0, f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        _check(self.schedule in SCHEDULES, f"optim.schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        _check(0 <= self.min_lr_ratio <= 1, f"optim.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        _check(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            f"optim.betas must be two values in [0, 1), got {self.betas}",
        )
        _check(self.eps > 0, f"optim.eps must be > 0, got {self.eps}")
        _check(self.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        _check(self.grad_clip >= 0, f"optim.grad_clip must be >= 0 (0 = off), got {self.grad_clip}")
        _check(self.grad_accum >= 1, f"optim.grad_accum must be >= 1, got {self.grad_accum}")
        _check(0 <= self.ema_decay < 1, f"optim.ema_decay must be in [0, 1), got {self.ema_decay}")
        _check(self.max_nonfinite >= 1, f"optim.max_nonfinite must be >= 1, got {self.max_nonfinite}")
        _check(
            self.implementation in OPTIMIZER_IMPLEMENTATIONS,
            f"optim.implementation must be one of {OPTIMIZER_IMPLEMENTATIONS}, got {self.implementation!r}",
        )


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """What to train on and how it is batched."""

    dataset: str = "shapes"
    """A built-in dataset ("shapes", "shapes2", "shapes-mixed", "digits") or the path of a .csv/.jsonl manifest of your clips."""
    size: int = 64
    """Frame size in pixels (square)."""
    frames: int = 17
    """Frames per clip (1 + k * the VAE's temporal factor)."""
    fps: float | None = None
    """Frame rate clips are resampled to (manifests only); None keeps the dataset's default."""
    allow_outside: bool = False
    """Manifests only: accept files outside the manifest's folder (absolute paths, `..`, symlinks out)."""
    length: int | None = None
    """Number of clips of a synthetic dataset; None keeps the dataset's default."""
    batch_size: int = 16
    """Samples per optimiser step over all ranks and accumulation micro-steps."""
    num_workers: int = 0
    """DataLoader worker processes per rank (0 = load in the training process)."""
    image_ratio: float = 0.0
    """Fraction of samples that are images (a single frame of a clip) for joint image-video training."""
    image_mode: str = "mixed"
    """"mixed": every batch holds that fraction of images; "separate": that fraction of steps are all images."""
    image_frame: str = "any"
    """Which frame of its clip an image sample is: "any" (drawn uniformly), or "first", frame 0, the image a
    model sampling text-to-video frame 0 first (`SamplingSettings.image_first`) must make: where it starts."""
    cache: bool = False
    """Streaming only: cache VAE latents (and a frozen text encoder's embeddings) under DIR/cache so later epochs
    skip the encoders."""
    store: str = "auto"
    """Diffusion stage: "memory" encodes the whole training set once into tensors on the training device and draws
    batches from them by index (`kinema.train.store`: no DataLoader, no per-step copies); "stream" loads and encodes
    each batch as it comes (DataLoader workers, `cache`); "auto" picks memory when it fits a quarter of the
    device's free memory, and says which."""
    store_dir: str | None = None
    """Where the latent store is saved for later runs with the same VAE and data; None: $KINEMA_CACHE/latents,
    else ~/.cache/kinema/latents. "" keeps it in memory only."""

    def __post_init__(self) -> None:
        _check(self.size >= 8, f"data.size must be >= 8, got {self.size}")
        _check(self.frames >= 1, f"data.frames must be >= 1, got {self.frames}")
        _check(self.fps is None or self.fps > 0, f"data.fps must be > 0 or None, got {self.fps}")
        _check(self.length is None or self.length >= 1, f"data.length must be >= 1 or None, got {self.length}")
        _check(self.batch_size >= 1, f"data.batch_size must be >= 1, got {self.batch_size}")
        _check(self.num_workers >= 0, f"data.num_workers must be >= 0, got {self.num_workers}")
        _check(0 <= self.image_ratio <= 1, f"data.image_ratio must be in [0, 1], got {self.image_ratio}")
        _check(self.image_mode in IMAGE_MODES, f"data.image_mode must be one of {IMAGE_MODES}, got {self.image_mode!r}")
        _check(self.store in STORES, f"data.store must be one of {STORES}, got {self.store!r}")
        _check(self.image_frame in IMAGE_FRAMES, f"data.image_frame must be one of {IMAGE_FRAMES}, got {self.image_frame!r}")


@dataclass(frozen=True, kw_only=True)
class CheckpointConfig:
    """When checkpoints are written and how many are kept."""

    every: int = 500
    """Write DIR/checkpoints/step-N every this many steps (and always at the end or on SIGINT/SIGTERM)."""
    keep: int = 3
    """Newest complete checkpoints kept (>= 2, so one always survives a crash while the next is written)."""

    def __post_init__(self) -> None:
        _check(self.every >= 1, f"checkpoint.every must be >= 1, got {self.every}")
        _check(self.keep >= 2, f"checkpoint.keep must be >= 2, got {self.keep}")


@dataclass(frozen=True, kw_only=True)
class LogConfig:
    """Progress bar, metrics and the loss curve."""

    every: int = 10
    """Append a line to DIR/metrics.jsonl (and TensorBoard) every this many steps."""
    plot_every: int = 100
    """Redraw DIR/loss.png every this many steps."""
    progress: bool = True
    """Show a progress bar (rank 0)."""
    tensorboard: bool = True
    """Also write TensorBoard events to DIR/tensorboard when the tensorboard package is installed."""

    def __post_init__(self) -> None:
        _check(self.every >= 1, f"log.every must be >= 1, got {self.every}")
        _check(self.plot_every >= 1, f"log.plot_every must be >= 1, got {self.plot_every}")


@dataclass(frozen=True, kw_only=True)
class SampleConfig:
    """Samples written to DIR/samples while training, and the exported pipeline's sampling defaults."""

    every: int = 500
    """Write samples every this many steps; 0 writes none during training."""
    prompts: tuple[str, ...] = ("a small red circle moving right", "a large blue square moving up")
    """Prompts sampled (diffusion), each with a fixed seed."""
    count: int = 2
    """Clips reconstructed side by side with their originals (vae)."""
    seed: int = 0
    """Seed of the first prompt's noise (the next prompts use seed + 1, ...)."""
    steps: int = 30
    """Sampler steps."""
    method: str = "euler"
    """Sampler (see kinema.diffusion.samplers)."""
    guidance: float = 4.0
    """Classifier-free guidance scale (1 = off)."""
    shift: float | None = None
    """Noise-level shift of the sampling schedule, > 0 (flow matching only; None: the training shift).
    Exported with the pipeline as its default, like steps and guidance."""
    guidance_interval: tuple[float, float] | None = dataclasses.field(default=None, metadata={cfg.ALLOW_INF: True})
    """(sigma_lo, sigma_hi): guide only at these noise levels (`SamplingSettings.guidance_interval`); None, or
    [0, inf]: every step. sigma_hi is finite otherwise (the run's config is saved as JSON, which has no inf)."""
    image_first: bool = False
    """Text-to-video makes frame 0 first, then the clip from it (`SamplingSettings.image_first`)."""
    precision: str | None = None
    """What the samples and the exported pipeline run in by default: auto, fp32, or bf16 (autocast); None:
    `precision`, the training precision (as asked: "auto" is resolved by whoever samples, on their device)."""
    fps: float = 8.0
    """Frame rate of the written clips."""

    def __post_init__(self) -> None:
        _check(self.every >= 0, f"sample.every must be >= 0, got {self.every}")
        _check(self.count >= 1, f"sample.count must be >= 1, got {self.count}")
        _check(len(self.prompts) >= 1, "sample.prompts must hold at least one prompt (sample.every = 0 writes no samples)")
        _check(self.steps >= 1, f"sample.steps must be >= 1, got {self.steps}")
        _check(self.guidance >= 1, f"sample.guidance must be >= 1, got {self.guidance}")
        _check(self.shift is None or self.shift > 0, f"sample.shift must be > 0 or null, got {self.shift}")
        _check(self.fps > 0, f"sample.fps must be > 0, got {self.fps}")
        if self.guidance_interval is not None:
            from kinema.pipelines.common import check_guidance_interval

            try:  # (0, inf) is stored as None, every step
                object.__setattr__(self, "guidance_interval", check_guidance_interval(self.guidance_interval))
            except KinemaError as e:
                raise ValueError(f"sample.{e}") from None
            _check(
                self.guidance_interval is None or math.isfinite(self.guidance_interval[1]),
                f"sample.guidance_interval {list(self.guidance_interval or ())}: sigma_hi must be finite, as the "
                "run's config is saved as JSON: give one at or above the largest noise level (1 for flow matching), "
                "or [0, inf] to guide every step",
            )
        _check(isinstance(self.image_first, bool), f"sample.image_first must be true or false, got {self.image_first!r}")
        _check(
            self.precision is None or self.precision in PRECISIONS,
            f"sample.precision must be one of {PRECISIONS} or null, got {self.precision!r}",
        )


@dataclass(frozen=True, kw_only=True)
class DiffusionConfig:
    """The diffusion stage: frozen VAE, noise process, text encoder and conditioning."""

    vae_path: str
    """The frozen VAE: a folder holding vae.json + vae.safetensors (e.g. a VAE run's DIR/pipeline), or a
    whole pipeline (a shipped name such as "shapes", or a pipeline directory) whose VAE is used."""
    flow: FlowMatching | None = None
    """Rectified-flow process; set exactly one of `flow` and `vp`."""
    vp: VPDiffusion | None = None
    """DDPM-style variance-preserving process; set exactly one of `flow` and `vp`."""
    conditioning: ConditioningMix = dataclasses.field(default_factory=ConditioningMix)
    """How often each task's known-frame mask is drawn for a training sample."""
    text_encoder: str = "builtin"
    """"builtin" (trained from scratch, shape in `text`) or "hf:PATH" (a local Hugging Face encoder, frozen)."""
    text: TextEncoderConfig | None = None
    """Shape of the built-in text encoder (required with text_encoder="builtin")."""
    train_text_encoder: bool = True
    """Train the built-in text encoder jointly with the denoiser; False freezes it."""
    text_dropout: float = 0.1
    """Probability that a sample's caption is replaced by "" (teaches the unconditional model for guidance)."""
    first_frame_weight: float = 1.0
    """Loss weight of latent frame 0 against 1 for every later latent frame (the loss stays a weighted mean,
    so one-frame samples are unchanged). A causal VAE encodes pixel frame 0 alone into latent frame 0 and
    may keep colours closer together there than later (`benchmarks/latent_colours.py`), so a wrong colour
    in frame 0 costs the plain loss little; a weight above 1 makes it cost more (the shipped shapes model's
    fine-tune used 4: frame 0 in another colour 13% -> 11% of train clips, 16% -> 9% held out)."""
    init_from: str | None = None
    """Fine-tune: a pipeline (a shipped name such as "shapes", or a pipeline directory) whose denoiser and
    built-in text encoder weights start a new run (a resume continues from its checkpoint instead). Its VAE
    must be `vae_path`'s, which may name the same pipeline; the shapes must match this config's."""

    def __post_init__(self) -> None:
        _check(
            bool(self.vae_path),
            "diffusion.vae_path must name the folder of the frozen VAE (vae.json + vae.safetensors)",
        )
        _check(
            (self.flow is None) != (self.vp is None), "diffusion: set exactly one of diffusion.flow and diffusion.vp"
        )
        builtin = self.text_encoder == "builtin"
        _check(
            builtin or self.text_encoder.startswith("hf:"),
            f"diffusion.text_encoder must be 'builtin' or 'hf:PATH', got {self.text_encoder!r}",
        )
        _check(
            not builtin or self.text is not None,
            "diffusion.text (the built-in encoder's config) is required with text_encoder='builtin'",
        )
        _check(
            builtin or not self.train_text_encoder,
            "diffusion.train_text_encoder must be false with an hf: encoder (it is frozen)",
        )
        _check(0 <= self.text_dropout < 1, f"diffusion.text_dropout must be in [0, 1), got {self.text_dropout}")
        _check(
            self.first_frame_weight > 0,
            f"diffusion.first_frame_weight must be > 0 (1 weighs latent frame 0 like the others), got {self.first_frame_weight}",
        )
        _check(
            self.init_from is None or bool(self.init_from),
            "diffusion.init_from must name a pipeline (a shipped name or a directory), or be left unset",
        )

    @property
    def process(self) -> FlowMatching | VPDiffusion:
        return self.flow if self.flow is not None else self.vp  # type: ignore[return-value]


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """A whole training run; presets in kinema.train.presets, JSON in DIR/config.json."""

    stage: str
    """"vae" (train the autoencoder: reconstruction + KL) or "diffusion" (train a denoiser on frozen-VAE latents)."""
    steps: int = 10_000
    """Optimiser steps of the run."""
    seed: int = 0
    """Seed of the initial weights, the data order and every sample's noise."""
    device: str = "auto"
    """"auto" (CUDA if available), "cpu" or "cuda"."""
    precision: str = "auto"
    """"bf16" (autocast, fp32 master weights), "fp32", or "auto": bf16 where the device computes it natively (CUDA,
    a CPU with AVX-512 BF16 or AMX), fp32 elsewhere, where bf16 would be several times slower (`kinema.precision`)."""
    deterministic: bool = False
    """Deterministic kernels (torch.use_deterministic_algorithms): bitwise-repeatable runs, slower."""
    compile: bool = False
    """torch.compile the trained model: for the diffusion stage each denoiser block on its own (regional: compile
    time of one block, graphs shared by identical blocks), the VAE whole. Pays for long runs; costs a minute or
    so of compiling before the first steps."""
    parallel: str = "ddp"
    """Under torchrun: "ddp" (replicated weights) or "fsdp" (FSDP2, sharded, for large denoisers on GPUs)."""
    vae: VAEConfig | None = None
    """The autoencoder trained by the vae stage."""
    vae_loss: VAELossConfig | None = None
    """Weights of the vae stage's loss terms."""
    init_from: str | None = None
    """Fine-tune the vae stage: a VAE (a VAE run's folder, a pipeline directory or a shipped name such as
    "shapes") whose weights start a new run; `vae` must have its shapes. The diffusion stage's counterpart
    is diffusion.init_from."""
    dit: DiTConfig | None = None
    """The denoiser of the diffusion stage, a DiT (set exactly one of dit and unet)."""
    unet: UNetConfig | None = None
    """The denoiser of the diffusion stage, a 3D U-Net (set exactly one of dit and unet)."""
    diffusion: DiffusionConfig | None = None
    """Settings of the diffusion stage."""
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    """Optimiser, schedule, clipping, accumulation, EMA."""
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    """Dataset and batching."""
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    """Checkpoint interval and retention."""
    log: LogConfig = dataclasses.field(default_factory=LogConfig)
    """Progress, metrics, loss curve."""
    sample: SampleConfig = dataclasses.field(default_factory=SampleConfig)
    """Samples during training and the pipeline's sampling defaults."""

    def __post_init__(self) -> None:
        _check(self.stage in STAGES, f"stage must be one of {STAGES}, got {self.stage!r}")
        _check(self.steps >= 1, f"steps must be >= 1, got {self.steps}")
        _check(self.device in DEVICES, f"device must be one of {DEVICES}, got {self.device!r}")
        _check(self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        _check(self.parallel in PARALLEL, f"parallel must be one of {PARALLEL}, got {self.parallel!r}")
        if self.stage == "vae":
            _check(self.vae is not None and self.vae_loss is not None, "stage 'vae' needs `vae` and `vae_loss` configs")
            _check(
                not self.data.cache,
                "data.cache caches VAE latents for the diffusion stage; set it to false for stage 'vae'",
            )
            try:
                self.vae.latent_shape((1, 3, self.data.frames, self.data.size, self.data.size))
            except KinemaError as e:
                raise ValueError(f"data.frames / data.size do not fit the VAE: {e}") from None
            _check(
                self.init_from is None or bool(self.init_from),
                "init_from must name a VAE (a run's folder, a pipeline directory or a shipped name), or be left unset",
            )
            _check(
                self.dit is None and self.unet is None and self.diffusion is None,
                "stage 'vae' takes no `dit`, `unet` or `diffusion` config; set them to null",
            )
        else:
            _check(self.diffusion is not None, "stage 'diffusion' needs a `diffusion` config")
            _check((self.dit is None) != (self.unet is None), "stage 'diffusion' needs exactly one of `dit` and `unet`")
            _check(
                self.vae is None and self.vae_loss is None,
                "stage 'diffusion' loads its VAE from diffusion.vae_path; set `vae` and `vae_loss` to null",
            )
            _check(self.init_from is None, "init_from fine-tunes a VAE; the diffusion stage's is diffusion.init_from")
            _check(
                self.sample.shift is None or self.diffusion.flow is not None,
                "sample.shift applies to flow matching; this run trains diffusion.vp: set sample.shift to null",
            )
            from kinema.pipelines.pipeline import SETTINGS_LIMITS  # what the exported pipeline may default to

            for name, value, limit in (
                ("data.frames", self.data.frames, "num_frames"),
                ("data.size", self.data.size, "height"),
                ("sample.steps", self.sample.steps, "steps"),
            ):
                most = SETTINGS_LIMITS[limit]
                _check(value <= most, f"{name} must be at most {most} (the exported pipeline's default {limit}), got {value}")
        accum = self.optim.grad_accum
        _check(
            self.data.batch_size % accum == 0,
            f"data.batch_size ({self.data.batch_size}) must be a multiple of optim.grad_accum ({accum})",
        )


# ---- overrides, files, resume checks ------------------------------------------------------------


def parse_value(text: str) -> Any:
    """A --set value: JSON when it parses (numbers, true/false, null, lists, objects), else the string itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """data["a"]["b"] = value for key "a.b", refusing names that are not fields."""
    parts = key.split(".")
    node = data
    for depth, part in enumerate(parts):
        path = ".".join(parts[: depth + 1])
        if not isinstance(node, dict) or part not in node:
            valid = sorted(node) if isinstance(node, dict) else []
            parent = ".".join(parts[:depth]) or "the config"
            if isinstance(node, dict):
                raise KinemaError(f"--set {key}: {path!r} is not a field of {parent}; valid fields: {', '.join(valid)}")
            raise KinemaError(
                f"--set {key}: {parent} is not set (null), so it has no field {part!r}; set {parent} first"
            )
        if depth == len(parts) - 1:
            node[part] = value
        else:
            node = node[part]


def build(data: Any, source: str = "") -> TrainConfig:
    """TrainConfig from JSON data (a config file's tables, DIR/config.json), every field type-checked against its
    annotation (`kinema.config.check_value`, the checker `--set` uses too); any config error becomes a
    KinemaError, on one line, naming `source` (the file it came from) when given."""
    where = f"{source}: invalid training config" if source else "invalid training config"
    try:
        return cfg.from_dict(TrainConfig, data)
    except (ValueError, TypeError) as e:
        raise KinemaError(f"{where}: {e}") from None


def override(config: TrainConfig, values: dict[str, Any]) -> TrainConfig:
    """A copy of `config` with fields set by dotted name, e.g. {"optim.lr": 1e-4, "dit.num_layers": 4}.

    Each value is JSON data (`parse_value`), checked against its field's annotation as a config file's are.
    """
    data = cfg.to_dict(config)
    for key, value in values.items():
        set_dotted(data, key, value)
        hint, allow_inf = cfg.field_at(TrainConfig, key)
        try:
            cfg.check_value(hint, value, key, allow_inf=allow_inf)
        except (ValueError, TypeError) as e:
            raise KinemaError(f"--set {key}={cfg.show(value)}: {e}") from None
    return build(data)


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out or {prefix[:-1]: {}}
    return {prefix[:-1]: data}


def config_changes(saved: dict[str, Any], new: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """{dotted name: (saved value, new value)} for every field that differs between a checkpoint's config and `new`.

    A field the checkpoint's kinema did not have yet counts as its default (the behaviour it had then), so a
    release that adds a field does not stop older runs from resuming.
    """
    try:
        saved = cfg.to_dict(build(saved))
    except KinemaError:  # fields this kinema no longer has: compare as written
        pass
    a, b = flatten(saved), flatten(cfg.to_dict(new))
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k, "<unset>") != b.get(k, "<unset>")}


def _under(name: str, prefixes: Sequence[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def resume_conflicts(saved: dict[str, Any], new: TrainConfig, allowed: Sequence[str] = ()) -> list[str]:
    """Dotted names whose values differ between a checkpoint's config and `new`, except the fields safe to
    change (SAFE_ON_RESUME) and those under a name in `allowed` (changes the user asked for on purpose)."""
    return [k for k in config_changes(saved, new) if not _under(k, (*SAFE_ON_RESUME, *allowed))]


def check_field_names(names: Sequence[str], config: TrainConfig) -> None:
    """Raise ValueError naming any of `names` that is neither a field nor a group of fields of `config`."""
    fields = flatten(cfg.to_dict(config))
    for name in names:
        if not any(_under(k, (name,)) for k in fields):
            groups = sorted({k.split(".")[0] for k in fields})
            raise ValueError(f"{name!r} is not a config field; fields are dotted names under {', '.join(groups)}")


def learned_hash(config: TrainConfig) -> str:
    """The config hash stored in checkpoints: of every field except those safe to change on resume."""
    data = flatten(cfg.to_dict(config))
    kept = {k: v for k, v in data.items() if not _under(k, SAFE_ON_RESUME)}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:16]
