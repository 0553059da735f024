"""`kinema info`: versions, device, threads, whether bf16 is fast here and what precision "auto" picks."""

from __future__ import annotations

import time

import typer

from kinema.cli import app


def bf16_speedup(tokens: int = 2048, dim: int = 512, repeats: int = 5) -> float:
    """Measured fp32 time / bf16-autocast time of a transformer-sized MLP forward on the CPU."""
    import torch
    from torch import nn

    mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
    x = torch.randn(tokens, dim)

    def timed(autocast: bool) -> float:
        best = float("inf")
        for _ in range(repeats + 1):  # the first run warms up the kernels
            t0 = time.perf_counter()
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                mlp(x)
            best = min(best, time.perf_counter() - t0)
        return best

    return timed(False) / timed(True)


@app.command()
def info() -> None:
    """Print kinema, torch and PyAV versions, the device, threads, bf16's speed and what precision "auto" picks."""
    import platform

    import av
    import torch

    import kinema

    typer.echo(f"kinema   {kinema.__version__}")
    typer.echo(f"python   {platform.python_version()} ({platform.machine()})")
    typer.echo(f"torch    {torch.__version__}")
    typer.echo(f"pyav     {av.__version__} (ffmpeg {'.'.join(map(str, av.library_versions['libavcodec']))} libavcodec)")
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        typer.echo(f"device   cuda: {names}")
    else:
        typer.echo("device   cpu (no CUDA device)")
    typer.echo(f"threads  {torch.get_num_threads()} intra-op")
    from kinema import precision

    speedup = bf16_speedup()
    typer.echo(f"bf16     {speedup:.1f}x the fp32 speed of a transformer MLP on cpu (bf16 autocast, measured now)")
    flags = precision.cpu_flags()
    typer.echo(f"cpu      {flags['cpu']}: " + ", ".join(k for k in ("avx2", "avx512", "avx512_bf16", "amx") if flags[k]))
    for device in ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",):
        picked = precision.resolve("auto", device)
        typer.echo(f"auto     {picked} on {device}: {precision.why(device)}")
