"""The default command's wall time: `kinema generate "a red circle moving right" --out x.mp4`.

Each run is a fresh process timed by /usr/bin/time (process start, torch import, loading the
shipped `shapes` pipeline, sampling with its default sampler and steps, decoding, writing the
mp4 and its metadata), so the number is what a user waits for. The median of --runs is the
headline; `python -c "import torch"` is timed the same way, as the machine's floor (it includes
the interpreter's exit collections over torch's objects, which `kinema` skips by freezing the heap).

The machine's CPU decides the precision ("auto": bf16 autocast only with AVX-512 BF16 or AMX), so
each case also runs with the kernels held to AVX2 (`ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2`),
which is how an AVX2-only CPU computes, and with bf16 forced there (the default before "auto"):

    case          kernels   --precision
    native        this CPU  (the model's: auto)
    avx2          AVX2      (the model's: auto, which picks fp32 there)
    avx2-bf16     AVX2      bf16

The CPU's flags and what "auto" picked (read back from each output's metadata) go into the JSON.

    python benchmarks/generate_default.py                    # 5 runs a case, writes benchmarks/generate_default.json
    python benchmarks/generate_default.py --cases native --runs 7 --model DIR
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

PROMPT = "a red circle moving right"


def kinema_command() -> list[str]:
    """The `kinema` console script of this environment (what a user types), else `python -m kinema`."""
    script = Path(sys.executable).with_name("kinema")
    if script.is_file():
        return [str(script)]
    found = shutil.which("kinema")
    return [found] if found else [sys.executable, "-m", "kinema"]


AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
CASES = {
    "native": ({}, []),
    "avx2": (AVX2, []),
    "avx2-bf16": (AVX2, ["--precision", "bf16"]),
}
"""name: (environment, extra flags)."""


def timed(cmd: list[str], env: dict[str, str] | None = None) -> dict:
    """Wall seconds and peak resident memory of one process, as /usr/bin/time reports them."""
    with tempfile.NamedTemporaryFile("r", suffix=".txt") as report:
        subprocess.run(
            ["/usr/bin/time", "-o", report.name, "-f", "%e %M", *cmd], check=True, capture_output=True,
            env={**os.environ, **(env or {})},
        )  # fmt: skip
        wall, peak_kb = report.read().split()[-2:]
    return {"wall_s": float(wall), "peak_rss_mb": int(peak_kb) / 1024}


def run_case(name: str, cmd: list[str], out: Path, runs: int) -> dict:
    """`runs` fresh processes of one case; the precision each output's metadata records."""
    env, flags = CASES[name]
    rows, precisions = [], set()
    for i in range(runs):
        out.unlink(missing_ok=True)
        row = timed([*cmd, *flags], env)
        if not out.is_file():
            sys.exit(f"{name} run {i}: {out} was not written")
        precisions.add(json.loads(Path(f"{out}.json").read_text())["metadata"]["precision"])
        rows.append(row)
        print(f"{name:>10} {i:>4} {row['wall_s']:>8.2f} {row['peak_rss_mb']:>8.0f}", flush=True)
    walls = [r["wall_s"] for r in rows]
    return {
        "case": name, "environment": env, "flags": flags, "precision": "/".join(sorted(precisions)), "runs": rows,
        "median_wall_s": statistics.median(walls), "min_wall_s": min(walls), "max_wall_s": max(walls),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="fresh processes to time per case (the median is reported)")
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES), help="what to time (module docstring)")
    parser.add_argument("--model", help="a pipeline directory (default: the shipped `shapes` pipeline)")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("generate_default.json"))
    args = parser.parse_args()
    if not Path("/usr/bin/time").is_file():
        sys.exit("needs /usr/bin/time (GNU time); install it with your package manager (e.g. apt install time)")

    from kinema.pipelines.storage import read_manifest, resolve
    from kinema.precision import cpu_flags

    model_dir = resolve(args.model or "shapes")
    sampling = read_manifest(model_dir)["sampling"]
    model = ["--model", args.model] if args.model else []
    cases = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "x.mp4"
        cmd = [*kinema_command(), "generate", PROMPT, *model, "--out", str(out)]
        print(f"$ {' '.join(cmd[:2])} {PROMPT!r} {' '.join(cmd[3:-1])} x.mp4   "
              f"(default settings: {sampling['sampler']}, {sampling['steps']} steps, guidance {sampling['guidance']})")  # fmt: skip
        print(f"{'case':>10} {'run':>4} {'wall s':>8} {'peak MB':>8}")
        for name in args.cases:
            cases.append(run_case(name, cmd, out, args.runs))
    torch_only = [timed([sys.executable, "-c", "import torch"])["wall_s"] for _ in range(3)]
    result = {
        "command": f'kinema generate "{PROMPT}" --out x.mp4' + (f" --model {args.model}" if args.model else ""),
        "sampling": sampling,
        "cases": cases,
        "import_torch_median_s": statistics.median(torch_only),
        "cpu": cpu_flags(),
        "machine": {
            "platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "load_average": os.getloadavg()[0],
        },
    }  # fmt: skip
    base = next((c for c in cases if c["case"] == "avx2-bf16"), None)
    print(f"\n| case | precision | median s | min | max |" + (" vs avx2-bf16 |" if base else ""))
    print("|---|---|---|---|---|" + ("---|" if base else ""))
    for c in cases:
        ratio = (" - |" if c is base else f" {base['median_wall_s'] / c['median_wall_s']:.1f}x faster |") if base else ""
        print(f"| {c['case']} | {c['precision']} | {c['median_wall_s']:.2f} | {c['min_wall_s']:.2f} | {c['max_wall_s']:.2f} |{ratio}")
    print(f"`import torch` alone {result['import_torch_median_s']:.2f} s; cpu {result['cpu']['cpu']}, "
          f"auto picks {result['cpu']['auto']} here")  # fmt: skip
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
