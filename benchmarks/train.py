"""Training throughput: the real loop end to end against the model-only step, per data path and compile setting.

Each case runs in a fresh process, one after another (never two at once):

    baseline          the loop of another checkout (`--baseline-src DIR/src`, e.g. a worktree of the last
                      release), the preset as it ships: DataLoader, disk latent cache
    stream            this checkout, data.store=stream: DataLoader, disk latent cache (the path for data
                      that does not fit in memory)
    memory            this checkout, data.store=memory: the latent store on the device, batches by index
    memory+compile    the same with compile=true (each denoiser block compiled, `kinema.nn.compile_blocks`)
    model-only        the step alone, its batch already on the device: forward and backward of the diffusion
                      loss, clipping, fused AdamW, the EMA; eager and compiled

End-to-end numbers come from the loop's own metrics.jsonl, a row per step: a first
epoch fills the disk cache (and compiles), then the median step of the second epoch
is taken, plus the extra time of the step that starts an epoch (where a DataLoader
starts its workers) spread over an epoch of the preset's real dataset (625 steps
for shapes-dit). The model-only step is timed with the same optimiser, EMA and batch. FLOPs per step come from torch's
FlopCounterMode (as `kinema train --dry-run`), giving TFLOP/s and, on a GPU, the MFU
against `--peak-tflops` (a datasheet's dense bf16 peak). On a GPU the script also
runs the Wan2.1-1.3B-shape DiT train step, eager and compiled, beside diffusers'
WanTransformer3DModel (benchmarks/denoisers.py's suite).

    python benchmarks/train.py                                   # CPU, shapes-dit
    git worktree add /tmp/kinema-base 7f1b271                    # the code before the latent store
    python benchmarks/train.py --baseline-src /tmp/kinema-base/src --threads 2
    python benchmarks/train.py --presets shapes-dit-gpu --peak-tflops 989   # on an H100/H200
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

CASES = ("baseline", "stream", "memory", "memory+compile", "model-only", "model-only+compile")


# ---------------------------------------------------------------------------------------------- one case


def settings(preset: str, case: str, steps: int) -> dict:
    """The config overrides of an end-to-end case: a first epoch of `steps + 1` steps (it fills the disk cache
    and compiles), then a second epoch: its first step (timed apart: a DataLoader starts its workers there)
    and `steps` measured ones; a metrics row per step, nothing else written."""
    from kinema.train.presets import load_config

    batch = load_config(preset).data.batch_size
    epoch = steps + 1
    sets: dict = {
        "steps": 2 * epoch,
        "log.every": 1,
        "log.plot_every": 10**9,
        "log.progress": False,
        "log.tensorboard": False,
        "sample.every": 0,
        "checkpoint.every": 10**9,
        "diffusion.vae_path": "shapes",  # the shipped VAE: speed does not depend on which VAE
        "data.length": epoch * batch,
    }
    if case != "baseline":
        sets["data.store"] = "stream" if case == "stream" else "memory"
        sets["data.store_dir"] = ""  # encode in memory, do not save: each case starts alike
        sets["compile"] = case.endswith("+compile")
    return sets


def run_end_to_end(preset: str, case: str, steps: int, workdir: Path) -> dict:
    """Seconds per step within a later epoch (median), and the extra seconds the step that starts an epoch
    takes; `seconds_per_step` spreads that extra over an epoch of the preset's real dataset."""
    from kinema.train.data import dataset_for
    from kinema.train.loop import train
    from kinema.train.observe import read_metrics
    from kinema.train.presets import load_config

    config = load_config(preset, settings(preset, case, steps))
    out = workdir / "run"
    started = time.perf_counter()
    if train(config, out).stopped_by is not None:
        sys.exit("interrupted")
    wall = time.perf_counter() - started
    seconds = {row["step"]: 1.0 / row["steps_per_s"] for row in read_metrics(out / "metrics.jsonl")}
    epoch = steps + 1
    within = statistics.median(seconds[s] for s in range(epoch + 2, 2 * epoch + 1))
    epoch_start = max(seconds[epoch + 1] - within, 0.0)
    real_epoch = len(dataset_for(load_config(preset))) // config.data.batch_size
    return {
        "seconds_per_step": within + epoch_start / real_epoch,
        "within_epoch_s": within,
        "epoch_start_extra_s": epoch_start,
        "steps_per_real_epoch": real_epoch,
        "first_epoch_s": sum(seconds[s] for s in range(1, epoch + 1)),
        "wall_s": wall,
    }


