"""Training faults (issue 31): every stop a clean checkpoint.

Exact resume with dropout on, a full or read-only run folder, the way back from non-finite losses, and
signals sent to the whole process group (DataLoader workers included) or twice.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from kinema.errors import KinemaError
from kinema.train import checkpoint as ckpt
from kinema.train.loop import NonFiniteError, StopSignals, nonfinite_advice, train, weights_finite
from kinema.train.presets import load_config

# One intra-op thread: on a busy 2-core machine, two OpenMP threads per process are many times slower.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


pytestmark = pytest.mark.usefixtures("one_thread")


def debug(**sets) -> object:
    """The tiny DiT on the shipped VAE, streamed through a DataLoader (one per epoch), no previews."""
    return load_config("shapes-dit-debug", {"sample.every": 0, "data.store": "stream", **sets})


def weights(run: Path, step: int, name: str = "model") -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / f"step-{step:06d}" / f"{name}.safetensors"))


def steps_saved(run: Path) -> list[int]:
    return [s for s, _ in ckpt.list_checkpoints(run / "checkpoints")]


def leftovers(run: Path) -> list[str]:
    return [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith((".tmp-", ".old-"))]


# ---------------------------------------------------------------------------------------------- exact resume


def test_resume_is_bitwise_with_dropout_across_epochs(tmp_path):
    """Dropout draws from the global generator: creating a DataLoader iterator (once per epoch, once more at a
    resume) must not, or the resumed run's masks shift."""
    sets = {
        "deterministic": True,
        "optim.schedule": "constant",  # the schedule depends on `steps`, which differs between the two halves
        "diffusion.text.dropout": 0.3,
        "data.length": 8,  # 4 steps an epoch: the straight run starts a DataLoader at 0 and 4, the split at 0, 3, 4
        "checkpoint.every": 100,
    }
    train(debug(steps=7, **sets), tmp_path / "straight")
    train(debug(steps=3, **sets), tmp_path / "split")
    train(debug(steps=7, **sets), tmp_path / "split", resume=True)
    for name in ("model", "ema", "optimizer"):
        a, b = weights(tmp_path / "straight", 7, name), weights(tmp_path / "split", 7, name)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)


# ---------------------------------------------------------------------------------------------- run folder I/O


@pytest.mark.parametrize(
    "failure",
    [
        OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)),
        SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"),
    ],
    ids=["oserror", "safetensors"],
)
def test_a_full_disk_while_checkpointing_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch, failure):
    run = tmp_path / "run"
    train(debug(steps=2), run)  # step-000002
    real_save = ckpt.save_file

    def full(*args, **kwargs):
        real_save(*args, **kwargs)  # a partial file in the temporary folder, as a real full disk leaves
        raise failure

    monkeypatch.setattr(ckpt, "save_file", full)
    for _ in range(2):  # and again on the still-full disk: no second temporary folder
        with pytest.raises(KinemaError) as info:
            train(debug(steps=4), run, resume=True)
        message = str(info.value)
        assert "\n" not in message
        assert f"cannot write checkpoint step-000004 into {run / 'checkpoints'}: No space left on device" in message
        assert "step-000002, is intact" in message and "--resume" in message
        assert leftovers(run) == [] and steps_saved(run) == [2]
    monkeypatch.setattr(ckpt, "save_file", real_save)
    assert train(debug(steps=4), run, resume=True).step == 4


def test_a_failed_first_checkpoint_leaves_nothing_and_other_errors_pass_through(tmp_path, monkeypatch):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), args[1])

    monkeypatch.setattr(ckpt, "save_file", read_only)
    with pytest.raises(KinemaError, match=r"Read-only file system; the run has no checkpoint yet\. Make it writable"):
        train(debug(steps=2), tmp_path / "run")
    assert not (tmp_path / "run").exists()  # the failed run took back what it wrote

    def broken(*args, **kwargs):
        raise RuntimeError("not a storage problem")

    monkeypatch.setattr(ckpt, "save_file", broken)
    with pytest.raises(RuntimeError, match="not a storage problem"):
        train(debug(steps=2), tmp_path / "run")


def test_a_full_disk_while_writing_metrics_names_the_run_folder(tmp_path, monkeypatch):
    from kinema.train import observe

    def full(self, row):  # a failed flush names no file
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(observe.Observer, "write", full)
    with pytest.raises(KinemaError, match=rf"cannot write into {tmp_path / 'run'}: No space left on device\. Free"):
        train(debug(steps=2), tmp_path / "run")


def test_a_full_disk_where_the_latent_store_is_saved_costs_the_next_run_an_encoding_not_this_run(tmp_path, monkeypatch, capsys):
    from kinema.train import store

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(store, "save_file", full)
    sets = {"data.store": "memory", "data.store_dir": str(tmp_path / "store"), "data.length": 8}
    train(debug(steps=2, **sets), tmp_path / "run")
    out = capsys.readouterr().out
    assert f"could not save the latent store to {tmp_path / 'store'}" in out and "No space left on device" in out
    assert steps_saved(tmp_path / "run") == [2] and list((tmp_path / "store").iterdir()) == []  # no temp file left


