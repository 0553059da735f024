"""Reliability in numbers: kills survived, checkpoints corrupted, steps lost, bad inputs handled, a huge manifest.

Three parts, each a fresh `kinema` process as a user runs it (issue 31):

kills     `kinema train shapes-dit-debug` (fp32, deterministic, checkpoint every step, one DataLoader
          worker) is killed with SIGKILL to its whole process group at random moments (--kills, 20), then
          inside a checkpoint write (--write-kills, 5: the child's safetensors writes are slowed by a shim
          in this script, and the kill lands while a `.tmp-step-*` folder is being filled), then stopped once
          by SIGTERM to the group (what `timeout`, SLURM and Kubernetes send). After every stop the newest
          checkpoint must load (every tensor read back); steps lost = the last step written to
          metrics.jsonl minus the newest checkpoint's step. Each run resumes with --resume; the final weights
          are compared bitwise with an uninterrupted run of the same config.
inputs    the bad-input tables (tests/test_faults*.py): cases tried and handled, from pytest's own count.
manifest  a manifest of --rows rows (1,000,000) cut from 100 small clips: `kinema data stats` and a
          FolderDataset built from it, each in a fresh process: wall time and peak memory (max RSS).

    python benchmarks/faults.py                        # all three, writes benchmarks/faults.json
    python benchmarks/faults.py --parts kills --kills 3 --write-kills 1 --steps 40 --json /tmp/f.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
SETS = {
    "precision": "fp32",
    "deterministic": "true",
    "checkpoint.every": "1",
    "checkpoint.keep": "2",
    "log.every": "1",
    "log.progress": "false",
    "sample.every": "0",
    "data.store": "stream",
    "data.num_workers": "1",
}
SLOW_WRITE_S = 1.0


# ---------------------------------------------------------------------------------------------- the child


def child(argv: list[str], slow: bool) -> None:
    """Run `kinema` in this process; with `slow`, every safetensors write in a checkpoint pauses after it."""
    if slow:
        import kinema.train.checkpoint as ckpt

        write = ckpt.save_file

        def slow_write(tensors, path, *args, **kwargs):  # a slow filesystem, shimmed for this benchmark only
            write(tensors, path, *args, **kwargs)
            time.sleep(SLOW_WRITE_S)

        ckpt.save_file = slow_write
    from kinema.cli import main

    sys.argv = ["kinema", *argv]
    main()


def train_command(run: Path, steps: int, *extra: str, slow: bool = False) -> list[str]:
    argv = ["train", "shapes-dit-debug", "--out", str(run), "--steps", str(steps)]
    argv += [arg for key, value in SETS.items() for arg in ("--set", f"{key}={value}")] + list(extra)
    return [sys.executable, __file__, "--child", *(["--slow"] if slow else []), "--", *argv]


def launch(cmd: list[str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=ENV, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip


# ---------------------------------------------------------------------------------------------- kills


def last_logged_step(run: Path) -> int:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return 0
    steps = [0]
    for line in path.read_text().splitlines():
        try:
            steps.append(int(json.loads(line)["step"]))
        except (ValueError, KeyError, TypeError):
            pass  # a line cut by the kill
    return max(steps)


def check_checkpoints(run: Path) -> tuple[int, int]:
    """(newest complete checkpoint's step or 0, how many complete-looking checkpoints fail to load)."""
    from safetensors.torch import load_file

    from kinema.train import checkpoint as ckpt

    corrupted = 0
    found = ckpt.list_checkpoints(run / "checkpoints")
    for _, path in found:
        try:
            for file in path.glob("*.safetensors"):
                for tensor in load_file(str(file)).values():
                    tensor.sum()  # touch every byte
            json.loads((path / ckpt.STATE_FILE).read_text())
        except Exception:  # noqa: BLE001  (any failure to read back is a corrupted checkpoint)
            corrupted += 1
    return (found[-1][0] if found else 0), corrupted


def wait_until(predicate, proc: subprocess.Popen, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def temporaries(run: Path) -> set[str]:
    """The checkpoint folders being written (or left by a kill) that hold at least one file."""
    root = run / "checkpoints"
    if not root.is_dir():
        return set()
    return {p.name for p in root.iterdir() if p.name.startswith(".tmp-") and p.is_dir() and any(p.iterdir())}


def kills(steps: int, n_random: int, n_write: int, seed: int, work: Path) -> dict:
    from safetensors.torch import load_file

    rng = random.Random(seed)
    reference, run = work / "reference", work / "killed"
    t0 = time.perf_counter()
    proc = launch(train_command(reference, steps))
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"the reference run failed:\n{err[-3000:]}")
    reference_s = time.perf_counter() - t0
    print(f"reference run: {steps} steps in {reference_s:.0f} s", flush=True)

    events = []
    plan = ["kill"] * n_random + ["kill-in-write"] * n_write + ["group-sigterm"]
    for i, kind in enumerate(plan):
        resume = ["--resume"] if (run / "checkpoints").is_dir() and check_checkpoints(run)[0] > 0 else []
        left = temporaries(run)  # a kill inside a write leaves one until the next run's first save
        proc = launch(train_command(run, steps, *resume, slow=kind == "kill-in-write"))
        start = time.monotonic()
        if kind == "kill":
            delay = rng.uniform(0.0, 8.0)  # from process start: import, build, data, or mid-step
            wait_until(lambda: time.monotonic() - start > delay, proc, delay + 1)
        elif kind == "kill-in-write":
            wait_until(lambda: temporaries(run) - left, proc, 180)
            time.sleep(rng.uniform(0.0, SLOW_WRITE_S * 0.9))
        else:
            before = last_logged_step(run)
            wait_until(lambda: last_logged_step(run) >= before + 5, proc, 180)  # in the middle of training
        finished = proc.poll() is not None
        if not finished:
            os.killpg(proc.pid, signal.SIGTERM if kind == "group-sigterm" else signal.SIGKILL)
        out, err = proc.communicate()
        reached = last_logged_step(run)
        saved, corrupted = check_checkpoints(run)
        event = {
            "kind": kind, "at_s": round(time.monotonic() - start, 2), "returncode": proc.returncode,
            "finished_first": finished, "reached": reached, "checkpoint": saved, "lost": reached - saved,
            "corrupted": corrupted, "traceback": "Traceback" in err,
        }  # fmt: skip
        events.append(event)
        print(f"{i + 1:2d}/{len(plan)} {kind:14s} at {event['at_s']:5.1f} s: step {reached}, checkpoint {saved}, "
              f"lost {event['lost']}, corrupted {corrupted}", flush=True)  # fmt: skip
        if finished:
            raise SystemExit(f"the run finished before stop {i + 1}; raise --steps")

    proc = launch(train_command(run, steps, "--resume"))
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"the final resume failed:\n{err[-3000:]}")
    name = f"step-{steps:06d}"
    differing = []
    for stem in ("model", "ema", "optimizer"):
        a = load_file(str(reference / "checkpoints" / name / f"{stem}.safetensors"))
        b = load_file(str(run / "checkpoints" / name / f"{stem}.safetensors"))
        differing += [f"{stem}/{key}" for key in a if key not in b or not a[key].equal(b[key])]
    random_kills = [e for e in events if e["kind"] == "kill"]
    return {
        "steps": steps,
        "reference_s": round(reference_s, 1),
        "kills": len(random_kills),
        "kills_in_write": sum(e["kind"] == "kill-in-write" for e in events),
        "group_sigterm_clean": all(e["returncode"] == 128 + signal.SIGTERM and not e["traceback"] for e in events if e["kind"] == "group-sigterm"),
        "resumed": len(events),  # every stop was followed by a --resume that went on (the last one to the end)
        "corrupted": sum(e["corrupted"] for e in events),
        "max_steps_lost": max(e["lost"] for e in events),
        "bitwise_equal_to_uninterrupted": not differing,
        "differing_tensors": differing[:10],
        "events": events,
    }


