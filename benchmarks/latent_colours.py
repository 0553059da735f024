"""How far apart the VAE keeps two colours, latent frame by latent frame.

The same scene (shape, size, start, motion) is rendered in two colours and encoded by the pipeline's
VAE (normalised latents, as the denoiser sees them); the table is the RMS difference of each latent
frame, averaged over --scenes scenes. A pair that is close in a latent frame is one a small denoiser
error can swap there: the shipped `shapes` VAE keeps blue, cyan, green and red 5-7x closer in latent
frame 0 (the causal VAE's frame 0 alone) than in the frames after it, and generated clips' frame 0 turns
blue into cyan and cyan into green.

    python benchmarks/latent_colours.py                      # the shipped `shapes` pipeline's VAE
    python benchmarks/latent_colours.py --model shapes --model DIR   # side by side: a pipeline, or a VAE run's DIR/pipeline
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

PAIRS = (("blue", "cyan"), ("cyan", "green"), ("blue", "red"), ("red", "orange"), ("yellow", "orange"), ("blue", "magenta"))


def measure(model: str, size: int, frames: int, scenes: list[dict]) -> dict:
    """RMS difference of each pair's latents by latent frame, and each channel's spread by latent frame."""
    from kinema.data.shapes import make_object, render_clip
    from kinema.eval.shapes_eval import as_batch
    from kinema.pipelines.storage import component_record
    from kinema.train.stages import load_frozen_vae

    vae = load_frozen_vae(model)  # fp32, as the pipeline's encode in the shipped reports

    def latents(colour: str) -> torch.Tensor:  # (scenes, C, t, h, w)
        clips = [render_clip([make_object(colour=colour, canvas=size, frames=frames, **s)], size, frames) for s in scenes]
        return vae.encode(as_batch(clips))

    cache = {c: latents(c) for c in sorted({c for pair in PAIRS for c in pair})}
    rows = []
    for a, b in PAIRS:
        rms = (cache[a] - cache[b]).pow(2).mean(dim=(1, 3, 4)).sqrt().mean(dim=0)  # (t,)
        v = rms.tolist()
        rows.append({"pair": f"{a}-{b}", "rms_by_latent_frame": v, "later_over_frame_0": float(np.mean(v[1:]) / v[0])})
    # each channel's spread per latent frame, over every clip encoded above: what normalising a latent
    # frame on its own (per channel) could stretch it by
    every = torch.cat(list(cache.values()))  # (N, C, t, h, w)
    spread = every.transpose(1, 2).flatten(3).std(dim=(0, 3))  # (t, C)
    return {"model": model, "vae_weights": component_record(vae)["weights"], "causal_padding": vae.config.causal_padding,
            "rows": rows, "channel_std_by_latent_frame": spread.tolist()}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", help="a pipeline directory, shipped name or VAE folder; repeat to compare (default: shapes)")
    parser.add_argument("--size", type=int, default=64, help="canvas of the clips (default 64)")
    parser.add_argument("--frames", type=int, default=17, help="frames of the clips (default 17)")
    parser.add_argument("--scenes", type=int, default=6, help="scenes per colour pair")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("latent_colours.json"))
    args = parser.parse_args()
    torch.set_grad_enabled(False)

    from kinema.data.shapes import ONE_WAY_MOTIONS

    rng = np.random.default_rng(0)
    scenes = [
        dict(shape=int(rng.integers(3)), size=1, motion=int(rng.integers(len(ONE_WAY_MOTIONS))), start=tuple(rng.random(2)), distance=float(rng.random()))
        for _ in range(args.scenes)
    ]  # fmt: skip
    results = [measure(model, args.size, args.frames, scenes) for model in args.model or ["shapes"]]
    for r in results:
        t = len(r["rows"][0]["rms_by_latent_frame"])
        print(f"\n{r['model']} (causal padding {r['causal_padding']}): RMS difference of normalised latents, {args.scenes} scenes a pair")
        print(f"{'pair':>15} " + " ".join(f"{'frame ' + str(i):>8}" for i in range(t)) + "  later / frame 0")
        for row in r["rows"]:
            v = row["rms_by_latent_frame"]
            print(f"{row['pair']:>15} " + " ".join(f"{x:>8.3f}" for x in v) + f"  {row['later_over_frame_0']:>14.1f}x")
        print("channel std by latent frame (min-max over channels): "
              + ", ".join(f"{i}: {min(v):.2f}-{max(v):.2f}" for i, v in enumerate(r["channel_std_by_latent_frame"])))  # fmt: skip
    if len(results) > 1:
        print("\nlater / frame 0, side by side (1.0x: frame 0 keeps the pair as far apart as the later frames)")
        print(f"{'pair':>15} " + " ".join(f"{r['model'][-24:]:>26}" for r in results))
        for i, (a, b) in enumerate(PAIRS):
            print(f"{a + '-' + b:>15} " + " ".join(f"{r['rows'][i]['later_over_frame_0']:>25.1f}x" for r in results))
    result = {"scenes": args.scenes, "clip": [args.frames, args.size, args.size], "models": results}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
