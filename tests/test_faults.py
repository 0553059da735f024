"""Every bad input gives one line naming the file or the argument and the fix (issue 31).

Three tables: `kinema` command lines that must exit 2 with a one-line `error:` (CLI_ERRORS), command
lines that must run and say something in one line (CLI_RUNS), and Python calls that must raise a
one-line `KinemaError` (or `VideoError`, one) or return a text (API). A new case is one line in a
table: the argv or the call, and a regex its message must match.

The inputs are tiny files made once in a temp folder: GIFs written byte by byte (a 5 KB GIF with a
4000x4000 canvas and 200 one-pixel frames), clips written by kinema and cut short, manifests that are
not UTF-8, a random tiny pipeline. Available memory is pinned at 4 GiB so the memory checks do not
depend on the machine.
"""

from __future__ import annotations

import math
import re
import resource
import struct
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from kinema.cli import main
from kinema.data.folder import FolderDataset, read_manifest
from kinema.errors import KinemaError
from kinema.models.checkpoint import save_model
from kinema.models.vae import VideoVAE, vae_tiny
from kinema.pipelines import Pipeline
from kinema.pipelines.presets import random_pipeline
from kinema.video import Video, probe_video, read_video, write_video

PROMPT = "a red circle moving right"
MEMORY = 4 * 2**30


def gif_bytes(width: int, height: int, frames: int, delay_cs: int = 10) -> bytes:
    """A GIF of `frames` one-pixel frames (a red dot at 0,0) on a width x height canvas, written by hand."""
    screen = b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\x00\x00\x00\xff\x00\x00"
    frame = (
        b"\x21\xf9\x04\x00" + struct.pack("<H", delay_cs) + b"\x00\x00"  # graphic control: the delay
        + b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0)  # a 1x1 image at (0, 0)
        + b"\x02\x02\x4c\x01\x00"  # LZW, code size 2: clear, colour 1, end
    )  # fmt: skip
    return screen + frame * frames + b"\x3b"


def cut(path: Path, out: Path, fraction: float = 0.0, size: int | None = None) -> Path:
    """`out`: the first `size` bytes of `path` (or that fraction of them)."""
    data = path.read_bytes()
    out.write_bytes(data[: size if size is not None else int(len(data) * fraction)])
    return out


def clip(t: int, h: int = 16, w: int = 16, seed: int = 0) -> Video:
    return Video(np.random.default_rng(seed).integers(0, 256, (t, h, w, 3), dtype=np.uint8), fps=8.0)


@pytest.fixture(scope="module")
def f(tmp_path_factory) -> SimpleNamespace:
    """The inputs every case names, made once: `f.dir` holds the files, `f.model` the tiny pipeline's folder
    (argv names them as {dir} and {model}), `f.shapes` one trained on shapes ({shapes}), `f.pipe` the pipeline."""
    d = tmp_path_factory.mktemp("faults")
    (d / "bomb.gif").write_bytes(gif_bytes(4000, 4000, 200))
    (d / "bomb2k.gif").write_bytes(gif_bytes(4000, 4000, 2000))
    clip(5).save(d / "clip.gif")
    cut(d / "clip.gif", d / "cut.gif", 0.6)
    clip(17).save(d / "clip.webm")
    cut(d / "clip.webm", d / "cut.webm", 0.25)
    clip(17).save(d / "clip.mkv")
    cut(d / "clip.mkv", d / "cut.mkv", 0.25)
    clip(17).save(d / "clip.mp4")
    cut(d / "clip.mp4", d / "cut40.mp4", size=40)
    Video(np.zeros((1, 4096, 4096, 3), np.uint8)).save(d / "big.png")
    frames = [Image.fromarray(frame) for frame in clip(3).frames]
    frames[0].save(d / "anim.png", save_all=True, append_images=frames[1:], duration=125)  # an animated PNG
    for name in ("latin1.csv", "latin1.jsonl"):
        head = "path,caption\n" if name.endswith(".csv") else ""
        row = "clip.gif,caf\xe9 au lait\n" if name.endswith(".csv") else '{"path": "clip.gif", "caption": "caf\xe9"}\n'
        (d / name).write_bytes((head + row).encode("latin-1"))
    (d / "with_cut.jsonl").write_text(
        '{"path": "clip.mp4", "caption": "a clip"}\n{"path": "cut.gif", "caption": "cut short"}\n'
    )
    (d / "with_bomb.jsonl").write_text('{"path": "bomb2k.gif", "caption": "a dot"}\n')
    (d / "sub").mkdir()
    (d / "sub" / "escape.jsonl").write_text('{"path": "../clip.mp4", "caption": "a clip"}\n')
    torch.manual_seed(0)
    save_model(VideoVAE(vae_tiny()), d / "vae", "vae")
    pipe = random_pipeline("tiny", seed=0)
    shapes = random_pipeline("tiny", seed=0)
    shapes.provenance = {"train_config": {"data": {"dataset": "shapes"}}}  # it warns about prompts outside shapes'
    return SimpleNamespace(dir=d, model=pipe.save(d / "pipe"), shapes=shapes.save(d / "shapes"), pipe=pipe)


