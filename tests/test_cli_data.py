"""`kinema data`: preview, export (round trip through the user-data path) and stats."""

import json

import numpy as np
import pytest

from kinema.cli import main
from kinema.data.folder import FolderDataset
from kinema.video import read_video


def run(*args: str) -> None:
    try:
        main(list(args))
    except SystemExit as e:  # main exits with a code for errors only
        if e.code not in (0, None):
            raise


def test_preview_writes_a_playable_gif_with_captions(tmp_path, capsys):
    out = tmp_path / "shapes.gif"
    run("data", "preview", "shapes", "--n", "4", "--out", str(out))
    video = read_video(out)
    assert video.frames.shape == (17, 2 * 64 + 2, 2 * 64 + 2, 3)
    captions = json.loads(video.metadata["captions"])
    assert len(captions) == 4 and all(c.startswith("a ") for c in captions)
    assert captions[0] in capsys.readouterr().out


def test_preview_to_a_path_ending_in_slash_writes_png_frames(tmp_path):
    # `--out DIR/` means a folder of PNG frames, as everywhere else kinema writes video
    out = tmp_path / "frames"
    run("data", "preview", "shapes", "--n", "4", "--frames", "5", "--out", str(out) + "/")
    assert sorted(p.name for p in out.iterdir()) == [f"{k:05d}.png" for k in range(5)]
    video = read_video(out)
    assert video.frames.shape == (5, 2 * 64 + 2, 2 * 64 + 2, 3)
    assert len(json.loads(video.metadata["captions"])) == 4


def test_export_round_trips_through_folder_dataset(tmp_path):
    run("data", "export", "shapes", "--n", "3", "--out", str(tmp_path), "--format", "png", "--frames", "5")
    rows = [json.loads(line) for line in (tmp_path / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == 3
    ds = FolderDataset(tmp_path / "manifest.jsonl", size=64, frames=5, fps=8.0)
    from kinema.data import ShapesDataset

    ref = ShapesDataset(size=64, frames=5, split="train", seed=0)
    assert len(ds) == 3
    for i in range(3):
        assert ds[i]["caption"] == ref[i]["caption"]
        # PNG is lossless: the exported clip is the rendered clip, up to uint8 rounding
        assert np.abs(ds[i]["video"].numpy() - ref[i]["video"].numpy()).max() <= 1.0 / 127.5 + 1e-6


def test_stats_and_bad_dataset_name(tmp_path, capsys):
    run("data", "export", "shapes", "--n", "2", "--out", str(tmp_path), "--frames", "5")
    run("data", "stats", str(tmp_path / "manifest.jsonl"))
    assert '"videos": 2' in capsys.readouterr().out
    run("data", "preview", str(tmp_path / "manifest.jsonl"), "--frames", "5", "--out", str(tmp_path / "p.gif"))
    assert "wrote" in capsys.readouterr().out  # a manifest takes no --seed, and preview does not pass one
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "up.jsonl").write_text('{"path": "../000000.mp4", "caption": "x"}\n')
    run("data", "stats", str(tmp_path / "sub" / "up.jsonl"), "--allow-outside")
    assert '"videos": 1' in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["data", "preview", "nosuchset", "--out", str(tmp_path / "x.gif")])
    assert e.value.code == 2
    assert "unknown dataset 'nosuchset'" in capsys.readouterr().err
