"""Training throughput of the default presets: samples/s of the real loop, fp32 against bf16 autocast.

Each case runs `kinema.train.train` itself (data loading, the step, clipping, AdamW,
the EMA, metrics; no checkpoints or samples) for `--warmup` + `--steps` steps and
reads the throughput of the last `--steps` from its metrics.jsonl. The diffusion
presets train on latents of an untrained shapes VAE (speed does not depend on its
weights) through the latent cache, as the presets do after their first epoch: the
dataset is cut to `--warmup` steps of samples so that the warmup fills the cache.
FLOPs per step come from torch's FlopCounterMode over one sample (`kinema train
--dry-run` counts the same way), giving the achieved FLOP/s; on a GPU, also the
MFU of the bf16 step against `--peak-tflops`.

    python benchmarks/train.py --out benchmarks/train.json
    python benchmarks/train.py --presets shapes-dit --precisions bf16 --peak-tflops 989   # on an H100
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

import torch

from kinema.models.checkpoint import save_model
from kinema.models.vae import VideoVAE
from kinema.train.estimate import estimate
from kinema.train.loop import train
from kinema.train.observe import read_metrics
from kinema.train.presets import load_config, shapes_vae

DEFAULT_PRESETS = ("shapes-vae", "shapes-dit", "shapes-unet3d")


def untrained_vae(directory: Path) -> Path:
    torch.manual_seed(0)
    save_model(VideoVAE(shapes_vae().vae), directory, "vae")
    return directory


def run_case(preset: str, precision: str, *, vae_dir: Path, warmup: int, steps: int, workdir: Path) -> dict:
    sets: dict = {
        "precision": precision,
        "steps": warmup + steps,
        "log.every": 1,
        "log.progress": False,
        "log.tensorboard": False,
        "sample.every": 0,
        "checkpoint.every": 10**9,
        "data.num_workers": 0,
    }
    config = load_config(preset)
    if config.stage == "diffusion":
        sets.update(
            {"diffusion.vae_path": str(vae_dir), "data.cache": True, "data.length": warmup * config.data.batch_size}
        )
    config = load_config(preset, sets)
    out = workdir / f"{preset}-{precision}"
    if train(config, out).stopped_by is not None:
        sys.exit("interrupted")
    measured = [row for row in read_metrics(out / "metrics.jsonl") if row["step"] > warmup]
    seconds = sum(1.0 / row["steps_per_s"] for row in measured) / len(measured)
    cost = estimate(config)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return {
        "preset": preset,
        "precision": precision,
        "device": device,
        "batch_size": config.data.batch_size,
        "trained_params": cost["trained_params"],
        "samples_per_s": config.data.batch_size / seconds,
        "seconds_per_step": seconds,
        "train_flops_per_step": cost["train_flops_per_step"],
        "achieved_tflops": cost["train_flops_per_step"] / seconds / 1e12,
        "process_peak_rss_mb": measured[-1]["peak_memory_mb"],  # on a CPU: the whole benchmark process so far
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=list(DEFAULT_PRESETS))
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument(
        "--warmup", type=int, default=2, help="steps before the measured ones (fill the cache, warm up)"
    )
    parser.add_argument("--steps", type=int, default=3, help="measured steps")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument(
        "--peak-tflops", type=float, default=989.0, help="GPU bf16 dense peak for the MFU (H100 SXM: 989)"
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("train.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        vae_dir = untrained_vae(Path(tmp) / "vae")
        for preset in args.presets:
            for precision in args.precisions:
                r = run_case(
                    preset, precision, vae_dir=vae_dir, warmup=args.warmup, steps=args.steps, workdir=Path(tmp)
                )
                if r["device"] == "cuda" and precision == "bf16":
                    r["mfu"] = r["achieved_tflops"] / args.peak_tflops
                results.append(r)
                print(
                    f"{preset:14s} {precision:5s} {r['samples_per_s']:8.2f} samples/s  "
                    f"{r['seconds_per_step']:7.2f} s/step  "
                    f"{r['achieved_tflops'] * 1e3:8.1f} GFLOP/s" + (f"  MFU {r['mfu']:.1%}" if "mfu" in r else ""),
                    flush=True,
                )

    print(f"\n| preset | precision | batch | samples/s | s/step | GFLOP/s | bf16 speedup |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        fp32 = next((x for x in results if x["preset"] == r["preset"] and x["precision"] == "fp32"), None)
        speedup = f"{r['samples_per_s'] / fp32['samples_per_s']:.2f}x" if fp32 and r["precision"] == "bf16" else ""
        print(
            f"| {r['preset']} | {r['precision']} | {r['batch_size']} | {r['samples_per_s']:.2f} | "
            f"{r['seconds_per_step']:.2f} | {r['achieved_tflops'] * 1e3:.1f} | {speedup} |"
        )
    machine = {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "load_average": os.getloadavg(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    args.out.write_text(json.dumps({"machine": machine, "command": " ".join(sys.argv), "results": results}, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
