"""Encode and decode time and peak memory of kinema's VideoVAE against diffusers' AutoencoderKLWan.

Both run the same weights (converted with `VideoVAE.to_diffusers`) on the same clip, fp32 on the CPU, under
`torch.inference_mode()`. Every (model, op, frames) case runs in a fresh subprocess, so what it measures is its own:

    time      the best of --repeats runs of the op on the whole clip (batch 1)
    peak MiB  the process's max RSS (getrusage) after the op minus before it, with the model, the input and a
              one-latent-frame warm-up already done: the op's working memory, its output included
    out MiB   the size of that output (the rest of the peak is activations, caches and copies)

kinema encodes and decodes in chunks of --chunk latent frames; diffusers in its own chunks (1 + 4 + 4 ... frames
to encode, one latent frame at a time to decode).

    python benchmarks/vae.py                              # vae_shapes() at 64x64; 17, 65 and 257 frames
    python benchmarks/vae.py --threads 1 --out out.json   # JSON next to this script by default
    python benchmarks/vae.py --preset wan21 --base 32 --size 128 --frames 17 65 --bf16
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=("shapes", "wan21"), default="shapes", help="VAE config preset")
    p.add_argument("--base", type=int, default=None, help="override base_channels of the preset")
    p.add_argument("--size", type=int, default=64, help="frame height and width in pixels")
    p.add_argument("--frames", type=int, nargs="+", default=[17, 65, 257], help="clip lengths (1 + 4k)")
    p.add_argument("--chunk", type=int, default=1, help="kinema's latent frames per chunk (its default: 1)")
    p.add_argument("--repeats", type=int, default=2, help="timed runs per case (the best is kept)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--bf16", action="store_true", help="also time kinema under bf16 autocast")
    p.add_argument("--out", type=Path, default=HERE / "vae.json", help="where to write the results as JSON")
    p.add_argument("--case", default=None, help=argparse.SUPPRESS)  # "impl,op,frames": run one case (internal)
    return p.parse_args(argv)


def build_config(args: argparse.Namespace):
    from kinema.models.vae import vae_shapes, vae_wan21

    overrides = {} if args.base is None else {"base_channels": args.base}
    return vae_shapes(**overrides) if args.preset == "shapes" else vae_wan21(**overrides)


def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_case(args: argparse.Namespace) -> dict:
    """One case, in this (fresh) process; returns its measurements."""
    import torch

    from kinema.models.vae import VideoVAE

    impl, op, frames = args.case.split(",")
    frames = int(frames)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ours = VideoVAE(build_config(args)).eval()
    theirs = ours.to_diffusers().eval() if impl == "diffusers" else None
    if theirs is not None:
        del ours
    x = torch.rand(1, 3, frames, args.size, args.size) * 2 - 1
    latent_shape = build_config(args).latent_shape(tuple(x.shape))
    z = torch.randn(latent_shape)

    if impl.startswith("kinema"):
        encode = lambda v: ours.encode(v, chunk_latents=args.chunk)  # noqa: E731
        decode = lambda v: ours.decode(v, chunk_latents=args.chunk)  # noqa: E731
    else:
        encode = lambda v: theirs.encode(v).latent_dist.mode()  # noqa: E731
        decode = lambda v: theirs.decode(v).sample  # noqa: E731
    fn, data = (encode, x) if op == "encode" else (decode, z)
    bf16 = impl == "kinema-bf16"

    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        fn(data[:, :, :1])  # warm-up (one latent frame): kernels and allocator pools
        gc.collect()
        before = max_rss_mib()
        best = float("inf")
        out_mib = 0.0
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            out = fn(data)
            best = min(best, time.perf_counter() - t0)
            out_mib = out.numel() * out.element_size() / 2**20
            del out
        peak = max_rss_mib() - before
    return {
        "impl": impl, "op": op, "frames": frames, "seconds": best, "ms_per_frame": 1000 * best / frames,
        "peak_mib": peak, "out_mib": out_mib, "threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.case:
        print(json.dumps(run_case(args)))
        return

    import torch

    from kinema.models.vae import VideoVAE

    config = build_config(args)
    params = VideoVAE(config).num_params()
    impls = ["kinema", "diffusers"] + (["kinema-bf16"] if args.bf16 else [])
    forwarded = ["--preset", args.preset, "--size", str(args.size), "--chunk", str(args.chunk),
                 "--repeats", str(args.repeats)]
    forwarded += [] if args.base is None else ["--base", str(args.base)]
    forwarded += [] if args.threads is None else ["--threads", str(args.threads)]
    print(f"VAE {args.preset} ({params / 1e6:.1f}M params, {config.spatial_factor}x spatial, "
          f"{config.temporal_factor}x temporal, {config.latent_channels} latent channels), {args.size}x{args.size}, "
          f"torch {torch.__version__}, {args.threads or torch.get_num_threads()} threads")

    results = []
    for op in ("encode", "decode"):
        for frames in args.frames:
            for impl in impls:
                cmd = [sys.executable, str(Path(__file__).resolve()), "--case", f"{impl},{op},{frames}", *forwarded]
                done = subprocess.run(cmd, capture_output=True, text=True, check=False)
                if done.returncode != 0:
                    sys.exit(f"case {impl} {op} {frames} failed:\n{done.stderr}")
                results.append(json.loads(done.stdout.strip().splitlines()[-1]))
                r = results[-1]
                print(f"  {impl:12s} {op:6s} {frames:4d} frames  {r['seconds']:7.2f} s  {r['peak_mib']:7.1f} MiB peak",
                      flush=True)

    print()
    print("| op | frames | kinema s (ms/frame) | diffusers s (ms/frame) | speed-up | kinema peak MiB "
          "| diffusers peak MiB | output MiB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    by_key = {(r["impl"], r["op"], r["frames"]): r for r in results}
    rows = []
    for op in ("encode", "decode"):
        for frames in args.frames:
            k, d = by_key[("kinema", op, frames)], by_key[("diffusers", op, frames)]
            speedup = d["seconds"] / k["seconds"]
            row = (f"| {op} | {frames} | {k['seconds']:.2f} ({k['ms_per_frame']:.0f}) | "
                   f"{d['seconds']:.2f} ({d['ms_per_frame']:.0f}) | {speedup:.2f}x | {k['peak_mib']:.0f} | "
                   f"{d['peak_mib']:.0f} | {k['out_mib']:.1f} |")
            rows.append(row)
            print(row)
    if args.bf16:
        for op in ("encode", "decode"):
            for frames in args.frames:
                b, k = by_key[("kinema-bf16", op, frames)], by_key[("kinema", op, frames)]
                print(f"kinema bf16 autocast {op} {frames} frames: {b['seconds']:.2f} s "
                      f"({k['seconds'] / b['seconds']:.2f}x fp32), {b['peak_mib']:.0f} MiB peak")

    payload = {
        "config": {"preset": args.preset, "base_channels": config.base_channels, "size": args.size,
                   "chunk_latents": args.chunk, "repeats": args.repeats, "params": params},
        "torch": torch.__version__,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(args.out.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, args.out)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
