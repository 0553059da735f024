"""How far apart the VAE keeps two colours, latent frame by latent frame.

The same scene (shape, size, start, motion) is rendered in two colours and encoded by the pipeline's
VAE (normalised latents, as the denoiser sees them); the table is the RMS difference of each latent
frame, averaged over --scenes scenes. A pair that is close in a latent frame is one a small denoiser
error can swap there: the shipped `shapes` VAE keeps blue, cyan, green and red 5-7x closer in latent
frame 0 (the causal VAE's frame 0 alone) than in the frames after it, and generated clips' frame 0 turns
blue into cyan and cyan into green.

    python benchmarks/latent_colours.py                      # the shipped `shapes` pipeline's VAE
    python benchmarks/latent_colours.py --model DIR --scenes 12   # a pipeline, or a VAE run's DIR/pipeline
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

PAIRS = (("blue", "cyan"), ("cyan", "green"), ("blue", "red"), ("red", "orange"), ("yellow", "orange"), ("blue", "magenta"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="shapes", help="a pipeline directory, shipped name or VAE folder (default: shapes)")
    parser.add_argument("--size", type=int, default=64, help="canvas of the clips (default 64)")
    parser.add_argument("--frames", type=int, default=17, help="frames of the clips (default 17)")
    parser.add_argument("--scenes", type=int, default=6, help="scenes per colour pair")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("latent_colours.json"))
    args = parser.parse_args()
    torch.set_grad_enabled(False)

    from kinema.data.shapes import ONE_WAY_MOTIONS, make_object, render_clip
    from kinema.eval.shapes_eval import as_batch
    from kinema.pipelines.storage import component_record
    from kinema.train.stages import load_frozen_vae

    vae = load_frozen_vae(args.model)  # fp32, as the pipeline's encode in the shipped reports
    size, frames = args.size, args.frames
    rng = np.random.default_rng(0)
    scenes = [
        dict(shape=int(rng.integers(3)), size=1, motion=int(rng.integers(len(ONE_WAY_MOTIONS))), start=tuple(rng.random(2)), distance=float(rng.random()))
        for _ in range(args.scenes)
    ]  # fmt: skip

    def latents(colour: str) -> torch.Tensor:  # (scenes, C, t, h, w)
        clips = [render_clip([make_object(colour=colour, canvas=size, frames=frames, **s)], size, frames) for s in scenes]
        return vae.encode(as_batch(clips))

    cache = {c: latents(c) for c in sorted({c for pair in PAIRS for c in pair})}
    rows = []
    for a, b in PAIRS:
        rms = (cache[a] - cache[b]).pow(2).mean(dim=(1, 3, 4)).sqrt().mean(dim=0)  # (t,)
        rows.append({"pair": f"{a}-{b}", "rms_by_latent_frame": rms.tolist()})
    t = len(rows[0]["rms_by_latent_frame"])
    print(f"{args.model}: RMS difference of normalised latents, {args.scenes} scenes a pair")
    print(f"{'pair':>15} " + " ".join(f"{'frame ' + str(i):>8}" for i in range(t)) + "  later / frame 0")
    for r in rows:
        v = r["rms_by_latent_frame"]
        print(f"{r['pair']:>15} " + " ".join(f"{x:>8.3f}" for x in v) + f"  {np.mean(v[1:]) / v[0]:>14.1f}x")
    # each channel's spread per latent frame, over every clip encoded above: what normalising a latent
    # frame on its own (per channel) could stretch it by
    every = torch.cat(list(cache.values()))  # (N, C, t, h, w)
    spread = every.transpose(1, 2).flatten(3).std(dim=(0, 3))  # (t, C)
    print("channel std by latent frame (min-max over channels): "
          + ", ".join(f"{i}: {float(v.min()):.2f}-{float(v.max()):.2f}" for i, v in enumerate(spread)))  # fmt: skip
    result = {"model": args.model, "vae_weights": component_record(vae)["weights"], "scenes": args.scenes, "rows": rows,
              "channel_std_by_latent_frame": spread.tolist()}  # fmt: skip
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
