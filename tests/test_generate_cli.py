"""`kinema generate` on a tiny random pipeline saved to a temporary folder: every task, outputs with
their metadata, numbering, and exit code 2 with a one-line message for each bad argument."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kinema.cli import main
from kinema.pipelines.presets import random_pipeline
from kinema.video import Video, read_video

PROMPT = "a red circle moving right"


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return random_pipeline("tiny", seed=0).save(tmp_path_factory.mktemp("model") / "pipe")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """An image, a second image, a 9-frame clip and a mask, all 16x16."""
    folder = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    Video(rng.integers(0, 256, (1, 16, 16, 3), dtype=np.uint8)).save(folder / "first.png")
    Video(rng.integers(0, 256, (1, 16, 16, 3), dtype=np.uint8)).save(folder / "last.png")
    Video(rng.integers(0, 256, (9, 16, 16, 3), dtype=np.uint8)).save(f"{folder}/clip/")
    mask = np.zeros((1, 16, 16, 3), np.uint8)
    mask[:, 4:12, 4:12] = 255
    Video(mask).save(folder / "mask.png")
    return folder


def run(*argv: str) -> None:
    main(["generate", "--steps", "1", "--quiet", *argv])  # argv comes last, so its --steps wins


def fails(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        run(*argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    return err


def test_text_to_video_writes_the_file_and_its_sidecar(model, tmp_path, capsys):
    out = tmp_path / "circle.mp4"
    run(PROMPT, "--model", str(model), "--seed", "3", "--out", str(out), "--guidance", "2.5", "--sampler", "heun",
        "--guidance-interval", "0.5,1", "--image-first", "--shift", "3")
    assert "wrote" in capsys.readouterr().out
    video = read_video(out)
    assert video.num_frames == 9 and (video.height, video.width) == (16, 16)
    m = video.metadata
    assert m["prompt"] == PROMPT and m["seed"] == 3 and m["sampler"] == "heun" and m["steps"] == 1
    assert m["shift"] == 3.0
    assert m["guidance"] == 2.5 and m["guidance_interval"] == "0.5,1" and m["image_first"] is True and m["model_hash"] == json.loads((model / "pipeline.json").read_text())["hash"]
    assert m["kinema_version"]
    sidecar = json.loads((tmp_path / "circle.mp4.json").read_text())
    assert sidecar["file"] == "circle.mp4" and sidecar["metadata"] == m and sidecar["frames"] == 9


def test_two_object_prompts_warn_until_the_model_is_measured_to_draw_them(tmp_path, capsys):
    two = "a red circle moving right and a blue square staying still"
    pipe = random_pipeline("tiny", seed=0)
    shapes = {"train_config": {"data": {"dataset": "shapes-mixed"}}}
    report = {"ci95": [0.0, 0.057], "n": 64, "split": "train", "report": "r.json"}
    for name, quality in (("unmeasured", None), ("poor", 0.0), ("good", 0.9)):
        pipe.provenance = {**shapes, **({} if quality is None else {"quality": {"two_objects": {"joint": quality, **report}}})}
        run(two, "--model", str(pipe.save(tmp_path / name)), "--out", str(tmp_path / f"{name}.gif"), "--steps", "1")
        err = capsys.readouterr().err
        assert (tmp_path / f"{name}.gif").is_file()  # a warning, never an error
        if name == "unmeasured":
            assert "how well this model draws two is not measured (kinema eval shapes --model MODEL --objects 2)" in err
        elif name == "poor":
            assert "right in 0% of clips (0%-6%, 64 train prompts, r.json): expect one object missing" in err
        else:
            assert "draws" not in err  # it passes the bar: nothing to warn about (but the tiny model's 46-byte prompts)
    run(PROMPT, "--model", str(tmp_path / "unmeasured"), "--out", str(tmp_path / "one.gif"), "--steps", "1")
    assert "warning" not in capsys.readouterr().err  # one object: no warning


def test_a_shapes_model_warns_about_prompts_outside_its_captions(tmp_path, capsys):
    pipe = random_pipeline("tiny", seed=0)
    pipe.provenance = {"train_config": {"data": {"dataset": "shapes-mixed"}}}
    shapes_model = pipe.save(tmp_path / "shapes")
    run(PROMPT, "--model", str(shapes_model), "--out", str(tmp_path / "a.gif"))
    assert "warning" not in capsys.readouterr().err  # a shapes caption, size left out
    run("a cat playing the piano", "--model", str(shapes_model), "--out", str(tmp_path / "b.gif"))
    err = capsys.readouterr().err
    assert err.startswith("warning: this model learned shapes captions only") and "'a cat playing the piano'" in err
    assert (tmp_path / "b.gif").is_file()  # a warning, not an error
    other = random_pipeline("tiny", seed=0).save(tmp_path / "other")  # not trained on shapes: no opinion
    run("a cat playing the piano", "--model", str(other), "--out", str(tmp_path / "d.gif"))
    assert "warning" not in capsys.readouterr().err


def test_cli_frames_equal_the_api_frames(model, tmp_path):
    from kinema.pipelines.pipeline import Pipeline

    run(PROMPT, "--model", str(model), "--seed", "5", "--out", f"{tmp_path}/frames/")
    api = Pipeline.load(model).generate(PROMPT, seed=5, num_inference_steps=1)
    assert np.array_equal(read_video(tmp_path / "frames").frames, api.frames)
    assert json.loads((tmp_path / "frames.json").read_text())["metadata"]["seed"] == 5


def test_several_outputs_are_numbered_with_their_seeds(model, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n# a comment\n\na blue square\n")
    run("--prompts", str(prompts), "--num", "2", "--model", str(model), "--seed", "10", "--out", str(tmp_path / "v.gif"))
    seeds = [read_video(tmp_path / f"v_{i:03d}.gif").metadata["seed"] for i in range(4)]
    assert seeds == [10, 11, 12, 13]
    assert read_video(tmp_path / "v_002.gif").metadata["prompt"] == "a blue square"
    assert (tmp_path / "v_003.gif.json").is_file()


def test_image_to_video_and_interpolation(model, files, tmp_path):
    run(PROMPT, "--model", str(model), "--image", str(files / "first.png"), "--out", str(tmp_path / "i2v.gif"), "--seed", "0")
    assert read_video(tmp_path / "i2v.gif").metadata["task"] == "image-to-video"
    run(
        PROMPT, "--model", str(model), "--image", str(files / "first.png"), "--last-image", str(files / "last.png"),
        "--out", str(tmp_path / "flf.gif"), "--seed", "0",
    )  # fmt: skip
    video = read_video(tmp_path / "flf.gif")
    assert video.metadata["task"] == "interpolation" and video.num_frames == 9


def test_frames_past_the_window_make_a_long_video(model, tmp_path):
    out = tmp_path / "long.mp4"
    run(PROMPT, "--model", str(model), "--frames", "25", "--out", str(out), "--seed", "1")
    video = read_video(out)
    assert video.num_frames == 25 and video.metadata["window_frames"] == 9 and video.metadata["seed"] == 1


def test_extension_and_masked_edit(model, files, tmp_path):
    clip = read_video(files / "clip")
    run(PROMPT, "--model", str(model), "--extend", str(files / "clip"), "--frames", "8", "--out", f"{tmp_path}/long/", "--seed", "0")
    longer = read_video(tmp_path / "long")
    assert longer.num_frames == 17 and np.array_equal(longer.frames[:9], clip.frames)
    run(
        "a blue square", "--model", str(model), "--edit", str(files / "clip"), "--strength", "0.5",
        "--mask", str(files / "mask.png"), "--out", f"{tmp_path}/edited/", "--seed", "0",
    )  # fmt: skip
    edited = read_video(tmp_path / "edited")
    keep = read_video(files / "mask.png").frames[0, ..., 0] == 0
    assert np.array_equal(edited.frames[:, keep], clip.frames[:, keep])
    assert edited.metadata["strength"] == 0.5 and edited.metadata["task"] == "inpaint"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--steps", "0"], "steps (num_inference_steps) must be an integer >= 1"),
        (["--guidance", "-1"], "guidance (guidance_scale) must be a number >= 0"),
        (["--guidance-interval", "0.5"], "--guidance-interval '0.5': give LO,HI"),
        (["--guidance-interval", "1,0.5"], "guidance_interval must be (sigma_lo, sigma_hi) with 0 <= lo <= hi"),
        (["--shift", "0"], "--shift must be a number > 0 (the sampling schedule's noise-level shift), got 0.0"),
        (["--sampler", "fast"], "unknown sampler 'fast'; choose one of euler, heun"),
        (["--frames", "10"], "num_frames=10 cannot be made: this model makes 1 + 4k frames; use 9 or 13"),
        (["--size", "20"], "needs multiples of 8"),
        (["--size", "big"], "--size 'big': give HxW"),
        (["--num", "0"], "--num must be an integer >= 1"),
        (["--edit", "{clip}", "--strength", "0"], "strength must be in (0, 1]"),
        (["--edit", "{clip}", "--strength", "1.5"], "strength must be in (0, 1]"),
        (["--strength", "0.5"], "--strength applies to --edit VIDEO only"),
        (["--last-image", "{last}"], "--last-image needs --image"),
        (["--image", "{last}", "--image-first"], "--image-first applies to text-to-video only; --image gives"),
        (["--image", "{last}", "--extend", "{clip}"], "--image and --extend are different tasks"),
        (["--extend", "{clip}"], "--extend needs --frames N"),
        (["--edit", "{clip}", "--frames", "9"], "--frames does not apply to --edit"),
        (["--extend", "{clip}", "--frames", "8", "--size", "16"], "--size does not apply to --extend or --edit"),
        (["--image", "{clip}"], "--image must be one image, got a clip of 9 frames"),
        (["--image", "{missing}"], "no such file"),
        (["--edit", "{clip}", "--mask", "{small}"], "mask is 8x8 (HxW) but the clip is 16x16"),
        (["--out", "{tmp}/video.avi"], "cannot write .avi"),
        (["--out", "{tmp}/one.png"], "a .png file holds one frame but the video has 9"),
        (["--model", "shapez"], "no pipeline named 'shapez'; shipped pipelines: shapes; or pass a pipeline directory"),
        (["--model", "{tmp}/nowhere/"], "no such pipeline directory"),
        (["--device", "cuda"], "CUDA is not available"),
        (["--precision", "fp16"], "--precision must be one of auto, fp32, bf16"),
    ],
)
def test_bad_arguments_exit_2_with_their_message(model, files, tmp_path, capsys, argv, message):
    small = tmp_path / "small.png"
    Video(np.zeros((1, 8, 8, 3), np.uint8)).save(small)
    names = dict(clip=files / "clip", last=files / "last.png", missing=tmp_path / "missing.png", small=small, tmp=tmp_path)
    argv = [a.format(**names) for a in argv]
    if "--model" not in argv:
        argv += ["--model", str(model)]
    if "--device" in argv and __import__("torch").cuda.is_available():
        pytest.skip("CUDA is available here")
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "x.mp4")]
    err = fails(capsys, PROMPT, *argv)
    assert message in err
    assert not list(tmp_path.glob("x.mp4*"))  # nothing written


def test_prompt_is_required_and_exclusive(model, tmp_path, capsys):
    assert "a prompt is needed" in fails(capsys, "--model", str(model))
    prompts = tmp_path / "p.txt"
    prompts.write_text("a\n")
    assert "give PROMPT or --prompts FILE, not both" in fails(capsys, PROMPT, "--prompts", str(prompts), "--model", str(model))


def test_only_a_process_entry_freezes_the_heap(model, tmp_path, monkeypatch):
    """main() freezes the GC heap to end quickly, but only as a process's entry point (argv None): a caller
    in the same process (a test, a notebook) keeps collecting its garbage."""
    import gc

    before = gc.get_freeze_count()
    run(PROMPT, "--model", str(model), "--out", str(tmp_path / "a.mp4"))
    assert gc.get_freeze_count() == before
    monkeypatch.setattr(sys, "argv", ["kinema", "--help"])
    try:
        main()  # prints the help
        assert gc.get_freeze_count() > before
    finally:
        gc.unfreeze()


def test_a_real_process(model, tmp_path):
    """`python -m kinema generate` end to end (bad input's exit code 2 is checked in-process above, through the same main)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    ok = subprocess.run(
        [sys.executable, "-m", "kinema", "generate", PROMPT, "--model", str(model), "--steps", "1", "--seed", "0",
         "--out", str(tmp_path / "a.mp4")],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "a.mp4").is_file() and (tmp_path / "a.mp4.json").is_file()
    assert "generate: sampling: 100%" in ok.stderr and "generate: decoding: 100%" in ok.stderr  # bars, on stderr
