"""kinema.data.folder (manifests of the user's clips) and kinema.data.transforms."""

from __future__ import annotations

import json
import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from kinema.data.folder import FolderDataset, iter_manifest, manifest_stats, read_manifest, write_manifest
from kinema.data.transforms import resample_fps, resize_center_crop, to_tensor, to_uint8, windows
from kinema.errors import KinemaError
from kinema.video import Video


def indexed(t: int, h: int = 24, w: int = 32) -> np.ndarray:
    """Frame k is flat grey level 12 * k, so its index survives lossy codecs, resizing and cropping."""
    return np.broadcast_to((np.arange(t) * 12).astype(np.uint8)[:, None, None, None], (t, h, w, 3)).copy()


def frame_index(video: torch.Tensor) -> list[int]:
    """video: (3, T, H, W) in [-1, 1] -> the index of each frame of an `indexed` clip."""
    return [int(round(float(f.mean()) / 12)) for f in to_uint8(video)]


ROWS = [
    {"path": "good.mp4", "caption": "a counting clip"},  # 2 s at 10 fps
    {"path": "anim.gif", "caption": "a gif"},  # 1.6 s at 10 fps
    {"path": "still.png", "caption": "an image"},
    {"path": "bad.mp4", "caption": "text renamed .mp4"},
    {"path": "missing.mp4", "caption": "not there"},
    {"path": "short.gif", "caption": "too short"},  # 0.25 s
]


@pytest.fixture
def clips(tmp_path: Path) -> Path:
    Video(indexed(20), fps=10.0).save(tmp_path / "good.mp4")
    Video(indexed(16), fps=10.0).save(tmp_path / "anim.gif")
    Video(indexed(1, 20, 20)).save(tmp_path / "still.png")
    Video(indexed(2), fps=8.0).save(tmp_path / "short.gif")
    (tmp_path / "bad.mp4").write_text("not a video\n" * 10)
    return tmp_path


