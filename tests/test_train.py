"""kinema.train and `kinema train`: the loop, exact resume, kill -9, torchrun, faults, presets, the CLI."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from kinema import config as cfg
from kinema.errors import KinemaError
from kinema.train import checkpoint as ckpt
from kinema.train.config import SAFE_ON_RESUME, config_changes, override, resume_conflicts
from kinema.train.data import Items, Pick, StepRandom, collate, micro_batch, plan_step
from kinema.train.ema import EMA
from kinema.train.loop import NonFiniteError, train
from kinema.train.observe import draw_loss_curve, read_metrics
from kinema.train.presets import PRESETS, load_config
from kinema.train.schedule import lr_at

# One intra-op thread: on a busy 2-core machine, two OpenMP threads per process are many times slower.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory) -> Path:
    """The debug VAE, trained for 4 steps: its pipeline folder is the diffusion tests' frozen VAE."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("vae")
    result = train(load_config("shapes-vae-debug"), out)
    return result.pipeline


def dit_debug(vae_dir: Path, **sets) -> object:
    return load_config("shapes-dit-debug", {"diffusion.vae_path": str(vae_dir), "sample.every": 0, **sets})


def weights(run: Path, step: int, name: str = "model") -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / f"step-{step:06d}" / f"{name}.safetensors"))


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if atol == 0:
            assert torch.equal(a[k], b[k]), k
        else:
            torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=k)


def losses(run: Path) -> list[float]:
    return [row["loss"] for row in read_metrics(run / "metrics.jsonl")]


# ---------------------------------------------------------------------------------------------- pieces


def test_plan_is_a_pure_function_split_over_ranks_and_micro_steps():
    kw = dict(n=20, batch_size=8, seed=3, image_ratio=0.25, frames=5)
    a = plan_step(4, **kw)
    assert a == plan_step(4, **kw)  # pure
    assert [p.position for p in a] == list(range(32, 40))
    assert sum(p.frame >= 0 for p in a) == 2  # round(0.25 * 8) images per batch, "mixed"
    epoch0 = [p.index for s in (0, 1) for p in plan_step(s, **kw)]
    assert len(set(epoch0)) == 16  # no repeats within an epoch (the 4 left over are dropped)
    shares = [micro_batch(a, rank=r, world=2, micro=m, accum=2) for m in range(2) for r in range(2)]
    assert sorted(p for share in shares for p in share) == sorted(a) and all(len(s) == 2 for s in shares)
    separate = [plan_step(s, **{**kw, "image_mode": "separate", "image_ratio": 0.5}) for s in range(20)]
    kinds = {tuple(p.frame >= 0 for p in batch) for batch in separate}
    assert kinds == {(True,) * 8, (False,) * 8}  # whole-image or whole-video steps
    firsts = [plan_step(s, **{**kw, "image_frame": "first"}) for s in range(10)]
    anys = [plan_step(s, **kw) for s in range(10)]
    assert {p.frame for b in firsts for p in b if p.frame >= 0} == {0}  # images are frame 0
    assert len({p.frame for b in anys for p in b if p.frame >= 0}) > 1  # images are any frame
    assert [[(p.index, p.frame >= 0) for p in b] for b in firsts] == [[(p.index, p.frame >= 0) for p in b] for b in anys]


def test_step_randomness_depends_on_the_slot_only_and_is_drawn_per_name_and_shape():
    a = StepRandom(0, 3, 8).rows(torch.tensor([5, 6, 7])).randn("noise", 3)
    b = StepRandom(0, 3, 8).rows(torch.tensor([6])).randn("noise", 3)
    assert torch.equal(a[1], b[0]) and not torch.equal(a[0], a[1])
    draws = StepRandom(0, 3, 8)
    assert torch.equal(draws.rows(torch.arange(8)).rand("u", 2), StepRandom(0, 3, 8).rows(torch.arange(8)).rand("u", 2))
    assert not torch.equal(draws.rows(torch.arange(8)).rand("v", 2), draws.rows(torch.arange(8)).rand("u", 2))
    assert not torch.equal(StepRandom(0, 4, 8).rows(torch.arange(8)).rand("u", 2), draws.rows(torch.arange(8)).rand("u", 2))
    # an image (one latent frame) draws from a stream of its own, not the first frame of a clip's noise
    assert not torch.equal(draws.rows(torch.arange(8)).randn("noise", 1, 2)[:, 0], draws.rows(torch.arange(8)).randn("noise", 2, 2)[:, 0])


