"""Device helpers: mixed precision where it makes the device faster (CUDA; a CPU with AMX), the training precision
setting, and exact float32 (no TF32, no oneDNN bfloat16) when asked for."""

import pytest
import torch

from covidscreen import runtime
from covidscreen.config import PRECISIONS
from covidscreen.errors import ConfigError
from covidscreen.runtime import CpuBf16, amp_dtype, exact_float32, prediction_precision, resolve_precision

CPU = torch.device("cpu")
AMX = CpuBf16("AVX512", ("amx_bf16", "avx512_bf16"))
AVX512_BF16 = CpuBf16("AVX512", ("avx512_bf16",))
NO_BF16 = CpuBf16("AVX2", ())


@pytest.fixture
def cpu_is(monkeypatch):
    """Pretend the CPU is ``support`` (a :class:`CpuBf16`) for the rest of the test."""
    def pretend(support: CpuBf16) -> None:
        monkeypatch.setattr(runtime, "cpu_bf16", lambda: support)
    return pretend


def test_mixed_precision_only_where_it_pays_and_only_when_enabled(cpu_is):
    for support in (NO_BF16, AVX512_BF16):  # AVX-512 BF16 alone: native, but measured no faster than float32
        cpu_is(support)
        assert amp_dtype(CPU) is None
    cpu_is(AMX)
    assert amp_dtype(CPU) is torch.bfloat16
    assert amp_dtype(CPU, enabled=False) is None
    assert amp_dtype(torch.device("cuda"), enabled=False) is None


@pytest.mark.parametrize("support, auto", [(AMX, torch.bfloat16), (AVX512_BF16, None), (NO_BF16, None)])
def test_precision_auto_is_bf16_only_on_a_cpu_with_amx(cpu_is, support, auto):
    cpu_is(support)
    p = resolve_precision(CPU, "auto")
    assert p.dtype is auto and p.warning is None
    assert p.name == ("bf16" if auto else "fp32")
    assert p.record() == {"requested": "auto", "resolved": p.name, "device": "cpu",
                          "cpu_capability": support.capability, "cpu_bf16_units": list(support.units)}
    assert resolve_precision(CPU, "auto", amp=False).dtype is None  # amp: false means float32 everywhere
    fp32 = resolve_precision(CPU, "fp32")
    assert fp32.dtype is None and fp32.name == "fp32" and fp32.warning is None
    bf16 = resolve_precision(CPU, "bf16")
    assert bf16.dtype is torch.bfloat16
    # asked for where it is emulated: proceeds, with a warning that says why it will be slow
    assert (bf16.warning is None) == support.native
    if not support.native:
        assert "emulated" in bf16.warning and "slower" in bf16.warning and "AVX2" in bf16.warning


def test_precision_on_cuda_keeps_what_amp_did(monkeypatch, cpu_is):
    cpu_is(NO_BF16)  # a GPU's precision does not depend on its host CPU
    cuda = torch.device("cuda")
    for has_bf16, auto in ((True, torch.bfloat16), (False, torch.float16)):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda has=has_bf16: has)
        assert resolve_precision(cuda, "auto").dtype is auto
        assert resolve_precision(cuda, "fp32").dtype is None
        assert (resolve_precision(cuda, "bf16").warning is None) == has_bf16


def test_unknown_precision_is_a_config_error_and_the_choices_agree_with_the_config():
    assert runtime.PRECISIONS == PRECISIONS
    with pytest.raises(ConfigError, match="precision 'fp16' is not known; use one of auto, fp32, bf16"):
        resolve_precision(CPU, "fp16")


def test_cpu_bf16_detection_reads_the_flags_and_torchs_queries_once(monkeypatch):
    runtime.cpu_bf16.cache_clear()
    try:
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
        monkeypatch.setattr(runtime, "cpu_flags", lambda: {"avx512f", "amx_bf16", "amx_tile"})
        assert runtime.cpu_bf16() == CpuBf16("AVX512", ("amx_bf16",))
        monkeypatch.setattr(runtime, "cpu_flags", lambda: {"avx512f"})
        assert runtime.cpu_bf16().units == ("amx_bf16",)  # detected once per process
        runtime.cpu_bf16.cache_clear()
        assert runtime.cpu_bf16() == CpuBf16("AVX512", ())  # neither the flags nor PyTorch know of any
        runtime.cpu_bf16.cache_clear()
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
        assert runtime.cpu_bf16().units == ("avx512_bf16",)  # PyTorch's own query suffices (no /proc/cpuinfo)
        runtime.cpu_bf16.cache_clear()
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
        assert not runtime.cpu_bf16().native  # ATEN_CPU_CAPABILITY=avx2: PyTorch's kernels would not use them
        assert "emulated" in runtime.cpu_bf16().describe()
    finally:
        runtime.cpu_bf16.cache_clear()


def test_exact_float32_on_a_cpu_undoes_onednn_bfloat16_and_restores_it():
    backends = [getattr(torch.backends.mkldnn, n, None) for n in ("matmul", "conv")]
    if not all(hasattr(b, "fp32_precision") for b in backends):
        pytest.skip("this PyTorch has no per-backend float32 precision")
    saved = [b.fp32_precision for b in backends]
    try:
        for b in backends:
            b.fp32_precision = "bf16"  # what a library could set process-wide
        a, w = torch.randn(64, 256), torch.randn(256, 64)
        with prediction_precision(CPU, None):  # a prediction without autocast: exact float32
            assert [b.fp32_precision for b in backends] == ["ieee", "ieee"]
            exact = a @ w
        assert [b.fp32_precision for b in backends] == ["bf16", "bf16"]
        torch.testing.assert_close(exact, (a.double() @ w.double()).float(), rtol=1e-5, atol=1e-4)
        with exact_float32(CPU, enabled=False):
            assert backends[0].fp32_precision == "bf16"
    finally:
        for b, v in zip(backends, saved, strict=True):
            b.fp32_precision = v


def test_exact_float32_turns_tf32_off_inside_and_restores_it():
    cudnn, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
        with exact_float32(torch.device("cuda")):  # sets flags only: runs without a GPU
            assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
        with pytest.raises(RuntimeError), exact_float32(torch.device("cuda")):
            raise RuntimeError("boom")
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32  # restored on errors too
        for device, enabled in ((torch.device("cpu"), True), (torch.device("cuda"), False)):
            with exact_float32(device, enabled=enabled):  # no-op
                assert torch.backends.cudnn.allow_tf32
        with prediction_precision(torch.device("cuda"), None):  # a prediction without autocast: exact float32
            assert not torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = cudnn, matmul


def test_keep_freed_memory_leaves_user_settings_alone(monkeypatch):
    import sys

    from covidscreen.runtime import keep_freed_memory

    monkeypatch.setenv("MALLOC_MMAP_MAX_", "65536")
    assert keep_freed_memory() is False  # the user's allocator settings win
    monkeypatch.delenv("MALLOC_MMAP_MAX_")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=0")
    assert keep_freed_memory() is False
    monkeypatch.delenv("GLIBC_TUNABLES")
    if sys.platform.startswith("linux"):
        import platform

        if platform.libc_ver()[0] == "glibc":
            assert keep_freed_memory() is True  # and allocations still work
            assert bytearray(64 << 20)[-1] == 0
