"""The floor every layer stands on: device selection, mixed precision, memory format, seeding, file hashing,
atomic writes and library versions.

On a GPU, training and inference use it with AMP (bfloat16 where supported, else float16 with a grad scaler) and
channels_last without any change to the calling code. On a CPU, channels_last is kept (faster convolutions), and
training uses bfloat16 autocast where the CPU has AMX (:func:`cpu_bf16`, :func:`resolve_precision`); elsewhere it
trains in float32: emulated bfloat16 is slower, and AVX-512 BF16 alone was measured no faster than float32 for this
project's training (docs/performance.md). Predictions that set
thresholds and decisions compute in exact float32 on every device (:func:`exact_float32`).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import hashlib
import json
import os
import platform
import random
import shutil
import subprocess
import sys
from dataclasses import dataclass
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


#: CPU flags (``/proc/cpuinfo``) of native bfloat16 arithmetic: AMX tiles, AVX-512 BF16 dot products
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
#: the ``precision`` setting of training (``TrainConfig.precision``)
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class CpuBf16:
    """What this CPU offers for bfloat16 (:func:`cpu_bf16`).

    Attributes:
        capability: PyTorch's CPU kernel level (``torch.backends.cpu.get_cpu_capability()``: e.g. AVX512, AVX2).
        units: the native bfloat16 units found (``amx_bf16``, ``avx512_bf16``); empty: bfloat16 is emulated.
    """

    capability: str
    units: tuple[str, ...]

    @property
    def native(self) -> bool:
        return bool(self.units)

    @property
    def fast(self) -> bool:
        """bfloat16 training pays here: AMX tiles. AVX-512 BF16 alone (e.g. AMD Zen 4/5) computes bfloat16 natively,
        but a training epoch of the default model was no faster there than in float32 (0.95-0.97x measured, 0.71-0.74x
        at 128 px: ``benchmarks/bench_epoch.py --precision``, docs/performance.md), so ``auto`` keeps float32."""
        return "amx_bf16" in self.units

    def describe(self) -> str:
        return f"{self.capability}, bfloat16 {'native: ' + ' + '.join(self.units) if self.units else 'emulated'}"


@functools.cache
def cpu_bf16() -> CpuBf16:
    """This CPU's bfloat16 support, detected once per process: PyTorch's own queries (``torch.cpu``: AMX tiles,
    AVX-512 BF16, from its cpuinfo library, on every OS) and the kernel's CPU flags (:func:`cpu_flags`, Linux),
    either of which suffices. PyTorch's kernel level must be AVX-512 (or above) for its oneDNN kernels to use them
    (``ATEN_CPU_CAPABILITY=avx2`` turns them off)."""
    try:
        capability = str(torch.backends.cpu.get_cpu_capability())
    except (AttributeError, RuntimeError):  # pragma: no cover - torch without the query
        capability = "unknown"
    flags = cpu_flags()
    queries = {"amx_bf16": "_is_amx_tile_supported", "avx512_bf16": "_is_avx512_bf16_supported"}
    units = []
    for flag in BF16_CPU_FLAGS:
        query = getattr(torch.cpu, queries[flag], None)
        try:
            found = flag in flags or bool(query and query())
        except RuntimeError:  # pragma: no cover - a query that fails counts as absent
            found = flag in flags
        if found:
            units.append(flag)
    if not capability.upper().startswith("AVX512"):  # PyTorch's kernels would not use them
        units = []
    return CpuBf16(capability, tuple(units))


def amp_dtype(device: torch.device, enabled: bool = True) -> torch.dtype | None:
    """The autocast dtype that makes ``device`` faster, or None (float32): on CUDA bfloat16 (float16 where the GPU
    lacks it), on a CPU bfloat16 where it has AMX (:attr:`CpuBf16.fast`), else None."""
    if not enabled:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_bf16().fast:
        return torch.bfloat16
    return None


@dataclass(frozen=True)
class Precision:
    """The numerics of a training run, resolved from the ``precision`` setting on the run's device.

    Attributes:
        requested: the setting (auto, fp32, bf16).
        dtype: the autocast dtype of the training steps and per-epoch validation (None: float32).
        device: the device type (cpu, cuda).
        cpu: what the CPU offers (recorded on every device: a run trained on a GPU says which CPU it had too).
        warning: why the choice may be slow (bf16 asked for where it is emulated), else None.
    """

    requested: str
    dtype: torch.dtype | None
    device: str
    cpu: CpuBf16
    warning: str | None = None

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(self.dtype, str(self.dtype))

    def describe(self) -> str:
        why = f"precision {self.requested}" + (f" on {self.device}" if self.requested == "auto" else "")
        return f"{self.name} ({why}; CPU {self.cpu.describe()})"

    def record(self) -> dict[str, Any]:
        """What the run's sidecar and config record (``training_precision``)."""
        return {"requested": self.requested, "resolved": self.name, "device": self.device,
                "cpu_capability": self.cpu.capability, "cpu_bf16_units": list(self.cpu.units)}


