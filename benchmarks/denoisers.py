"""Throughput of kinema's DiT against diffusers' WanTransformer3DModel with identical weights.

CPU (always): the shapes model's denoiser (`dit_small`) on its latents, forward and
forward+backward, fp32 and bf16 autocast, both models timed in alternation in one
process (the median of several rounds), side by side as a speed ratio.

GPU (when CUDA is available): the real Wan2.1-1.3B shape on a 480p x 81-frame clip
(latent 21 x 60 x 104, 32,760 tokens), random weights, bf16 autocast; achieved
TFLOP/s and MFU against `--gpu-peak-tflops` (989: H100 bf16 dense), for both models.

    python benchmarks/denoisers.py --out benchmarks/denoisers.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch

from kinema.models.dit import DiT, DiTConfig, dit_small, wan_1_3b


CLOCKS = {"wall": time.perf_counter, "process": time.process_time}


def timed(fn: Callable[[], object], device: torch.device, clock: Callable[[], float]) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = clock()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return clock() - start


def step_fns(model, inputs, *, backward: bool, bf16: bool, diffusers: bool) -> Callable[[], object]:
    x, t, ctx = inputs
    autocast = torch.autocast(x.device.type, dtype=torch.bfloat16) if bf16 else nullcontext()

    def forward():
        return model(x, t, ctx, return_dict=False)[0] if diffusers else model(x, t, ctx)

    def step():
        with autocast, torch.set_grad_enabled(backward):
            out = forward()
        if backward:
            out.float().square().mean().backward()
        return out

    return step


def compare(
    ours: DiT, theirs, inputs, *, backward: bool, bf16: bool, rounds: int, iters: int, clock: str, warmup: int = 2
) -> dict[str, float]:
    """Median seconds per step of both models, timed in alternating rounds."""
    device = inputs[0].device
    fns = {
        "ours": step_fns(ours, inputs, backward=backward, bf16=bf16, diffusers=False),
        "diffusers": step_fns(theirs, inputs, backward=backward, bf16=bf16, diffusers=True),
    }
    for model in (ours, theirs):
        model.train(backward)
        model.zero_grad(set_to_none=True)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(rounds):
        order = list(fns) if r % 2 == 0 else list(reversed(fns))  # alternate who goes first
        for name in order:
            times[name].append(sum(timed(fns[name], device, CLOCKS[clock]) for _ in range(iters)) / iters)
            if backward:
                (ours if name == "ours" else theirs).zero_grad(set_to_none=True)
    return {name: statistics.median(ts) for name, ts in times.items()}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def make_inputs(config: DiTConfig, batch: int, latent: tuple[int, int, int], context_len: int, device: torch.device):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, config.in_channels, *latent, generator=g)
    t = torch.rand(batch, generator=g) * 1000
    ctx = torch.randn(batch, context_len, config.text_dim, generator=g)
    return x.to(device), t.to(device), ctx.to(device)


def run_suite(
    config: DiTConfig, inputs, *, modes, rounds: int, iters: int, clock: str, peak_tflops: float | None
) -> list[dict]:
    device = inputs[0].device
    torch.manual_seed(0)
    with device:  # build on the device: a 1.3B model initialises slowly on CPU
        ours = DiT(config)
        with torch.no_grad():  # the zero head would make outputs trivially equal
            ours.head.linear.weight.normal_(0, 0.02)
        theirs = ours.to_diffusers()
    if config.gradient_checkpointing:
        theirs.enable_gradient_checkpointing()
    with torch.no_grad():
        diff = None
        if device.type == "cpu":  # the converter's parity, on the benchmarked inputs
            diff = (ours(*inputs) - theirs(*inputs, return_dict=False)[0]).abs().max().item()
    flops = ours.flops(tuple(inputs[0].shape), inputs[2].shape[1])
    rows = []
    for backward, bf16 in modes:
        t = compare(ours, theirs, inputs, backward=backward, bf16=bf16, rounds=rounds, iters=iters, clock=clock)
        step_flops = flops * (3 if backward else 1)
        row = {
            "pass": "fwd+bwd" if backward else "fwd",
            "dtype": "bf16 autocast" if bf16 else "fp32",
            "ours_ms": 1e3 * t["ours"],
            "diffusers_ms": 1e3 * t["diffusers"],
            "speedup": t["diffusers"] / t["ours"],
            "ours_samples_per_s": inputs[0].shape[0] / t["ours"],
            "ours_tflops": step_flops / t["ours"] / 1e12,
            "diffusers_tflops": step_flops / t["diffusers"] / 1e12,
        }
        if peak_tflops:
            row["ours_mfu"] = row["ours_tflops"] / peak_tflops
            row["diffusers_mfu"] = row["diffusers_tflops"] / peak_tflops
        rows.append(row)
        print_row(row)
    return [{"max_abs_diff_fp32": diff, "params": ours.num_params(), "fwd_gflops": flops / 1e9}, rows]


def print_header(title: str) -> None:
    print(f"\n{title}")
    print(
        f"{'pass':8} {'dtype':14} {'ours ms':>9} {'diffusers ms':>13} {'speedup':>8} {'TFLOP/s ours':>13} {'MFU ours':>9}"
    )


def print_row(row: dict) -> None:
    mfu = f"{100 * row['ours_mfu']:8.1f}%" if "ours_mfu" in row else f"{'-':>9}"
    print(
        f"{row['pass']:8} {row['dtype']:14} {row['ours_ms']:9.1f} {row['diffusers_ms']:13.1f} "
        f"{row['speedup']:7.2f}x {row['ours_tflops']:13.3f} {mfu}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path(__file__).with_name("denoisers.json"), help="where to write JSON")
    p.add_argument("--batch", type=int, default=2, help="CPU batch size")
    p.add_argument("--latent", type=int, nargs=3, default=(5, 16, 16), metavar=("T", "H", "W"), help="CPU latent size")
    p.add_argument("--context-len", type=int, default=32, help="text tokens")
    p.add_argument("--rounds", type=int, default=5, help="alternating timing rounds (median is reported)")
    p.add_argument("--iters", type=int, default=1, help="steps per round")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="wall time, or process CPU time (steadier on a busy machine; with --threads 1, wall time when idle)",
    )
    p.add_argument("--gpu-peak-tflops", type=float, default=989.0, help="peak dense bf16 TFLOP/s for MFU (H100: 989)")
    p.add_argument("--gpu-latent", type=int, nargs=3, default=(21, 60, 104), metavar=("T", "H", "W"), help="GPU latent")
    p.add_argument("--gpu-batch", type=int, default=1)
    p.add_argument("--gpu-context-len", type=int, default=512, help="text tokens on GPU (Wan pads to 512)")
    p.add_argument("--skip-cpu", action="store_true")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    result: dict = {
        "command": "python benchmarks/denoisers.py " + " ".join(sys.argv[1:]),
        "torch": torch.__version__,
        "cpu": cpu_name(),
        "cpu_threads": torch.get_num_threads(),
        "clock": args.clock,
    }
    modes = [(False, False), (True, False), (False, True), (True, True)]
    if not args.skip_cpu:
        config = dit_small()
        inputs = make_inputs(config, args.batch, tuple(args.latent), args.context_len, torch.device("cpu"))
        print_header(
            f"CPU, dit_small ({config.dim} wide, {config.num_layers} layers), batch {args.batch}, "
            f"latent {tuple(args.latent)}, {args.context_len} text tokens, {torch.get_num_threads()} threads"
        )
        info, rows = run_suite(
            config, inputs, modes=modes, rounds=args.rounds, iters=args.iters, clock=args.clock, peak_tflops=None
        )
        result["cpu_suite"] = {"config": "dit_small", "batch": args.batch, "latent": args.latent, **info, "rows": rows}

    if torch.cuda.is_available():
        device = torch.device("cuda")
        config = wan_1_3b(gradient_checkpointing=True)  # activations of 32k tokens x 30 layers do not fit otherwise
        inputs = make_inputs(config, args.gpu_batch, tuple(args.gpu_latent), args.gpu_context_len, device)
        print_header(
            f"GPU {torch.cuda.get_device_name()}, Wan2.1-1.3B shape, batch {args.gpu_batch}, "
            f"latent {tuple(args.gpu_latent)}, {args.gpu_context_len} text tokens"
        )
        info, rows = run_suite(
            config,
            inputs,
            modes=[(False, True), (True, True)],
            rounds=3,
            iters=1,
            clock="wall",
            peak_tflops=args.gpu_peak_tflops,
        )
        result["gpu_suite"] = {
            "device": torch.cuda.get_device_name(),
            "peak_tflops": args.gpu_peak_tflops,
            **info,
            "rows": rows,
        }

    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, args.out)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
