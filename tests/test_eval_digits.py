"""The digits probe: finding digits in frames, the shipped classifier, per-frame accuracy and identity consistency."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from kinema.data.digits import DIGIT_SIZE, MovingDigitsDataset
from kinema.errors import KinemaError
from kinema.eval.digits import (
    INK_MIN,
    DigitClassifier,
    DigitClassifierConfig,
    classifier_info,
    digit_crops,
    digits_markdown,
    evaluate_digits,
    load_digit_classifier,
    parse_digits_caption,
    score_digits,
)
from kinema.eval.report import write_report
from kinema.video import Video


@pytest.fixture(scope="module")
def classifier():
    return load_digit_classifier()


def dataset(digits=1, frames=9, n=12):
    return MovingDigitsDataset(size=64, frames=frames, digits=digits, split="test", length=n, seed=3)


def centred(image):
    """Whether the centre of an MNIST image's ink rounds to (14, 14), so a crop around it reproduces it exactly."""
    w = image.astype(np.float64) / 255
    w = w * (w >= INK_MIN)
    ys, xs = np.mgrid[:DIGIT_SIZE, :DIGIT_SIZE]
    return abs((w * ys).sum() / w.sum() - 14) < 0.45 and abs((w * xs).sum() / w.sum() - 14) < 0.45


def test_parse_digits_caption():
    assert parse_digits_caption("the digit 3") == [3]
    assert parse_digits_caption("The digits 7 and 1.") == [7, 1]
    with pytest.raises(KinemaError, match="cannot read 'a red circle'"):
        parse_digits_caption("a red circle")


def test_a_single_digit_is_cropped_exactly_where_mnist_puts_it():
    ds = dataset()
    checked = 0
    for i in range(len(ds)):
        (a,) = ds.attributes(i)
        image = ds.images[a["image_index"]]
        if not centred(image):
            continue
        crops, found = digit_crops(ds.render([a]), 1)
        assert found.all()
        assert np.allclose(crops[:, 0], image.astype(np.float32)[None] / 255, atol=1e-6)
        checked += 1
    assert checked >= 6


def test_two_digits_apart_are_each_cropped_whole():
    ds = dataset(digits=2, n=60)
    frame_checks = 0
    for i in range(len(ds)):
        a, b = ds.attributes(i)
        ia, ib = ds.images[a["image_index"]], ds.images[b["image_index"]]
        if not (centred(ia) and centred(ib)):
            continue
        crops, found = digit_crops(ds.render([a, b]), 2)
        for t, ((xa, ya), (xb, yb)) in enumerate(zip(a["positions"], b["positions"])):
            if max(abs(xa - xb), abs(ya - yb)) < DIGIT_SIZE + 4:  # close, touching or overlapping: not checked
                continue
            want = sorted([ia.tobytes(), ib.tobytes()])
            got = sorted([np.rint(c * 255).astype(np.uint8).tobytes() for c in crops[t]])
            assert got == want
            frame_checks += 1
    assert frame_checks >= 6


def test_shipped_classifier_reads_real_clips(classifier):
    info = classifier_info()
    assert info["test_accuracy"] >= 0.97 and info["test_images"] == 1000  # measured when it was trained
    for digits in (1, 2):
        ds = dataset(digits=digits)
        clips = [ds.render(ds.attributes(i)) for i in range(len(ds))]
        results = score_digits(clips, [ds.caption(i) for i in range(len(ds))], classifier)
        assert np.mean([r["correct"] for r in results]) >= (0.9 if digits == 1 else 0.75)
        assert all(r["present_all_frames"] for r in results)
        assert np.mean([r["frame_accuracy"] for r in results]) >= (0.9 if digits == 1 else 0.75)