def test_out_must_be_a_folder_it_can_write_checked_before_any_work(tmp_path, capsys):
    from kinema.cli import main

    afile = tmp_path / "afile"
    afile.write_text("mine")
    for out in (afile, afile / "run"):
        with pytest.raises(SystemExit) as info:
            main(["train", "shapes-dit-debug", "--out", str(out)])
        err = capsys.readouterr().err
        assert info.value.code == 2 and err.count("\n") == 1, err
        assert f"{afile} is a file, not a folder" in err
    assert afile.read_text() == "mine"

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        try:  # root writes whatever the permission bits say
            (locked / "probe").touch()
            (locked / "probe").unlink()
            pytest.skip("this process writes into a read-only folder anyway (root)")
        except PermissionError:
            pass
        for out in (locked, locked / "run"):
            with pytest.raises(SystemExit) as info:
                main(["train", "shapes-dit-debug", "--out", str(out)])
            err = capsys.readouterr().err
            assert info.value.code == 2 and err.count("\n") == 1, err
            assert f"cannot write into {locked}" in err and "make it writable" in err
    finally:
        locked.chmod(0o755)


def test_a_read_only_mount_is_found_before_any_work(tmp_path, monkeypatch):
    """What root meets where chmod does not stop it: a read-only file system (simulated)."""
    from kinema import atomic
    from kinema.train import loop

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(atomic.tempfile, "TemporaryFile", read_only)
    monkeypatch.setattr(loop, "dataset_for", lambda config: pytest.fail("the run started work"))
    with pytest.raises(KinemaError, match=rf"--out {tmp_path / 'run'}: cannot write into {tmp_path} \(Read-only "
                                          r"file system\); make it writable or choose another --out"):
        train(debug(steps=2), tmp_path / "run")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------- non-finite losses


def test_exploding_lr_names_the_last_good_checkpoint_and_resume_from_it_recovers(tmp_path):
    run = tmp_path / "run"
    sets = {"checkpoint.every": 1, "checkpoint.keep": 2, "optim.max_nonfinite": 4}
    train(debug(steps=4, **sets), run)
    # The recipe changed on purpose mid-run: the first step at lr 1e6 is finite and blows the weights up;
    # the steps after it are not finite, yet their periodic checkpoints are saved.
    with pytest.raises(NonFiniteError) as info:
        train(debug(steps=30, **sets, **{"optim.lr": 1e6}), run, resume=True, allow_changes=["optim.lr"])
    message = str(info.value)
    assert "\n" not in message and "4 steps in a row had a non-finite loss" in message
    assert f"{run / 'checkpoints' / 'step-000004'} is the newest checkpoint whose weights still trained" in message
    assert "--resume-from 4 --set optim.lr=100000 --allow-change optim.lr" in message
    assert "grad_clip" not in message and "precision" not in message  # both already in force (clip 1, fp32)
    # the last good checkpoint outlives keep=2, however many bad ones came after it
    assert steps_saved(run) == [4, 7, 8]
    assert ckpt.read_state(ckpt.latest_checkpoint(run / "checkpoints"))["good_checkpoint"] == 4

    result = train(debug(steps=8, **sets), run, resume_from=4, allow_changes=["optim.lr"])
    assert result.step == 8 and result.pipeline is not None
    assert steps_saved(run) == [7, 8]  # the exploded branch's checkpoints were replaced
    assert max(w.abs().max() for w in weights(run, 8).values()) < 100
    assert ckpt.read_state(ckpt.latest_checkpoint(run / "checkpoints"))["config"]["optim"]["lr"] == 1e-3


