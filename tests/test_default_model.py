"""The shipped default pipeline (`shapes`): it loads by name, `kinema generate` uses it without --model,
and what it makes follows its prompts. These are floors that catch a broken or badly shipped model;
its measured quality is `kinema eval shapes` (reports/shapes-model/, README)."""

import json

import pytest

from kinema.cli import main
from kinema.data.shapes import ShapesDataset, caption_for, render_clip
from kinema.eval.shapes_eval import PROMPT_SEED, as_batch
from kinema.eval.shapes_probe import score
from kinema.pipelines import Pipeline, shipped_pipelines
from kinema.pipelines.storage import SHIPPED
from kinema.video import read_video

N = 8  # train-split prompts of the evaluation (its first N), one seed each


@pytest.fixture(scope="module")
def pipe():
    return Pipeline.load("shapes")


@pytest.fixture(scope="module")
def scenes():
    # the shipped model (version 1) predates the bouncing motions: its first N train prompts without them
    data = ShapesDataset(size=64, frames=17, split="train", objects=1, length=8 * N, seed=PROMPT_SEED)
    scenes = (data.attributes(i) for i in range(len(data)))
    return [s for s in scenes if not s[0]["bouncing"]][:N]


def test_shapes_is_shipped_small_and_loads_by_name(pipe):
    assert "shapes" in shipped_pipelines()
    assert sum(f.stat().st_size for f in (SHIPPED / "shapes").iterdir()) < 50 * 2**20
    s = pipe.settings
    assert (s.num_frames, s.height, s.width, s.fps) == (17, 64, 64, 8.0)
    assert pipe.provenance  # how it was trained travels with it


def test_its_preset_exports_the_sampling_it_ships_with(pipe):
    """Retraining with `kinema train shapes-dit` gives a pipeline that samples as the shipped one does."""
    from kinema.train.presets import load_config
    from kinema.train.stages import sampling_settings

    assert sampling_settings(load_config("shapes-dit")) == pipe.settings


def test_text_to_video_follows_train_prompts(pipe, scenes):
    results = [score(pipe.generate(caption_for(o), seed=i).frames, caption_for(o)) for i, o in enumerate(scenes)]
    assert sum(r["colour"] for r in results) >= N - 1, [r["measured"]["colour"] for r in results]
    assert sum(r["measured"]["colour"] is not None for r in results) == N  # an object in every clip
    assert sum(r["correct"] for r in results) >= N - 2, [r["measured"] for r in results]  # 8 of 8 at shipping


def test_image_to_video_keeps_the_frame_and_moves_as_asked(pipe, scenes):
    from kinema.eval.metrics import psnr

    reals = [render_clip(o, 64, 17) for o in scenes[:4]]
    clips = [pipe.generate(caption_for(o), image=real[:1], seed=i).frames for i, (o, real) in enumerate(zip(scenes, reals))]
    first = psnr(as_batch([c[:1] for c in clips]), as_batch([r[:1] for r in reals]))
    assert (first >= 30).all(), first
    results = [score(c, caption_for(o)) for c, o in zip(clips, scenes)]
    assert all(r["colour"] for r in results) and sum(r["motion"] for r in results) >= 3, [r["measured"] for r in results]


def test_kinema_generate_uses_it_without_model(tmp_path):
    out = tmp_path / "red.gif"
    main(["generate", "a red circle moving right", "--out", str(out), "--seed", "0", "--quiet"])
    video = read_video(out)
    manifest = json.loads((SHIPPED / "shapes" / "pipeline.json").read_text())
    assert video.num_frames == 17 and video.frames.shape[1:] == (64, 64, 3)
    assert video.metadata["model_hash"] == manifest["hash"]
    assert video.metadata["prompt"] == "a red circle moving right" and video.metadata["seed"] == 0
    assert score(video.frames, "a red circle moving right")["measured"]["colour"] is not None  # it drew something
