"""Checkpoints: ``model.safetensors`` (weights only, no code) plus ``model.json`` (everything needed to use them).

The sidecar holds the architecture, classes, input size and normalisation, operating thresholds, the training
config, the split fingerprint, library versions and the sha256 of the weights file, which is checked on load.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, CovidscreenError
from ..models import ScreeningModel, create_model

WEIGHTS_FILE = "model.safetensors"
SIDECAR_FILE = "model.json"
FORMAT_VERSION = 1


def library_versions() -> dict[str, str]:
    import numpy
    import timm
    import torchvision

    from .. import __version__

    return {
        "covidscreen": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "numpy": numpy.__version__,
    }


def save_checkpoint(run_dir: str | Path, model: ScreeningModel, sidecar: dict[str, Any]) -> Path:
    """Write weights and sidecar into ``run_dir``; returns the weights path."""
    from safetensors.torch import save_file

    from ..models.weights import sha256_file

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    weights = run_dir / WEIGHTS_FILE
    state = {k: v.detach().cpu().contiguous() for k, v in model.backbone.state_dict().items()}
    tmp = weights.with_suffix(".tmp")
    save_file(state, str(tmp))
    tmp.replace(weights)
    meta = dict(sidecar)
    meta.update({
        "format_version": FORMAT_VERSION,
        "architecture": model.spec.name,
        "num_classes": model.num_classes,
        "normalisation": {"mean": list(model.spec.mean), "std": list(model.spec.std)},
        "weights_file": WEIGHTS_FILE,
        "weights_sha256": sha256_file(weights),
        "versions": library_versions(),
    })
    write_sidecar(run_dir, meta)
    return weights


def write_sidecar(run_dir: str | Path, meta: dict[str, Any]) -> None:
    path = Path(run_dir) / SIDECAR_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(meta, indent=2, default=_jsonable))
    tmp.replace(path)


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_sidecar(run_dir: str | Path) -> dict[str, Any]:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run folder {run_dir} does not exist; give a folder written by covidscreen train")
    # --- ensembles (issue 3): an ensemble folder's ensemble.json plays the role of the sidecar ---
    from .ensemble import is_ensemble, read_manifest

    if is_ensemble(run_dir):
        return read_manifest(run_dir)
    # --- end ensembles ---
    path = run_dir / SIDECAR_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{run_dir} has no {SIDECAR_FILE}: not a covidscreen run folder (expected {WEIGHTS_FILE} + {SIDECAR_FILE} "
            "written by covidscreen train)"
        )
    return read_json_record(path, ("architecture", "classes", "image_size"), "run folder")


def read_json_record(path: Path, required: tuple[str, ...], what: str) -> dict[str, Any]:
    """A JSON object with ``required`` keys (sidecars, ensemble manifests), or a CheckpointError naming the fault."""
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc.msg}); the {what} is damaged") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path} does not hold a JSON object; the {what} is damaged")
    for key in required:
        if key not in meta:
            raise CheckpointError(f"{path} lacks '{key}'; the {what} is damaged or from another tool")
    return meta


def load_checkpoint(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[ScreeningModel, dict[str, Any]]:
    """Load a run's model (eval mode) and sidecar, verifying the weights' sha256.

    For an ensemble folder (``ensemble.json``) the model is an :class:`~covidscreen.inference.ensemble.EnsembleModel`
    and the sidecar its manifest.

    Raises:
        CheckpointError: missing or damaged files, or weights that do not fit the recorded architecture.
    """
    from safetensors.torch import load_file

    from ..models.weights import sha256_file

    run_dir = Path(run_dir)
    # --- ensembles (issue 3): a module averaging the members' probabilities, used like one model ---
    from .ensemble import is_ensemble, load_ensemble

    if is_ensemble(run_dir):
        return load_ensemble(run_dir, device)
    # --- end ensembles ---
    meta = read_sidecar(run_dir)
    weights = run_dir / meta.get("weights_file", WEIGHTS_FILE)
    if not weights.is_file():
        raise CheckpointError(f"{run_dir} has no checkpoint ({weights.name} missing); train a model into it first")
    expected = meta.get("weights_sha256")
    if expected and sha256_file(weights) != expected:
        raise CheckpointError(f"{weights} does not match the sha256 in {SIDECAR_FILE}: the weights were changed or "
                              "damaged after training")
    try:
        model = create_model(meta["architecture"], pretrained=False, num_classes=len(meta["classes"]))
        model.backbone.load_state_dict(load_file(str(weights)))
    except CovidscreenError:
        raise
    except Exception as exc:
        raise CheckpointError(f"{weights} could not be loaded into {meta['architecture']}: {exc}") from None
    return model.to(device).eval(), meta
