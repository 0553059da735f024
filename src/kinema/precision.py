"""The precision the models run in: "fp32", "bf16" (autocast, fp32 weights), or "auto".

bf16 autocast is 1.5-6x faster than fp32 where the hardware has bf16 arithmetic (CUDA GPUs of
compute capability 8.0 and newer; x86 CPUs with AVX-512 BF16 or AMX) and about 5-10x *slower*
where it is emulated (a CPU with AVX2 only). So "auto", the default everywhere, means bf16 where
it pays and fp32 elsewhere; "fp32" and "bf16" are always honoured as asked.

The decision reads the hardware's flags, not a timing, so it is the same on every call and on a
loaded machine: once per process and device type (`resolve` caches it). On a CPU it also honours
what the kernels are allowed to use: `ATEN_CPU_CAPABILITY=avx2` (torch's vectorised kernels) or
`ONEDNN_MAX_CPU_ISA=AVX2` (oneDNN's matmuls and convolutions) below AVX-512 make bf16 as slow as on
an AVX2-only CPU, and "auto" picks fp32 then too; setting both is how to try an AVX2 machine on an
AVX-512 one.
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Any

import torch

from kinema.errors import KinemaError

PRECISIONS = ("auto", "fp32", "bf16")
"""What a user may ask for; "auto" resolves to one of the other two (`resolve`)."""

# oneDNN ISA names (ONEDNN_MAX_CPU_ISA) at or above the first with native bf16 dot products.
_ONEDNN_BF16_ISAS = ("AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX10", "ALL", "DEFAULT")


def check_precision(precision: Any, name: str = "precision") -> str:
    """A precision a user asked for: one of PRECISIONS; otherwise a KinemaError naming them."""
    if precision not in PRECISIONS:
        raise KinemaError(
            f"{name} must be one of {', '.join(PRECISIONS)} (auto: bf16 where this device computes it natively), "
            f"got {precision!r}"
        )
    return precision


def resolve(precision: str, device: str | torch.device) -> str:
    """What `precision` means on `device`: "fp32" or "bf16" ("auto" is bf16 where `bf16_pays`)."""
    check_precision(precision)
    if precision != "auto":
        return precision
    return "bf16" if bf16_pays(torch.device(device).type) else "fp32"


@functools.cache
def bf16_pays(device_type: str) -> bool:
    """Whether bf16 autocast is faster than fp32 on this machine's `device_type` ("cpu", "cuda", ...).

    Decided once per process from the hardware's flags (see the module docstring).
    """
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device_type == "cpu":
        return cpu_bf16_native()
    return False  # mps and others: fp32 until measured


def cpu_bf16_native() -> bool:
    """This CPU has bf16 arithmetic (AVX-512 BF16 or AMX) and torch's kernels are allowed to use it."""
    hardware = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    vectorised = torch.backends.cpu.get_cpu_capability().startswith("AVX512")  # lowered by ATEN_CPU_CAPABILITY
    isa = (_onednn_max_isa() or "ALL").upper()
    return hardware and vectorised and isa.startswith(_ONEDNN_BF16_ISAS)


def _onednn_max_isa() -> str | None:
    """The ISA oneDNN is held to, if any (DNNL_MAX_CPU_ISA is the variable's older name)."""
    return os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")


def why(device: str | torch.device) -> str:
    """One line on what "auto" reads on `device`, for logs."""
    kind = torch.device(device).type
    if kind == "cuda":
        return "CUDA device with native bf16" if bf16_pays("cuda") else "CUDA device without native bf16"
    if kind != "cpu":
        return f"bf16 autocast is not measured on {kind}"
    f = cpu_flags()
    if f["avx512_bf16"] or f["amx"]:
        if f["auto"] == "bf16":
            return "this CPU has AVX-512 BF16" + (" and AMX" if f["amx"] else "")
        return f"this CPU has AVX-512 BF16, but the kernels are limited to {f['torch_capability']}/{f['onednn_max_isa']}"
    return "this CPU has no AVX-512 BF16 or AMX, where bf16 autocast runs several times slower than fp32"


def cpu_flags() -> dict[str, Any]:
    """What `auto` reads on a CPU, for logs and benchmark records (e.g. why a run was slow)."""
    import platform

    return {
        "cpu": _cpu_model(),
        "machine": platform.machine(),
        "avx2": torch.cpu._is_avx2_supported(),
        "avx512": torch.cpu._is_avx512_supported(),
        "avx512_bf16": torch.cpu._is_avx512_bf16_supported(),
        "amx": torch.cpu._is_amx_tile_supported(),
        "torch_capability": torch.backends.cpu.get_cpu_capability(),
        "onednn_max_isa": _onednn_max_isa(),
        "threads": torch.get_num_threads(),
        "auto": resolve("auto", "cpu"),
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown"


def autocast(precision: str, device: str | torch.device) -> contextlib.AbstractContextManager:
    """The context models run in at a resolved precision: bf16 autocast on `device`, or nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision != "bf16":
        raise ValueError(f"autocast takes a resolved precision, fp32 or bf16, got {precision!r}")
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
