"""The two stages of training, each a handful of functions the loop calls.

    vae:        trained = the VideoVAE; loss = reconstruction + KL (+ temporal difference)
    diffusion:  trained = the denoiser (and the built-in text encoder when it trains too);
                frozen  = the VAE (and a frozen text encoder); loss = weighted MSE to the process's target
                over the latent positions the conditioning timeline did not give

A `Stage` is five functions: `build` the modules, `prepare` a group without
gradients (the diffusion stage encodes clips to latents there, before the cache),
`step` (a group -> its losses, "loss" being the one trained), `preview` (sample
clips written to disk) and `export` (the pipeline directory).
`STAGES[config.stage]` picks one, once.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NamedTuple

import torch
from torch import nn

from kinema import config as cfg
from kinema.atomic import write_json
from kinema.errors import KinemaError
from kinema.models.checkpoint import load_model, save_model
from kinema.precision import autocast
from kinema.precision import resolve as resolve_precision
from kinema.train.config import TrainConfig
from kinema.train.data import GroupRandom
from kinema.train.observe import side_by_side, write_clip

if TYPE_CHECKING:
    from kinema.pipelines.pipeline import Pipeline, SamplingSettings

Group = dict[str, Any]
"""Samples of one kind and shape: "video" (b, 3, T, H, W) or "latents", "caption", "key", "position"."""
Frozen = dict[str, nn.Module]


class Stage(NamedTuple):
    build: Callable[[TrainConfig], tuple[nn.Module, Frozen]]
    """config -> (the trained module, the frozen modules by name), on the CPU, weights from torch's global RNG."""
    prepare: Callable[[Frozen, Group, TrainConfig], Group]
    """A group's inputs turned into what `step` needs, without gradients."""
    step: Callable[[nn.Module, Frozen, Group, GroupRandom, TrainConfig], dict[str, torch.Tensor]]
    """The losses of one group; "loss" is the one trained."""
    preview: Callable[[nn.Module, Frozen, TrainConfig, Any, Path], None]
    """Write sample clips of the (EMA) trained module next to a path prefix (given the dataset)."""
    export: Callable[[nn.Module, Frozen, TrainConfig, Path], None]
    """Write the pipeline directory's models and pipeline.json from the (EMA) trained module."""
    init: Callable[[nn.Module, Frozen, TrainConfig], None] = lambda model, frozen, config: None
    """Start a new run's weights from saved ones (fine-tuning); not called on resume."""
    compile: Callable[[nn.Module], None] = lambda model: model.compile()
    """torch.compile the trained module in place (`compile=true`)."""


# ---------------------------------------------------------------------------------------------- vae


def build_vae(config: TrainConfig) -> tuple[nn.Module, Frozen]:
    from kinema.models.vae import VideoVAE

    return VideoVAE(config.vae), {}


@torch.no_grad()
def init_vae(model: nn.Module, frozen: Frozen, config: TrainConfig) -> None:
    """init_from: copy a saved VAE's weights into a new run (its latent statistics are measured again on export)."""
    if config.init_from is None:
        return
    _copy_weights(f"init_from={config.init_from!r}", "VAE", "vae", model, load_frozen_vae(config.init_from))


def prepare_vae(frozen: Frozen, group: Group, config: TrainConfig) -> Group:
    return group


def vae_step(
    model: nn.Module, frozen: Frozen, group: Group, rand: GroupRandom, config: TrainConfig
) -> dict[str, torch.Tensor]:
    """Reconstruction + KL of clips x: (b, 3, T, H, W), the decoder seeing a posterior sample."""
    from kinema.models.vae_loss import vae_loss

    x = group["video"]
    recon, mean, logvar = model(x, generator=rand.generator("posterior"))
    return vae_loss(x, recon, mean, logvar, weights=config.vae_loss)


