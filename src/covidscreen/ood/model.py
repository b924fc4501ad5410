"""The out-of-distribution model of a run: a fitted detector plus its threshold, stored and loaded.

Stored as ``RUN_DIR/ood.safetensors`` (the detector's tensors and the validation scores its threshold was set on;
tensors only, no code) and recorded in the run's sidecar under ``ood`` with the file's sha256, like the weights.
Loading reads the file once and checks the digest of the very bytes it parses.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load as load_safetensors
from safetensors.torch import save

from ..errors import CheckpointError, ConfigError, DataError
from ..inference.predictor import OOD_POLICIES, Predictor
from ..inference.run import OODRecord, Run, load_run, update_record
from ..runtime import atomic_write_bytes
from .detectors import Detector, detector_from_state
from .orientation import OrientationCheck

OOD_FILE = "ood.safetensors"
# what a person reads next to a flagged result (the service, the DICOM SR, explain pages, the report)
PLAIN_WARNING = "unlike the images this model was validated on: do not rely on this result"


class OODWarning(UserWarning):
    """A run without an out-of-distribution model (results carry no flag)."""


def fit_command(run_dir: str | Path) -> str:
    return f"covidscreen ood fit {run_dir}"


@dataclass
class OODModel:
    """A fitted detector (and orientation check) and the threshold above which a score is flagged (implements the
    Predictor's scorer).

    With an orientation check the score is the larger of the two standardised scores: each minus its median on the
    validation split, divided by the distance from that median to its 95th percentile there (``norms``: centre and
    spread of the detector, then of the check). One number, higher = less familiar, flagged above one threshold."""

    detector: Detector
    threshold: float
    flag_rate: float
    val_scores: np.ndarray = field(default_factory=lambda: np.zeros(0))
    n_fit: int = 0
    orientation: OrientationCheck | None = None
    norms: np.ndarray | None = None  # (4,): detector centre, detector spread, check centre, check spread

    @property
    def name(self) -> str:
        return self.detector.name

    def score(self, features: np.ndarray, logits: np.ndarray) -> np.ndarray:
        det = self.detector.score(features, logits)
        if self.orientation is None or self.norms is None:
            return det
        c1, s1, c2, s2 = (float(v) for v in self.norms)
        return np.maximum((det - c1) / s1, (self.orientation.score(features) - c2) / s2)

    def flags(self, scores: np.ndarray) -> np.ndarray:
        """True where a score is above the threshold (NaN counts as flagged)."""
        return ~(np.asarray(scores, dtype=np.float64) <= self.threshold)


def threshold_for(val_scores: np.ndarray, flag_rate: float) -> float:
    """The score above which ``flag_rate`` of the validation scores lie (linear interpolation between order
    statistics, so that a small validation split still gives a threshold between two observed scores)."""
    finite = np.asarray(val_scores, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        raise CheckpointError("no finite validation score to set the out-of-distribution threshold on")
    return float(np.quantile(finite, 1.0 - flag_rate))


def save_ood(run_dir: str | Path, model: OODModel, extra: dict[str, Any] | None = None) -> OODRecord:
    """Write ``ood.safetensors`` and record it (with its sha256) in the run's sidecar; returns the typed record."""

    run_dir = Path(run_dir)
    tensors = {f"detector.{k}": v.detach().cpu().contiguous() for k, v in model.detector.tensors.items()}
    tensors["val_scores"] = torch.as_tensor(np.asarray(model.val_scores, dtype=np.float64))
    if model.orientation is not None and model.norms is not None:
        tensors |= {f"orientation.{k}": v for k, v in model.orientation.tensors.items()}
        tensors["orientation_norms"] = torch.as_tensor(np.asarray(model.norms, dtype=np.float64))
    meta = {"detector": model.name, "params": json.dumps(model.detector.params), "threshold": repr(model.threshold)}
    blob = save(tensors, metadata=meta)
    atomic_write_bytes(run_dir / OOD_FILE, blob)
    val = np.asarray(model.val_scores, dtype=np.float64)
    record = {"file": OOD_FILE, "sha256": hashlib.sha256(blob).hexdigest(), "detector": model.name,
              "params": model.detector.params, "threshold": model.threshold, "flag_rate": model.flag_rate,
              "n_fit": int(model.n_fit), "n_val": int(val.size),
              "val_flag_rate": float(model.flags(val).mean()) if val.size else math.nan,
              "orientation": model.orientation is not None,
              "n_orientation_fit": int(model.orientation.n_fit) if model.orientation is not None else 0,
              "created": datetime.now().isoformat(timespec="seconds"), **(extra or {})}
    rec = update_record(run_dir, replace={"ood": record}).ood
    assert rec is not None
    return rec


def load_ood(run: Run | str | Path) -> OODModel | None:
    """The run's OOD model (sha256-checked), or None when it has none.

    Raises:
        CheckpointError: the file is missing, changed since it was recorded, or damaged.
    """
    run = run if isinstance(run, Run) else load_run(run)
    rec = run.ood
    if rec is None:
        return None
    if Path(rec.file).name != rec.file or not rec.file.endswith(".safetensors"):
        raise CheckpointError(f"{run.path}: the OOD record names {rec.file!r}; only a .safetensors file inside the "
                              "run folder is loaded")
    path = run.path / rec.file
    if not path.is_file():
        raise CheckpointError(f"{path} is missing although the run records it; refit it with: "
                              f"{fit_command(run.path)}")
    blob = path.read_bytes()
    digest = hashlib.sha256(blob).hexdigest()
    if digest != rec.sha256:
        raise CheckpointError(f"{path} has sha256 {digest[:12]}..., but the run's sidecar expects {rec.sha256[:12]}...:"
                              " the out-of-distribution model was changed after it was written; refused")

    try:
        tensors = load_safetensors(blob)
        with safe_open(str(path), framework="pt") as fh:  # only the header: the tensors were parsed from ``blob``
            meta = fh.metadata() or {}
        params = json.loads(meta.get("params", "{}"))
    except Exception as exc:  # noqa: BLE001 - any parse failure of a file we wrote means damage
        raise CheckpointError(f"{path} is not a readable out-of-distribution model ({exc}); refit it with: "
                              f"{fit_command(run.path)}") from None
    det = detector_from_state(rec.detector, params,
                              {k.removeprefix("detector."): v for k, v in tensors.items() if k.startswith("detector.")})
    val = tensors.get("val_scores", torch.zeros(0)).double().numpy()
    orientation, norms = None, None
    if rec.orientation:
        if "orientation_norms" not in tensors:
            raise CheckpointError(f"{path} lacks the orientation check its record names; refit it with: "
                                  f"{fit_command(run.path)}")
        try:
            orientation = OrientationCheck.from_tensors(
                {k.removeprefix("orientation."): v for k, v in tensors.items() if k.startswith("orientation.")},
                rec.n_orientation_fit)
        except DataError as exc:
            raise CheckpointError(f"{path}: {exc}") from None
        norms = tensors["orientation_norms"].double().numpy()
    return OODModel(det, float(rec.threshold), float(rec.flag_rate), val, rec.n_fit, orientation, norms)


def attach_ood(predictor: Predictor, policy: str = "flag", required: bool = False) -> OODModel | None:
    """Give ``predictor`` its run's OOD model and the policy for flagged images; returns the model (None: the run
    has none, and a warning naming ``covidscreen ood fit`` is issued).

    Raises:
        ConfigError: an unknown policy, or ``abstain``/``required`` without an OOD model or with the ONNX backend.
    """

    if policy not in OOD_POLICIES:
        raise ConfigError(f"--ood-policy {policy!r} is unknown; use {' or '.join(OOD_POLICIES)}")
    model = load_ood(predictor.run)
    if model is None:
        msg = (f"{predictor.run.path} has no out-of-distribution model, so no result says whether its image is unlike "
               f"the training images (ood_score and in_distribution stay empty); fit one with: "
               f"{fit_command(predictor.run.path)}")
        if policy == "abstain" or required:
            raise ConfigError(msg)
        warnings.warn(msg, OODWarning, stacklevel=2)
        return None
    if predictor.onnx is not None:
        msg = "the out-of-distribution score needs the model's features, which the ONNX backend does not give"
        if policy == "abstain" or required:
            raise ConfigError(f"{msg}; use --backend torch")
        warnings.warn(f"{msg}: ood_score and in_distribution stay empty (use --backend torch)", OODWarning,
                      stacklevel=2)
        return None
    predictor.ood = model
    predictor.ood_policy = policy
    return model
