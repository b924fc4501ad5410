"""What ``GET /v1/model`` says: the model card's facts, read once from the run at start-up."""

from __future__ import annotations

import hashlib
import math

from ..auditlog import code_version
from ..inference.run import Run, SiteFigures
from ..inference.site_figures import point_site_summary
from ..runtime import read_optional_json
from .schemas import ModelInfo, OperatingPointInfo, SiteFiguresInfo

INTENDED_USE = ("Research tool and second reader: it does not diagnose. Every decision must be checked by a "
                "qualified reader; thresholds were chosen on validation data from the training sources and should be "
                "recalibrated on local data (covidscreen calibrate).")


def _num(v: float | None) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def point_info(run: Run, name: str) -> OperatingPointInfo | None:
    """A named point with the sensitivity/specificity it had where it was chosen (None: the run has no threshold)."""
    p = run.point(name)
    if p is None:
        return None
    local = p.temperature is not None or name in run.local_calibration
    summary = point_site_summary(run, name)
    weak = summary.weakest if summary else None
    return OperatingPointInfo(name=name, threshold=_num(p.threshold), sensitivity=_num(p.sensitivity),
                              specificity=_num(p.specificity), source="local calibration" if local else "validation",
                              sites=[_site_info(f) for f in summary.sites] if summary else [],
                              weakest_site=weak.site if weak else None,
                              weakest_site_specificity=_num(weak.specificity) if weak else None,
                              site_summary=summary.text if summary and not local else None,
                              note=summary.note if summary else None)


def _site_info(f: SiteFigures) -> SiteFiguresInfo:
    return SiteFiguresInfo(site=f.site, n_negative=f.n_negative, n_positive=f.n_positive,
                           specificity=_num(f.specificity), sensitivity=_num(f.sensitivity),
                           specificity_ci=list(f.specificity_ci) if f.specificity_ci else None,
                           sensitivity_ci=list(f.sensitivity_ci) if f.sensitivity_ci else None)


def weights_id(run: Run) -> str:
    """The weights sha256 (an ensemble: the sha256 of its members' sha256s, in order)."""
    if run.weights_sha256:
        return str(run.weights_sha256)
    members = [str(m.weights_sha256 or "") for m in run.ensemble_members]
    return hashlib.sha256("".join(members).encode()).hexdigest()


def model_info(run: Run, backend: str, default_point: str, explain_available: bool) -> ModelInfo:
    metrics = read_optional_json(run.path / "metrics.json")
    audit = read_optional_json(run.path / "audit.json")
    findings = [f.get("text", "") for f in audit.get("findings", []) if isinstance(f, dict)
                and f.get("severity") in ("high", "medium")]
    training = {k: metrics[k] for k in ("split_counts", "label_counts", "site_counts", "n_test") if k in metrics}
    training.update({k: v for k, v in (("split_fingerprint", run.split_fingerprint), ("seed", run.seed),
                                       ("data_dir", run.data_dir)) if v is not None})
    points = [info for name in run.operating_points if (info := point_info(run, name)) is not None]
    return ModelInfo(
        model_id=run.model_id, kind=run.kind, architecture=run.architecture, classes=list(run.classes),
        positive_class=run.positive_class, image_size=run.image_size, modality=run.modality, backend=backend,
        weights_sha256=weights_id(run), code_version=code_version(), default_operating_point=default_point,
        operating_points=points, temperature=run.temperature, training_data=training, audit_warnings=findings,
        explain_available=explain_available, intended_use=INTENDED_USE)