@pytest.fixture(autouse=True)
def _memory(monkeypatch):
    """The memory checks see MEMORY available, whatever this machine has."""
    monkeypatch.setattr("kinema.pipelines.memory.available_bytes", lambda device: MEMORY)


def gen(*argv: str) -> list[str]:
    return ["generate", "--model", "{model}", "--steps", "1", "--quiet", "--out", "{dir}/out.mp4", *argv]


# ----------------------------------------------------------------------------------------------
# `kinema` command lines that exit 2 with one line: (id, argv with {dir} and {model}, regex of the message)

CLI_ERRORS = [
    ("gif-bomb-extend", gen(PROMPT, "--extend", "{dir}/bomb.gif", "--frames", "4"), r"bomb\.gif: reading it decodes 200 frames of 4000x4000.*over max_total_pixels="),
    ("huge-image", gen(PROMPT, "--image", "{dir}/big.png"), r"--image .*big\.png \(4096x4096\): 9 frames of 4096x4096 need about .* GB .*4\.0 GB is available.*at most --size \d+x\d+ for 9 frames fit"),
    ("huge-size", gen(PROMPT, "--size", "8192"), r"--size 8192x8192: 9 frames of 8192x8192 need about .*at most --size \d+x\d+ for 9 frames fit"),
    ("huge-length", gen(PROMPT, "--frames", "40001", "--size", "512"), r"--size 512x512: 40001 frames of 512x512 need about .*at most --frames \d+ at 512x512"),
    ("extend-huge-length", gen(PROMPT, "--extend", "{dir}/clip.mp4", "--frames", "40000000"), r"--extend .*clip\.mp4 \(16x16\): 40000017 frames .*at most --frames \d+ at 16x16"),
    ("fps-too-high", gen(PROMPT, "--fps", "1e308"), r"--fps must be a number > 0 within 0\.001-1000 .*got 1e\+308"),
    ("fps-too-low", gen(PROMPT, "--fps", "1e-9"), r"--fps must be a number > 0 within 0\.001-1000"),
    ("fps-over-gif", gen(PROMPT, "--fps", "60", "--out", "{dir}/out.gif"), r"--out .*out\.gif at 60 fps: a \.gif file holds .* at most 50 fps"),
    ("prompt-not-utf8", gen("a red \udcff circle"), r"PROMPT is not valid text: character 6 stands for a byte that is not UTF-8.*LANG=C\.UTF-8"),
    ("image-cut-gif", gen(PROMPT, "--image", "{dir}/cut.gif"), r"cut\.gif is truncated: the GIF ends inside"),
    ("extend-cut-webm", gen(PROMPT, "--extend", "{dir}/cut.webm", "--frames", "4"), r"cut\.webm is truncated: decoded \d+ of the 17 frames kinema's metadata in it records"),
    ("extend-40-byte-mp4", gen(PROMPT, "--extend", "{dir}/cut40.mp4", "--frames", "4"), r"cut40\.mp4 .*truncated or not a video"),
    ("stats-latin1-csv", ["data", "stats", "{dir}/latin1.csv"], r"latin1\.csv, line 2: not UTF-8 text \(byte 0xe9\); save the manifest as UTF-8"),
    ("stats-latin1-jsonl", ["data", "stats", "{dir}/latin1.jsonl"], r"latin1\.jsonl, line 1: not UTF-8 text"),
    ("train-latin1", ["train", "shapes-vae-debug", "--out", "{dir}/run", "--steps", "1", "--set", "data.dataset={dir}/latin1.csv", "--set", "data.length=null"], r"latin1\.csv, line 2: not UTF-8"),
    ("generate-out-under-a-file", gen(PROMPT, "--out", "{dir}/clip.mp4/x.mp4"), r"--out .*clip\.mp4/x\.mp4: .*clip\.mp4 is a file, not a folder; choose another --out"),
    ("eval-out-is-a-folder", ["eval", "shapes", "--model", "{model}", "--out", "{dir}"], r"--out .*: .* is a folder; give a file name"),
    ("eval-vae-out-under-a-file", ["eval", "vae", "--model", "{dir}/vae", "--data", "shapes", "--out", "{dir}/clip.gif/vae.json"], r"clip\.gif is a file, not a folder"),
    ("eval-videos-under-a-file", ["eval", "shapes", "--model", "{model}", "--out", "{dir}/r.json", "--save-videos", "{dir}/clip.gif/v"], r"--save-videos .*clip\.gif is a file, not a folder; choose another --save-videos"),
    ("stats-path-outside", ["data", "stats", "{dir}/sub/escape.jsonl"], r"escape\.jsonl, line 1: '\.\./clip\.mp4' is outside the manifest's folder .*pass --allow-outside"),
    ("train-path-outside", ["train", "shapes-vae-debug", "--out", "{dir}/run", "--steps", "1", "--set", "data.dataset={dir}/sub/escape.jsonl", "--set", "data.length=null"], r"outside the manifest's folder .*--set data\.allow_outside=true"),
    ("eval-vae-latin1", ["eval", "vae", "--model", "{dir}/vae", "--data", "{dir}/latin1.jsonl", "--out", "{dir}/vae.json"], r"latin1\.jsonl, line 1: not UTF-8"),
]  # fmt: skip