# ---------------------------------------------------------------------------------------------- bad inputs


def inputs() -> dict:
    files = ["tests/test_faults.py", "tests/test_faults_config.py", "tests/test_faults_train.py"]
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files], cwd=ROOT, env=ENV,
                          capture_output=True, text=True)  # fmt: skip
    tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-500:]
    return {"files": files, **input_counts(tail), "summary": tail}


def input_counts(summary: str) -> dict:
    """Cases run and handled (passed) from pytest's last line; a skipped case (e.g. a chmod test as root) is not run."""
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|errors?|skipped)", summary)}
    return {"cases": sum(counts.values()) - counts.get("skipped", 0), "handled": counts.get("passed", 0),
            "skipped": counts.get("skipped", 0)}  # fmt: skip


# ---------------------------------------------------------------------------------------------- manifest


def timed(cmd: list[str]) -> dict:
    """Wall time and peak resident memory of one process, as /usr/bin/time reports them."""
    with tempfile.NamedTemporaryFile("r", suffix=".txt") as report:
        proc = subprocess.run(["/usr/bin/time", "-o", report.name, "-f", "%e %M", *cmd], env=ENV, cwd=ROOT,
                              capture_output=True, text=True)  # fmt: skip
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd[:6])} ... failed:\n{proc.stderr[-3000:]}")
        wall, kb = report.read().split()[-2:]
    return {"wall_s": round(float(wall), 1), "max_rss_mb": round(int(kb) / 1024, 1), "stdout": proc.stdout}


