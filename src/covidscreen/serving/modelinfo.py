"""What ``GET /v1/model`` says: the model card's facts, read once from the run folder at start-up."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..auditlog import code_version
from .schemas import ModelInfo, OperatingPointInfo

INTENDED_USE = ("Research tool and second reader: it does not diagnose. Every decision must be checked by a "
                "qualified reader; thresholds were chosen on validation data from the training sources and should be "
                "recalibrated on local data (covidscreen calibrate).")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if f == f else None  # NaN -> None (JSON has no NaN)


def operating_points(meta: dict[str, Any], metrics: dict[str, Any]) -> dict[str, OperatingPointInfo]:
    """Each named point with the sensitivity/specificity it had where it was chosen."""
    val = metrics.get("operating_points_val") or meta.get("operating_points_val") or {}
    local = meta.get("local_calibration") or {}
    out: dict[str, OperatingPointInfo] = {}
    for name, threshold in (meta.get("operating_points") or {}).items():
        if name in local:
            exp = local[name].get("expected") or {}
            sens = exp.get("sensitivity", exp.get("sensitivity_from_validation"))
            if isinstance(sens, dict):
                sens = sens.get("sensitivity", sens.get("value"))
            out[name] = OperatingPointInfo(name=name, threshold=_num(threshold), sensitivity=_num(sens),
                                           specificity=_num(exp.get("specificity")), source="local calibration")
        else:
            v = val.get(name) or {}
            out[name] = OperatingPointInfo(name=name, threshold=_num(threshold), sensitivity=_num(v.get("sensitivity")),
                                           specificity=_num(v.get("specificity")), source="validation")
    if "default" not in out:
        out["default"] = OperatingPointInfo(name="default", threshold=_num(meta.get("threshold")), source="validation")
    return out


def model_info(run_dir: Path, meta: dict[str, Any], backend: str, default_point: str,
               explain_available: bool) -> ModelInfo:
    metrics = _read_json(run_dir / "metrics.json")
    audit = _read_json(run_dir / "audit.json")
    findings = [f.get("text", "") for f in audit.get("findings", []) if isinstance(f, dict)
                and f.get("severity") in ("high", "medium")]
    kind = "ensemble" if "members" in meta else "model"
    training = {k: metrics[k] for k in ("split_counts", "label_counts", "site_counts", "n_test") if k in metrics}
    for k in ("split_fingerprint", "seed", "data_dir"):
        if k in meta:
            training[k] = meta[k]
    return ModelInfo(
        model_id=model_id(run_dir, meta), kind=kind, architecture=str(meta.get("architecture", kind)),
        classes=list(meta["classes"]), positive_class=meta.get("positive_class"),
        image_size=int(meta["image_size"]), modality=str(meta.get("modality", "cxr")), backend=backend,
        weights_sha256=weights_id(meta), code_version=code_version(), default_operating_point=default_point,
        operating_points=list(operating_points(meta, metrics).values()),
        temperature=float(meta.get("temperature") or 1.0), training_data=training, audit_warnings=findings,
        explain_available=explain_available, intended_use=INTENDED_USE)


def model_id(run_dir: Path, meta: dict[str, Any]) -> str:
    return f"{Path(run_dir).resolve().name}:{meta.get('architecture', 'ensemble')}"


def weights_id(meta: dict[str, Any]) -> str:
    """The weights sha256 (an ensemble: its members' joined, then hashed)."""
    if meta.get("weights_sha256"):
        return str(meta["weights_sha256"])
    import hashlib

    members = meta.get("member_weights_sha256") or [m.get("weights_sha256", "") for m in meta.get("members", [])
                                                    if isinstance(m, dict)]
    return hashlib.sha256("".join(map(str, members)).encode()).hexdigest()
