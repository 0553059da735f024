"""Quality against cost for each sampler and step count: how the shipped defaults were chosen.

For every (sampler, steps) point, the pipeline makes text-to-video clips for the held-out
combinations (every one at both sizes, --per-combination clips each) and for --train-n random
train-split prompts; the shapes probe scores them (`kinema.eval.shapes_eval`, model row only).
A point passes when its measured joint accuracy meets the issue's bars: >= 95% train,
>= 85% held out (the final report then measures the chosen point on every combination). The train
clips' mean area CV (steadiness of the object's area over frames; real clips: about 0.016) is shown
beside them. The cheapest point that passes (fewest network passes; at equal cost the more accurate)
is marked; the README's defaults come from it, and when none passes the README says which point ships
and why. The defaults (128 train prompts, 4 held-out clips per combination and size) are the grid of
the final reports, so the chosen point's row is the number the README's table shows.

    python benchmarks/default_settings.py                           # the shipped `shapes` pipeline
    python benchmarks/default_settings.py --model DIR --points euler:8,euler:12,dpmpp_2m:8:3.0,euler:16:4:0.3-1

A point is sampler:steps followed by any of, in any order: a number (the guidance; default --guidance,
else the pipeline's), lo-hi (guide only at sigma in [lo, hi]; "all": every step), first (frame 0 is
sampled first, image_first), shift=S (the sampling schedule's noise-level shift; default the pipeline's).
E.g. euler:12:4:all:first:shift=4.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

# guidance 4 (the first default) against lower guidance, which draws small squares' corners better
DEFAULT_POINTS = ",".join(
    f"{point}:shift=6"
    for point in (
        "dpmpp_2m:10:4", "dpmpp_2m:10:3", "dpmpp_2m:10:2.5", "dpmpp_2m:10:2", "dpmpp_2m:8:3", "dpmpp_2m:8:2.5",
        "dpmpp_2m:8:2", "dpmpp_2m:6:2.5", "dpmpp_2m:6:2", "euler:10:2", "euler:8:2", "euler:16:4",
    )
)
BARS = {"train": 0.95, "heldout": 0.85}


def parse_point(text: str, guidance: float) -> dict:
    """sampler:steps[:tokens] -> {sampler, steps, guidance, guidance_interval, image_first, shift}."""
    sampler, steps, *tokens = text.split(":")
    point = {"sampler": sampler, "steps": int(steps), "guidance": guidance, "guidance_interval": None,
             "image_first": False, "shift": None}  # fmt: skip
    for token in tokens:
        if token == "first":
            point["image_first"] = True
        elif token.startswith("shift="):
            point["shift"] = float(token.removeprefix("shift="))
        elif token == "all" or "-" in token:
            point["guidance_interval"] = None if token == "all" else tuple(float(v) for v in token.split("-"))
        else:
            point["guidance"] = float(token)
    return point


def network_passes(
    pipe, sampler: str, steps: int, guidance: float, interval: tuple[float, float] | None, image_first: bool,
    shift: float | None = None,
) -> float:
    """Batch-1 network passes of one clip: a guided evaluation is two (cond + uncond), an unguided one one.

    Heun evaluates at every sigma and again at the next one (not on its last step, to 0); the others once a step.
    With image_first the one-frame run first counts as 1/T of a pass per evaluation (T latent frames).
    """
    from kinema.pipelines.common import sampling_sigmas

    sigmas = sampling_sigmas(pipe.process, steps, shift).tolist()
    evaluated = sigmas[:-1] + (sigmas[1:-1] if sampler == "heun" else [])
    lo, hi = interval if interval is not None else (0.0, float("inf"))
    passes = sum(2 if guidance != 1.0 and lo <= s <= hi else 1 for s in evaluated)
    if not image_first:
        return passes
    latent_frames = 1 + (pipe.settings.num_frames - 1) // pipe.vae.config.temporal_factor
    return passes * (1 + 1 / latent_frames)


def cheapest_passing(rows: list[dict]) -> dict | None:
    """The passing point with the fewest network passes; among equals the most accurate (train + held out).

    Seconds per clip do not break ties: at equal passes they differ by timing noise, accuracy does not.
    """
    passing = [r for r in rows if r["passes"]]
    accuracy = lambda r: r["train"]["rate"] + r["heldout"]["rate"]  # noqa: E731
    return min(passing, key=lambda r: (r["passes_per_clip"], -accuracy(r))) if passing else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="shapes", help="a pipeline directory or shipped name (default: shapes)")
    parser.add_argument("--points", default=DEFAULT_POINTS, help="comma-separated sampler:steps[:guidance[:lo-hi[:first]]]")
    parser.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the pipeline's)")
    parser.add_argument("--per-combination", type=int, default=4, help="held-out clips per combination and size")
    parser.add_argument("--train-n", type=int, default=128, help="random train-split prompts")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default=None, help="default: the pipeline's")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("default_settings.json"))
    args = parser.parse_args()
    torch.set_grad_enabled(False)

    from kinema.eval.shapes_eval import GenerationSettings, evaluate_shapes
    from kinema.pipelines import Pipeline

    pipe = Pipeline.load(args.model)
    if args.precision is not None:
        pipe = pipe.to(precision=args.precision)
    guidance = pipe.settings.guidance if args.guidance is None else args.guidance
    print(f"{args.model} ({pipe.precision}): t2v, guidance {guidance}; held out: every combination x 2 sizes x {args.per_combination}; "
          f"train: {args.train_n} random prompts")  # fmt: skip
    header = f"{'sampler':>9} {'steps':>5} {'cfg':>4} {'interval':>9} {'shift':>5} {'first':>5} {'passes':>6} {'train joint':>12} {'heldout joint':>14} {'area CV':>7} {'s/clip':>7}  pass"
    print(header)
    rows = []
    for text in args.points.split(","):
        point = parse_point(text, guidance)
        sampler, steps, cfg, interval = point["sampler"], point["steps"], point["guidance"], point["guidance_interval"]
        first, shift = point["image_first"], point["shift"]
        settings = GenerationSettings(
            sampler=sampler, steps=steps, guidance=cfg, guidance_interval=interval, image_first=first, shift=shift, seed=0
        )
        row: dict = dict(point)
        row["passes_per_clip"] = network_passes(pipe, sampler, steps, cfg, interval, first, shift)
        seconds = []
        for split in ("train", "heldout"):
            start = time.perf_counter()
            grid = {"per_combination": args.per_combination} if split == "heldout" else {"n": args.train_n}
            report, _ = evaluate_shapes(
                pipe, model=args.model, split=split, task="t2v", settings=settings,
                variants=[("model", "model", pipe)], vae_row=False, **grid,
            )  # fmt: skip
            model = next(r for r in report["rows"] if r["name"] == "model")
            row[split] = model["accuracy"]["joint"]
            row[f"{split}_present_all_frames"] = model["present_all_frames"]["rate"]
            row[f"{split}_area_cv"] = model["area_cv"]
            seconds.append(model["seconds_per_clip"])
            row[f"{split}_wall_s"] = time.perf_counter() - start
        row["seconds_per_clip"] = sum(seconds) / len(seconds)
        row["passes"] = all(row[split]["rate"] >= bar for split, bar in BARS.items())
        rows.append(row)
        shown = "all" if interval is None else f"{interval[0]:g}-{interval[1]:g}"
        shifted = "-" if shift is None else f"{shift:g}"
        print(f"{sampler:>9} {steps:>5} {cfg:>4g} {shown:>9} {shifted:>5} {'yes' if first else 'no':>5} {row['passes_per_clip']:>6.1f} {row['train']['rate']:>11.1%} {row['heldout']['rate']:>13.1%} "
              f"{row['train_area_cv']:>7.3f} {row['seconds_per_clip']:>7.2f}  {'yes' if row['passes'] else 'no'}", flush=True)  # fmt: skip
    best = cheapest_passing(rows)
    keys = ("sampler", "steps", "guidance", "guidance_interval", "shift", "image_first")
    describe = lambda r: ", ".join(f"{k} {r[k]}" for k in keys)  # noqa: E731
    most = max(rows, key=lambda r: (r["train"]["rate"] + r["heldout"]["rate"], -r["passes_per_clip"]))
    print(f"cheapest passing: {describe(best)}" if best else "no point meets the bars")
    print(f"most accurate: {describe(most)} (train {most['train']['rate']:.1%}, held out {most['heldout']['rate']:.1%})")
    result = {
        "model": args.model, "model_hash": pipe.model_hash, "precision": pipe.precision, "guidance": guidance, "bars": BARS,
        "per_combination": args.per_combination, "train_n": args.train_n, "rows": rows,
        "cheapest_passing": None if best is None else {k: best[k] for k in keys},
        "most_accurate": {k: most[k] for k in keys},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
                    "torch": torch.__version__},
    }  # fmt: skip
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
