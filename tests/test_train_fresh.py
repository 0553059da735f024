"""`kinema train` on a fresh install and when it fails: the presets run without a trained VAE where they can,
say what to do where they cannot, and a run that fails before its first checkpoint leaves nothing behind."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kinema.cli import main
from kinema.errors import KinemaError
from kinema.train.config import override
from kinema.train.loop import train
from kinema.train.presets import load_config


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a busy 2-core machine, two OpenMP threads per process are many times slower
    yield
    torch.set_num_threads(threads)


def tree(folder: Path) -> dict[str, bytes | None]:
    """Every path under `folder` with its bytes (None for a folder)."""
    return {p.relative_to(folder).as_posix(): None if p.is_dir() else p.read_bytes() for p in folder.rglob("*")}


def cli(*args: str) -> int:
    try:
        main(list(args))
    except SystemExit as e:
        return int(e.code or 0)
    return 0


# ---------------------------------------------------------------------------------------------- failed runs


def test_a_run_that_fails_at_building_leaves_nothing_behind(tmp_path):
    config = load_config("shapes-dit-debug", {"diffusion.vae_path": str(tmp_path / "no-vae")})
    # a new folder (and its new parent): both go again
    with pytest.raises(KinemaError, match="diffusion.vae_path"):
        train(config, tmp_path / "runs" / "x")
    assert not (tmp_path / "runs").exists()
    # a folder of the user's, with a samples/ of its own: exactly what was there stays
    mine = tmp_path / "mine"
    (mine / "samples").mkdir(parents=True)
    (mine / "notes.txt").write_text("mine")
    (mine / "samples" / "keep.gif").write_bytes(b"GIF89a")
    before = tree(mine)
    with pytest.raises(KinemaError, match="diffusion.vae_path"):
        train(config, mine)
    assert tree(mine) == before


def test_a_failed_resume_leaves_the_run_as_it_was_and_a_checkpointed_run_stays(tmp_path, monkeypatch):
    config = load_config("shapes-vae-debug", {"steps": 2, "sample.every": 0})
    run = tmp_path / "run"
    assert train(config, run).step == 2
    before = tree(run)
    # The resume rewrites config.json and records the recipe change, then fails on its data: all taken back.
    changed = override(config, {"steps": 4, "optim.lr": 5e-4})
    too_few = [{"video": torch.zeros(3, 5, 32, 32), "caption": "a red circle moving right"}]
    with pytest.raises(KinemaError, match="fewer than data.batch_size"):
        train(changed, run, resume=True, allow_changes=["optim.lr"], dataset=too_few)
    assert tree(run) == before
    # A run that saved a checkpoint before failing is a run to resume: it stays.
    import kinema.train.loop as loop

    def broken_export(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(loop, "write_pipeline", broken_export)
    with pytest.raises(OSError, match="disk full"):
        train(config, tmp_path / "kept")
    assert (tmp_path / "kept" / "config.json").is_file()
    assert (tmp_path / "kept" / "checkpoints" / "step-000002" / "state.json").is_file()


# ---------------------------------------------------------------------------------------------- fresh install


@pytest.mark.parametrize("preset", ["shapes-dit-debug", "shapes-unet3d-debug"])
def test_debug_presets_need_no_trained_vae(preset, tmp_path, monkeypatch):
    from kinema.train.stages import build_diffusion

    monkeypatch.chdir(tmp_path)  # no runs/ here, as on a fresh install
    config = load_config(preset)
    assert config.diffusion.vae_path == "shapes"  # the shipped model's VAE, which the debug denoisers fit
    _, frozen = build_diffusion(config)
    assert frozen["vae"].latent_shape((1, 3, 5, 32, 32)) == (1, 8, 2, 8, 8)
    if preset == "shapes-dit-debug":  # the README's smoke run, end to end
        assert cli("train", preset, "--out", "runs/debug", "--steps", "2") == 0
        assert (tmp_path / "runs" / "debug" / "pipeline" / "pipeline.json").is_file()


def test_the_full_preset_without_a_vae_says_what_to_do_and_its_dry_run_works(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli("train", "shapes-dit", "--out", "runs/shapes-dit") == 2
    err = capsys.readouterr().err
    assert "kinema train shapes-vae --out runs/shapes-vae" in err and "--set diffusion.vae_path=shapes" in err
    assert not (tmp_path / "runs").exists()  # and the failed run left nothing behind
    # A dry run needs only the VAE's shape: with the VAE not trained yet it measures with the shipped one's
    # (the debug preset pointed at the full preset's missing VAE, to stay fast).
    args = ("--out", "runs/x", "--dry-run", "--set", "diffusion.vae_path=runs/shapes-vae/pipeline")
    assert cli("train", "shapes-dit-debug", *args) == 0
    out = capsys.readouterr().out
    assert "does not exist yet: measured with the shipped 'shapes' VAE" in out and "time per step" in out
    assert not (tmp_path / "runs").exists()
