"""The one checkpoint format of covidscreen, for classifiers and lung segmenters alike: a ``.safetensors`` file
(tensors only, no code) and a JSON sidecar beside it that records the weights' sha256, the format version and the
library versions. :func:`write_checkpoint` writes both atomically; :func:`read_checkpoint_weights` verifies the digest
before a single tensor is read.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save

from ..errors import CheckpointError
from ..runtime import atomic_write_bytes, atomic_write_text, library_versions, sha256_file


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_json(path: str | Path, record: dict[str, Any]) -> Path:
    """A JSON sidecar or manifest, written atomically."""
    return atomic_write_text(path, json.dumps(record, indent=2, default=_jsonable))


def write_checkpoint(folder: str | Path, state: dict[str, torch.Tensor], sidecar: dict[str, Any], weights_file: str,
                     sidecar_file: str, format_version: int) -> dict[str, Any]:
    """Write ``state`` as ``folder/weights_file`` and ``sidecar`` (plus the weights' sha256, the format version and
    library versions) as ``folder/sidecar_file``; both are renamed into place only when complete.

    Returns:
        The sidecar as written.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / weights_file
    atomic_write_bytes(weights, save({k: v.detach().cpu().contiguous() for k, v in state.items()}))
    meta = {**sidecar, "format_version": format_version, "weights_file": weights_file,
            "weights_sha256": sha256_file(weights), "versions": library_versions()}
    write_json(folder / sidecar_file, meta)
    return meta


def read_json_record(path: Path, required: tuple[str, ...], what: str) -> dict[str, Any]:
    """A JSON object with ``required`` keys (sidecars, ensemble manifests), or a CheckpointError naming the fault."""
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc.msg}); the {what} is damaged") from None
    except OSError as exc:
        raise CheckpointError(f"{path} could not be read ({exc.strerror}); the {what} is incomplete") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path} does not hold a JSON object; the {what} is damaged")
    for key in required:
        if key not in meta:
            raise CheckpointError(f"{path} lacks '{key}'; the {what} is damaged or from another tool")
    return meta


def read_checkpoint_weights(weights: Path, expected: dict[str, str | None]) -> dict[str, torch.Tensor]:
    """The tensors of ``weights`` after checking its sha256 against every non-empty digest in ``expected``
    (``{who expects it: digest}``, e.g. the sidecar, or a run that recorded its segmenter).

    The file is read once: the digest is of the very bytes that are parsed, so it cannot be swapped between the
    check and the load."""
    if not weights.is_file():
        raise CheckpointError(f"{weights} is missing; train a model into {weights.parent} first")
    blob = weights.read_bytes()
    digest = hashlib.sha256(blob).hexdigest()
    for who, want in expected.items():
        if want and digest != want.strip().lower():
            raise CheckpointError(f"{weights} has sha256 {digest[:12]}..., but {who} expects {want[:12]}...: the "
                                  "weights were changed or replaced after they were written; refused")
    try:
        return load_safetensors(blob)
    except Exception as exc:
        raise CheckpointError(f"{weights} is not a readable safetensors file: {exc}") from None