def run_model_only(preset: str, compiled: bool, warmup: int, steps: int) -> dict:
    """The training step on one batch already on the device, repeated: what the loop would reach with free data."""
    from kinema import precision as precisions
    from kinema.train.data import StepRandom, dataset_for, plan_settings
    from kinema.train.distributed import World
    from kinema.train.ema import EMA
    from kinema.train.loop import cache_meta, clip_grad_norm, make_optimizer, optimizer_step
    from kinema.train.presets import load_config
    from kinema.train.stages import STAGES
    from kinema.train.store import micro_batches, open_store

    config = load_config(preset, settings(preset, "memory", steps))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision = precisions.resolve(config.precision, device)
    stage = STAGES[config.stage]
    torch.manual_seed(config.seed)
    model, frozen = stage.build(config)
    model.to(device)
    for module in frozen.values():
        module.to(device)
    ema = EMA(model, config.optim.ema_decay)
    optimizer = make_optimizer(model, config, device)
    if compiled:
        stage.compile(model)  # what compile=true does: each denoiser block

    def autocast():
        return precisions.autocast(precision, device)

    world = World(rank=0, size=1, local_rank=0, device=device)
    store = open_store(
        config, dataset_for(config), frozen, model, stage.prepare, device, autocast,
        meta=cache_meta(config, precision), world=world,
    )  # fmt: skip
    d = config.data
    batch = next(micro_batches(store, 0, 1, rank=0, world=1, accum=1, **plan_settings(config, d.length)))

    def step(i: int) -> None:
        draws = StepRandom(config.seed, i, d.batch_size, device)
        for group in batch["groups"]:
            with autocast():
                out = stage.step(model, frozen, group, draws.rows(group["slots"]), config)
            (out["loss"] * group["count"] / d.batch_size).backward()
        bad = ~torch.isfinite(clip_grad_norm(model, config.optim.grad_clip))
        optimizer_step(optimizer, bad, sharded=False)
        ema.update(model, skip=bad)
        optimizer.zero_grad(set_to_none=True)

    for i in range(warmup):
        step(i)
    sync(device)
    started = time.perf_counter()
    for i in range(steps):
        step(warmup + i)
    sync(device)
    return {"seconds_per_step": (time.perf_counter() - started) / steps, "measured_steps": steps}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_case(spec: dict) -> dict:
    """One case in this process (the parent runs each in a fresh one)."""
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    preset, case = spec["preset"], spec["case"]
    with tempfile.TemporaryDirectory() as tmp:
        if case.startswith("model-only"):
            timing = run_model_only(preset, case.endswith("+compile"), spec["warmup"], spec["steps"])
        else:
            timing = run_end_to_end(preset, case, spec["steps"], Path(tmp))
    return timing


# ---------------------------------------------------------------------------------------------- the suite


def flops_per_step(preset: str) -> tuple[int, int]:
    """(training FLOPs of one step, the batch size) from `kinema train --dry-run`'s counter."""
    from kinema.train.estimate import estimate
    from kinema.train.presets import load_config

    config = load_config(preset, {"diffusion.vae_path": "shapes", "data.length": 64})
    return estimate(config)["train_flops_per_step"], config.data.batch_size


