"""The Pipeline API on a tiny randomly initialised pipeline: every task end to end, reproducibility,
save/load, and the checks that refuse bad arguments before any work."""

import json
import math
import shutil

import numpy as np
import pytest
import torch

from kinema.diffusion import conditioning
from kinema.errors import KinemaError
from kinema.models import checkpoint
from kinema.pipelines import common, storage
from kinema.pipelines.pipeline import Pipeline, SamplingSettings
from kinema.pipelines.presets import random_pipeline
from kinema.video import Video, VideoError

PROMPT = "a red circle moving right"
STEPS = 2


@pytest.fixture(scope="module")
def pipe() -> Pipeline:
    return random_pipeline("tiny", seed=0)


@pytest.fixture(scope="module")
def clip(pipe) -> Video:
    return pipe.generate(PROMPT, seed=0, num_inference_steps=STEPS)


def picture(height=16, width=16, seed=0) -> np.ndarray:
    """A smooth image with an edge: uint8 (H, W, 3)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    img = np.stack([x * 255 / width, y * 255 / height, ((x > width / 2) ^ (y > height / 2)) * 200.0], -1)
    return np.clip(img + rng.normal(0, 5, img.shape), 0, 255).astype(np.uint8)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def round_trip(pipe: Pipeline, frames: np.ndarray) -> np.ndarray:
    """What the VAE makes of uint8 frames (T, H, W, 3)."""
    with torch.no_grad():
        x = Video(frames).to_tensor()[None]
        return Video.from_tensor(pipe.vae.decode(pipe.vae.encode(x))).frames


# ----------------------------------------------------------------------------------------------
# Tasks end to end


def test_text_to_video_makes_a_clip_with_its_metadata(pipe, clip):
    assert isinstance(clip, Video)
    assert clip.frames.shape == (9, 16, 16, 3) and clip.fps == 8.0
    m = clip.metadata
    assert m["prompt"] == PROMPT and m["seed"] == 0 and m["steps"] == STEPS and m["task"] == "text-to-video"
    assert m["sampler"] == "euler" and m["guidance"] == 3.0 and m["model_hash"] == pipe.model_hash
    assert clip.frames.std() > 5  # not a blank clip


def test_same_seed_same_frames_other_seed_other_frames(pipe, clip):
    again = pipe.generate(PROMPT, seed=0, num_inference_steps=STEPS)
    other = pipe.generate(PROMPT, seed=1, num_inference_steps=STEPS)
    assert np.array_equal(again.frames, clip.frames)
    assert not np.array_equal(other.frames, clip.frames)


def test_batch_of_four_equals_four_singles(pipe):
    prompts = ["a red circle", "a much longer prompt about a big blue square moving up"]
    batch = pipe.generate(prompts, num_videos=2, seed=7, num_inference_steps=STEPS, sampler="ddpm")
    assert [v.metadata["seed"] for v in batch] == [7, 8, 9, 10]
    assert [v.metadata["prompt"] for v in batch] == [prompts[0]] * 2 + [prompts[1]] * 2
    for i, video in enumerate(batch):
        alone = pipe.generate(prompts[i // 2], seed=7 + i, num_inference_steps=STEPS, sampler="ddpm")
        assert np.array_equal(video.frames, alone.frames)


def test_batched_latents_equal_single_latents(pipe):
    """At the latent level too, with noise and sampler noise drawn per sample (ddpm)."""
    plan = common.make_plan(
        pipe, num_samples=4, seed=3, sampler="ddpm", steps=STEPS, guidance=2.0, num_frames=None, height=None,
        width=None, fps=None,
    )  # fmt: skip
    prompts = ["a", "bb", "a", "a longer prompt"]
    texts = common.encode_prompts(pipe.text_encoder, prompts)
    with torch.no_grad():
        noise, rngs = common.prepare_noise(plan.latent_shape, plan.seeds, device=pipe.device)
        cond = conditioning.text_to_video(tuple(noise.shape))
        batch = common.run_sampler(pipe, noise, cond, texts, plan, rngs)
        for i in range(4):
            n1, r1 = common.prepare_noise(plan.latent_shape, plan.seeds[i : i + 1], device=pipe.device)
            c1 = conditioning.text_to_video(tuple(n1.shape))
            single = common.run_sampler(pipe, n1, c1, texts[i : i + 1], plan, r1)
            torch.testing.assert_close(batch[i : i + 1], single, rtol=0, atol=1e-5)


def test_image_to_video_keeps_frame_zero(pipe):
    image = picture(seed=1)
    video = pipe.generate(PROMPT, image=image, seed=2, num_inference_steps=STEPS)
    assert video.frames.shape == (9, 16, 16, 3) and video.metadata["task"] == "image-to-video"
    vae_only = round_trip(pipe, image[None])[0]
    frame0 = psnr(video.frames[0], image)
    ceiling = psnr(vae_only, image)
    print(f"image-to-video frame 0: PSNR {frame0:.2f} dB vs the image; the VAE round trip alone gives {ceiling:.2f} dB")
    assert frame0 >= ceiling - 0.5  # as good as the VAE can reconstruct the image
    assert psnr(video.frames[0], vae_only) >= 40  # frame 0 is the VAE's reconstruction of the image
    assert not np.array_equal(video.frames[1], video.frames[0])


def test_image_is_resized_to_an_asked_size(pipe):
    video = pipe.generate(PROMPT, image=picture(32, 32), height=16, width=24, seed=0, num_inference_steps=1)
    assert video.frames.shape == (9, 16, 24, 3)


def test_interpolation_starts_at_first_and_depends_on_last(pipe):
    first, last = picture(seed=1), picture(seed=2)[::-1].copy()
    a = pipe.interpolate(first, last, PROMPT, seed=0, num_inference_steps=STEPS)
    b = pipe.interpolate(first, picture(seed=3), PROMPT, seed=0, num_inference_steps=STEPS)
    assert a.frames.shape == (9, 16, 16, 3) and a.metadata["task"] == "interpolation"
    assert psnr(a.frames[0], round_trip(pipe, first[None])[0]) >= 40
    assert np.array_equal(a.frames[0], b.frames[0])  # causal: frame 0 does not see the last frame
    assert not np.array_equal(a.frames[-1], b.frames[-1])


def test_extension_returns_the_length_and_starts_with_the_clip(pipe, clip):
    longer = pipe.extend(clip, PROMPT, num_frames=11, seed=4, num_inference_steps=STEPS)
    assert longer.num_frames == clip.num_frames + 11
    assert np.array_equal(longer.frames[: clip.num_frames], clip.frames)
    assert longer.metadata["task"] == "extension" and longer.metadata["input_frames"] == 9
    assert longer.frames[clip.num_frames :].std() > 5


def test_extension_prompt_per_window(pipe, clip):
    # 9-frame windows with 1 frame of context add 8 frames each: 16 frames take 2 windows.
    plan = common.make_plan(
        pipe, num_samples=1, seed=0, sampler=None, steps=STEPS, guidance=None, num_frames=None, height=16, width=16,
        fps=None, least_latents=2,
    )  # fmt: skip
    from kinema.pipelines.tasks import extension_windows

    assert extension_windows(pipe, clip.num_frames, 16, 1, plan) == [8, 8]
    ab = pipe.extend(clip, ["a red circle", "a blue square"], num_frames=16, context_frames=1, seed=5, num_inference_steps=STEPS)
    ac = pipe.extend(clip, ["a red circle", "a green star"], num_frames=16, context_frames=1, seed=5, num_inference_steps=STEPS)
    assert ab.num_frames == 25
    assert np.array_equal(ab.frames[:17], ac.frames[:17])  # the first window only sees the first prompt
    assert not np.array_equal(ab.frames[17:], ac.frames[17:])
    assert json.loads(ab.metadata["prompt"]) == ["a red circle", "a blue square"]
    with pytest.raises(KinemaError, match="3 prompts for 2 windows.*give one prompt, or 2"):
        pipe.extend(clip, ["a", "b", "c"], num_frames=16, context_frames=1, seed=0)


def test_extension_with_more_context_and_a_short_clip(pipe, clip):
    longer = pipe.extend(clip, PROMPT, num_frames=4, context_frames=5, seed=0, num_inference_steps=1)
    assert longer.num_frames == 13 and np.array_equal(longer.frames[:9], clip.frames)
    one = pipe.extend(clip.frames[:3], PROMPT, num_frames=5, seed=0, num_inference_steps=1)  # 3 frames give 1 of context
    assert one.num_frames == 8 and np.array_equal(one.frames[:3], clip.frames[:3])


def test_a_clip_longer_than_the_window_is_made_window_after_window(pipe, clip):
    seen = []
    hook = pipe.denoiser.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[2]))
    try:
        long = pipe.generate(PROMPT, num_frames=33, seed=0, num_inference_steps=STEPS)
    finally:
        hook.remove()
    assert long.num_frames == 33 and np.array_equal(long.frames[:9], clip.frames)  # window 1 is the plain clip
    assert max(seen) == 3  # the denoiser only ever sees one 9-frame window (3 latent frames): bounded memory
    m = long.metadata
    assert (m["task"], m["window_frames"], m["context_frames"]) == ("text-to-video", 9, 1)  # half the window: 1 latent frame
    assert long.frames[9:].std() > 5
    # each sample's windows draw from its own seed: the same alone or in a batch, and from an image too
    pair = pipe.generate([PROMPT, "a blue square moving up"], num_frames=21, seed=7, num_inference_steps=1)
    alone = pipe.generate("a blue square moving up", num_frames=21, seed=8, num_inference_steps=1)
    assert np.array_equal(pair[1].frames, alone.frames)
    first = pipe.generate(PROMPT, image=picture(), num_frames=21, seed=0, num_inference_steps=1, context_frames=5)
    assert first.num_frames == 21 and first.metadata["task"] == "image-to-video" and first.metadata["context_frames"] == 5
    assert psnr(first.frames[0], round_trip(pipe, picture()[None])[0]) >= 40


def test_long_video_arguments_are_checked(pipe):
    with pytest.raises(KinemaError, match="context_frames applies to clips longer than a window \\(9 frames\\); num_frames is 9"):
        pipe.generate(PROMPT, context_frames=5)
    with pytest.raises(KinemaError, match="context_frames=9 cannot be used: a window of 9 frames takes 1 \\+ 4k context frames, at most 5"):
        pipe.generate(PROMPT, num_frames=33, context_frames=9)
    with pytest.raises(KinemaError, match="num_frames=35 cannot be made: this model makes 1 \\+ 4k frames.*use 33 or 37"):
        pipe.generate(PROMPT, num_frames=35)
    with pytest.raises(KinemaError, match="window_frames=7 cannot be made"):
        pipe.generate(PROMPT, num_frames=33, window_frames=7)
    assert pipe.generate(PROMPT, num_frames=13, window_frames=5, seed=0, num_inference_steps=1).metadata["window_frames"] == 5


def test_edit_follows_strength(pipe, clip):
    vae_only = round_trip(pipe, clip.frames)
    distance = []
    for strength in (0.25, 0.5, 1.0):
        out = pipe.edit(clip, "a blue square", strength=strength, seed=1, num_inference_steps=4)
        assert out.frames.shape == clip.frames.shape and out.metadata["strength"] == strength
        distance.append(np.abs(out.frames.astype(int) - vae_only).mean())
    assert distance[0] < distance[1] < distance[2]  # more strength, further from the clip


def test_inpainting_keeps_unmasked_pixels(pipe, clip):
    mask = np.zeros((16, 16, 3), np.uint8)
    mask[4:12, 6:14] = 255
    out = pipe.edit(clip, "a blue square", strength=1.0, mask=mask, seed=2, num_inference_steps=STEPS)
    keep = mask[..., 0] == 0
    assert out.metadata["task"] == "inpaint"
    assert np.array_equal(out.frames[:, keep], clip.frames[:, keep])
    assert np.abs(out.frames[:, ~keep].astype(int) - clip.frames[:, ~keep]).mean() > 2


def test_latent_mask_covers_the_pixel_mask():
    from kinema.pipelines.tasks import latent_mask

    mask = torch.zeros(5, 8, 8)
    mask[3, 5, 1] = 1.0  # pixel frame 3 -> latent frame 1 (frames 1..4 with f = 4), pixel (5, 1) -> (2, 0)
    m = latent_mask(mask, temporal_factor=4, spatial_factor=2)
    assert m.shape == (1, 1, 2, 4, 4)
    assert m.sum() == 1 and m[0, 0, 1, 2, 0] == 1


def test_guidance_interval_guides_only_at_its_noise_levels(pipe):
    kw = dict(seed=3, num_inference_steps=STEPS, guidance_scale=4.0)
    always = pipe.generate(PROMPT, **kw)
    never = pipe.generate(PROMPT, **{**kw, "guidance_scale": 1.0})
    assert not np.array_equal(always.frames, never.frames)
    # a flow-matching model's sigmas lie in [0, 1]: (2, 3) never guides, (0, inf) always does
    assert np.array_equal(pipe.generate(PROMPT, guidance_interval=(2.0, 3.0), **kw).frames, never.frames)
    assert np.array_equal(pipe.generate(PROMPT, guidance_interval=(0.0, math.inf), **kw).frames, always.frames)
    first_step_only = pipe.generate(PROMPT, guidance_interval=(0.9, 1.0), **kw)  # sigma 1 is guided, the next is not
    assert not np.array_equal(first_step_only.frames, always.frames)
    assert not np.array_equal(first_step_only.frames, never.frames)
    assert first_step_only.metadata["guidance_interval"] == "0.9,1" and "guidance_interval" not in always.metadata


def test_guidance_interval_defaults_to_the_pipeline_settings(pipe):
    import dataclasses

    kw = dict(seed=3, num_inference_steps=STEPS, guidance_scale=4.0)
    narrowed = Pipeline(
        vae=pipe.vae, denoiser=pipe.denoiser, text_encoder=pipe.text_encoder, process=pipe.process,
        settings=dataclasses.replace(pipe.settings, guidance_interval=(0.9, 1.0)),
    )  # fmt: skip
    assert np.array_equal(narrowed.generate(PROMPT, **kw).frames, pipe.generate(PROMPT, guidance_interval=(0.9, 1.0), **kw).frames)
    # (0, inf) in a call guides every step again
    assert np.array_equal(narrowed.generate(PROMPT, guidance_interval=(0, math.inf), **kw).frames, pipe.generate(PROMPT, **kw).frames)


def test_shift_samples_on_the_shifted_schedule(pipe):
    import dataclasses

    kw = dict(seed=3, num_inference_steps=3)
    own = pipe.generate(PROMPT, **kw)
    assert pipe.process.shift == 1.0 and "shift" not in own.metadata
    assert np.array_equal(pipe.generate(PROMPT, shift=1.0, **kw).frames, own.frames)  # the process's own: the same
    shifted = pipe.generate(PROMPT, shift=4.0, **kw)
    assert shifted.metadata["shift"] == 4.0 and not np.array_equal(shifted.frames, own.frames)
    # the same as a pipeline whose process has that shift (it is only the schedule that moves)
    moved = Pipeline(
        vae=pipe.vae, denoiser=pipe.denoiser, text_encoder=pipe.text_encoder,
        process=dataclasses.replace(pipe.process, shift=4.0), settings=pipe.settings,
    )  # fmt: skip
    assert np.array_equal(moved.generate(PROMPT, **kw).frames, shifted.frames)
    # a pipeline's default, and every task takes it
    default = Pipeline(
        vae=pipe.vae, denoiser=pipe.denoiser, text_encoder=pipe.text_encoder, process=pipe.process,
        settings=dataclasses.replace(pipe.settings, shift=4.0),
    )  # fmt: skip
    assert np.array_equal(default.generate(PROMPT, **kw).frames, shifted.frames)
    edited = pipe.edit(own, PROMPT, strength=0.5, shift=4.0, **kw)
    assert edited.metadata["shift"] == 4.0 and not np.array_equal(edited.frames, pipe.edit(own, PROMPT, strength=0.5, **kw).frames)
    assert pipe.extend(own, PROMPT, num_frames=4, shift=4.0, **kw).num_frames == own.num_frames + 4


def test_shift_is_for_flow_matching_pipelines(pipe):
    from kinema.diffusion import VPDiffusion

    vp = Pipeline(vae=pipe.vae, denoiser=pipe.denoiser, text_encoder=pipe.text_encoder, process=VPDiffusion(), settings=pipe.settings)
    with pytest.raises(KinemaError, match="shift applies to flow-matching pipelines; this one samples a VPDiffusion"):
        vp.generate(PROMPT, shift=3.0, num_inference_steps=1)


def test_image_first_makes_frame_zero_as_an_image_then_the_clip_from_it(pipe, capsys):
    kw = dict(seed=5, num_inference_steps=STEPS)
    joint = pipe.generate(PROMPT, **kw)
    factorized = pipe.generate(PROMPT, image_first=True, progress=True, **kw)
    assert "4/4" in capsys.readouterr().err  # two sampling runs of STEPS steps
    image = pipe.generate(PROMPT, num_frames=1, **kw)  # stage one alone: the same seed draws the same noise
    # stage two starts from that image as image-to-video does (the causal decoder makes frame 0 from latent 0 alone)
    from_image = pipe.generate(PROMPT, image=image.frames[0], **kw)
    assert np.array_equal(factorized.frames[0], from_image.frames[0])
    assert factorized.frames.shape == joint.frames.shape and not np.array_equal(factorized.frames, joint.frames)
    assert factorized.metadata["image_first"] is True and "image_first" not in joint.metadata
    # image-to-video is given its frame 0: the setting does not apply
    given = pipe.generate(PROMPT, image=picture(), **kw)
    assert np.array_equal(pipe.generate(PROMPT, image=picture(), image_first=True, **kw).frames, given.frames)


def test_vp_process_and_other_samplers(pipe):
    from kinema.diffusion import VPDiffusion

    vp = Pipeline(vae=pipe.vae, denoiser=pipe.denoiser, text_encoder=pipe.text_encoder, process=VPDiffusion(prediction="v"), settings=pipe.settings)
    for sampler in ("dpmpp_2m", "heun", "unipc"):
        video = vp.generate(PROMPT, seed=0, num_inference_steps=2, sampler=sampler)
        assert video.frames.shape == (9, 16, 16, 3) and video.metadata["sampler"] == sampler
    assert vp.model_hash != pipe.model_hash  # the process is part of what the model is


def test_a_unet_denoiser_pipeline_generates_and_round_trips(pipe, tmp_path):
    from kinema.models.unet3d import UNet3D, unet_tiny

    torch.manual_seed(0)
    unet = UNet3D(unet_tiny(latent_channels=4, text_dim=32))
    torch.nn.init.normal_(unet.conv_out.weight, std=0.02)
    u = Pipeline(vae=pipe.vae, denoiser=unet, text_encoder=pipe.text_encoder, process=pipe.process, settings=pipe.settings)
    video = u.generate(PROMPT, seed=0, num_inference_steps=1)
    loaded = Pipeline.load(u.save(tmp_path / "unet"))
    assert json.loads((tmp_path / "unet" / "pipeline.json").read_text())["components"]["denoiser"]["kind"] == "unet3d"
    assert np.array_equal(loaded.generate(PROMPT, seed=0, num_inference_steps=1).frames, video.frames)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_same_seed_same_precision_same_frames(pipe, precision):
    try:
        pipe.to(precision=precision)
        a, b = (pipe.generate(PROMPT, seed=3, num_inference_steps=1) for _ in range(2))
    finally:
        pipe.to(precision="fp32")
    assert a.frames.shape == (9, 16, 16, 3) and np.array_equal(a.frames, b.frames)
    assert a.metadata["precision"] == precision  # what the models ran in, recorded


def test_auto_precision_is_what_this_device_pays_for(pipe):
    from kinema.precision import resolve

    auto = Pipeline(vae=pipe.vae, denoiser=pipe.denoiser, text_encoder=pipe.text_encoder, process=pipe.process)
    assert auto.settings.precision == "auto" and auto.precision == resolve("auto", "cpu") in ("fp32", "bf16")
    assert auto.generate(PROMPT, seed=0, num_inference_steps=1).metadata["precision"] == auto.precision
    assert auto.to(precision="fp32").precision == "fp32"
    with pytest.raises(KinemaError, match="precision must be one of auto, fp32, bf16"):
        auto.to(precision="fp16")


def test_progress_bars_count_every_step_and_every_decoded_chunk(pipe, capsys):
    pipe.generate(PROMPT, seed=0, num_videos=2, num_inference_steps=3, progress=True)
    err = capsys.readouterr().err
    chunks = 2 * pipe.vae.num_chunks(3)  # 9 frames: 3 latent frames a clip
    assert "generate: sampling: 100%" in err and "6/6" in err
    assert "generate: decoding: 100%" in err and f"{chunks}/{chunks}" in err


# ----------------------------------------------------------------------------------------------
# Save and load


def test_save_load_round_trip_gives_identical_outputs(pipe, clip, tmp_path):
    path = pipe.save(tmp_path / "pipe")
    manifest = json.loads((path / "pipeline.json").read_text())
    assert manifest["format"] == storage.FORMAT and manifest["hash"] == pipe.model_hash
    assert set(manifest["components"]) == {"vae", "denoiser", "text_encoder"}
    assert manifest["components"]["denoiser"]["kind"] == "dit" and manifest["components"]["text_encoder"]["tokenizer"] == "bytes"
    assert manifest["provenance"]["preset"] == "tiny" and manifest["sampling"]["num_frames"] == 9
    assert manifest["process"]["kind"] == "flow_matching"
    for record in manifest["components"].values():
        for name, sha in record["files"].items():
            assert checkpoint.weights_hash(path / name) == sha

    loaded = Pipeline.load(path)
    assert loaded.model_hash == pipe.model_hash and loaded.settings == pipe.settings
    again = loaded.generate(PROMPT, seed=0, num_inference_steps=STEPS)
    assert np.array_equal(again.frames, clip.frames)

    from kinema.models.checkpoint import load_model  # each component also loads alone

    vae = load_model(path, "vae")
    assert vae.config == pipe.vae.config


def test_save_replaces_a_pipeline_and_refuses_other_folders(pipe, tmp_path):
    pipe.save(tmp_path / "p")
    pipe.save(tmp_path / "p")  # over an existing pipeline: fine
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(KinemaError, match="holds files and is not a pipeline directory"):
        pipe.save(tmp_path / "other")
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


@pytest.fixture(scope="module")
def saved(pipe, tmp_path_factory):
    return pipe.save(tmp_path_factory.mktemp("saved") / "pipe")


def broken_copy(saved, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(saved, target)
    return target


def test_load_names_a_missing_component_file(saved, tmp_path):
    path = broken_copy(saved, tmp_path)
    (path / "denoiser.safetensors").unlink()
    with pytest.raises(KinemaError, match=r"missing component file\(s\) denoiser.safetensors \(denoiser\)"):
        Pipeline.load(path)


def test_load_names_a_hash_mismatch(saved, tmp_path):
    path = broken_copy(saved, tmp_path)
    data = bytearray((path / "vae.safetensors").read_bytes())
    data[-1] ^= 1
    (path / "vae.safetensors").write_bytes(bytes(data))
    with pytest.raises(KinemaError, match=r"hash mismatch for vae.safetensors \(sha256 \w+, pipeline.json says \w+\)"):
        Pipeline.load(path)


def test_load_names_a_config_that_does_not_fit_its_weights(saved, tmp_path):
    path = broken_copy(saved, tmp_path)
    manifest = json.loads((path / "pipeline.json").read_text())
    manifest["components"]["denoiser"]["config"]["num_layers"] = 3
    manifest["hash"] = storage.model_hash(manifest["components"], manifest["process"])
    (path / "pipeline.json").write_text(json.dumps(manifest))
    with pytest.raises(KinemaError, match=r"weights do not fit the denoiser config.*missing \['blocks.2"):
        Pipeline.load(path)


def test_load_refuses_a_hand_edited_manifest(saved, tmp_path):
    path = broken_copy(saved, tmp_path)
    manifest = json.loads((path / "pipeline.json").read_text())
    manifest["process"]["shift"] = 3.0
    (path / "pipeline.json").write_text(json.dumps(manifest))
    with pytest.raises(KinemaError, match="does not match its components"):
        Pipeline.load(path)


def test_load_refuses_what_is_not_a_pipeline(tmp_path):
    with pytest.raises(KinemaError, match="not a kinema pipeline: no pipeline.json"):
        Pipeline.load(tmp_path)
    (tmp_path / "pipeline.json").write_text("{not json")
    with pytest.raises(KinemaError, match="not valid JSON"):
        Pipeline.load(tmp_path)
    (tmp_path / "pipeline.json").write_text(json.dumps({"kind": "vae", "vae": "vae"}))
    with pytest.raises(KinemaError, match="holds a VAE only"):
        Pipeline.load(tmp_path)
    with pytest.raises(KinemaError, match="no such pipeline directory"):
        Pipeline.load(tmp_path / "nothing" / "here")


def test_unknown_names_list_the_shipped_ones(saved, tmp_path, monkeypatch):
    monkeypatch.setattr(storage, "SHIPPED", tmp_path / "none")
    with pytest.raises(KinemaError, match="no pipeline named 'shapes' is shipped yet; pass --model DIR"):
        Pipeline.load("shapes")
    shipped = tmp_path / "assets"
    shutil.copytree(saved, shipped / "tiny")
    monkeypatch.setattr(storage, "SHIPPED", shipped)
    assert storage.shipped_pipelines() == ["tiny"]
    assert Pipeline.load("tiny").model_hash == json.loads((saved / "pipeline.json").read_text())["hash"]
    with pytest.raises(KinemaError, match="no pipeline named 'shapes'; shipped pipelines: tiny"):
        Pipeline.load("shapes")


# ----------------------------------------------------------------------------------------------
# Checks before any work


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_inference_steps=0), r"steps \(num_inference_steps\) must be an integer >= 1, got 0"),
        (dict(guidance_scale=-1.0), r"guidance \(guidance_scale\) must be a number >= 0"),
        (dict(guidance_interval=(0.5, 0.2)), r"guidance_interval must be \(sigma_lo, sigma_hi\) with 0 <= lo <= hi"),
        (dict(guidance_interval=0.5), r"guidance_interval must be .*Got 0.5"),
        (dict(image_first="yes"), "image_first must be True or False, got 'yes'"),
        (dict(shift=0.0), r"shift must be a number > 0 \(the sampling schedule's noise-level shift\), got 0.0"),
        (dict(shift="3"), "shift must be a number > 0"),
        (dict(sampler="euler_a"), "unknown sampler 'euler_a'; choose one of euler, heun, dpmpp_2m, ddim, ddpm, unipc"),
        (dict(num_frames=10), "num_frames=10 cannot be made: this model makes 1 \\+ 4k frames; use 9 or 13"),
        (dict(num_frames=0), "num_frames must be an integer >= 1"),
        (dict(height=20), r"size 20x16 \(HxW\) cannot be made: this model needs multiples of 8.*height 20 \(use 16 or 24\)"),
        (dict(num_videos=0), "num_videos must be an integer >= 1"),
        (dict(seed=-1), "seed must be an integer"),
        (dict(fps=0), "fps must be a number > 0"),
        (dict(image=np.zeros((2, 16, 16, 3), np.uint8)), "image must be one image, got a clip of 2 frames"),
        (dict(image=np.zeros((16, 16), np.float32)), "a numpy array must be uint8"),
        (dict(image=np.zeros((16, 16, 3), np.uint8), num_frames=1), "num_frames=1 cannot be made.*at least 5; use 5"),
    ],
)
def test_generate_refuses_bad_arguments(pipe, kwargs, message):
    with pytest.raises(KinemaError, match=message):
        pipe.generate(PROMPT, **kwargs)


def test_other_tasks_refuse_bad_arguments(pipe, clip):
    img = picture()
    with pytest.raises(KinemaError, match="strength must be in \\(0, 1\\]"):
        pipe.edit(clip, PROMPT, strength=0.0)
    with pytest.raises(KinemaError, match="strength must be in \\(0, 1\\]"):
        pipe.edit(clip, PROMPT, strength=1.5)
    with pytest.raises(KinemaError, match="strength 0.1 of 4 steps runs no step; use strength >= 0.125"):
        pipe.edit(clip, PROMPT, strength=0.1, num_inference_steps=4)
    with pytest.raises(KinemaError, match="video frames=8 cannot be made.*use 5 or 9"):
        pipe.edit(clip.frames[:8], PROMPT)
    with pytest.raises(KinemaError, match="mask is 8x8 \\(HxW\\) but the clip is 16x16"):
        pipe.edit(clip, PROMPT, mask=np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(KinemaError, match="num_frames=5 cannot be made.*at least 9; use 9"):
        pipe.interpolate(img, img, PROMPT, num_frames=5)
    with pytest.raises(KinemaError, match="context_frames=3 cannot be used.*1 \\+ 4k context frames, at most 5.*use 1 or 5"):
        pipe.extend(clip, PROMPT, num_frames=4, context_frames=3)
    with pytest.raises(KinemaError, match="num_frames \\(frames to add\\) must be an integer >= 1"):
        pipe.extend(clip, PROMPT, num_frames=0)
    with pytest.raises(KinemaError, match="prompt must be a string or a non-empty list"):
        pipe.generate([])


def test_unreadable_inputs_give_the_video_error(pipe, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(VideoError, match="broken.png"):
        pipe.generate(PROMPT, image=bad)
    with pytest.raises(VideoError, match="no such file"):
        pipe.extend(tmp_path / "missing.mp4", PROMPT, num_frames=4)


def test_pipeline_refuses_parts_that_do_not_fit(pipe):
    from kinema.models.text import TextEncoder, text_tiny

    with pytest.raises(KinemaError, match="does not fit the VAE .* and the text encoder \\(dim 48\\).*text_dim"):
        Pipeline(vae=pipe.vae, denoiser=pipe.denoiser, text_encoder=TextEncoder(text_tiny(dim=48)), process=pipe.process)


def test_sampling_settings_are_checked_and_round_trip():
    from kinema import config as cfg

    with pytest.raises(ValueError, match="SamplingSettings.sampler must be one of"):
        SamplingSettings(sampler="nope")
    with pytest.raises(ValueError, match="SamplingSettings.steps must be an int >= 1"):
        SamplingSettings(steps=0)
    with pytest.raises(ValueError, match="SamplingSettings.image_first must be True or False"):
        SamplingSettings(image_first="yes")
    with pytest.raises(ValueError, match="SamplingSettings.guidance_interval must be"):
        SamplingSettings(guidance_interval=(1.0, 0.5))
    with pytest.raises(ValueError, match="SamplingSettings.shift must be > 0 or None"):
        SamplingSettings(shift=-1.0)
    s = SamplingSettings(steps=12, guidance=5.0, guidance_interval=(0.3, 1.0), shift=4.0, image_first=True, num_frames=33, height=64, width=96)
    assert cfg.from_dict(SamplingSettings, json.loads(json.dumps(cfg.to_dict(s)))) == s
    assert SamplingSettings(guidance_interval=(0, math.inf)).guidance_interval is None  # every step


def test_check_frames_names_the_nearest_valid_counts(pipe):
    assert common.check_frames(pipe, 9) == 3 and common.check_frames(pipe, 1) == 1
    with pytest.raises(KinemaError, match="use 17 or 21"):
        common.check_frames(pipe, 18)