def test_collate_groups_by_shape_and_drops_unreadable_samples():
    class Data(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            if i == 2:
                raise OSError("truncated file")
            return {"video": torch.full((3, 5, 8, 8), float(i)), "caption": f"clip {i}"}

    items = Items(Data())
    batch = collate([items[Pick(0, -1, 0)], items[Pick(1, 3, 1)], items[Pick(2, -1, 2)], items[Pick(3, -1, 3)]])
    assert batch["errors"] == ["sample 2: OSError: truncated file"]
    shapes = [tuple(g["video"].shape) for g in batch["groups"]]
    assert shapes == [(2, 3, 5, 8, 8), (1, 3, 1, 8, 8)]
    assert batch["groups"][0]["caption"] == ["clip 0", "clip 3"] and batch["groups"][1]["key"] == ["1@3"]


def test_lr_schedule_warmup_cosine_constant():
    kw = dict(lr=1.0, warmup_steps=4, total_steps=13, min_lr_ratio=0.1)
    assert [lr_at(s, schedule="cosine", **kw) for s in range(4)] == [0.2, 0.4, 0.6, 0.8]
    assert lr_at(4, schedule="cosine", **kw) == 1.0 and lr_at(12, schedule="cosine", **kw) == pytest.approx(0.1)
    assert lr_at(8, schedule="cosine", **kw) == pytest.approx(0.55)  # half way down
    assert lr_at(12, schedule="constant", **kw) == 1.0


def test_ema_follows_the_formula():
    model = torch.nn.Linear(3, 2)
    ema = EMA(model, decay=0.5)
    start = ema.model.weight.clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)  # decay_t = min(0.5, 1 / 10)
    torch.testing.assert_close(ema.model.weight, 0.1 * start + 0.9 * model.weight)
    assert not ema.model.weight.requires_grad