# `kinema` command lines that run (exit 0) and say what they must in one line each: (id, argv, regex)
CLI_RUNS = [
    ("prompt-too-long", gen("a red circle " * 8000, "--out", "{dir}/long.gif"), r"warning: the prompt 'a red circle .*\.\.\. \(104000 characters\)' is 104000 UTF-8 bytes; this model reads the first \d+ and ignores the rest"),
    ("prompt-too-long-shapes", gen("a red circle " * 8000, "--model", "{shapes}", "--out", "{dir}/long.gif"), r"warning: this model learned shapes captions only, and cannot read 'a red circle .*\.\.\. \(104000 characters\)' as a shapes caption"),
    ("stats-cut-gif", ["data", "stats", "{dir}/with_cut.jsonl"], r'"reason": ".*cut\.gif is truncated: the GIF ends inside'),
    ("stats-gif-bomb", ["data", "stats", "{dir}/with_bomb.jsonl"], r'"4000x4000": 1'),
]  # fmt: skip


def _argv(argv: list[str], f: SimpleNamespace) -> list[str]:
    return [a.format(dir=f.dir, model=f.model, shapes=f.shapes) for a in argv]


@pytest.mark.parametrize("argv, message", [c[1:] for c in CLI_ERRORS], ids=[c[0] for c in CLI_ERRORS])
def test_cli_error(f, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main(_argv(argv, f))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert re.search(message, lines[0]), lines[0]


@pytest.mark.parametrize("argv, message", [c[1:] for c in CLI_RUNS], ids=[c[0] for c in CLI_RUNS])
def test_cli_run(f, capsys, argv, message):
    try:
        main(_argv(argv, f))
    except SystemExit as e:  # main exits with a code for errors only
        assert e.code in (0, None), capsys.readouterr().err
    out, err = capsys.readouterr()
    assert all(len(line) < 400 for line in err.splitlines()), err  # warnings are one short line each
    assert re.search(message, out + err), out + err


# ----------------------------------------------------------------------------------------------
# Python calls: (id, call on the inputs, regex of the KinemaError it raises, or of the text it returns)


def _skipped(ds: FolderDataset) -> str:
    return "; ".join(reason for _, reason in ds.skipped)


API = [
    ("read-none", lambda f: read_video(None), r"^path must be a str or pathlib\.Path, got NoneType"),
    ("read-start-inf", lambda f: read_video(f.dir / "clip.mp4", start=math.inf), r"^read_video: start must be a finite number of seconds >= 0, got inf"),
    ("read-start-nan", lambda f: read_video(f.dir / "clip.mp4", start=math.nan), r"^read_video: start must be a finite number .*got nan"),
    ("read-end-nan", lambda f: read_video(f.dir / "clip.mp4", end=math.nan), r"^read_video: end must be a number of seconds after start=0"),
    ("read-size-float", lambda f: read_video(f.dir / "clip.mp4", size=2.5), r"^read_video: size must be an int >= 1 or \(height, width\).*got 2\.5"),
    ("read-max-frames-negative", lambda f: read_video(f.dir / "clip.mp4", max_frames=-1), r"^read_video: max_frames must be an int >= 1 or None"),
    ("read-max-pixels-bad", lambda f: read_video(f.dir / "clip.mp4", max_pixels=4096), r"^read_video: max_pixels must be \(height, width\)"),
    ("read-40-byte-mp4", lambda f: read_video(f.dir / "cut40.mp4"), r"cut40\.mp4 holds no streams at all: it is truncated or not a video"),
    ("read-cut-webm", lambda f: read_video(f.dir / "cut.webm"), r"cut\.webm is truncated: decoded \d+ of the 17 frames"),
    ("read-cut-mkv", lambda f: read_video(f.dir / "cut.mkv"), r"cut\.mkv is truncated"),
    ("read-cut-gif", lambda f: read_video(f.dir / "cut.gif"), r"cut\.gif is truncated: the GIF ends inside"),
    ("probe-cut-gif", lambda f: probe_video(f.dir / "cut.gif"), r"cut\.gif is truncated"),
    ("read-gif-bomb", lambda f: read_video(f.dir / "bomb.gif"), r"bomb\.gif: reading it decodes 200 frames of 4000x4000, 3,200,000,000 pixels, over max_total_pixels=1,073,741,824"),
    ("read-gif-bomb-span", lambda f: read_video(f.dir / "bomb.gif", end=10.0, max_total_pixels=10**8), r"decodes 100 frames .*max_total_pixels=100,000,000"),
    ("read-upscaled", lambda f: read_video(f.dir / "clip.mp4", size=8192, max_total_pixels=10**8), r"reading it returns 17 frames of 8192x8192"),
    ("probe-gif-bomb", lambda f: str(probe_video(f.dir / "bomb2k.gif").num_frames), r"^2000$"),
    ("probe-apng-over-limit", lambda f: probe_video(f.dir / "anim.png", max_total_pixels=500), r"anim\.png: reading its frame delays decodes 3 frames of 16x16, 768 pixels, over max_total_pixels=500"),
    ("folder-gif-bomb", lambda f: str(len(FolderDataset(f.dir / "with_bomb.jsonl", size=16, frames=5))), r"^\d+$"),
    ("folder-cut-gif", lambda f: _skipped(FolderDataset(f.dir / "with_cut.jsonl", size=16, frames=5)), r"cut\.gif is truncated"),
    ("manifest-latin1", lambda f: read_manifest(f.dir / "latin1.csv"), r"latin1\.csv, line 2: not UTF-8 text"),
    ("write-fps-low", lambda f: write_video(f.dir / "slow.mp4", Video(clip(2).frames, fps=1e-9)), r"slow\.mp4: a \.mp4 file holds 0\.001 up to at most 1000 fps"),
    ("write-fps-high-webm", lambda f: write_video(f.dir / "fast.webm", Video(clip(2).frames, fps=5000)), r"a \.webm file holds .* at most 1000 fps .*resample"),
    ("load-none", lambda f: Pipeline.load(None), r"^name_or_path must be a str or pathlib\.Path, got NoneType"),
    ("generate-fps", lambda f: f.pipe.generate(PROMPT, fps=1e308), r"^fps must be a number > 0 within 0\.001-1000"),
    ("generate-prompt-not-utf8", lambda f: f.pipe.generate("a \udcff circle"), r"^prompt is not valid text"),
]  # fmt: skip


@pytest.mark.parametrize("call, message", [c[1:] for c in API], ids=[c[0] for c in API])
def test_api(f, call, message):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # FolderDataset warns about what it skips; its .skipped is checked
        try:
            text = call(f)
        except KinemaError as e:
            text = str(e)
            assert "\n" not in text, text
    assert re.search(message, str(text)), text


# ----------------------------------------------------------------------------------------------
# Beyond the tables: every cut point of a GIF, and what refusing a bomb costs


def test_a_gif_cut_anywhere_is_named_truncated(tmp_path):
    frames = np.zeros((3, 8, 8, 3), np.uint8)
    frames[[0, 1, 2], [0, 1, 2], [0, 1, 2]] = 255  # a dot moving down the diagonal: few colours, a small file
    data = Video(frames).save(tmp_path / "full.gif").read_bytes()
    path = tmp_path / "cut.gif"
    for n in range(1, len(data)):
        path.write_bytes(data[:n])
        for call in (probe_video, read_video):
            with pytest.raises(KinemaError, match="is truncated") as info:
                call(path)
            assert str(path) in str(info.value), (n, info.value)


def test_gif_bombs_are_refused_fast_and_small(f, capsys):
    def peak_mb() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 if sys.platform == "darwin" else 1024) / 2**10

    before, start = peak_mb(), time.perf_counter()
    probe_video(f.dir / "bomb2k.gif")
    with pytest.raises(KinemaError, match="max_total_pixels"):
        read_video(f.dir / "bomb.gif")
    with pytest.raises(SystemExit):
        main(_argv(gen(PROMPT, "--extend", "{dir}/bomb.gif", "--frames", "4"), f))
    main(_argv(["data", "stats", "{dir}/with_bomb.jsonl"], f))
    assert time.perf_counter() - start < 2.0
    assert peak_mb() - before < 200
    capsys.readouterr()

