"""kinema.precision: "auto" is bf16 only where the hardware computes it natively, decided once per process."""

import pytest
import torch

from kinema import precision
from kinema.errors import KinemaError


def test_explicit_precisions_are_kept_on_every_device():
    for device in ("cpu", "meta"):
        assert precision.resolve("fp32", device) == "fp32" and precision.resolve("bf16", device) == "bf16"


def test_a_bad_precision_names_the_choices():
    with pytest.raises(KinemaError, match=r"--precision must be one of auto, fp32, bf16 .*got 'fp16'"):
        precision.check_precision("fp16", "--precision")


def test_auto_resolves_the_same_way_twice_in_one_process(monkeypatch):
    first = precision.resolve("auto", "cpu")
    assert first in ("fp32", "bf16") and first == ("bf16" if precision.cpu_bf16_native() else "fp32")
    # the answer is cached: a changed environment later in the process does not flip it mid-run
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2" if first == "bf16" else "ALL")
    assert precision.resolve("auto", "cpu") == first == precision.resolve("auto", torch.device("cpu"))


def test_auto_reads_the_cpu_flags_and_the_kernels_limits(monkeypatch):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert precision.cpu_bf16_native()  # AVX-512 BF16: bf16 pays
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert not precision.cpu_bf16_native()  # oneDNN's matmuls held to AVX2: emulated bf16
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx512_core_amx")
    assert precision.cpu_bf16_native()
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")  # ATEN_CPU_CAPABILITY=avx2
    assert not precision.cpu_bf16_native()
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)  # an AVX2-only or plain AVX-512 CPU
    assert not precision.cpu_bf16_native()
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)  # AMX has bf16 tiles
    assert precision.cpu_bf16_native()


def test_autocast_runs_what_was_resolved():
    x = torch.randn(4, 8)
    layer = torch.nn.Linear(8, 8)
    with precision.autocast("bf16", "cpu"):
        assert layer(x).dtype == torch.bfloat16
    with precision.autocast("fp32", "cpu"):
        assert layer(x).dtype == torch.float32
    with pytest.raises(ValueError, match="resolved precision"):
        precision.autocast("auto", "cpu")


def test_cpu_flags_say_what_auto_read():
    flags = precision.cpu_flags()
    assert flags["auto"] == precision.resolve("auto", "cpu")
    assert {"cpu", "avx2", "avx512_bf16", "amx", "torch_capability", "onednn_max_isa", "threads"} <= set(flags)
    assert precision.why("cpu")