def write_csv(path: Path, rows: list[dict]) -> Path:
    columns = ["path", "caption", "start", "end"]
    lines = [",".join(columns)] + [",".join(str(row.get(c, "")) for c in columns) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def build(manifest: Path, **kwargs) -> FolderDataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return FolderDataset(manifest, **kwargs)


# --- the dataset ---------------------------------------------------------------------


@pytest.mark.parametrize("write", [write_csv, write_jsonl], ids=["csv", "jsonl"])
def test_good_files_give_windows_and_bad_ones_are_counted(clips, write):
    manifest = write(clips / f"manifest.{'csv' if write is write_csv else 'jsonl'}", ROWS)
    with pytest.warns(UserWarning) as record:
        ds = FolderDataset(manifest, size=16, frames=2, fps=4.0)
    assert len(record) == 1  # one warning naming every skipped file
    for name in ("bad.mp4", "missing.mp4", "short.gif"):
        assert name in str(record[0].message)
    assert sorted(Path(p).name for p, _ in ds.skipped) == ["bad.mp4", "missing.mp4", "short.gif"]
    # good.mp4: 2 s at 4 fps = 8 frames = 4 windows; anim.gif: 1.6 s = 6 frames = 3; the image: 1
    assert len(ds) == 8
    items = [ds[i] for i in range(len(ds))]
    assert [it["caption"] for it in items] == ["a counting clip"] * 4 + ["a gif"] * 3 + ["an image"]
    assert all(it["video"].shape == (3, 2, 16, 16) for it in items[:7])
    assert items[7]["video"].shape == (3, 1, 16, 16)
    assert all(it["video"].dtype == torch.float32 and it["video"].abs().max() <= 1 for it in items)
    # each window shows the source frame on screen at the middle of its frames: 10 fps -> 4 fps
    assert [frame_index(it["video"]) for it in items[:4]] == [[1, 3], [6, 8], [11, 13], [16, 18]]
    assert [frame_index(it["video"]) for it in items[4:7]] == [[1, 3], [6, 8], [11, 13]]


def test_stride_overlaps_windows(clips):
    ds = build(write_jsonl(clips / "m.jsonl", ROWS[:1]), size=8, frames=3, fps=4.0, stride=1)
    assert len(ds) == len(windows(8, 3, 1)) == 6
    assert [frame_index(ds[i]["video"]) for i in (0, 1, 5)] == [[1, 3, 6], [3, 6, 8], [13, 16, 18]]


def test_start_end_trim_before_resampling(clips):
    rows = [{"path": "good.mp4", "caption": "part", "start": 0.5, "end": 1.5}]
    ds = build(write_csv(clips / "m.csv", rows), size=8, frames=2, fps=4.0)
    assert len(ds) == 2  # 1 s at 4 fps = 4 frames
    assert [frame_index(ds[i]["video"]) for i in range(2)] == [[6, 8], [11, 13]]
    ds = build(write_csv(clips / "m.csv", rows), size=8, frames=5, fps=10.0)
    assert len(ds) == 2 and frame_index(ds[1]["video"]) == [10, 11, 12, 13, 14]


def test_size_crops_to_the_centre(tmp_path):
    frames = np.zeros((4, 8, 16, 3), np.uint8)
    frames[:, :, 4:12] = 200  # only the centre square is bright; the sides are cropped away
    Video(frames).save(tmp_path / "wide.gif")
    ds = build(write_jsonl(tmp_path / "m.jsonl", [{"path": "wide.gif", "caption": ""}]), size=4, frames=4)
    assert np.all(to_uint8(ds[0]["video"]) == 200)
    tall = build(write_jsonl(tmp_path / "m.jsonl", [{"path": "wide.gif", "caption": ""}]), size=(8, 2), frames=4)
    assert tall[0]["video"].shape == (3, 4, 8, 2)


def test_dataloader_with_workers(clips):
    ds = build(write_jsonl(clips / "m.jsonl", ROWS), size=16, frames=2, fps=4.0, image_frames=2)
    ds = pickle.loads(pickle.dumps(ds))  # what spawn-started workers do
    loader = DataLoader(ds, batch_size=4, num_workers=2)
    batches = list(loader)
    assert [b["video"].shape for b in batches] == [(4, 3, 2, 16, 16)] * 2
    assert sum(len(b["caption"]) for b in batches) == 8
    assert torch.equal(batches[1]["video"][3], ds[7]["video"])  # the image, repeated to 2 frames


def test_file_that_breaks_after_indexing_is_skipped_for_the_next(clips):
    ds = build(write_jsonl(clips / "m.jsonl", ROWS[:2]), size=8, frames=2, fps=4.0)
    assert len(ds) == 7 and ds.skipped == []
    (clips / "good.mp4").write_bytes(b"gone bad")
    with pytest.warns(UserWarning, match="good.mp4"):
        item = ds[1]
    assert item["caption"] == "a gif" and torch.equal(item["video"], ds[4]["video"])  # the next readable window
    assert [Path(p).name for p, _ in ds.skipped] == ["good.mp4"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a known-bad file is not tried, or warned about, again
        assert ds[0]["caption"] == "a gif"
    assert len(ds.skipped) == 1


@pytest.mark.parametrize(
    "rows, kwargs, message",
    [
        ([], {}, "lists no clips"),
        (ROWS[3:5], {}, "none of its 2 files could be read"),
        (ROWS[:2], {"frames": 100}, "lower --frames (the longest clip gives 16 frames"),
        (ROWS[:2] + ROWS[3:5], {"frames": 100}, "2 file(s) are unreadable and 2 clip(s) shorter than 100 frames"),
    ],
    ids=["empty", "all-unreadable", "all-short", "mixed"],
)
def test_manifest_without_samples_says_why(clips, rows, kwargs, message):
    manifest = write_csv(clips / "m.csv", rows)
    with pytest.raises(KinemaError) as info:
        build(manifest, fps=8.0, **kwargs)
    assert message in str(info.value) and "m.csv" in str(info.value)


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("m.csv", "file,caption\na.mp4,x\n", "at least path and caption (found: file, caption)"),
        ("m.csv", "", "found: nothing"),
        ("m.csv", "path,caption,start,end\na.mp4,x,2,1\n", "line 2: end (1.0) must be after start (2.0)"),
        ("m.csv", "path,caption,start\na.mp4,x,soon\n", "line 2: start must be a number of seconds"),
        ("m.jsonl", '{"path": "a.mp4", "caption": "x"}\n{"path": "b.mp4",\n', "line 2: not valid JSON"),
        ("m.jsonl", '{"path": "a.mp4"}\n', "line 1: every row needs a caption"),
        ("m.jsonl", '["a.mp4", "x"]\n', "line 1: each line must be a JSON object"),
        ("m.txt", "a.mp4\n", "a .csv (with a header row) or a .jsonl file"),
    ],
)
def test_malformed_manifests(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(KinemaError) as info:
        read_manifest(tmp_path / name)
    assert message in str(info.value)


def test_manifest_paths(tmp_path):
    with pytest.raises(KinemaError, match="no such manifest"):
        read_manifest(tmp_path / "nope.jsonl")
    rows = read_manifest(write_jsonl(tmp_path / "m.jsonl", [
        {"path": "sub/a.mp4", "caption": " spaced "},
        {"path": "/abs/b.mp4", "caption": "", "start": 1, "end": "2.5"},
        {"path": "http://host/c.mp4", "caption": ""},
    ]), allow_outside=True)
    assert [r.path for r in rows] == [str(tmp_path / "sub" / "a.mp4"), "/abs/b.mp4", "http://host/c.mp4"]
    assert (rows[0].caption, rows[1].start, rows[1].end, rows[2].line) == ("spaced", 1.0, 2.5, 3)


@pytest.mark.parametrize(
    "path",
    ["/etc/passwd", "../outside.mp4", "sub/../../outside.mp4", "link/clip.mp4", "escape.mp4"],
    ids=["absolute", "dotdot", "dotdot-deeper", "symlinked-folder", "symlinked-file"],
)
def test_paths_that_leave_the_manifests_folder_are_refused_unless_allowed(tmp_path, path):
    outside, inside = tmp_path / "elsewhere", tmp_path / "data"
    (inside / "sub").mkdir(parents=True)
    outside.mkdir()
    Video(indexed(8), fps=4.0).save(outside / "clip.mp4")
    Video(indexed(8), fps=4.0).save(tmp_path / "outside.mp4")
    (inside / "link").symlink_to(outside)
    (inside / "escape.mp4").symlink_to(outside / "clip.mp4")
    manifest = write_jsonl(inside / "m.jsonl", [{"path": "sub/../ok.mp4", "caption": "a"}, {"path": path, "caption": "b"}])
    with pytest.raises(KinemaError, match=rf"m\.jsonl, line 2: '{path}' is outside the manifest's folder .*--allow-outside"):
        read_manifest(manifest)
    with pytest.raises(KinemaError, match="outside the manifest's folder"):
        FolderDataset(manifest, size=8, frames=2, fps=4.0)
    assert [r.line for r in read_manifest(manifest, allow_outside=True)] == [1, 2]


def test_a_symlink_that_stays_inside_is_fine(tmp_path):
    Video(indexed(8), fps=4.0).save(tmp_path / "clip.mp4")
    (tmp_path / "alias.mp4").symlink_to(tmp_path / "clip.mp4")
    ds = FolderDataset(write_jsonl(tmp_path / "m.jsonl", [{"path": "alias.mp4", "caption": "a"}]), size=8, frames=2, fps=4.0)
    assert len(ds) == 4


def test_the_manifest_is_read_one_row_at_a_time(tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"path": "a.mp4", "caption": "one"}\n{"path": "b.mp4", "caption": "two"}\nnot json\n')
    rows = iter_manifest(manifest)
    assert [next(rows).caption, next(rows).caption] == ["one", "two"]  # before line 3 is parsed
    with pytest.raises(KinemaError, match=r"m\.jsonl, line 3: not valid JSON"):
        next(rows)


def test_csv_rows_with_newlines_in_quotes_are_read_again_by_offset(tmp_path):
    Video(indexed(8), fps=4.0).save(tmp_path / "a.mp4")
    Video(indexed(4, 20, 20), fps=4.0).save(tmp_path / "b.gif")
    (tmp_path / "m.csv").write_text(
        '\ufeffpath,caption\n"a.mp4","two\nlines, and a comma"\n\nb.gif, "é"\n', encoding="utf-8"
    )
    rows = read_manifest(tmp_path / "m.csv")
    assert [(Path(r.path).name, r.caption, r.line) for r in rows] == [("a.mp4", "two\nlines, and a comma", 2), ("b.gif", "é", 5)]
    ds = FolderDataset(tmp_path / "m.csv", size=8, frames=2, fps=4.0)
    assert [ds.row(i).caption for i in range(len(ds))] == ["two\nlines, and a comma"] * 4 + ["é"] * 2
    assert ds[5]["caption"] == "é"


def test_the_dataset_holds_arrays_not_rows(clips):
    ds = build(write_jsonl(clips / "m.jsonl", ROWS * 50), size=8, frames=2, fps=4.0)
    assert len(ds) == 8 * 50
    assert all(isinstance(a, np.ndarray) for a in (ds._offsets, ds._item_rows, ds._item_starts))
    assert ds.skipped_count == 150 and len(ds.skipped) == 150
    clone = pickle.loads(pickle.dumps(ds))  # what a spawned DataLoader worker gets
    assert clone[399]["caption"] == ds[399]["caption"] == "an image"


def test_a_manifest_edited_under_a_dataset_is_named(clips):
    manifest = write_jsonl(clips / "m.jsonl", ROWS[:1])
    ds = build(manifest, size=8, frames=2, fps=4.0)
    write_jsonl(manifest, ROWS[:2])
    with pytest.raises(KinemaError, match=r"m\.jsonl changed after the dataset was built"):
        ds[0]


def test_skipped_files_are_counted_all_and_listed_up_to_a_cap(tmp_path, monkeypatch):
    import kinema.data.folder as folder

    monkeypatch.setattr(folder, "LISTED", 3)
    Video(indexed(8), fps=4.0).save(tmp_path / "a.mp4")
    rows = [{"path": f"missing{i}.mp4", "caption": ""} for i in range(10)] + [{"path": "a.mp4", "caption": ""}]
    ds = build(write_jsonl(tmp_path / "m.jsonl", rows), size=8, frames=2, fps=4.0)
    assert (ds.skipped_count, [Path(p).name for p, _ in ds.skipped]) == (10, ["missing0.mp4", "missing1.mp4", "missing2.mp4"])


def test_bad_arguments(clips):
    manifest = write_jsonl(clips / "m.jsonl", ROWS[:1])
    for kwargs, name in [({"frames": 0}, "frames"), ({"fps": -1.0}, "fps"), ({"size": 0}, "size"), ({"stride": 0}, "stride")]:
        with pytest.raises(KinemaError, match=f"FolderDataset: {name} must be positive"):
            FolderDataset(manifest, **kwargs)


def test_manifest_stats(clips):
    rows = ROWS + [{"path": "good.mp4", "caption": "part", "start": 0.5, "end": 1.0}]
    stats = manifest_stats(write_jsonl(clips / "m.jsonl", rows))
    assert (stats["rows"], stats["videos"], stats["images"]) == (7, 4, 1)
    assert stats["duration_s"] == pytest.approx({"total": 4.35, "min": 0.25, "median": 1.05, "max": 2.0})
    assert stats["frame_sizes"] == {"32x24": 4, "20x20": 1}
    assert stats["fps"] == {"10": 3, "8": 1}
    assert sorted(Path(u["path"]).name for u in stats["unreadable"]) == ["bad.mp4", "missing.mp4"]
    assert all(u["path"] in u["reason"] for u in stats["unreadable"])
    assert stats["unreadable_count"] == 2


def test_manifest_stats_names_a_few_unreadable_files_and_writes_them_all(clips):
    out = clips / "report" / "unreadable.jsonl"
    stats = manifest_stats(write_jsonl(clips / "m.jsonl", ROWS * 3), listed=1, unreadable_out=out)
    assert (stats["rows"], stats["unreadable_count"], len(stats["unreadable"])) == (18, 6, 1)
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(Path(w["path"]).name, w["line"]) for w in written[:2]] == [("bad.mp4", 4), ("missing.mp4", 5)]
    assert len(written) == 6 and os.listdir(out.parent) == ["unreadable.jsonl"]
    with pytest.raises(KinemaError, match=r"name it \*\.jsonl"):
        manifest_stats(clips / "m.jsonl", unreadable_out=clips / "x.txt")