@torch.no_grad()
def preview_vae(model: nn.Module, frozen: Frozen, config: TrainConfig, dataset: Any, prefix: Path) -> None:
    """Original | reconstruction of the dataset's first `sample.count` clips: prefix-k.gif."""
    device = _device(model)
    precision = resolve_precision(config.sample.precision or config.precision, device)
    for k in range(min(config.sample.count, len(dataset))):
        x = dataset[k]["video"][None].to(device)
        with autocast(precision, device):
            recon = model.decode(model.encode(x)).float()
        write_clip(
            side_by_side([x[0].cpu(), recon[0].cpu()]),
            prefix.with_name(f"{prefix.name}-{k}.gif"),
            fps=config.sample.fps,
        )


LATENT_STATS_CLIPS = 64
"""How many training clips the exported VAE's per-channel latent mean and std are measured on."""


def export_vae(model: nn.Module, frozen: Frozen, config: TrainConfig, directory: Path) -> None:
    """The VAE with its latent statistics measured on the first training clips, so `encode` is normalised."""
    from kinema.models.vae import measure_latent_stats
    from kinema.train.data import dataset_for

    dataset = dataset_for(config)
    clips = [dataset[i]["video"] for i in range(min(LATENT_STATS_CLIPS, len(dataset)))]
    device = _device(model)
    batches = (torch.stack(clips[i : i + 8]).to(device) for i in range(0, len(clips), 8))
    with torch.no_grad():
        model = model.with_latent_stats(*measure_latent_stats(model, batches))
    save_model(model, directory, "vae")
    write_json(directory / "pipeline.json", {"kind": "vae", "vae": "vae", "video": video_settings(config)})


# ---------------------------------------------------------------------------------------------- diffusion


class DiffusionModel(nn.Module):
    """What the diffusion stage trains: the denoiser, plus the built-in text encoder when it trains jointly.

    forward(x (B, C_in, T, H, W), timestep (B,), context, context_mask (B, L) bool) -> (B, C_out, T, H, W).
    context is a frozen encoder's tokens (B, L, text_dim) or, when this module holds the text encoder, the
    byte ids (B, L) long that it encodes first (so DDP sees one forward for both).
    """

    def __init__(self, denoiser: nn.Module, text_encoder: nn.Module | None = None) -> None:
        super().__init__()
        self.denoiser = denoiser
        self.text_encoder = text_encoder

    def forward(
        self, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor
    ) -> torch.Tensor:
        if self.text_encoder is not None:
            context = self.text_encoder(context, context_mask)
        return self.denoiser(x, timestep, context, context_mask)


def vae_folder(path: str) -> Path:
    """diffusion.vae_path -> the folder that holds vae.safetensors: a VAE run's folder or a pipeline's."""
    from kinema.pipelines.storage import MANIFEST, resolve, shipped_pipelines

    directory = Path(path)
    if (directory / "vae.json").is_file() or (directory / MANIFEST).is_file():
        return directory
    if path in shipped_pipelines():
        return resolve(path)
    if not directory.exists():  # the usual case on a fresh install: the VAE stage has not been run yet
        run = directory.parent if directory.name == "pipeline" else directory
        raise KinemaError(
            f"diffusion.vae_path: {directory} does not exist; train the VAE first (`kinema train shapes-vae "
            f"--out {run}` writes {run / 'pipeline'}), or use the shipped model's VAE: --set diffusion.vae_path=shapes"
        )
    raise KinemaError(
        f"diffusion.vae_path: {directory} holds neither vae.json nor a pipeline; point it at a trained VAE, e.g. the "
        "DIR/pipeline of a `kinema train shapes-vae` run, or at a pipeline such as the shipped 'shapes'"
    )


def load_frozen_vae(path: str) -> nn.Module:
    """diffusion.vae_path: a VAE run's folder (vae.json), or a pipeline (shipped name or directory) for its VAE."""
    from kinema.pipelines.storage import load_pipeline

    directory = vae_folder(path)
    if (directory / "vae.json").is_file():
        return load_model(directory, "vae").eval().requires_grad_(False)
    return load_pipeline(directory).vae.float().eval().requires_grad_(False)