def test_checkpoints_are_atomic_keep_last_k_and_restore_rng(tmp_path):
    for step in (1, 2, 3, 4):
        ckpt.save_checkpoint(tmp_path, step, {"model": {"w": torch.full((2,), float(step))}}, {"note": step}, keep=2)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [3, 4]
    # A half-written folder (a kill during a save) and a damaged newest one are ignored.
    (tmp_path / ".tmp-step-000005-999").mkdir()
    damaged = tmp_path / "step-000006"
    damaged.mkdir()
    (damaged / "state.json").write_text('{"files": {"model.safetensors": 10}}')
    assert ckpt.latest_checkpoint(tmp_path).name == "step-000004"
    assert torch.equal(ckpt.read_tensors(ckpt.latest_checkpoint(tmp_path), "model")["w"], torch.full((2,), 4.0))
    ckpt.save_checkpoint(tmp_path, 7, {"model": {"w": torch.zeros(1)}}, {}, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000004", "step-000007"]

    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    state = ckpt.rng_tensors()
    expected = (random.random(), np.random.rand(), torch.rand(1))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    ckpt.set_rng_tensors(state)
    assert (random.random(), np.random.rand()) == expected[:2] and torch.equal(torch.rand(1), expected[2])


def test_optimizer_state_round_trips_through_tensors():
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    tensors, groups = ckpt.optimizer_tensors(opt.state_dict())
    groups = json.loads(json.dumps(groups))
    restored = torch.optim.AdamW(model.parameters(), lr=0.1)
    restored.load_state_dict(ckpt.optimizer_state_dict(tensors, groups))
    for a, b in zip(opt.state.values(), restored.state.values()):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_config_overrides_files_and_resume_checks(tmp_path):
    base = load_config("shapes-dit-debug")
    assert override(base, {"optim.lr": 0.01, "dit.num_layers": 3}).dit.num_layers == 3
    with pytest.raises(KinemaError, match=r"'optim.learning_rate' is not a field of optim; valid fields: .*lr"):
        override(base, {"optim.learning_rate": 1.0})
    with pytest.raises(KinemaError, match="data.batch_size takes an integer"):
        override(base, {"data.batch_size": "big"})
    with pytest.raises(KinemaError, match="unet is not set"):
        override(base, {"unet.channels": 8})
    with pytest.raises(KinemaError, match="optim.grad_accum must be >= 1"):
        override(base, {"optim.grad_accum": 0})
    with pytest.raises(KinemaError, match="sample.shift must be > 0 or null"):
        override(base, {"sample.shift": 0})
    assert override(base, {"sample.shift": 6}).sample.shift == 6
    with pytest.raises(KinemaError, match=r"sample.guidance_interval must be \(sigma_lo, sigma_hi\) with 0 <= lo <= hi"):
        override(base, {"sample.guidance_interval": [2.0, 1.0]})
    assert override(base, {"sample.guidance_interval": [0, float("inf")]}).sample.guidance_interval is None
    with pytest.raises(KinemaError, match="sample.prompts must hold at least one prompt"):
        override(base, {"sample.prompts": []})
    with pytest.raises(KinemaError, match=r"sample.precision must be one of \('auto', 'fp32', 'bf16'\) or null, got 'fp16'"):
        override(base, {"sample.precision": "fp16"})
    from kinema.diffusion import VPDiffusion

    with pytest.raises(ValueError, match="sample.shift applies to flow matching"):
        dataclasses.replace(
            base, diffusion=dataclasses.replace(base.diffusion, flow=None, vp=VPDiffusion()), sample=dataclasses.replace(base.sample, shift=3.0)
        )  # fmt: skip
    toml = tmp_path / "run.toml"
    toml.write_text('preset = "shapes-dit-debug"\nsteps = 7\n[optim]\nlr = 0.002\n[dit]\nnum_layers = 1\n')
    from_file = load_config(str(toml))
    assert (from_file.steps, from_file.optim.lr, from_file.dit.num_layers, from_file.dit.dim) == (
        7,
        0.002,
        1,
        base.dit.dim,
    )
    as_json = tmp_path / "config.json"
    as_json.write_text(json.dumps(cfg.to_dict(from_file)))
    assert load_config(str(as_json)) == from_file
    saved = cfg.to_dict(base)
    changed = override(base, {"steps": 99, "log.every": 5, "sample.every": 3, "optim.lr": 0.5, "dit.ffn_dim": 64})
    assert resume_conflicts(saved, changed) == ["dit.ffn_dim", "optim.lr"]
    assert "steps" in SAFE_ON_RESUME
    # a run saved before a field existed resumes as if it had the field's default
    older = cfg.to_dict(base)
    del older["data"]["image_frame"]
    assert resume_conflicts(older, base) == []
    assert config_changes(older, override(base, {"data.image_frame": "first"})) == {"data.image_frame": ("any", "first")}


def test_loss_curve_png(tmp_path):
    from PIL import Image

    draw_loss_curve([(s, 2.0 * 0.9**s) for s in range(1, 60)], tmp_path / "loss.png")
    image = Image.open(tmp_path / "loss.png")
    assert image.size == (720, 400) and len(set(image.getdata())) > 3


# ---------------------------------------------------------------------------------------------- presets end to end


def test_vae_debug_preset_trains_and_exports(vae_dir):
    from kinema.models.checkpoint import load_model

    run = vae_dir.parent
    rows = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert {"loss", "lr", "grad_norm", "samples_per_s", "peak_memory_mb"} <= rows[-1].keys()
    assert (run / "loss.png").is_file() and list((run / "samples").glob("step-000004-*.gif"))
    assert json.loads((run / "config.json").read_text()) == cfg.to_dict(load_config("shapes-vae-debug"))
    assert json.loads((vae_dir / "pipeline.json").read_text())["kind"] == "vae"
    vae = load_model(vae_dir, "vae")
    assert_same(vae.state_dict(), weights(run, 4, "ema"))


@pytest.mark.parametrize("preset", ["shapes-dit-debug", "shapes-unet3d-debug"])
def test_diffusion_debug_presets_train_and_export(preset, vae_dir, tmp_path):
    from kinema.models.checkpoint import load_model

    from kinema.pipelines import Pipeline
    from kinema.train.observe import side_by_side, write_clip
    from kinema.train.stages import sampling_settings
    from kinema.video import read_video

    sample = {"sample.shift": 3.0, "sample.guidance_interval": [0.2, 5.0]}
    config = load_config(preset, {"diffusion.vae_path": str(vae_dir), **sample})
    result = train(config, tmp_path)
    assert result.step == 4 and result.pipeline == tmp_path / "pipeline"
    meta = json.loads((result.pipeline / "pipeline.json").read_text())
    assert meta["process"]["kind"] == "flow_matching" and set(meta["components"]) == {"denoiser", "text_encoder", "vae"}
    assert meta["provenance"]["precision"] == "fp32"  # what the run trained in, resolved (the debug presets: fp32)
    pipe = Pipeline.load(result.pipeline)
    # the sampling defaults travel with the pipeline; it samples in the training precision unless told
    assert pipe.settings == sampling_settings(config)
    assert (pipe.settings.shift, pipe.settings.guidance_interval, pipe.precision) == (3.0, (0.2, 5.0), "fp32")
    # the last preview is what the exported pipeline makes from the same seeds
    s = config.sample
    again = side_by_side([v.to_tensor() for v in pipe.generate(list(s.prompts), seed=s.seed)])
    write_clip(again, tmp_path / "again.gif", fps=s.fps)
    preview = tmp_path / "samples" / "step-000004.gif"
    assert np.array_equal(read_video(preview).frames, read_video(tmp_path / "again.gif").frames)
    video = pipe.generate("a small red circle moving right", num_inference_steps=2, seed=0)
    assert video.frames.shape == (5, 32, 32, 3)
    ema = weights(tmp_path, 4, "ema")
    denoiser = load_model(result.pipeline, "denoiser")
    assert_same(denoiser.state_dict(), {k[len("denoiser.") :]: v for k, v in ema.items() if k.startswith("denoiser.")})
    load_model(result.pipeline, "text_encoder"), load_model(result.pipeline, "vae")


@pytest.mark.parametrize("first", [1.0, 4.0, 0.25])
def test_first_frame_weight_weighs_latent_frame_0_in_the_loss(first):
    """The diffusion loss is a mean over unknown latents with latent frame 0 weighted by first_frame_weight."""
    from types import SimpleNamespace

    from kinema.diffusion.conditioning import text_only
    from kinema.diffusion.processes import FlowMatching
    from kinema.train.config import DiffusionConfig
    from kinema.train.stages import diffusion_step

    class OffByFrame(nn.Module):
        """With x0 = 0, x_t = sigma * eps and the flow target is eps: return it, plus a known error per frame."""

        text_encoder = None

        def forward(self, x, timestep, context, context_mask):
            sigma = (timestep / 1000).view(-1, 1, 1, 1, 1)
            return x[:, :4] / sigma + torch.tensor([3.0, 1.0, 2.0]).view(1, 1, 3, 1, 1)

    d = DiffusionConfig(
        vae_path="unused", flow=FlowMatching(), conditioning=text_only(), text_encoder="hf:unused",
        train_text_encoder=False, text_dropout=0.0, first_frame_weight=first,
    )  # fmt: skip
    group = {"latents": torch.zeros(2, 4, 3, 4, 4), "text": torch.zeros(2, 1, 8), "text_mask": torch.ones(2, 1, dtype=torch.bool)}
    losses = diffusion_step(OffByFrame(), {}, group, StepRandom(0, 0, 2).rows(torch.tensor([0, 1])), SimpleNamespace(diffusion=d))
    want = (first * 9 + 1 + 4) / (first + 2)  # squared errors 9, 1, 4 by frame, weights first, 1, 1
    assert float(losses["loss"]) == pytest.approx(want, rel=1e-4)
    # a one-frame sample (an image) has the plain mean whatever the weight
    group["latents"] = torch.zeros(2, 4, 1, 4, 4)
    one = OffByFrame()
    one.forward = lambda x, t, c, m: x[:, :4] / (t / 1000).view(-1, 1, 1, 1, 1) + 2.0
    assert float(diffusion_step(one, {}, group, StepRandom(0, 0, 2).rows(torch.tensor([0, 1])), SimpleNamespace(diffusion=d))["loss"]) == pytest.approx(4.0, rel=1e-4)


def test_first_frame_weight_must_be_positive():
    with pytest.raises(KinemaError, match="first_frame_weight must be > 0"):
        load_config("shapes-dit-debug", {"diffusion.first_frame_weight": 0})


def test_init_from_fine_tunes_a_saved_pipeline(vae_dir, tmp_path):
    """diffusion.init_from starts a new run from a pipeline's denoiser and text encoder; a resume ignores it."""
    from kinema.models.checkpoint import load_model

    source = train(dit_debug(vae_dir, steps=2, seed=1), tmp_path / "source").pipeline
    still = {"optim.lr": 1e-9, "optim.weight_decay": 0.0, "optim.warmup_steps": 0, "steps": 2}
    # vae_path may name the source pipeline itself; the latent cache keys on its VAE
    mine = {"diffusion.init_from": str(source), "diffusion.vae_path": str(source), "data.cache": True}
    tuned = train(dit_debug(vae_dir, **mine, **still), tmp_path / "tuned").pipeline
    fresh = train(dit_debug(vae_dir, **still), tmp_path / "fresh").pipeline
    for name in ("denoiser", "text_encoder"):
        want = load_model(source, name).state_dict()
        assert_same(load_model(tuned, name).state_dict(), want, atol=1e-6)  # 2 steps of lr 1e-9 move nothing
        other = load_model(fresh, name).state_dict()
        assert max(float((other[k] - want[k]).abs().max()) for k in want) > 1e-2  # a run's own init is another
    provenance = json.loads((tuned / "pipeline.json").read_text())["provenance"]["train_config"]
    assert provenance["diffusion"]["init_from"] == str(source)  # the lineage travels with the pipeline
    # a resume continues from its checkpoint: it never reads init_from again
    gone = {**mine, "diffusion.init_from": str(tmp_path / "gone"), **still, "steps": 4}
    assert train(dit_debug(vae_dir, **gone), tmp_path / "tuned", resume=True).step == 4


def test_init_from_names_what_does_not_fit(vae_dir, tmp_path):
    from kinema.pipelines import Pipeline
    from kinema.train.stages import load_frozen_vae, vae_folder

    source = train(dit_debug(vae_dir, steps=2), tmp_path / "source").pipeline
    dim = json.loads((source / "pipeline.json").read_text())["components"]["denoiser"]["config"]["dim"]
    with pytest.raises(KinemaError, match=rf"its denoiser has other shapes than this config's; use --set dit.dim={dim}"):
        train(dit_debug(vae_dir, **{"diffusion.init_from": str(source), "dit.dim": 2 * dim}), tmp_path / "wide")
    unet = load_config("shapes-unet3d-debug", {"diffusion.vae_path": str(vae_dir), "diffusion.init_from": str(source)})
    with pytest.raises(KinemaError, match="its denoiser is a DiT; this config trains a UNet3D"):
        train(unet, tmp_path / "unet")
    with pytest.raises(KinemaError, match="is another VAE; use --set diffusion.vae_path=shapes"):
        train(dit_debug(vae_dir, **{"diffusion.init_from": "shapes"}), tmp_path / "other-vae")
    with pytest.raises(KinemaError, match="holds neither vae.json nor a pipeline"):
        train(dit_debug(tmp_path), tmp_path / "no-vae")
    shipped = Pipeline.load("shapes").vae.state_dict()  # vae_path may name a shipped pipeline: its VAE
    assert_same(load_frozen_vae("shapes").state_dict(), {k: v.float() for k, v in shipped.items()})
    assert (vae_folder("shapes") / "vae.safetensors").is_file()


# ---------------------------------------------------------------------------------------------- exact resume


def test_resume_is_bitwise_exact(vae_dir, tmp_path):
    sets = {
        "deterministic": True,
        "optim.schedule": "constant",
        "data.image_ratio": 0.5,
        "optim.grad_accum": 2,
        "data.batch_size": 4,
    }
    train(dit_debug(vae_dir, steps=6, **sets), tmp_path / "straight")
    train(dit_debug(vae_dir, steps=3, **sets), tmp_path / "split")
    train(dit_debug(vae_dir, steps=6, **sets), tmp_path / "split", resume=True)
    for name in ("model", "ema", "optimizer"):
        assert_same(weights(tmp_path / "straight", 6, name), weights(tmp_path / "split", 6, name))
    assert losses(tmp_path / "straight") == losses(tmp_path / "split")


def test_resume_refuses_a_changed_config_and_a_missing_checkpoint(vae_dir, tmp_path):
    config = dit_debug(vae_dir, steps=2)
    with pytest.raises(KinemaError, match="no complete checkpoint"):
        train(config, tmp_path, resume=True)
    train(config, tmp_path)
    with pytest.raises(KinemaError, match="already holds a run"):
        train(config, tmp_path)
    with pytest.raises(KinemaError, match=r"changed in dit.ffn_dim, optim.lr"):
        train(override(config, {"optim.lr": 0.5, "dit.ffn_dim": 64}), tmp_path, resume=True)
    assert train(override(config, {"steps": 3, "log.every": 2}), tmp_path, resume=True).step == 3


def test_allow_change_changes_the_recipe_on_resume_and_records_it(vae_dir, tmp_path):
    config = dit_debug(vae_dir, steps=2)
    with pytest.raises(KinemaError, match="only applies to --resume"):
        train(config, tmp_path, allow_changes=["diffusion.flow"])
    train(config, tmp_path)
    with pytest.raises(KinemaError, match="'diffusion.flw' is not a config field"):
        train(config, tmp_path, resume=True, allow_changes=["diffusion.flw"])
    with pytest.raises(KinemaError, match="do not fit the changed config"):
        train(override(config, {"dit.ffn_dim": 64}), tmp_path, resume=True, allow_changes=["dit"])
    changed = override(config, {"steps": 4, "diffusion.flow.shift": 3.0, "diffusion.flow.logit_mean": 0.5})
    with pytest.raises(KinemaError, match="--allow-change NAME"):
        train(changed, tmp_path, resume=True)
    result = train(changed, tmp_path, resume=True, allow_changes=["diffusion.flow"])
    assert result.step == 4
    records = [json.loads(line) for line in (tmp_path / "config_changes.jsonl").read_text().splitlines()]
    assert records == [
        {"step": 2, "field": "diffusion.flow.logit_mean", "from": 0.0, "to": 0.5},
        {"step": 2, "field": "diffusion.flow.shift", "from": config.diffusion.flow.shift, "to": 3.0},
    ]
    assert json.loads((result.pipeline / "pipeline.json").read_text())["process"]["shift"] == 3.0
    # The checkpoints now hold the new recipe: a plain resume continues it, and records nothing more.
    assert train(override(changed, {"steps": 5}), tmp_path, resume=True).step == 5
    assert len((tmp_path / "config_changes.jsonl").read_text().splitlines()) == 2


@pytest.mark.parametrize("train_text", [False, True])
def test_latent_store_streaming_and_the_disk_cache_train_alike(vae_dir, tmp_path, train_text):
    sets = {"deterministic": True, "steps": 12, "diffusion.train_text_encoder": train_text, "data.image_ratio": 0.5}
    store = tmp_path / "stores"
    train(dit_debug(vae_dir, **sets, **{"data.store": "stream"}), tmp_path / "plain")
    train(dit_debug(vae_dir, **sets, **{"data.store": "stream", "data.cache": True}), tmp_path / "cached")
    train(dit_debug(vae_dir, **sets, **{"data.store": "memory", "data.store_dir": str(store)}), tmp_path / "memory")
    shards = list((tmp_path / "cached" / "cache").glob("shard-*.safetensors"))
    assert shards and len(load_file(str(shards[0]))) > 0
    saved = list(store.glob("store-*.safetensors"))
    assert len(saved) == 1 and load_file(str(saved[0]))["latents"].shape == (16, 8, 2, 8, 8)
    assert losses(tmp_path / "plain") == losses(tmp_path / "cached")
    assert_same(weights(tmp_path / "plain", 12), weights(tmp_path / "cached", 12))
    np.testing.assert_allclose(losses(tmp_path / "memory"), losses(tmp_path / "plain"), rtol=1e-5)
    assert_same(weights(tmp_path / "plain", 12), weights(tmp_path / "memory", 12), atol=1e-5)
    # a later run with the same VAE and data loads the saved store instead of encoding again
    mtime = saved[0].stat().st_mtime_ns
    train(dit_debug(vae_dir, **sets, **{"data.store": "memory", "data.store_dir": str(store)}), tmp_path / "again")
    assert saved[0].stat().st_mtime_ns == mtime and losses(tmp_path / "again") == losses(tmp_path / "memory")


def test_compile_trains_and_samples_like_eager(vae_dir, tmp_path):
    """compile=true compiles each denoiser block (regional); the run matches eager and still previews and exports."""
    sets = {"steps": 3, "sample.every": 3, "data.store": "memory", "data.store_dir": ""}
    train(dit_debug(vae_dir, **sets), tmp_path / "eager")
    result = train(dit_debug(vae_dir, **sets, compile=True), tmp_path / "compiled")
    np.testing.assert_allclose(losses(tmp_path / "compiled"), losses(tmp_path / "eager"), rtol=1e-4)
    assert_same(weights(tmp_path / "eager", 3), weights(tmp_path / "compiled", 3), atol=1e-5)
    assert list((tmp_path / "compiled" / "samples").glob("step-000003*.gif")) and result.pipeline is not None


def test_the_latent_store_streams_when_it_does_not_fit_and_says_so(vae_dir, tmp_path, capsys, monkeypatch):
    from kinema.train import store

    monkeypatch.setattr(store, "BUDGET_FRACTION", 1e-12)
    train(dit_debug(vae_dir, steps=1), tmp_path / "small")
    out = capsys.readouterr().out
    assert "data: streaming from the dataset: 16 samples need" in out and "does not fit" in out
    monkeypatch.setattr(store, "BUDGET_FRACTION", 0.25)
    train(dit_debug(vae_dir, steps=1), tmp_path / "fits")
    assert "data: 16 samples in the latent store on cpu" in capsys.readouterr().out


def test_auto_precision_trains_in_what_this_cpu_pays_for_and_records_it(vae_dir, tmp_path, capsys):
    from kinema.precision import resolve

    config = load_config("shapes-dit-debug", {"diffusion.vae_path": str(vae_dir), "precision": "auto", "steps": 1})
    result = train(config, tmp_path)
    picked = resolve("auto", "cpu")
    assert f"precision auto: {picked} on cpu (" in capsys.readouterr().out
    meta = json.loads((result.pipeline / "pipeline.json").read_text())
    # the pipeline samples in "auto" wherever it goes; the run's own precision is recorded as resolved
    assert meta["sampling"]["precision"] == "auto" and meta["provenance"]["precision"] == picked


def test_the_cache_outlives_changes_to_which_samples_are_drawn(vae_dir):
    from kinema.train.loop import cache_meta

    base = dit_debug(vae_dir, **{"data.cache": True})
    drawn = override(base, {"data.image_ratio": 0.5, "data.image_frame": "first", "data.batch_size": 2})
    assert cache_meta(drawn, "fp32") == cache_meta(base, "fp32")  # images are cached under their frame's key
    assert cache_meta(override(base, {"data.frames": 9}), "fp32") != cache_meta(base, "fp32")
    assert cache_meta(base, "bf16") != cache_meta(base, "fp32")  # latents encoded under autocast differ


# ---------------------------------------------------------------------------------------------- faults


class Poisoned(torch.utils.data.Dataset):
    """The shapes debug data with NaN frames at some indices and a read error at others."""

    def __init__(self, nan: set[int] = frozenset(), broken: set[int] = frozenset()):
        from kinema.data import get_dataset

        self.base, self.nan, self.broken = get_dataset("shapes", size=32, frames=5, length=16), nan, broken

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        if i in self.broken:
            raise OSError(f"clip {i} is unreadable")
        item = self.base[i]
        return {**item, "video": item["video"] * float("nan")} if i in self.nan else item


def test_a_nan_batch_is_skipped_and_counted(vae_dir, tmp_path, caplog):
    config = dit_debug(vae_dir, steps=8, **{"data.batch_size": 2})
    result = train(config, tmp_path, dataset=Poisoned(nan={3}, broken={5}))
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert result.step == 8 and rows[-1]["nonfinite_steps"] == 1 and rows[-1]["skipped_samples"] == 1
    assert all(torch.isfinite(w).all() for w in weights(tmp_path, 8).values())
    assert "clip 5 is unreadable" in caplog.text


def test_consecutive_nonfinite_steps_stop_the_run_naming_the_step(vae_dir, tmp_path):
    config = dit_debug(vae_dir, steps=8, **{"optim.max_nonfinite": 2})
    with pytest.raises(NonFiniteError, match=r"step 1: 2 steps in a row had a non-finite loss"):
        train(config, tmp_path, dataset=Poisoned(nan=set(range(16))))


def test_a_corrupted_clip_in_a_folder_dataset_is_skipped(vae_dir, tmp_path):
    from kinema.video import Video

    rows = []
    for i in range(3):
        frames = np.zeros((6, 32, 32, 3), np.uint8)
        frames[:, 8:20, 4 + 4 * i : 16 + 4 * i] = (200, 40 * i, 50)
        Video(frames, fps=8).save(tmp_path / f"clip{i}.gif")
        rows.append({"path": f"clip{i}.gif", "caption": f"clip {i}"})
    (tmp_path / "broken.mp4").write_bytes(b"this is not a video")
    rows.append({"path": "broken.mp4", "caption": "broken"})
    manifest = tmp_path / "clips.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = dit_debug(vae_dir, steps=2, **{"data.dataset": str(manifest), "data.length": None})
    with pytest.warns(UserWarning, match="broken.mp4"):  # unreadable when the manifest is indexed
        result = train(config, tmp_path / "run")
    assert result.step == 2 and result.pipeline is not None

    from kinema.data import get_dataset

    with pytest.warns(UserWarning, match="broken.mp4"):
        dataset = get_dataset(str(manifest), size=32, frames=5)
    (tmp_path / "clip1.gif").write_bytes(b"GIF89a cut short")  # unreadable only when it is read
    with pytest.warns(UserWarning, match="clip1.gif"):
        result = train(override(config, {"steps": 4}), tmp_path / "run2", dataset=dataset)
    assert result.step == 4 and any("clip1.gif" in path for path, _ in dataset.skipped)


# ---------------------------------------------------------------------------------------------- processes


def kinema_train(*args: str) -> list[str]:
    return [sys.executable, "-m", "kinema", "train", *args]


def test_sigterm_and_kill9_leave_a_loadable_checkpoint_and_resume_continues(vae_dir, tmp_path):
    """SIGTERM once (clean exit with a checkpoint), then kill -9 at random moments, then finish: the final
    weights equal a straight run's bit for bit, so every resume continued exactly where its checkpoint was."""
    sets = [
        "--set",
        f"diffusion.vae_path={vae_dir}",
        "--set",
        "sample.every=0",
        "--set",
        "deterministic=true",
        "--set",
        "checkpoint.every=1",
    ]
    steps = 40
    run, rng = tmp_path / "run", random.Random(0)
    for attempt, sig in enumerate([signal.SIGTERM, signal.SIGKILL, signal.SIGKILL]):
        before = ckpt.latest_checkpoint(run / "checkpoints")
        resume = ["--resume"] if before is not None else []
        proc = subprocess.Popen(
            kinema_train("shapes-dit-debug", "--out", str(run), "--steps", str(steps), *resume, *sets),
            env=ENV,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 300  # generous: a busy machine starts the process slowly
        while (
            ckpt.latest_checkpoint(run / "checkpoints") == before
            and proc.poll() is None
            and time.monotonic() < deadline
        ):
            time.sleep(0.05)
        # signalled before its first checkpoint, the run may not have its SIGTERM handler yet
        assert ckpt.latest_checkpoint(run / "checkpoints") != before, f"no new checkpoint within 300 s (attempt {attempt})"
        time.sleep(rng.uniform(0.0, 0.4))
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == (143 if sig == signal.SIGTERM else -9), err[-2000:]
        newest = ckpt.latest_checkpoint(run / "checkpoints")
        state = ckpt.read_state(newest)
        assert 0 < state["step"] < steps
        for name in ("model", "ema", "optimizer", "rng-rank0"):
            ckpt.read_tensors(newest, name)
    done = subprocess.run(
        kinema_train("shapes-dit-debug", "--out", str(run), "--steps", str(steps), "--resume", *sets),
        env=ENV,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    config = load_config(
        "shapes-dit-debug",
        {
            "steps": steps,
            "diffusion.vae_path": str(vae_dir),
            "sample.every": 0,
            "deterministic": True,
            "checkpoint.every": steps,
        },
    )
    train(config, tmp_path / "straight")
    assert_same(weights(tmp_path / "straight", steps), weights(run, steps))
    assert_same(weights(tmp_path / "straight", steps, "ema"), weights(run, steps, "ema"))


def test_torchrun_two_processes_match_one(vae_dir, tmp_path):
    sets = {"deterministic": True, "steps": 3, "data.batch_size": 4, "data.image_ratio": 0.5}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        str(29500 + os.getpid() % 1000),
    ]
    args = [
        f"--set={k}={json.dumps(v)}" for k, v in {**sets, "diffusion.vae_path": str(vae_dir), "sample.every": 0}.items()
    ]
    proc = subprocess.run(
        [*cmd, "-m", "kinema", "train", "shapes-dit-debug", "--out", str(tmp_path / "two"), *args],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    train(dit_debug(vae_dir, **sets), tmp_path / "one")
    assert_same(weights(tmp_path / "one", 3), weights(tmp_path / "two", 3), atol=1e-5)
    assert_same(weights(tmp_path / "one", 3, "ema"), weights(tmp_path / "two", 3, "ema"), atol=1e-5)
    np.testing.assert_allclose(losses(tmp_path / "one"), losses(tmp_path / "two"), rtol=1e-5)
    assert not list((tmp_path / "two" / "checkpoints" / "step-000003").glob("rng-rank[2-9]*"))
    assert len(list((tmp_path / "two" / "checkpoints" / "step-000003").glob("rng-rank*"))) == 2


@pytest.mark.slow
def test_torchrun_fsdp2_matches_one_process_and_resumes(vae_dir, tmp_path):
    sets = {"deterministic": True, "steps": 4, "data.batch_size": 4, "parallel": "fsdp", "checkpoint.every": 2}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        str(28500 + os.getpid() % 1000),
    ]
    args = [
        f"--set={k}={json.dumps(v)}" for k, v in {**sets, "diffusion.vae_path": str(vae_dir), "sample.every": 2}.items()
    ]
    two = tmp_path / "two"
    for extra in ([], ["--resume"]):
        proc = subprocess.run(
            [*cmd, "-m", "kinema", "train", "shapes-dit-debug", "--out", str(two), *args, *extra],
            env=ENV,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        if not extra:  # resume from step 2
            for path in (two / "checkpoints" / "step-000004", two / "pipeline"):
                shutil.rmtree(path)
    train(dit_debug(vae_dir, **{**sets, "parallel": "ddp"}), tmp_path / "one")
    for name in ("model", "ema"):
        assert_same(weights(tmp_path / "one", 4, name), weights(two, 4, name), atol=1e-5)
    assert (two / "pipeline" / "denoiser.safetensors").is_file() and list((two / "samples").glob("*.gif"))


# ---------------------------------------------------------------------------------------------- CLI


def test_cli_dry_run_and_bad_input(vae_dir, capsys):
    from kinema.cli import main

    main(["train", "shapes-dit-debug", "--out", "unused", "--dry-run", "--set", f"diffusion.vae_path={vae_dir}"])
    out = capsys.readouterr().out
    assert "trained params" in out and "FLOPs per step" in out and "time per step" in out
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "no-such-preset", "--out", "unused"])
    assert exit_info.value.code == 2 and "shapes-dit-debug" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "shapes-vae-debug", "--out", "unused", "--set", "optim.lr"])
    assert exit_info.value.code == 2 and "expected key=value" in capsys.readouterr().err


def test_every_preset_builds():
    for name, make in PRESETS.items():
        config = make()
        assert config.stage in ("vae", "diffusion"), name
        assert load_config(name) == config


def test_vae_export_carries_measured_latent_stats(vae_dir):
    from kinema.models.checkpoint import load_model

    vae = load_model(vae_dir, "vae")
    assert vae.config.latent_mean is not None and len(vae.config.latent_std) == vae.config.latent_channels
    assert all(s > 0 for s in vae.config.latent_std)