def spawn(spec: dict, baseline_src: str | None) -> dict:
    env = dict(os.environ)
    if spec["case"] == "baseline":
        env["PYTHONPATH"] = os.pathsep.join([baseline_src or "", env.get("PYTHONPATH", "")])
    cmd = [sys.executable, __file__, "--run-case", json.dumps(spec)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"case {spec['case']} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def wan_suite(peak_tflops: float, *, device: str = "cuda", config=None, latent=(21, 30, 52), text: int = 512) -> dict:
    """Wan2.1-1.3B-shape train step (bf16 autocast): ours eager, ours compiled per block, diffusers eager.

    Default latent: 81 frames at 240x416, 8,190 tokens; `config`/`latent`/`text` shrink it for a CPU smoke test."""
    sys.path.insert(0, str(Path(__file__).parent))
    from denoisers import compare, make_inputs

    from kinema.models.dit import DiT, wan_1_3b
    from kinema.nn import compile_blocks

    device = torch.device(device)
    config = config or wan_1_3b()
    inputs = make_inputs(config, 1, latent, text, device)
    torch.manual_seed(0)
    with device:
        ours = DiT(config)
        theirs = ours.to_diffusers()
    flops = 3 * ours.flops(tuple(inputs[0].shape), inputs[2].shape[1])
    eager = compare(ours, theirs, inputs, backward=True, bf16=True, rounds=3, iters=3, clock="wall")
    compile_blocks(ours)
    compiled = compare(ours, theirs, inputs, backward=True, bf16=True, rounds=3, iters=3, clock="wall")
    rows = {
        "ours eager": eager["ours"],
        "ours compiled": compiled["ours"],
        "diffusers eager": statistics.median([eager["diffusers"], compiled["diffusers"]]),
    }
    return {
        "tokens": inputs[0].shape[2] * inputs[0].shape[3] * inputs[0].shape[4] // 4,
        "train_flops_per_step": flops,
        "rows": {k: {"seconds": s, "tflops": flops / s / 1e12, "mfu": flops / s / 1e12 / peak_tflops} for k, s in rows.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["shapes-dit"])
    parser.add_argument("--cases", nargs="+", default=None, choices=CASES, help="default: all (baseline if given)")
    parser.add_argument("--baseline-src", help="the src/ folder of the checkout to compare against (e.g. a worktree)")
    parser.add_argument("--warmup", type=int, default=3, help="model-only: steps before the measured ones")
    parser.add_argument("--steps", type=int, default=10, help="measured steps")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="GPU dense bf16 peak for the MFU (H100/H200 SXM: 989)")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("train.json"))
    parser.add_argument("--run-case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_case:
        print(json.dumps(run_case(json.loads(args.run_case))))
        return

    cases = args.cases or [c for c in CASES if c != "baseline" or args.baseline_src]
    gpu = torch.cuda.is_available()
    results = []
    for preset in args.presets:
        flops, batch = flops_per_step(preset)
        for case in cases:
            spec = dict(preset=preset, case=case, warmup=args.warmup, steps=args.steps, threads=args.threads)
            r = {"preset": preset, "case": case, "device": "cuda" if gpu else "cpu", "batch_size": batch, **spawn(spec, args.baseline_src)}
            r.update(steps_per_s=1 / r["seconds_per_step"], samples_per_s=batch / r["seconds_per_step"])
            r.update(train_flops_per_step=flops, achieved_tflops=flops / r["seconds_per_step"] / 1e12)
            if gpu:
                r["mfu"] = r["achieved_tflops"] / args.peak_tflops
            results.append(r)
            print(f"{preset:16s} {case:20s} {r['seconds_per_step'] * 1e3:9.1f} ms/step  {r['samples_per_s']:8.1f} samples/s", flush=True)

    print("\n| preset | case | ms/step | samples/s | vs model-only step | vs baseline | TFLOP/s | MFU |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        same = {x["case"]: x for x in results if x["preset"] == r["preset"]}
        alone = same.get("model-only+compile" if r["case"].endswith("+compile") else "model-only")
        base = same.get("baseline")
        r["vs_model_only"] = r["seconds_per_step"] / alone["seconds_per_step"] if alone else None
        r["speedup_vs_baseline"] = r["samples_per_s"] / base["samples_per_s"] if base else None
        ratio = f"{r['vs_model_only']:.2f}x" if r["vs_model_only"] and not r["case"].startswith("model-only") else ""
        speed = f"{r['speedup_vs_baseline']:.2f}x" if r["speedup_vs_baseline"] else ""
        mfu = f"{r['mfu']:.1%}" if "mfu" in r else ""
        print(
            f"| {r['preset']} | {r['case']} | {r['seconds_per_step'] * 1e3:.1f} | {r['samples_per_s']:.1f} | {ratio} "
            f"| {speed} | {r['achieved_tflops']:.3f} | {mfu} |"
        )
    report = {"machine": machine(), "command": " ".join(sys.argv), "results": results}
    if gpu:
        report["wan_1_3b"] = wan = wan_suite(args.peak_tflops)
        print("\nWan2.1-1.3B shape, train step, bf16 autocast, batch 1")
        for name, row in wan["rows"].items():
            print(f"  {name:16s} {row['seconds'] * 1e3:8.1f} ms  {row['tflops']:6.1f} TFLOP/s  MFU {row['mfu']:.1%}")
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out}")


def machine() -> dict:
    from kinema.precision import cpu_flags

    return {
        "platform": platform.platform(),
        "cpu": next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), platform.processor()) if os.path.exists("/proc/cpuinfo") else platform.processor(),
        "cpu_flags": cpu_flags(),
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "load_average": os.getloadavg(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


if __name__ == "__main__":
    main()
