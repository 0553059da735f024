"""The default command's wall time: `kinema generate "a red circle moving right" --out x.mp4`.

Each run is a fresh process timed by /usr/bin/time (process start, torch import, loading the
shipped `shapes` pipeline, sampling with its default sampler and steps, decoding, writing the
mp4 and its metadata), so the number is what a user waits for. The median of --runs is the
headline; `python -c "import torch"` is timed the same way, as the machine's floor (it includes
the interpreter's exit collections over torch's objects, which `kinema` skips by freezing the heap).

    python benchmarks/generate_default.py                    # 7 runs, writes benchmarks/generate_default.json
    python benchmarks/generate_default.py --model DIR --runs 3
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


def timed(cmd: list[str]) -> dict:
    """Wall seconds and peak resident memory of one process, as /usr/bin/time reports them."""
    with tempfile.NamedTemporaryFile("r", suffix=".txt") as report:
        subprocess.run(["/usr/bin/time", "-o", report.name, "-f", "%e %M", *cmd], check=True, capture_output=True)
        wall, peak_kb = report.read().split()[-2:]
    return {"wall_s": float(wall), "peak_rss_mb": int(peak_kb) / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7, help="fresh processes to time (the median is reported)")
    parser.add_argument("--model", help="a pipeline directory (default: the shipped `shapes` pipeline)")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("generate_default.json"))
    args = parser.parse_args()
    if not Path("/usr/bin/time").is_file():
        sys.exit("needs /usr/bin/time (GNU time); install it with your package manager (e.g. apt install time)")

    from kinema.pipelines.storage import read_manifest, resolve

    model_dir = resolve(args.model or "shapes")
    sampling = read_manifest(model_dir)["sampling"]
    model = ["--model", args.model] if args.model else []
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "x.mp4"
        cmd = [*kinema_command(), "generate", PROMPT, *model, "--out", str(out)]
        print(f"$ {' '.join(cmd[:2])} {PROMPT!r} {' '.join(cmd[3:-1])} x.mp4   "
              f"(default settings: {sampling['sampler']}, {sampling['steps']} steps, guidance {sampling['guidance']})")  # fmt: skip
        print(f"{'run':>4} {'wall s':>8} {'peak MB':>8}")
        for i in range(args.runs):
            out.unlink(missing_ok=True)
            row = timed(cmd)
            if not out.is_file():
                sys.exit(f"run {i}: {out} was not written")
            runs.append(row)
            print(f"{i:>4} {row['wall_s']:>8.2f} {row['peak_rss_mb']:>8.0f}", flush=True)
    torch_only = [timed([sys.executable, "-c", "import torch"])["wall_s"] for _ in range(3)]
    walls = [r["wall_s"] for r in runs]
    result = {
        "command": f'kinema generate "{PROMPT}" --out x.mp4' + (f" --model {args.model}" if args.model else ""),
        "sampling": sampling,
        "runs": runs,
        "median_wall_s": statistics.median(walls),
        "min_wall_s": min(walls),
        "max_wall_s": max(walls),
        "import_torch_median_s": statistics.median(torch_only),
        "machine": {
            "platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "load_average": os.getloadavg()[0],
        },
    }  # fmt: skip
    print(f"median {result['median_wall_s']:.2f} s (min {min(walls):.2f}, max {max(walls):.2f}) over {len(walls)} runs; "
          f"`import torch` alone {result['import_torch_median_s']:.2f} s")  # fmt: skip
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
