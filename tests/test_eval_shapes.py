"""The shapes evaluation: reference rows, wrong clips failing on exactly their attribute, tasks, the
within-frame reference, and `kinema eval shapes` end to end on a tiny random pipeline."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from kinema.data.shapes import make_object, render_clip
from kinema.errors import KinemaError
from kinema.eval.report import write_report
from kinema.eval.shapes_eval import TASKS, WithinFrame, draw_windows, evaluate_shapes, shapes_markdown
from kinema.eval.shapes_probe import parse_caption, parse_captions
from kinema.video import Video, read_video

FRAMES = 9


class Renderer:
    """A stand-in pipeline: renders what each prompt asks, with some attributes of its last object replaced by `wrong`."""

    model_hash = "renderer"
    precision = "fp32"

    def __init__(self, frames=FRAMES, **wrong):
        self.settings = SimpleNamespace(height=64, width=64, num_frames=frames, steps=1, sampler="euler", guidance=1.0, guidance_interval=None, shift=None, image_first=False)
        self.wrong = wrong

    def clip(self, prompt, frames, seed):
        *asked, last = parse_captions(prompt)
        rng = np.random.default_rng(seed)
        objects = [
            make_object(**a, canvas=64, frames=frames, start=tuple(rng.random(2)), distance=float(rng.random()))
            for a in [*asked, {**last, **self.wrong}]
        ]  # fmt: skip
        return render_clip(objects, 64, frames)

    def generate(self, prompt, *, num_frames=None, height=None, width=None, image=None, seed=0, **kw):
        frames = self.clip(prompt, num_frames, seed)
        if image is not None:
            frames[0] = image[0]  # image-to-video keeps the given frame
        return Video(frames, metadata={"prompt": prompt, "seed": seed})

    def extend(self, video, prompt, *, num_frames, seed=0, **kw):
        given = len(video.frames if isinstance(video, Video) else video)
        return Video(self.clip(prompt, given + num_frames, seed), metadata={"prompt": prompt})  # one scene, given frames redrawn


def run(variant, task="t2v", n=6, **kw):
    return evaluate_shapes(variant, model="renderer", n=n, split="all", task=task, variants=[("model", "model", variant)], vae_row=False, **kw)


def rows(report):
    return {r["name"]: r for r in report["rows"]}


def test_real_and_faithful_clips_score_100_percent():
    report, sheet = run(Renderer())
    for name in ("model", "real"):
        acc = rows(report)[name]["accuracy"]
        assert all(acc[k]["rate"] == 1.0 for k in ("colour", "shape", "motion", "size", "joint")), (name, acc)
        assert rows(report)[name]["present_all_frames"]["rate"] == 1.0
    real = rows(report)["real"]
    assert real["seconds_per_clip"] is None and real["fvd"] > 0  # two independent real draws differ a little
    assert real["flicker"] > 0 and rows(report)["model"]["flicker"] > 0
    assert len(report["clips"]) == 6 and all(c["real"]["correct"] for c in report["clips"])
    assert sheet["passed"] == [True] * 6 and sheet["clips"][0].shape == (FRAMES, 64, 64, 3)


@pytest.mark.parametrize(("attribute", "value"), [("colour", "magenta"), ("shape", "triangle"), ("motion", "down")])
def test_a_model_that_gets_one_attribute_wrong_fails_on_exactly_that_attribute(attribute, value):
    report, _ = run(Renderer(**{attribute: value}), n=8)
    acc = rows(report)["model"]["accuracy"]
    asked = [parse_caption(c["prompt"])[attribute] for c in report["clips"]]
    wrong = sum(a != value for a in asked)  # prompts that asked for something else
    assert acc[attribute]["k"] == 8 - wrong and wrong > 0
    assert acc["joint"]["k"] == 8 - wrong
    for other in {"colour", "shape", "motion"} - {attribute}:
        assert acc[other]["rate"] == 1.0
    assert rows(report)["real"]["accuracy"]["joint"]["rate"] == 1.0
    for clip in report["clips"]:
        assert clip["model"][attribute] == (parse_caption(clip["prompt"])[attribute] == value)


def test_image_to_video_reports_the_first_frame_psnr():
    report, _ = run(Renderer(), task="i2v", n=3)
    model = rows(report)["model"]
    assert model["first_frame_psnr"] == pytest.approx(100.0) and rows(report)["real"]["first_frame_psnr"] is None
    assert model["accuracy"]["joint"]["rate"] == 1.0


@pytest.mark.parametrize("frames", [None, 65])
def test_extension_probes_every_window_of_lasting_motions(frames, tmp_path):
    report, sheet = run(Renderer(), task="extend", n=6, frames=frames)
    total = 33 if frames is None else frames  # default: 4x the 9-frame clip
    spans = [[16 * k, 16 * k + 17] for k in range((total - 1) // 16)]
    assert report["clip"] == {"frames": total, "size": 64, "given_frames": FRAMES, "probe_windows": spans}
    motions = [parse_caption(c["prompt"])["motion"] for c in report["clips"]]
    assert motions == ["bouncing left and right", "bouncing up and down", "still"] * 2
    for name in ("model", "real"):  # a faithful continuation, and the real clip rendered that long
        r = rows(report)[name]
        assert [w["frames"] for w in r["windows"]] == spans
        assert all(w["accuracy"]["joint"]["rate"] == w["bouncing_joint"]["rate"] == 1.0 for w in r["windows"])
        assert r["still_stays_put"]["rate"] == 1.0 and r["still_stays_put"]["n"] == motions.count("still")
    assert sheet["clips"][0].shape[0] == 17  # the sheet shows the last probe window
    # A model that stops every object fails bouncing prompts on motion, in every window, and keeps still ones still.
    report, _ = run(Renderer(motion="still"), task="extend", n=6, frames=frames)
    model = rows(report)["model"]
    bouncing = sum(m != "still" for m in motions)
    for w in model["windows"]:
        acc = w["accuracy"]
        assert acc["colour"]["rate"] == acc["shape"]["rate"] == 1.0 and acc["motion"]["k"] == 6 - bouncing
        assert (w["bouncing_joint"]["k"], w["bouncing_joint"]["n"]) == (0, bouncing)
    assert model["accuracy"] == model["windows"][-1]["accuracy"] and model["still_stays_put"]["rate"] == 1.0
    text = shapes_markdown(report)
    assert "Joint accuracy by window" in text and "Bouncing prompts:" in text and f"window {len(spans) - 1} (frames {spans[-1][0]}-{spans[-1][1] - 1})" in text
    assert "Still objects that stay put (moved < 0.10 S over the whole clip): model 100.0%" in text
    paths = write_report(report, sheet, tmp_path / "x.json", shapes_markdown, {"windows": draw_windows})
    assert paths["windows"].endswith("x-windows.png") and (tmp_path / "x-windows.png").stat().st_size > 0


def test_extension_refuses_what_it_cannot_probe():
    with pytest.raises(KinemaError, match="--frames 13: the extend task continues the pipeline's 9-frame clip to more frames, at least 17"):
        run(Renderer(), task="extend", frames=13)
    with pytest.raises(KinemaError, match="--frames applies to --task extend"):
        run(Renderer(), task="t2v", frames=33)
    with pytest.raises(KinemaError, match="--task extend draws one-object prompts of lasting motions"):
        run(Renderer(), task="extend", objects=2)


def test_bouncing_prompts_are_left_out_of_clips_too_short_to_tell_them():
    from kinema.eval.shapes_eval import grid_scenes, told_apart

    report, _ = run(Renderer(), n=40)  # 9-frame clips: no bouncing prompt
    assert not any("bouncing" in c["prompt"] for c in report["clips"]) and len(report["clips"]) == 40
    assert not any(told_apart(s, 9) is False for s in grid_scenes("all", 64, 9, 1))
    assert sum(s[0]["bouncing"] for s in grid_scenes("all", 64, 17, 1)) == 2 * 48  # 48 bouncing combinations, 2 sizes


def test_grid_covers_every_combination_of_the_split_at_both_sizes():
    from kinema.data.shapes import HELDOUT_COMBOS, is_bouncing
    from kinema.eval.report import percent

    report, _ = evaluate_shapes(
        Renderer(shape="square"), model="renderer", split="heldout", per_combination=2,
        variants=[("model", "model", Renderer(shape="square"))], vae_row=False,
    )  # fmt: skip
    told = [c for c in HELDOUT_COMBOS if not is_bouncing(c[2])]  # 9-frame clips: too short to tell bouncing
    assert report["n"] == len(told) * 2 * 2 == len(report["clips"]) and report["per_combination"] == 2
    asked = [parse_caption(c["prompt"]) for c in report["clips"]]
    combos = {(a["colour"], a["shape"], a["motion"]) for a in asked}
    assert len(combos) == len(told) == 15
    assert sum(a["size"] == "small" for a in asked) == sum(a["size"] == "large" for a in asked) == 30
    model = rows(report)["model"]
    squares = sum(a["shape"] == "square" for a in asked)
    assert model["accuracy"]["joint"]["k"] == squares  # only prompts that asked for a square pass
    by_size = model["joint_by_size"]
    assert by_size["small"]["n"] == by_size["large"]["n"] == 30 and by_size["small"]["k"] + by_size["large"]["k"] == squares
    assert "every combination of the split at both sizes, 2 each" in shapes_markdown(report)
    assert percent(by_size["small"]) in shapes_markdown(report)
    with pytest.raises(KinemaError, match="per-combination must be an int >= 1"):
        evaluate_shapes(Renderer(), per_combination=0)


def test_two_object_prompts_are_scored_object_by_object():
    report, sheet = run(Renderer(), n=8, objects=2)
    assert report["objects"] == 2 and all(len(parse_captions(c["prompt"])) == 2 for c in report["clips"])
    for name in ("model", "real"):
        row = rows(report)[name]
        assert row["accuracy"]["joint"]["rate"] == 1.0 and row["per_object"]["accuracy"]["joint"]["k"] == 16
        assert "joint_by_size" not in row and sum(p["n"] for p in row["object_by_size"].values()) == 16
        assert row["first_frame_colour_differs"] is None and 0 <= row["stray_share"] < 0.01
    assert all(len(c["model"]["objects"]) == 2 for c in report["clips"]) and sheet["passed"] == [True] * 8
    text = shapes_markdown(report)
    assert "8 random prompts of 2 objects" in text and "| object (each) |" in text and "Two objects:" in text
    assert "Warning" not in text and "RMS over objects" in text

    one, _ = run(Renderer(), n=2)  # one object: the report as before, with the count recorded
    assert one["objects"] == 1 and "per_object" not in rows(one)["model"] and "joint_by_size" in rows(one)["model"]
    assert "Two objects" not in shapes_markdown(one) and "| object (each) |" not in shapes_markdown(one)


def test_a_model_that_gets_one_object_wrong_fails_on_that_object():
    report, _ = run(Renderer(shape="triangle"), n=8, objects=2)  # the second object always a triangle
    model = rows(report)["model"]
    wrong = sum(parse_captions(c["prompt"])[1]["shape"] != "triangle" for c in report["clips"])
    assert 0 < wrong < 8 and model["accuracy"]["joint"]["k"] == model["accuracy"]["shape"]["k"] == 8 - wrong
    assert model["per_object"]["accuracy"]["joint"]["k"] == 16 - wrong
    assert model["accuracy"]["colour"]["rate"] == model["accuracy"]["motion"]["rate"] == 1.0
    assert all(c["model"]["objects"][0]["correct"] for c in report["clips"])
    assert rows(report)["real"]["accuracy"]["joint"]["rate"] == 1.0


def test_two_objects_refuse_a_grid_and_other_counts():
    with pytest.raises(KinemaError, match="--per-combination covers the one-object combinations"):
        evaluate_shapes(Renderer(), per_combination=1, objects=2)
    with pytest.raises(KinemaError, match="--objects must be 1 or 2"):
        run(Renderer(), objects=3)


class ChannelVAE:
    """A VAE whose latents are the pixels; decoding reorders the colour channels by `order`."""

    def __init__(self, order):
        self.order = list(order)

    def encode(self, x):
        return x

    def decode(self, z, progress=None):
        return z[:, self.order]


@pytest.mark.parametrize(("order", "exact"), [((0, 1, 2), True), ((2, 1, 0), False)])
def test_the_vae_row_is_the_real_clips_through_the_pipelines_vae(order, exact):
    import contextlib

    pipe = Renderer()
    pipe.vae, pipe.device, pipe.autocast = ChannelVAE(order), torch.device("cpu"), contextlib.nullcontext
    report, _ = evaluate_shapes(pipe, model="renderer", n=6, split="all", task="i2v", variants=[("model", "model", pipe)])
    assert [r["name"] for r in report["rows"]] == ["model", "vae", "real"]
    vae, real = rows(report)["vae"], rows(report)["real"]
    assert vae["seconds_per_clip"] is None and real["first_frame_psnr"] is None
    if exact:  # a lossless VAE: the ceiling is the real clips themselves
        assert vae["accuracy"] == real["accuracy"] and vae["first_frame_psnr"] == pytest.approx(100.0)
        assert vae["fvd"] == pytest.approx(0.0, abs=1e-2)  # the same clips as the FVD's reference
    else:  # red and blue swapped: shape and motion survive, colour only where swapping R and B keeps it
        asked = [parse_caption(c["prompt"])["colour"] for c in report["clips"]]
        kept = sum(c in ("green", "magenta", "white") for c in asked)
        assert vae["accuracy"]["shape"]["rate"] == vae["accuracy"]["motion"]["rate"] == 1.0
        assert vae["accuracy"]["colour"]["k"] <= kept < 6 and vae["first_frame_psnr"] < 60  # lossless gives 100
    assert "most the model row can reach" in shapes_markdown(report)


def test_tasks_are_data():
    assert set(TASKS) == {"t2v", "i2v", "extend"}
    assert TASKS["i2v"].first_frame_psnr and TASKS["extend"].continues and not TASKS["t2v"].continues
    with pytest.raises(KinemaError, match="unknown task 'v2v'; choose one of t2v, i2v, extend"):
        run(Renderer(), task="v2v")
    with pytest.raises(KinemaError, match="at least 64x64"):
        small = Renderer()
        small.settings.height = small.settings.width = 32
        run(small)


def test_report_files_and_markdown(tmp_path):
    report, sheet = run(Renderer(shape="square"), n=4)
    paths = write_report(report, sheet, tmp_path / "r.json", shapes_markdown)
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["fvd"]["label"] == "FVD (kinema-shapes features, non-standard)" and data["fvd"]["standard"] is False
    text = (tmp_path / "r.md").read_text()
    assert "non-standard" in text and "real clips (reference)" in text and "Warning" not in text
    from PIL import Image

    assert Image.open(paths["contact_sheet"]).size[1] > 4 * 64
    with pytest.raises(KinemaError, match="ending in .json"):
        write_report(report, sheet, tmp_path / "r.txt", shapes_markdown)


# ----------------------------------------------------------------------------- the within-frame reference


def test_within_frame_dit_equals_attention_restricted_to_each_frame():
    from kinema.models.dit import DiT, dit_tiny

    torch.manual_seed(0)
    model = DiT(dit_tiny(latent_channels=4, text_dim=32)).eval()
    for p in model.head.parameters():  # the head is zero-initialised; give it weights so outputs differ
        torch.nn.init.normal_(p, std=0.5)
    x, t = torch.randn(2, 9, 3, 4, 4), torch.tensor([500.0, 20.0])
    context, mask = torch.randn(2, 5, 32), torch.tensor([[True] * 5, [True, True, True, False, False]])
    ours = WithinFrame(model)(x, t, context, mask)

    reference = DiT(model.config).eval()
    reference.load_state_dict(model.state_dict())
    for block in reference.blocks:
        assert block.kind == "full"  # DiTBlock.kind: which tokens its self-attention mixes
        block.kind = "spatial"  # every block attends within its frame only
    with torch.no_grad():
        expected = reference(x, t, context, mask)
        full = model(x, t, context, mask)
    assert torch.allclose(ours, expected, atol=1e-5)
    assert not torch.allclose(full, expected, atol=1e-3)  # the full model does mix frames


def test_within_frame_unet_frames_do_not_see_each_other():
    from kinema.models.unet3d import UNet3D, unet_tiny

    torch.manual_seed(0)
    model = UNet3D(unet_tiny(latent_channels=4, text_dim=32)).eval()
    for p in model.parameters():  # zero-initialised outputs and temporal layers would hide any mixing
        torch.nn.init.normal_(p, std=0.1)
    x, t, context = torch.randn(1, 9, 3, 8, 8), torch.tensor([300.0]), torch.randn(1, 4, 32)
    changed = x.clone()
    changed[:, :, 2] += 1.0
    with torch.no_grad():
        a, b = WithinFrame(model)(x, t, context), WithinFrame(model)(changed, t, context)
        full_a, full_b = model(x, t, context), model(changed, t, context)
    assert torch.equal(a[:, :, :2], b[:, :, :2]) and not torch.allclose(a[:, :, 2], b[:, :, 2])
    assert not torch.allclose(full_a[:, :, :2], full_b[:, :, :2])


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory):
    from kinema.diffusion import FlowMatching
    from kinema.models.dit import DiT, dit_tiny
    from kinema.models.text import TextEncoder, text_tiny
    from kinema.models.vae import VideoVAE, vae_tiny
    from kinema.pipelines import Pipeline, SamplingSettings

    torch.manual_seed(0)
    pipe = Pipeline(
        vae=VideoVAE(vae_tiny()), denoiser=DiT(dit_tiny(latent_channels=4, text_dim=32)),
        text_encoder=TextEncoder(text_tiny()), process=FlowMatching(),
        settings=SamplingSettings(steps=1, guidance=1.0, num_frames=5, height=64, width=64),
    )  # fmt: skip
    return pipe.save(tmp_path_factory.mktemp("pipe") / "tiny")


def test_eval_shapes_command_end_to_end(tiny_pipeline, tmp_path, capsys):
    from kinema.cli import main

    out, videos = tmp_path / "report.json", tmp_path / "clips"
    main(["eval", "shapes", "--model", str(tiny_pipeline), "--n", "2", "--split", "heldout", "--steps", "1",
          "--guidance", "2", "--guidance-interval", "0.5,1", "--shift", "3", "--image-first", "--out", str(out), "--save-videos", str(videos)])  # fmt: skip
    report = json.loads(out.read_text())
    assert report["kind"] == "kinema-eval-shapes" and report["split"] == "heldout" and report["n"] == 2
    assert [r["name"] for r in report["rows"]] == ["model", "within_frame", "vae", "real"]
    for row in report["rows"]:
        assert set(row["accuracy"]) == {"colour", "shape", "motion", "size", "joint"}
        assert all(len(p["ci95"]) == 2 and p["n"] == 2 for p in row["accuracy"].values())
        assert row["flicker"] >= 0 and row["fvd"] is not None
    real = report["rows"][-1]
    assert real["accuracy"]["joint"]["rate"] == 1.0 and real["present_all_frames"]["rate"] == 1.0
    assert report["rows"][0]["seconds_per_clip"] > 0 and report["fvd"]["standard"] is False
    assert report["settings"]["guidance_interval"] == [0.5, 1.0] and report["settings"]["image_first"] is True
    assert report["settings"]["steps"] == 1 and report["clip"] == {"frames": 5, "size": 64, "given_frames": None, "probe_windows": [[0, 5]]}
    assert report["settings"]["shift"] == 3.0 and "sampling shift 3" in (out.with_suffix(".md")).read_text()
    from kinema.precision import resolve

    # the pipeline's own ("auto"), resolved on this CPU, as `kinema generate` uses it
    assert report["settings"]["precision"] == resolve("auto", "cpu")
    for key in ("json", "markdown", "contact_sheet"):
        assert (tmp_path / report["files"][key]).is_file()
    saved = read_video(videos / "model" / "0000.mp4")
    assert saved.metadata["prompt"] == report["clips"][0]["prompt"] and saved.num_frames == 5
    assert (videos / "within_frame" / "0001.mp4").is_file()
    assert "guidance 2.0 at sigma in [0.5, 1], sampling shift 3, frame 0 first (image_first), " + resolve("auto", "cpu") in capsys.readouterr().out


def test_eval_shapes_extend_command_writes_the_window_plot(tiny_pipeline, tmp_path):
    from kinema.cli import main

    out = tmp_path / "long.json"
    main(["eval", "shapes", "--model", str(tiny_pipeline), "--task", "extend", "--frames", "33", "--n", "3", "--steps", "1", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["clip"]["probe_windows"] == [[0, 17], [16, 33]] and report["clip"]["given_frames"] == 5
    assert all(len(r["windows"]) == 2 for r in report["rows"]) and (tmp_path / "long-windows.png").is_file()
    assert report["files"]["windows"].endswith("long-windows.png")


def test_eval_shapes_command_refuses_bad_input(tiny_pipeline, tmp_path, capsys):
    from kinema.cli import main

    with pytest.raises(SystemExit) as e:
        main(["eval", "shapes", "--model", str(tiny_pipeline), "--task", "v2v", "--out", str(tmp_path / "r.json")])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(["eval", "shapes", "--model", str(tmp_path / "nothing"), "--out", str(tmp_path / "r.json")])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(["eval", "shapes", "--model", str(tiny_pipeline), "--shift", "0", "--out", str(tmp_path / "r.json")])
    assert e.value.code == 2 and "--shift must be a number > 0" in capsys.readouterr().err


def test_eval_shapes_command_two_objects(tiny_pipeline, tmp_path, capsys):
    from kinema.cli import main

    out = tmp_path / "two.json"
    main(["eval", "shapes", "--model", str(tiny_pipeline), "--n", "2", "--split", "train", "--objects", "2", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["objects"] == 2 and [r["name"] for r in report["rows"]] == ["model", "within_frame", "vae", "real"]
    assert all(" and " in c["prompt"] and len(c["real"]["objects"]) == 2 for c in report["clips"])
    for row in report["rows"]:
        assert row["per_object"]["accuracy"]["joint"]["n"] == 4 and row["accuracy"]["joint"]["n"] == 2
    assert "of 2 objects" in capsys.readouterr().out and (tmp_path / "two.png").is_file()
    with pytest.raises(SystemExit) as e:
        main(["eval", "shapes", "--model", str(tiny_pipeline), "--objects", "2", "--per-combination", "1", "--out", str(out)])
    assert e.value.code == 2 and "with --objects 2 give --n prompts instead" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["eval", "shapes", "--model", str(tiny_pipeline), "--objects", "3", "--out", str(out)])
    assert e.value.code == 2


def test_area_by_frame_says_which_frames_stray():
    from kinema.eval.shapes_eval import area_spread_by_frame

    spread = area_spread_by_frame([[100, 100, 100, 100], [80, 100, 100, 110], [0, 0, 0, 0]])  # the empty clip is skipped
    assert spread == pytest.approx([np.sqrt(0.2**2 / 2), 0.0, 0.0, np.sqrt(0.1**2 / 2)])
    assert area_spread_by_frame([[0, 0, 0]]) is None

    class FirstFrameDim(Renderer):  # frame 0 a third as bright: under the probe's foreground level
        def clip(self, prompt, frames, seed):
            out = super().clip(prompt, frames, seed)
            out[0] = out[0] // 3
            return out

    report, _ = run(FirstFrameDim(), n=4)
    model, real = rows(report)["model"]["area_spread_by_frame"], rows(report)["real"]["area_spread_by_frame"]
    assert len(model) == FRAMES and model[0] > 0.3 and max(model[1:]) < 0.1 and max(real) < 0.1
    assert "Area by frame:" in shapes_markdown(report)


def test_area_cv_splits_into_drift_and_jitter():
    from kinema.eval.shapes_eval import area_cv_parts

    ramp, flicker = [90, 95, 100, 105, 110], [100, 110, 100, 110, 100]
    parts = area_cv_parts([ramp, [0] * 5])  # the empty clip is skipped
    assert parts["jitter"] == pytest.approx(0.0, abs=1e-12)
    assert parts["drift"] == pytest.approx(np.std(ramp) / np.mean(ramp))
    parts = area_cv_parts([flicker])
    assert parts["drift"] < 0.01 < parts["jitter"]
    assert parts["drift"] ** 2 + parts["jitter"] ** 2 == pytest.approx((np.std(flicker) / np.mean(flicker)) ** 2)
    assert area_cv_parts([[0, 0]]) is None and area_cv_parts([[5], [6]]) is None

    class Growing(Renderer):  # the object's frames brighten from black: its area grows along the clip
        def clip(self, prompt, frames, seed):
            out = super().clip(prompt, frames, seed)
            out[: len(out) // 2] = out[: len(out) // 2] // 3
            return out

    report, _ = run(Growing(), n=2)
    model, real = rows(report)["model"]["area_cv_parts"], rows(report)["real"]["area_cv_parts"]
    assert model["drift"] > 0.2 > real["drift"]
    assert "Area CV as drift" in shapes_markdown(report)


def test_a_first_frame_in_another_colour_is_counted():
    class FirstFrameGreen(Renderer):  # frame 0 always green (red on a green prompt): every clip disagrees
        def clip(self, prompt, frames, seed):
            out = super().clip(prompt, frames, seed)
            lit = out[0].max(axis=-1) > 0
            out[0][lit] = (40, 180, 60) if "green" not in prompt else (220, 40, 40)
            return out

    report, _ = run(FirstFrameGreen(), n=4)
    model, real = rows(report)["model"]["first_frame_colour_differs"], rows(report)["real"]["first_frame_colour_differs"]
    assert (model["k"], model["n"]) == (4, 4) and (real["k"], real["n"]) == (0, 4)
    assert "Frame 0 in another colour than the rest of its clip: model 100.0%" in shapes_markdown(report)
    assert rows(run(Renderer(), task="extend", n=2)[0])["model"]["first_frame_colour_differs"] is None