def build_diffusion(config: TrainConfig) -> tuple[nn.Module, Frozen]:
    from kinema.diffusion import num_channels
    from kinema.models.dit import DiT
    from kinema.models.text import TextEncoder, load_text_encoder
    from kinema.models.unet3d import UNet3D

    d = config.diffusion
    vae = load_frozen_vae(d.vae_path)
    text = TextEncoder(d.text) if d.text_encoder == "builtin" else load_text_encoder(d.text_encoder)
    denoiser = DiT(config.dit) if config.dit is not None else UNet3D(config.unet)
    latent = vae.config.latent_channels
    name = "dit" if config.dit is not None else "unet"
    expect = {"in_channels": latent + num_channels(latent), "out_channels": latent, "text_dim": text.dim}
    wrong = {k: v for k, v in expect.items() if getattr(denoiser.config, k) != v}
    if wrong:
        have = ", ".join(f"{k}={getattr(denoiser.config, k)}" for k in wrong)
        fix = " ".join(f"--set {name}.{k}={v}" for k, v in wrong.items())
        raise KinemaError(
            f"{name} does not fit the VAE ({latent} latent channels) and text encoder (dim {text.dim}): {have}; "
            f"use {fix}"
        )
    # a KinemaError naming the valid frame counts if the clips do not fit the VAE
    vae.latent_shape((1, 3, config.data.frames, config.data.size, config.data.size))
    if d.train_text_encoder:
        return DiffusionModel(denoiser, text), {"vae": vae}
    return DiffusionModel(denoiser), {"vae": vae, "text_encoder": text.eval().requires_grad_(False)}


@torch.no_grad()
def init_diffusion(model: nn.Module, frozen: Frozen, config: TrainConfig) -> None:
    """diffusion.init_from: copy a saved pipeline's denoiser and built-in text encoder weights into a new run."""
    from kinema.pipelines.storage import component_record, load_pipeline

    d = config.diffusion
    if d.init_from is None:
        return
    source = load_pipeline(d.init_from)
    if component_record(source.vae)["weights"] != component_record(frozen["vae"])["weights"]:
        raise KinemaError(
            f"diffusion.init_from={d.init_from!r}: its denoiser works in its own VAE's latents, and "
            f"diffusion.vae_path={d.vae_path!r} is another VAE; use --set diffusion.vae_path={d.init_from}"
        )
    pairs = [("denoiser", "dit" if config.dit is not None else "unet", model.denoiser, source.denoiser)]
    if d.text_encoder == "builtin":
        ours = model.text_encoder if model.text_encoder is not None else frozen["text_encoder"]
        pairs.append(("text encoder", "diffusion.text", ours, source.text_encoder))
    for role, prefix, ours, theirs in pairs:
        _copy_weights(f"diffusion.init_from={d.init_from!r}", role, prefix, ours, theirs)


def _copy_weights(where: str, role: str, prefix: str, ours: nn.Module, theirs: nn.Module) -> None:
    """Load `theirs` into `ours`, or say which config fields to set so that the two have the same shapes."""
    if type(ours) is not type(theirs):
        raise KinemaError(f"{where}: its {role} is a {type(theirs).__name__}; this config trains a {type(ours).__name__}")
    mine, given = ours.state_dict(), theirs.state_dict()
    if mine.keys() != given.keys() or any(mine[k].shape != given[k].shape for k in mine):
        fields = dataclasses.fields(ours.config)
        differ = {f.name: getattr(theirs.config, f.name) for f in fields if getattr(ours.config, f.name) != getattr(theirs.config, f.name)}
        fix = " ".join(f"--set {prefix}.{k}={json.dumps(v)}" for k, v in differ.items())
        raise KinemaError(f"{where}: its {role} has other shapes than this config's; use {fix}")
    ours.load_state_dict(given)


@torch.no_grad()
def prepare_diffusion(frozen: Frozen, group: Group, config: TrainConfig) -> Group:
    """Clips -> latents with the frozen VAE (posterior mean); captions -> tokens when the text encoder is frozen."""
    group = dict(group)
    if "latents" not in group:
        group["latents"] = frozen["vae"].encode(group.pop("video")).float()
    if "text_encoder" in frozen and "text" not in group:
        group["text"], group["text_mask"] = frozen["text_encoder"].encode(group["caption"])
    return group


