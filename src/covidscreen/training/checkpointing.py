"""The training state at the end of each epoch, so that a run can continue where it stopped.

What is saved is everything the next epoch reads: model weights and buffers, optimizer, scheduler and grad-scaler
state, every random generator (Python, NumPy's global one, torch's CPU and CUDA ones, the run's own torch generator
and NumPy generators such as the epoch sampler's and the mixer's), and the loop's progress (best score, the best
epoch's weights, the number of epochs without improvement, the history). Restored into a freshly built run, the
remaining epochs compute exactly what an uninterrupted run computes (bit for bit on a CPU).

Format (no pickle): ``FOLDER/epoch-NNN.safetensors`` holds every tensor; ``FOLDER/state.json`` holds the rest, with
each tensor replaced by its key, and the sha256 of the tensor file. The tensor file is written first under a new
name, then ``state.json`` is renamed over the old one, then the older tensor file is removed: at every instant
``state.json`` names a complete tensor file, so a crash, a kill or a full disk leaves the previous epoch loadable.

The checkpoint does not depend on the number of processes: under torchrun, rank 0 writes it and every rank of a
restarted (elastic) job reads the same folder and continues from the same epoch.
"""

from __future__ import annotations

import hashlib
import json
import random
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from safetensors.torch import load_file, save
from torch import nn

from ..errors import CheckpointError
from ..runtime import atomic_write_bytes, atomic_write_text, sha256_file

STATE_FILE = "state.json"
FORMAT_VERSION = 1


@dataclass
class LoopProgress:
    """Where the epoch loop stands after ``epoch`` complete epochs."""

    epoch: int = 0
    best_score: float = -np.inf
    best_state: dict[str, torch.Tensor] | None = None
    best_epoch: int = 0
    stale: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    complete: bool = False  # training ended (last epoch or early stop): only what follows training remains


