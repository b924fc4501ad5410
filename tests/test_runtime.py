"""Device helpers: mixed precision only on CUDA, and exact float32 (no TF32) when asked for."""

import pytest
import torch

from covidscreen.runtime import amp_dtype, exact_float32, prediction_precision


def test_mixed_precision_only_on_cuda_and_only_when_enabled():
    assert amp_dtype(torch.device("cpu")) is None
    assert amp_dtype(torch.device("cuda"), enabled=False) is None


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