def diffusion_step(
    model: nn.Module, frozen: Frozen, group: Group, rand: GroupRandom, config: TrainConfig
) -> dict[str, torch.Tensor]:
    """Weighted MSE between the network's output and the process's target over the latent positions the
    sampled conditioning leaves unknown (latent frame 0 weighted by diffusion.first_frame_weight); known
    positions are shown clean and carry no loss. Every draw is batched on the latents' device."""
    from kinema.diffusion import Conditioning, channels, paste_known, sample_known_mask

    d = config.diffusion
    process = d.process
    x0 = group["latents"]  # (b, c, t, h, w)
    _, c, t, h, w = x0.shape
    sigma = rand.draw("sigma", lambda n, g: process.sample_training_sigmas(n, generator=g, device=x0.device))
    eps = rand.randn("noise", c, t, h, w)
    mask = rand.draw("known", lambda n, g: sample_known_mask(n, t, h, w, d.conditioning, generator=g), t, h, w)
    cond = Conditioning(latents=x0 * mask, mask=mask)
    drop = rand.rand("text_dropout") < d.text_dropout if d.text_dropout > 0 else None  # (b,) bool

    x_t = paste_known(process.add_noise(x0, eps, sigma), cond)
    context, context_mask = text_inputs(model, frozen, group, drop)
    out = model(torch.cat([x_t, channels(cond)], 1), process.timestep(sigma).float(), context, context_mask)
    weight = (1 - cond.mask).expand_as(x0) * frame_weights(t, d.first_frame_weight, x0.device)
    err = (out.float() - process.target(x0, eps, sigma).float()) ** 2 * weight
    per_sample = err.flatten(1).sum(1) / weight.flatten(1).sum(1).clamp_min(1.0)
    return {"loss": (process.loss_weight(sigma).float() * per_sample).mean(), "mse": per_sample.mean().detach()}


def frame_weights(frames: int, first: float, device: torch.device) -> torch.Tensor:
    """(1, 1, frames, 1, 1): `first` for latent frame 0, 1 for the others."""
    weights = torch.ones(frames, device=device)
    weights[0] = first
    return weights.view(1, 1, frames, 1, 1)


TEXT_BUCKET = 16
"""Context lengths are padded (masked) up to a multiple of this: a batch's longest caption varies from step to
step, and each new length would compile the blocks again under compile=true (past torch's recompile limit,
running them eagerly). Padded keys are masked out, so the outputs do not change."""