def test_write_manifest_round_trip(tmp_path):
    rows = [{"path": Path("clips/a.mp4"), "caption": "ünï", "start": 0.5}, {"path": "b.gif", "caption": ""}]
    path = write_manifest(tmp_path / "out" / "m.jsonl", rows)
    read = read_manifest(path)
    assert [(r.path, r.caption, r.start) for r in read] == [
        (str(tmp_path / "out" / "clips" / "a.mp4"), "ünï", 0.5), (str(tmp_path / "out" / "b.gif"), "", None)
    ]
    assert os.listdir(path.parent) == ["m.jsonl"]  # no temp file left
    with pytest.raises(KinemaError, match="row 0 needs a path"):
        write_manifest(tmp_path / "x.jsonl", [{"caption": "no path"}])
    with pytest.raises(KinemaError, match=r"name the file \*\.jsonl"):
        write_manifest(tmp_path / "x.csv", rows)
    assert sorted(os.listdir(tmp_path)) == ["out"]


# --- transforms ----------------------------------------------------------------------


def test_resize_center_crop():
    frames = np.zeros((2, 8, 16, 3), np.uint8)
    frames[:, :, 4:12] = 100
    assert np.all(resize_center_crop(frames, 4) == 100)
    assert resize_center_crop(frames, (6, 9)).shape == (2, 6, 9, 3)
    tall = resize_center_crop(np.transpose(frames, (0, 2, 1, 3)), 4)
    assert np.all(tall == 100)