def test_exploding_from_the_start_says_no_checkpoint_is_good_and_resume_from_checks_its_step(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(NonFiniteError, match=r"No checkpoint was saved while the losses were finite: start the run "
                                             r"again .* e\.g\. --set optim\.lr=100000$"):
        train(debug(steps=30, **{"optim.lr": 1e6, "optim.max_nonfinite": 3, "checkpoint.every": 1}), run)
    with pytest.raises(KinemaError, match=r"--resume-from 9: .* no complete checkpoint of step 9 \(it holds steps: "):
        train(debug(steps=30), run, resume_from=9)


def test_advice_offers_only_the_changes_not_in_force(tmp_path):
    config = debug(**{"optim.grad_clip": 0.0, "optim.lr": 1e-3})
    advice = nonfinite_advice(config, "bf16", None, tmp_path)
    assert "--set optim.lr=0.0001 --set optim.grad_clip=1 --set precision=fp32" in advice
    advice = nonfinite_advice(debug(), "fp32", None, tmp_path)
    assert "grad_clip" not in advice and "precision" not in advice


def test_non_finite_weights_are_never_checkpointed():
    from kinema.train.distributed import World

    world = World(rank=0, size=1, local_rank=0, device=torch.device("cpu"))
    model = torch.nn.Linear(3, 2)
    assert weights_finite(world, model)
    with torch.no_grad():
        model.weight[0, 1] = float("inf")
    assert not weights_finite(world, torch.nn.Linear(2, 2), model)


def test_a_kill_between_the_renames_of_a_step_saved_again_loses_nothing(tmp_path):
    """Saving step N again moves the old step-N aside, renames the new one in, then deletes the old: a kill -9
    between the renames leaves only `.old-step-N-PID`, which still counts, and is put back by the next save."""
    root = tmp_path / "checkpoints"
    tensors = {"model": {"w": torch.arange(3.0)}}
    ckpt.save_checkpoint(root, 4, tensors, {}, keep=1)
    ckpt.save_checkpoint(root, 5, tensors, {}, keep=1)
    os.replace(root / "step-000005", root / ".old-step-000005-99999")  # the process died here
    (root / ".tmp-step-000005-99999").mkdir()  # with the new copy half written
    assert [(s, p.name) for s, p in ckpt.list_checkpoints(root)] == [(5, ".old-step-000005-99999")]
    assert torch.equal(ckpt.read_tensors(ckpt.checkpoint_at(root, 5), "model")["w"], torch.arange(3.0))
    ckpt.save_checkpoint(root, 6, tensors, {}, keep=2)
    assert sorted(p.name for p in root.iterdir()) == ["step-000005", "step-000006"]


# ---------------------------------------------------------------------------------------------- signals


def test_a_second_signal_never_cuts_a_checkpoint_short_and_a_third_stops_at_once():
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    stop = StopSignals(verbose=False)
    stop.install()
    try:
        with stop.writing():
            for _ in range(4):
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.01)  # the handler runs between bytecodes
        assert len(stop.caught) == 4
        stop.caught.clear()
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
        assert stop.caught == [signal.SIGTERM, signal.SIGINT]
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
    finally:
        stop.restore()
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def start(run: Path, steps: int, *extra: str) -> subprocess.Popen:
    """`kinema train` in a process group of its own, loading through one DataLoader worker."""
    sets = ["sample.every=0", "data.store=stream", "data.num_workers=1", "checkpoint.every=1"]
    cmd = [sys.executable, "-m", "kinema", "train", "shapes-dit-debug", "--out", str(run), "--steps", str(steps)]
    cmd += [arg for s in sets for arg in ("--set", s)] + list(extra)
    return subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip


def wait_for_a_checkpoint(proc: subprocess.Popen, run: Path) -> None:
    deadline = time.monotonic() + 120  # generous: a busy machine starts the process slowly
    while ckpt.latest_checkpoint(run / "checkpoints") is None and proc.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        time.sleep(0.02)
    assert proc.poll() is None, proc.communicate()[1][-2000:]


@pytest.mark.parametrize(
    "signals", [[signal.SIGTERM], [signal.SIGINT, signal.SIGINT]], ids=["group-sigterm", "ctrl-c-twice"]
)
def test_signals_to_the_process_group_stop_with_a_checkpoint_and_resume_finishes(tmp_path, signals):
    """SIGTERM to the group (timeout, kill -- -PGID, SLURM, Kubernetes) reaches the DataLoader worker too; a
    double Ctrl-C sends SIGINT to the group twice. Either way: a final checkpoint, the shell's exit status."""
    run, steps = tmp_path / "run", 16  # two epochs: the worker starts twice
    proc = start(run, steps)
    wait_for_a_checkpoint(proc, run)
    for sig in signals:
        os.killpg(proc.pid, sig)
        time.sleep(0.005)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signals[0], err[-2000:]
    assert "DataLoader worker" not in err and "Traceback" not in err, err[-2000:]
    assert "checkpoint saved, continue with --resume" in out
    stopped = int(out.split("after step ")[1].split(";")[0])
    assert 0 < stopped < steps and steps_saved(run)[-1] == stopped and leftovers(run) == []
    done = start(run, steps, "--resume")
    out, err = done.communicate(timeout=120)
    assert done.returncode == 0, err[-2000:]
    assert steps_saved(run)[-1] == steps and (run / "pipeline").is_dir()


def test_a_second_run_into_a_live_runs_folder_is_refused_and_touches_nothing(tmp_path):
    run = tmp_path / "run"
    proc = start(run, 400)
    try:
        wait_for_a_checkpoint(proc, run)
        with pytest.raises(KinemaError, match=rf"--out {run}: another kinema train \(pid {proc.pid}\) is writing into this folder"):
            train(debug(steps=2), run, resume=True)
        assert proc.poll() is None and (run / "config.json").is_file() and steps_saved(run)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
    assert train(debug(steps=1), run, resume=True).step >= 1  # the lock went with the killed process
