"""The samplers' own cost per step beside a DiT forward: the overhead must stay under 2% of it.

For each method, `sample` runs 50 steps with the network replaced by a stand-in that returns
a precomputed tensor, so what is timed is the sampler alone (noise-level bookkeeping, the
step arithmetic, the sigma batch) per network evaluation. A second column adds the glue
around the network that every real run has: `model_to_denoiser` (timestep, conditioning
channels, x0 from the output) and `guided` (the cond/uncond batch and the combination, scale 5).
Both are set against one forward of the DiT on the same latents: `dit_tiny` and `dit_small`
(the shapes model's denoiser), batch 1 for the sampler, batch 2 (cond + uncond) for the glue.

    python benchmarks/samplers.py                       # CPU, writes benchmarks/samplers.json
    python benchmarks/samplers.py --device cuda --out /tmp/samplers_gpu.json
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
from pathlib import Path

import torch

from kinema.diffusion.conditioning import channels, image_to_video, num_channels
from kinema.diffusion.guidance import guided
from kinema.diffusion.processes import FlowMatching, model_to_denoiser
from kinema.diffusion.samplers import STEPS, sample
from kinema.models.dit import DiT, dit_small, dit_tiny

STEPS_PER_RUN = 50
TEXT_LEN = 16


def median_seconds(fn: Callable[[], object], device: torch.device, *, rounds: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(rounds):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_model(name: str, config, latent: tuple[int, int, int, int], device: torch.device, rounds: int) -> list[dict]:
    c, t, h, w = latent
    process = FlowMatching(shift=3.0)
    model = DiT(config).to(device).eval()
    g = torch.Generator(device).manual_seed(0)
    first = torch.randn(1, c, 1, h, w, generator=g, device=device)
    cond_channels = channels(image_to_video(first, t))  # (1, C + 1, T, H, W)
    context = torch.randn(1, TEXT_LEN, config.text_dim, generator=g, device=device)
    mask = torch.ones(1, TEXT_LEN, dtype=torch.bool, device=device)
    x_T = process.prior((1, c, t, h, w), generator=g, device=device)
    sigmas = process.sigmas(STEPS_PER_RUN)

    def dit_forward(batch: int) -> Callable[[], object]:
        x_in = torch.cat([x_T, cond_channels], 1).expand(batch, -1, -1, -1, -1)
        timestep = torch.full((batch,), 500.0, device=device)
        ctx, ctx_mask = context.expand(batch, -1, -1), mask.expand(batch, -1)
        return lambda: model(x_in, timestep, ctx, ctx_mask)

    with torch.inference_mode():
        forward = {b: median_seconds(dit_forward(b), device, rounds=rounds) for b in (1, 2)}
        cached = model(torch.cat([x_T, cond_channels], 1), torch.full((1,), 500.0, device=device), context, mask)
        cached2 = torch.cat([cached, cached])

        def stand_in(x_in: torch.Tensor, timestep: torch.Tensor, context=None, context_mask=None) -> torch.Tensor:
            return cached2 if x_in.shape[0] == 2 else cached

        sampler_only = lambda x, sigma: cached  # noqa: E731  (the model and its wrapper excluded)
        with_glue = guided(
            model_to_denoiser(stand_in, process),
            {"context": context, "context_mask": mask, "cond_channels": cond_channels},
            {"context": torch.zeros_like(context)},
            5.0,
        )
        rows = []
        for method in STEPS:
            gen = torch.Generator(device).manual_seed(1)
            kwargs = dict(process=process, method=method, generator=gen)
            alone = median_seconds(lambda: sample(sampler_only, x_T, sigmas, **kwargs), device, rounds=rounds)
            glue = median_seconds(lambda: sample(with_glue, x_T, sigmas, **kwargs), device, rounds=rounds)
            evals = 2 * STEPS_PER_RUN - 1 if method == "heun" else STEPS_PER_RUN
            rows.append(
                {
                    "model": name,
                    "latent": list(latent),
                    "tokens": t * (h // 2) * (w // 2),
                    "method": method,
                    "dit_forward_ms": forward[1] * 1e3,
                    "dit_forward_batch2_ms": forward[2] * 1e3,
                    "sampler_us_per_eval": alone / evals * 1e6,
                    "sampler_pct_of_forward": 100 * alone / evals / forward[1],
                    "with_glue_us_per_eval": glue / evals * 1e6,
                    "with_glue_pct_of_forward": 100 * glue / evals / forward[2],
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".json"))
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    latent_channels = 4
    cases = [
        ("dit_tiny", dit_tiny(latent_channels=latent_channels), (latent_channels, 5, 16, 16)),
        ("dit_small", dit_small(latent_channels=16), (16, 5, 16, 16)),
    ]
    rows = []
    for name, config, latent in cases:
        assert config.in_channels == latent[0] + num_channels(latent[0])
        rows += bench_model(name, config, latent, device, args.rounds)

    print(f"device {device}, {torch.get_num_threads()} threads, torch {torch.__version__}, {STEPS_PER_RUN} steps")
    header = (
        f"{'model':10} {'method':9} {'DiT fwd ms':>10} {'sampler us':>10} {'% of fwd':>8} "
        f"{'+glue us':>9} {'% of fwd(b2)':>12}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['model']:10} {r['method']:9} {r['dit_forward_ms']:10.2f} {r['sampler_us_per_eval']:10.1f} "
            f"{r['sampler_pct_of_forward']:7.2f}% {r['with_glue_us_per_eval']:9.1f} "
            f"{r['with_glue_pct_of_forward']:11.2f}%"
        )
    worst = max(r["sampler_pct_of_forward"] for r in rows)
    print(f"worst sampler overhead: {worst:.2f}% of a DiT forward (bar: 2%)")
    result = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "steps": STEPS_PER_RUN,
        "rows": rows,
        "worst_sampler_pct_of_forward": worst,
    }
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
