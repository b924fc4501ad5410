"""The floor every layer stands on: device selection, mixed precision, memory format, seeding, file hashing,
atomic writes and library versions.

On a GPU, training and inference use it with AMP (bfloat16 where supported, else float16 with a grad scaler) and
channels_last without any change to the calling code; on the CPU, channels_last is kept (faster convolutions) and
AMP is off.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import platform
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .errors import ConfigError, DiskFullError

_MALLOC_ENV = ("MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


def keep_freed_memory() -> bool:
    """Let glibc keep freed memory for the next allocation instead of handing it back to the kernel (training).

    By default glibc serves every block above its ``mmap`` threshold (at most 32 MiB) with a fresh ``mmap`` and
    unmaps it when it is freed; a CNN's activations at 224 px are such blocks, so every training step maps them,
    faults them in page by page (zero-filled) and unmaps them again. Here large blocks come from the heap and the heap
    is trimmed only above 1 GiB of free space at its top: a training step of the default model took 4-8x fewer page
    faults, a quarter of the kernel time and 10-20% less CPU time, with the same peak memory
    (``benchmarks/bench_malloc.py``, docs/performance.md). A no-op (False) outside Linux/glibc, and where the user
    set any ``MALLOC_*`` variable or a ``glibc.malloc`` tunable (theirs win).
    """
    if not sys.platform.startswith("linux") or any(k in os.environ for k in _MALLOC_ENV) or (
            "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", "")):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl, ...)
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # malloc.h
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 1 << 30))


def cpu_flags() -> set[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (e.g. ``avx512_vnni``, ``amx_bf16``); empty elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.split(":", 1)[-1].split())


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device {name!r} is not valid; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} was asked for but no CUDA GPU is available; use --device cpu or auto")
    return dev


def amp_dtype(device: torch.device, enabled: bool = True) -> torch.dtype | None:
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@contextlib.contextmanager
def exact_float32(device: torch.device, enabled: bool = True):
    """Within: float32 convolutions and matrix products on a CUDA device without TF32 (which PyTorch allows for
    cuDNN convolutions by default), so that GPU probabilities match the CPU's to float32 rounding; no-op on a CPU
    or when not ``enabled``."""
    if not enabled or device.type != "cuda":
        yield
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def prediction_precision(device: torch.device, dtype: torch.dtype | None):
    """The numerics of a prediction: ``dtype`` autocast when given (mixed precision), else exact float32."""
    return autocast(device, dtype) if dtype is not None else exact_float32(device)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (CPU and CUDA); returns a generator for the run's own random draws."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
        torch.backends.cudnn.benchmark = False
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


def to_input(batch_u8: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 ``(B, H, W)`` or ``(B, 1, H, W)`` -> float ``(B, 1, H, W)`` in [0, 1] on ``device``, channels_last."""
    if batch_u8.ndim == 3:
        batch_u8 = batch_u8.unsqueeze(1)
    x = batch_u8.to(device, non_blocking=True).float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to a temporary name beside ``path``, flush it to disk, then rename: a crash or a full disk
    leaves the previous file (or none), never half a file.

    Raises:
        DiskFullError: the disk (or quota) is full; the message names ``path`` and the space needed.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(disk_full_message(path, len(data))) from None
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """:func:`atomic_write_bytes` of ``text`` in UTF-8."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_csv(path: str | Path, table: Any, **to_csv: Any) -> Path:
    """A pandas DataFrame as CSV (``index=False`` unless given), written atomically."""
    to_csv.setdefault("index", False)
    return atomic_write_text(path, table.to_csv(**to_csv))


@contextlib.contextmanager
def atomic_output(path: str | Path):
    """Within: write the file at the yielded temporary path (for writers that take a path, e.g. ONNX export); on
    success it is renamed to ``path``, on failure removed, and a full disk raises :class:`DiskFullError`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        written = tmp.stat().st_size if tmp.exists() else 0
        tmp.unlink(missing_ok=True)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(disk_full_message(path, written, "more than ")) from None
        raise
    finally:
        tmp.unlink(missing_ok=True)


def disk_full_message(path: Path, needed: int, bound: str = "") -> str:
    """What a user reads when ``path`` could not be written for lack of space: the file, what it needs, what is
    free, and that the previous version was kept."""
    try:
        free = f"{shutil.disk_usage(path.parent).free / 1e6:.1f} MB free"
    except OSError:
        free = "free space unknown"
    kept = f"the previous {path.name} is kept" if path.exists() else f"no {path.name} was written"
    return (f"no space left on the disk of {path.parent} to write {path.name} (needs {bound or 'about '}"
            f"{needed / 1e6:.1f} MB, {free}); {kept}. Free some space (or write to another disk) and rerun")


def read_optional_json(path: Path) -> Any:
    """The parsed JSON of ``path``, or ``{}`` when the file is absent or not valid JSON.

    For what reports and model cards show: a missing or damaged optional file reads as empty instead of failing the
    whole page. Files a step cannot do without are read strictly (:func:`covidscreen.inference.run.load_run`).
    """
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}


def library_versions() -> dict[str, str]:
    """Versions recorded with every checkpoint, so that a run says what computed it."""
    # timm and torchvision (about 2 CPU s) load when a checkpoint is written, not with every import of runtime
    import timm
    import torchvision


    return {
        "covidscreen": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "numpy": np.__version__,
        "covidscreen_commit": code_commit(),
    }


def code_commit() -> str | None:
    """The git commit of the covidscreen source that runs (``+dirty`` with local changes), None outside git."""
    src = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no", "--", "."],
                               capture_output=True, text=True, timeout=5)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None
