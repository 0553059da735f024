"""Generation speed and memory of a shapes-sized pipeline (random weights) on this machine.

Four tables:
  samplers    seconds per 17x64x64 clip and peak memory for each sampler at several step counts
              (text-to-video, guidance 4: each step is one batch-of-2 forward, heun two)
  extension   extending a 17-frame clip window after window: time must grow linearly with the
              number of windows, peak memory must stay flat
  precision   fp32 against bf16 autocast, euler
  cold start  `kinema generate ... --model DIR` as a fresh process (import, load, generate, write)

Every measurement runs in a fresh child process (which builds the pipeline from a seed and
warms it up with a one-step clip first): its time is taken inside the child, its peak memory is
the child's peak resident set (ru_maxrss from wait4: torch, the weights and the activations).
Wall and process CPU seconds are both given (on a busy machine CPU seconds are the steadier one).

    python benchmarks/generate.py --out benchmarks/generate.json
    python benchmarks/generate.py --quick      # fewer points, for a smoke run
    python benchmarks/generate.py --only extension   # one table, merged into --out
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from kinema.diffusion.samplers import STEPS
from kinema.pipelines.presets import random_pipeline

PROMPT = "a small red circle moving right"


def child(spec: dict) -> dict:
    """Run one measurement in this process (the child): build, warm up, time the call."""
    torch.set_grad_enabled(False)
    pipe = random_pipeline("shapes", seed=0).to(precision=spec.get("precision", "fp32"))
    clip = pipe.generate(PROMPT, seed=0, num_inference_steps=1)  # warm-up, and the clip an extension continues
    walls, cpus = [], []
    for _ in range(spec.get("repeat", 1)):
        wall, cpu = time.perf_counter(), time.process_time()
        if "extend" in spec:
            out = pipe.extend(clip, PROMPT, num_frames=spec["extend"], seed=1, num_inference_steps=spec["steps"])
            assert out.num_frames == clip.num_frames + spec["extend"]
        else:
            pipe.generate(PROMPT, seed=0, num_inference_steps=spec["steps"], sampler=spec.get("sampler"))
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    # The fastest repeat: other work on the machine only ever adds time.
    return {"wall_s": min(walls), "cpu_s": min(cpus), "wall_s_all": walls}


def measure(spec: dict, threads: int) -> dict:
    """spec's measurement in a fresh process; adds its peak resident memory in MB."""
    cmd = [sys.executable, __file__, "--child", json.dumps(spec), "--threads", str(threads)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"child {spec} failed with exit code {proc.returncode}")
    return {**spec, **json.loads(out.strip().splitlines()[-1]), "peak_rss_mb": usage.ru_maxrss / 1024}


def samplers(steps: list[int], threads: int, repeat: int) -> list[dict]:
    rows = []
    for method in STEPS:
        for n in steps:
            m = measure({"sampler": method, "steps": n, "repeat": repeat}, threads)
            m["evaluations"] = 2 * n - 1 if method == "heun" else n
            rows.append(m)
            print(f"  {method:9s} {n:3d} steps  {m['wall_s']:7.2f} s wall  {m['cpu_s']:7.2f} s cpu  "
                  f"peak {m['peak_rss_mb']:6.0f} MB", flush=True)  # fmt: skip
    return rows


def extension(adds: list[int], steps: int, threads: int) -> list[dict]:
    rows = []
    for add in adds:
        m = measure({"extend": add, "steps": steps}, threads)  # long enough to need no repeats
        m["windows"] = -(-add // 12)  # 17-frame windows with 5 frames of context add 12 frames each
        m["wall_s_per_window"] = m["wall_s"] / m["windows"]
        rows.append(m)
        print(f"  +{add:4d} frames  {m['windows']:3d} windows  {m['wall_s']:7.2f} s wall  {m['cpu_s']:7.2f} s cpu "
              f"({m['cpu_s'] / m['windows']:5.2f} cpu s/window)  peak {m['peak_rss_mb']:6.0f} MB", flush=True)  # fmt: skip
    return rows


def precision(steps: int, threads: int, repeat: int) -> list[dict]:
    rows = []
    for p in ("fp32", "bf16"):
        m = measure({"precision": p, "steps": steps, "repeat": repeat}, threads)
        rows.append(m)
        print(f"  {p}  {steps} steps  {m['wall_s']:7.2f} s wall  {m['cpu_s']:7.2f} s cpu  peak {m['peak_rss_mb']:6.0f} MB", flush=True)
    return rows


def cold_start(steps: list[int], threads: int) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model = random_pipeline("shapes", seed=0).save(Path(tmp) / "pipe")
        for n in steps:
            cmd = [sys.executable, "-m", "kinema", "generate", PROMPT, "--model", str(model), "--steps", str(n),
                   "--seed", "0", "--quiet", "--out", str(Path(tmp) / "out.mp4")]  # fmt: skip
            start = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
            wall = time.perf_counter() - start
            rows.append({"steps": n, "wall_s": wall})
            print(f"  kinema generate --steps {n:3d}: {wall:6.2f} s wall", flush=True)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import torch"], check=True)
        rows.append({"steps": 0, "wall_s": time.perf_counter() - start, "what": "python -c 'import torch' alone"})
        print(f"  python -c 'import torch': {rows[-1]['wall_s']:6.2f} s wall", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("generate.json"))
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="fewer points")
    parser.add_argument("--repeat", type=int, default=3, help="runs per sampler and precision point (the fastest is kept)")
    parser.add_argument("--only", choices=["samplers", "extension", "precision", "cold_start"], action="append",
                        help="run only these tables (repeatable)")  # fmt: skip
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return

    pipe = random_pipeline("shapes", seed=0)
    params = {name: sum(p.numel() for p in m.parameters()) for name, m in (("vae", pipe.vae), ("denoiser", pipe.denoiser), ("text_encoder", pipe.text_encoder))}
    del pipe
    load = os.getloadavg()[0]
    print(f"shapes-sized pipeline (random weights) {params}; {args.threads} threads; load average {load:.1f}")

    tables = {
        "samplers": ("samplers (17 frames, 64x64, guidance 4)", lambda: samplers([4, 10] if args.quick else [4, 10, 20], args.threads, args.repeat)),
        "extension": ("extension (windows of 17 frames, 5 of context, 10 steps)", lambda: extension([12, 48] if args.quick else [12, 48, 96, 192], 10, args.threads)),
        "precision": ("precision (euler, 10 steps)", lambda: precision(10, args.threads, args.repeat)),
        "cold_start": ("cold start", lambda: cold_start([1, 10] if args.quick else [1, 10, 30], args.threads)),
    }  # fmt: skip
    result = json.loads(args.out.read_text()) if args.only and args.out.is_file() else {}
    for name, (title, run) in tables.items():
        if not args.only or name in args.only:
            print(title + ":")
            result[name] = run()
    result["machine"] = {
        "platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
        "threads": args.threads, "torch": torch.__version__, "load_average_at_start": load,
        "load_average_at_end": os.getloadavg()[0], "parameters": params,
    }  # fmt: skip
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