def test_resample_fps_matches_read_video(tmp_path):
    frames = indexed(20)
    assert len(resample_fps(frames, 10, 4)) == 8
    assert [int(f.mean()) // 12 for f in resample_fps(frames, 10, 4)] == [1, 3, 6, 8, 11, 13, 16, 18]
    assert np.array_equal(resample_fps(frames, 10, 10), frames)
    assert len(resample_fps(frames, 10, 30)) == 60
    path = Video(frames, fps=10).save(tmp_path / "a.gif")
    from kinema.video import read_video

    assert np.array_equal(read_video(path, fps=4).frames, resample_fps(frames, 10, 4))


def test_tensor_conversions_round_trip():
    frames = np.random.default_rng(0).integers(0, 256, (3, 5, 6, 3), dtype=np.uint8)
    x = to_tensor(frames)
    assert x.shape == (3, 3, 5, 6) and x.min() >= -1 and x.max() <= 1
    assert np.array_equal(to_uint8(x), frames)
    assert to_uint8(torch.stack([x, x])).shape == (2, 3, 5, 6, 3)
    with pytest.raises(ValueError, match=r"\(3, T, H, W\)"):
        to_uint8(torch.zeros(4, 2, 2, 2))


def test_windows():
    assert windows(17, 17, 17) == [0]
    assert windows(16, 17, 1) == []
    assert windows(10, 4, 3) == [0, 3, 6]
    with pytest.raises(ValueError):
        windows(10, 0, 1)