def resolve_precision(device: torch.device, requested: str = "auto", amp: bool = True) -> Precision:
    """The training numerics of ``requested`` on ``device``.

    ``auto``: bfloat16 autocast on a CPU with AMX and, on CUDA, what :func:`amp_dtype` gives (as before this setting
    existed); float32 on other CPUs (emulated bfloat16 is slower, AVX-512 BF16 alone measured no faster:
    :attr:`CpuBf16.fast`) and when ``amp`` is false. ``fp32``: exact float32. ``bf16``: bfloat16 autocast on any
    device (native on AVX-512 BF16 too), with a warning where it is emulated.

    Raises:
        ConfigError: ``requested`` is not one of :data:`PRECISIONS`.
    """
    if requested not in PRECISIONS:
        raise ConfigError(f"precision {requested!r} is not known; use one of {', '.join(PRECISIONS)}")
    cpu, warning = cpu_bf16(), None
    if requested == "fp32":
        dtype = None
    elif requested == "auto":
        dtype = amp_dtype(device, amp)
    else:
        dtype = torch.bfloat16
        native = torch.cuda.is_bf16_supported() if device.type == "cuda" else device.type == "cpu" and cpu.native
        if not native:
            where = "this GPU" if device.type == "cuda" else f"this CPU ({cpu.describe()})"
            warning = (f"precision bf16 on {where}: bfloat16 is emulated there, so training will be slower than in "
                       "float32 (precision auto or fp32 avoids that); proceeding in bfloat16")
    return Precision(requested, dtype, device.type, cpu, warning)


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@contextlib.contextmanager
def exact_float32(device: torch.device, enabled: bool = True):
    """Within: float32 convolutions and matrix products without reduced-precision shortcuts, so that probabilities
    match across devices to float32 rounding. On a CUDA device: no TF32 (which PyTorch allows for cuDNN convolutions
    by default). On a CPU: oneDNN's float32 convolutions and matrix products in IEEE float32, even where the process
    allowed bfloat16 for them (``torch.backends.mkldnn.*.fp32_precision``, the default already). A no-op when not
    ``enabled``."""
    if not enabled:
        yield
        return
    if device.type != "cuda":
        with _mkldnn_ieee():
            yield
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@contextlib.contextmanager
def _mkldnn_ieee():
    """oneDNN's float32 matmul and convolution precision set to IEEE within, restored after (no-op on a PyTorch
    without the per-backend precision settings)."""
    backends = [b for b in (getattr(torch.backends.mkldnn, n, None) for n in ("matmul", "conv"))
                if b is not None and hasattr(b, "fp32_precision")]
    saved = [b.fp32_precision for b in backends]
    try:
        for b in backends:
            if b.fp32_precision not in ("ieee", "none"):  # "none": inherits the default, IEEE float32
                b.fp32_precision = "ieee"
        yield
    finally:
        for b, value in zip(backends, saved, strict=True):
            if b.fp32_precision != value:
                b.fp32_precision = value


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