@dataclass
class TrainingObjects:
    """The live objects whose state a checkpoint holds."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any = None  # an LR scheduler (or None)
    scaler: Any = None  # the fp16 GradScaler (or None)
    generator: torch.Generator | None = None  # the run's own torch draws (augmentation)
    rngs: dict[str, np.random.Generator] = field(default_factory=dict)  # e.g. the epoch sampler, the mixer
    modules: dict[str, nn.Module] = field(default_factory=dict)  # e.g. a site adversary


# --- a tree of Python values and tensors <-> JSON + named tensors -------------------------------------------------

def _encode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj.detach().cpu().clone().contiguous()  # clone: safetensors refuses shared storage
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [_encode(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, tensors) for k, v in obj.items()}
        return {"__items__": [[_encode(k, tensors), _encode(v, tensors)] for k, v in obj.items()]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} in a training checkpoint")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__ndarray__" in obj:
        return np.asarray(obj["__ndarray__"], dtype=obj["dtype"])
    if "__tuple__" in obj:
        return tuple(_decode(v, tensors) for v in obj["__tuple__"])
    if "__items__" in obj:
        return {_decode(k, tensors): _decode(v, tensors) for k, v in obj["__items__"]}
    return {k: _decode(v, tensors) for k, v in obj.items()}


# --- capture and restore ------------------------------------------------------------------------------------------

def capture(objects: TrainingObjects, progress: LoopProgress) -> dict[str, Any]:
    """The state tree of the live objects and the loop's progress."""
    tree: dict[str, Any] = {
        "model": objects.model.state_dict(),
        "optimizer": objects.optimizer.state_dict(),
        "scheduler": objects.scheduler.state_dict() if objects.scheduler is not None else None,
        "scaler": objects.scaler.state_dict() if objects.scaler is not None else None,
        "modules": {k: m.state_dict() for k, m in objects.modules.items()},
        "generator": objects.generator.get_state() if objects.generator is not None else None,
        "rngs": {k: g.bit_generator.state for k, g in objects.rngs.items()},
        "python_rng": random.getstate(),
        "numpy_rng": np.random.get_state(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "progress": {"epoch": progress.epoch, "best_score": float(progress.best_score),
                     "best_state": progress.best_state, "best_epoch": progress.best_epoch, "stale": progress.stale,
                     "history": progress.history, "complete": progress.complete},
    }
    return tree


def restore(tree: dict[str, Any], objects: TrainingObjects) -> LoopProgress:
    """Load a state tree into freshly built objects; returns the loop's progress."""
    device = next(objects.model.parameters()).device
    objects.model.load_state_dict(tree["model"])
    objects.optimizer.load_state_dict(tree["optimizer"])  # moves the moments to the parameters' device
    if objects.scheduler is not None and tree["scheduler"] is not None:
        objects.scheduler.load_state_dict(tree["scheduler"])
    if objects.scaler is not None and tree["scaler"] is not None:
        objects.scaler.load_state_dict(tree["scaler"])
    for key, module in objects.modules.items():
        module.load_state_dict(tree["modules"][key])
    if objects.generator is not None and tree["generator"] is not None:
        objects.generator.set_state(tree["generator"])
    for key, gen in objects.rngs.items():
        gen.bit_generator.state = tree["rngs"][key]
    version, internal, gauss = tree["python_rng"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(tree["numpy_rng"])
    torch.set_rng_state(tree["torch_rng"])
    if tree["cuda_rng"] and torch.cuda.is_available() and len(tree["cuda_rng"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(tree["cuda_rng"])
    p = tree["progress"]
    best = p["best_state"]
    if best is not None:
        best = {k: v.to(device) for k, v in best.items()}
    return LoopProgress(p["epoch"], p["best_score"], best, p["best_epoch"], p["stale"], p["history"], p["complete"])


# --- the files ----------------------------------------------------------------------------------------------------

def save_state(folder: str | Path, tree: dict[str, Any], meta: dict[str, Any]) -> Path:
    """Write a state tree (plus ``meta``: e.g. the config and split fingerprint it belongs to) into ``folder``.

    Raises:
        DiskFullError: no space for the tensors or the JSON; the previous checkpoint stays complete and loadable.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    encoded = _encode(tree, tensors)
    epoch = tree["progress"]["epoch"]
    name = f"epoch-{epoch:03d}.safetensors"
    blob = save(tensors)
    atomic_write_bytes(folder / name, blob)
    record = {"format_version": FORMAT_VERSION, "epoch": epoch, "complete": tree["progress"]["complete"],
              "tensors_file": name, "tensors_sha256": hashlib.sha256(blob).hexdigest(), **meta, "state": encoded}
    atomic_write_text(folder / STATE_FILE, json.dumps(record))
    for old in folder.glob("epoch-*.safetensors"):  # only now: state.json no longer names them
        if old.name != name:
            old.unlink(missing_ok=True)
    return folder / STATE_FILE


def read_state_record(folder: str | Path) -> dict[str, Any] | None:
    """``state.json`` of ``folder`` without its tensors (None when there is no checkpoint)."""
    path = Path(folder) / STATE_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        raise CheckpointError(f"{path} is damaged ({exc}); delete {path.parent} to start the run over") from None
    if not isinstance(record, dict) or record.get("format_version") != FORMAT_VERSION or "state" not in record:
        raise CheckpointError(f"{path} is not a training checkpoint of this version; delete {path.parent} to start "
                              "the run over")
    return record


def load_state(folder: str | Path) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """``(tree, record)`` of the checkpoint in ``folder``, its tensors checked against the recorded sha256; None
    when there is none."""
    record = read_state_record(folder)
    if record is None:
        return None
    tensors_file = Path(folder) / record["tensors_file"]
    way_out = f"delete {Path(folder)} to start the run over"
    if not tensors_file.is_file():
        raise CheckpointError(f"{tensors_file} (named by {STATE_FILE}) is missing; {way_out}")
    if sha256_file(tensors_file) != record["tensors_sha256"]:
        raise CheckpointError(f"{tensors_file} does not match the sha256 in {STATE_FILE}: it was changed; {way_out}")
    try:
        tensors = load_file(str(tensors_file))
    except Exception as exc:
        raise CheckpointError(f"{tensors_file} is not a readable safetensors file ({exc}); {way_out}") from None
    return _decode(record["state"], tensors), record


# --- Ctrl-C -------------------------------------------------------------------------------------------------------

class InterruptGuard:
    """SIGINT during training: the first stops the run at once unless a checkpoint is being written, in which case
    the write completes first (so the last complete epoch is on disk); a second SIGINT stops at once, whatever is
    running (the atomic writes leave the previous checkpoint). Stopping raises :class:`KeyboardInterrupt`.

    Installed only in the main thread (the only one Python delivers signals to); elsewhere it does nothing. A process
    that ignores SIGINT (started by ``nohup``, or with ``&`` from a script) keeps ignoring it: its launcher asked for
    that.
    """

    _active: ClassVar[InterruptGuard | None] = None

    def __init__(self) -> None:
        self.count = 0
        self._outer: InterruptGuard | None = None
        self._saving = False
        self._pending = False
        self._previous: Any = None

    def _handler(self, signum: int, frame: Any) -> None:
        self.count += 1
        if self._saving and self.count == 1:
            self._pending = True
            print("\ninterrupt: finishing the checkpoint being written (Ctrl-C again to stop at once)", flush=True)
            return
        raise KeyboardInterrupt

    @classmethod
    def current(cls) -> InterruptGuard:
        """The guard in force (an inert one outside any: its :meth:`saving` defers nothing)."""
        return cls._active if cls._active is not None else cls()

    def __enter__(self) -> InterruptGuard:
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN):
            self._previous = signal.signal(signal.SIGINT, self._handler)
        self._outer, InterruptGuard._active = InterruptGuard._active, self
        return self

    def __exit__(self, *exc: Any) -> None:
        InterruptGuard._active = self._outer
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    @contextmanager
    def saving(self) -> Iterator[None]:
        """Within: a first SIGINT waits for the end of the block."""
        self._saving = True
        try:
            yield
        finally:
            self._saving = False
        if self._pending:
            raise KeyboardInterrupt