def test_wrong_digit_and_changing_identity(classifier):
    ds = dataset(n=40)
    threes = [i for i in range(len(ds)) if ds.caption(i) == "the digit 3"]
    sevens = [i for i in range(len(ds)) if ds.caption(i) == "the digit 7"]
    three, seven = ds.render(ds.attributes(threes[0])), ds.render(ds.attributes(sevens[0]))
    half = len(three) // 2
    spliced = np.concatenate([three[:half], seven[half:]])  # the digit changes identity halfway
    blank = three.copy()
    blank[2] = 0
    right, wrong, changing, missing = score_digits([three, three, spliced, blank], ["the digit 3", "the digit 5", "the digit 3", "the digit 3"], classifier)
    assert right["correct"] and right["consistent"] and right["frame_accuracy"] == 1.0 and right["reading"] == [3]
    assert not wrong["correct"] and wrong["frame_accuracy"] == 0.0 and wrong["reading"] == [3]
    assert not changing["consistent"] and changing["consistency"] == pytest.approx((len(three) - half) / len(three))
    assert changing["frame_accuracy"] == pytest.approx(half / len(three))
    assert not missing["present_all_frames"] and missing["frames"][2] == []


def test_probe_refuses_the_wrong_input(classifier):
    with pytest.raises(KinemaError, match="uint8 frames"):
        digit_crops(np.zeros((2, 64, 64, 3), np.float32), 1)
    with pytest.raises(KinemaError, match="1 or 2 digits"):
        digit_crops(np.zeros((2, 64, 64, 3), np.uint8), 3)


def test_classifier_round_trip(tmp_path):
    from kinema.eval.fvd import load_network, save_network

    model = DigitClassifier(DigitClassifierConfig(width=8, hidden=16)).eval()
    save_network(model, tmp_path, "digit_classifier", {"test_accuracy": 0.1})
    again = load_digit_classifier(tmp_path)
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(again(x), model(x)) and classifier_info(tmp_path)["test_accuracy"] == 0.1
    assert isinstance(load_network(DigitClassifier, tmp_path, "digit_classifier"), DigitClassifier)


class DigitRenderer:
    """A stand-in pipeline that draws the real test clip of each caption (from the same dataset)."""

    model_hash = "renderer"
    precision = "fp32"

    def __init__(self, frames=9):
        self.settings = SimpleNamespace(height=64, width=64, num_frames=frames, steps=1, sampler="euler", guidance=1.0, guidance_interval=None, shift=None, image_first=False)
        self.ds = dataset(frames=frames, n=40)

    def generate(self, prompt, *, num_frames=None, height=None, width=None, seed=0, **kw):
        i = next(i for i in range(len(self.ds)) if self.ds.caption(i) == prompt)
        return Video(self.ds.render(self.ds.attributes(i)), metadata={"prompt": prompt, "seed": seed})


def test_evaluate_digits_report(tmp_path):
    renderer = DigitRenderer()
    report, sheet = evaluate_digits(renderer, model="renderer", n=4, variants=[("model", "model", renderer)], vae_row=False)
    names = [r["name"] for r in report["rows"]]
    assert names == ["model", "real"]
    model, real = report["rows"]
    assert real["clip_accuracy"]["n"] == 4 and model["seconds_per_clip"] >= 0 and real["seconds_per_clip"] is None
    assert model["flicker"] > 0 and 0 <= model["identity_consistency"] <= 1
    paths = write_report(report, sheet, tmp_path / "d.json", digits_markdown)
    data = json.loads((tmp_path / "d.json").read_text())
    assert data["classifier"]["test_accuracy"] >= 0.97 and len(data["clips"]) == 4
    assert "identity consistency" in (tmp_path / "d.md").read_text() and (tmp_path / "d.png").is_file()
    assert paths["json"] == str(tmp_path / "d.json")


def test_eval_digits_command_end_to_end(tmp_path):
    from kinema.cli import main
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
    directory = pipe.save(tmp_path / "pipe")
    out = tmp_path / "digits.json"
    main(["eval", "digits", "--model", str(directory), "--n", "1", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["kind"] == "kinema-eval-digits" and [r["name"] for r in report["rows"]] == ["model", "within_frame", "vae", "real"]
    for row in report["rows"]:
        assert {"clip_accuracy", "frame_accuracy", "identity_consistency", "consistent_clips", "flicker"} <= set(row)
    assert report["rows"][-1]["frame_accuracy"] >= 0.8  # real clips read by the probe
    assert all(k in report["clips"][0] for k in ("model", "within_frame", "vae", "real"))
    assert report["rows"][2]["seconds_per_clip"] is None  # a reference row: nothing was generated
    assert (tmp_path / "digits.md").is_file() and (tmp_path / "digits.png").is_file()
    assert "The VAE row is the real clips encoded and decoded" in (tmp_path / "digits.md").read_text()