def text_inputs(
    model: nn.Module, frozen: Frozen, group: Group, drop: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(context, context_mask) for the model: byte ids when it trains its text encoder, else frozen tokens,
    padded to a multiple of TEXT_BUCKET.

    Rows where drop (b,) bool (None: no row) is True get the empty caption "" (the unconditional input of
    classifier-free guidance), chosen on the device. The group holds the ids ("ids", "ids_mask") or the frozen
    encoder's tokens ("text", "text_mask") when they were made beforehand (the latent store, the cache), else
    its "caption"s.
    """
    from kinema.models.text import pad_tokens

    inner = getattr(model, "module", model)
    device = group["latents"].device
    empty = empty_mask = None
    if inner.text_encoder is not None:
        tokenizer = inner.text_encoder.tokenizer
        if "ids" in group:
            given, given_mask = group["ids"], group["ids_mask"]
        else:
            given, given_mask = (t.to(device) for t in tokenizer(group["caption"]))
        if drop is not None:
            empty, empty_mask = (t.to(device) for t in tokenizer([""]))
    else:
        given, given_mask = group["text"], group["text_mask"]
        if drop is not None:
            empty, empty_mask = frozen["text_encoder"].encode([""])
            empty, empty_mask = empty.to(device, given.dtype), empty_mask.to(device)
    longest = max(given.shape[1], 0 if empty is None else empty.shape[1])
    length = -(-longest // TEXT_BUCKET) * TEXT_BUCKET
    given, given_mask = pad_tokens(given, given_mask, length)
    if drop is None:
        return given, given_mask
    empty, empty_mask = pad_tokens(empty, empty_mask, length)
    given = torch.where(drop.view(-1, *[1] * (given.ndim - 1)), empty, given)
    return given, torch.where(drop[:, None], empty_mask, given_mask)


def sampling_settings(config: TrainConfig) -> SamplingSettings:
    """The exported pipeline's generation defaults: `config.sample` at the run's clip size."""
    from kinema.pipelines.pipeline import SamplingSettings

    s = config.sample
    return SamplingSettings(
        sampler=s.method,
        steps=s.steps,
        guidance=s.guidance,
        guidance_interval=s.guidance_interval,
        shift=s.shift,
        image_first=s.image_first,
        num_frames=config.data.frames,
        height=config.data.size,
        width=config.data.size,
        fps=s.fps,
        precision=s.precision or config.precision,
    )


def as_pipeline(model: nn.Module, frozen: Frozen, config: TrainConfig) -> Pipeline:
    """The (EMA) trained model as a `Pipeline` with the run's sampling defaults: what the previews sample
    with and what is exported, so a preview shows what the exported pipeline makes."""
    from kinema.pipelines.pipeline import Pipeline

    return Pipeline(
        vae=frozen["vae"],
        denoiser=model.denoiser,
        text_encoder=model.text_encoder if model.text_encoder is not None else frozen["text_encoder"],
        process=config.diffusion.process,
        settings=sampling_settings(config),
        # the precision the run trained in, as resolved on its device ("auto" may differ between machines)
        provenance={"train_config": cfg.to_dict(config), "precision": resolve_precision(config.precision, _device(model))},
    )


def preview_diffusion(model: nn.Module, frozen: Frozen, config: TrainConfig, dataset: Any, prefix: Path) -> None:
    """The configured prompts, prompt i from seed sample.seed + i, side by side: prefix.gif."""
    s = config.sample
    videos = as_pipeline(model, frozen, config).generate(list(s.prompts), seed=s.seed)
    write_clip(side_by_side([v.to_tensor() for v in videos]), prefix.with_name(f"{prefix.name}.gif"), fps=s.fps)


def export_diffusion(model: nn.Module, frozen: Frozen, config: TrainConfig, directory: Path) -> None:
    """The EMA denoiser, the text encoder, the frozen VAE, the process and sampling defaults, as a `Pipeline`."""
    as_pipeline(model, frozen, config).save(directory)


# ---------------------------------------------------------------------------------------------- shared


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def video_settings(config: TrainConfig) -> dict[str, Any]:
    return {"frames": config.data.frames, "size": config.data.size, "fps": config.sample.fps}


def write_pipeline(stage: Stage, model: nn.Module, frozen: Frozen, config: TrainConfig, out_dir: Path) -> Path:
    """Export into DIR/pipeline atomically (built in a temporary folder, then renamed), with the run's config."""
    final = out_dir / "pipeline"
    tmp = out_dir / f".pipeline.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    stage.export(model, frozen, config, tmp)
    write_json(tmp / "train_config.json", cfg.to_dict(config))
    if final.exists():
        old = out_dir / f".pipeline.old-{os.getpid()}"
        os.replace(final, old)
        shutil.rmtree(old)
    os.replace(tmp, final)
    return final


def compile_diffusion(model: nn.Module) -> None:
    """Each repeated block of the denoiser compiled on its own (`kinema.nn.compile_blocks`): identical blocks
    share one graph, so compile time does not grow with depth; the text encoder stays eager."""
    from kinema.nn import compile_blocks

    compile_blocks(model.denoiser)


STAGES: dict[str, Stage] = {
    "vae": Stage(build_vae, prepare_vae, vae_step, preview_vae, export_vae, init=init_vae),
    "diffusion": Stage(
        build_diffusion, prepare_diffusion, diffusion_step, preview_diffusion, export_diffusion, init_diffusion,
        compile_diffusion,
    ),
}
