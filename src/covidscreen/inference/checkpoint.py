"""Checkpoints of classification runs: ``model.safetensors`` (weights only, no code) plus ``model.json`` (everything
needed to use them), in the one format of :mod:`covidscreen.models.checkpoint`.

The sidecar holds the architecture, classes, modality, input size and normalisation, preprocessing, operating
points with their validation figures, temperature, the training config, the split fingerprint, library versions
and the sha256 of the weights file, which is checked on load. Read it through :func:`covidscreen.inference.run.
load_run`, which types it (and reads the sidecars of older versions).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, CovidscreenError
from ..models import ScreeningModel, create_model
from ..models.checkpoint import read_checkpoint_weights, read_json_record, write_checkpoint, write_json
from ..models.heads import LogisticHead, TreeEnsembleHead, build_frozen_head, replace_head

WEIGHTS_FILE = "model.safetensors"
SIDECAR_FILE = "model.json"
# 1: the first format; 2: adds ``modality`` and ``operating_point_figures`` (validation sensitivity/specificity of each
# operating point). Version 1 sidecars read as chest X-ray runs whose figures come from their metrics.json.
FORMAT_VERSION = 2


def save_checkpoint(run_dir: str | Path, model: ScreeningModel, sidecar: dict[str, Any]) -> Path:
    """Write weights and sidecar into ``run_dir``; returns the weights path."""
    meta = {**sidecar, "architecture": model.spec.name, "num_classes": model.num_classes,
            "normalisation": {"mean": list(model.spec.mean), "std": list(model.spec.std)}}
    head = model.backbone.get_submodule(model.spec.head)
    if isinstance(head, LogisticHead | TreeEnsembleHead):  # built before its weights load (load_model_weights)
        meta["frozen_head"] = head.describe()
    write_checkpoint(run_dir, model.backbone.state_dict(), meta, WEIGHTS_FILE, SIDECAR_FILE, FORMAT_VERSION)
    return Path(run_dir) / WEIGHTS_FILE


def write_sidecar(run_dir: str | Path, meta: dict[str, Any]) -> None:
    """Rewrite a run's sidecar (local calibration, ONNX export), atomically."""
    write_json(Path(run_dir) / SIDECAR_FILE, meta)


def read_model_sidecar(run_dir: Path) -> dict[str, Any]:
    """The raw sidecar of a single-model run folder."""
    path = run_dir / SIDECAR_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{run_dir} has no {SIDECAR_FILE}: not a covidscreen run folder (expected {WEIGHTS_FILE} + {SIDECAR_FILE} "
            "written by covidscreen train)"
        )
    return read_json_record(path, ("architecture", "classes", "image_size"), "run folder")


def load_model_weights(run_dir: Path, meta: dict[str, Any], device: str | torch.device = "cpu",
                       expected_sha256: str | None = None) -> ScreeningModel:
    """The model of a single-model run (eval mode), its weights' sha256 checked against the sidecar and, when given,
    against ``expected_sha256``: a digest the user trusts (whoever rewrote the weights can rewrite the sidecar)."""
    name = str(meta.get("weights_file", WEIGHTS_FILE))
    if Path(name).name != name or not name.endswith(".safetensors"):  # no pickles, no paths out of the run folder
        raise CheckpointError(f"{run_dir}/{SIDECAR_FILE} names weights file {name!r}: only a .safetensors file inside "
                              "the run folder is loaded")
    weights = run_dir / name
    if not weights.is_file():
        raise CheckpointError(f"{run_dir} has no checkpoint ({weights.name} missing); train a model into it first")
    if not meta.get("weights_sha256"):
        raise CheckpointError(f"{run_dir}/{SIDECAR_FILE} records no weights_sha256: the weights cannot be verified; "
                              "refused")
    state = read_checkpoint_weights(weights, {SIDECAR_FILE: meta.get("weights_sha256"),
                                              "--expect-sha256": expected_sha256})
    try:
        model = create_model(meta["architecture"], pretrained=False, num_classes=len(meta["classes"]))
        if meta.get("frozen_head"):
            replace_head(model.backbone, model.spec.head, build_frozen_head(meta["frozen_head"]))
        model.backbone.load_state_dict(state)
    except CovidscreenError:
        raise
    except Exception as exc:
        raise CheckpointError(f"{weights} could not be loaded into {meta['architecture']}: {exc}") from None
    return model.to(device).eval()