def manifest(rows: int, work: Path) -> dict:
    import numpy as np

    from kinema.video import Video

    folder = work / "clips"
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(100):
        frames = np.random.default_rng(k).integers(0, 256, (16, 16, 16, 3), dtype=np.uint8)
        Video(frames, fps=8.0).save(folder / f"{k:03d}.gif")
    path = folder / "manifest.jsonl"
    with open(path, "w") as f:
        for i in range(rows):
            f.write(json.dumps({"path": f"{i % 100:03d}.gif", "caption": f"clip {i}", "start": (i // 100) % 2 * 0.5}) + "\n")
    size_mb = path.stat().st_size / 2**20
    floor = timed([sys.executable, "-c", "import kinema.data.folder"])
    stats = timed([sys.executable, "-m", "kinema", "data", "stats", str(path)])
    printed = len(stats.pop("stdout"))
    build = timed([sys.executable, "-c", f"from kinema.data.folder import FolderDataset as F; d = F({str(path)!r}, size=16, frames=8, fps=8.0); print(len(d))"])  # fmt: skip
    windows = int(build.pop("stdout").strip())
    floor.pop("stdout")
    return {
        "rows": rows, "manifest_mb": round(size_mb, 1), "import_floor": floor,
        "stats": {**stats, "printed_bytes": printed}, "dataset": {**build, "windows": windows},
    }  # fmt: skip


# ---------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", default=["kills", "inputs", "manifest"], choices=["kills", "inputs", "manifest"])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--write-kills", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=Path(__file__).with_suffix(".json"))
    args = parser.parse_args()

    # The load average says whether other jobs shared the CPU (then the wall times are upper bounds).
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "load_before": os.getloadavg()[0]}
    result: dict = {"machine": machine}
    with tempfile.TemporaryDirectory(prefix="kinema-faults-") as tmp:
        if "kills" in args.parts:
            result["kills"] = kills(args.steps, args.kills, args.write_kills, args.seed, Path(tmp))
        if "inputs" in args.parts:
            result["inputs"] = inputs()
        if "manifest" in args.parts:
            result["manifest"] = manifest(args.rows, Path(tmp))

    print("\n| measure | value |\n|---|---|")
    if "kills" in result:
        k = result["kills"]
        print(f"| random kill -9 to the process group, resumed | {k['kills']} of {k['kills']} |")
        print(f"| kill -9 inside a checkpoint write, resumed | {k['kills_in_write']} of {k['kills_in_write']} |")
        print(f"| SIGTERM to the process group: final checkpoint, no traceback | {'yes' if k['group_sigterm_clean'] else 'NO'} |")
        print(f"| checkpoints that failed to load | {k['corrupted']} |")
        print(f"| steps lost at most (checkpoint every step) | {k['max_steps_lost']} |")
        print(f"| final weights bitwise equal to an uninterrupted run | {'yes' if k['bitwise_equal_to_uninterrupted'] else 'NO'} |")
    if "inputs" in result:
        i = result["inputs"]
        print(f"| bad inputs and faults tried, handled (tests/test_faults*.py) | {i['handled']} of {i['cases']} ({i['skipped']} skipped) |")
    if "manifest" in result:
        m = result["manifest"]
        print(f"| `kinema data stats`, {m['rows']:,} rows ({m['manifest_mb']} MB) | {m['stats']['wall_s']} s, "
              f"{m['stats']['max_rss_mb']} MB peak, {m['stats']['printed_bytes']:,} bytes printed |")  # fmt: skip
        print(f"| FolderDataset of it ({m['dataset']['windows']:,} windows) | {m['dataset']['wall_s']} s, "
              f"{m['dataset']['max_rss_mb']} MB peak (import alone: {m['import_floor']['max_rss_mb']} MB) |")  # fmt: skip
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        rest = sys.argv[2:]
        slow = rest[:1] == ["--slow"]
        rest = rest[1:] if slow else rest
        child(rest[1:] if rest[:1] == ["--"] else rest, slow)
    else:
        main()
