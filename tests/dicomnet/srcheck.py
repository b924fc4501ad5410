"""Reading a result SR back the way a viewer would: with highdicom (``highdicom.sr.srread``), into plain values."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import pydicom
from pydicom.dataset import Dataset


def _items(ds, code_value: str) -> list[Dataset]:
    return [it for it in getattr(ds, "ContentSequence", []) if it.ConceptNameCodeSequence[0].CodeValue == code_value]


def read_result(source: Path | Dataset, tmp: Path | None = None) -> dict:
    """Every value of a covidscreen SR, read by highdicom: ``{"classes": {name: {...}}, "finding", "comment",
    "decision", "operating_point", "warnings", "observer", "procedure"}``."""
    if isinstance(source, Dataset):
        assert tmp is not None
        pydicom.dcmwrite(tmp, source, enforce_file_format=True)
        source = tmp
    sr = hd.sr.srread(source)
    report = sr.content
    assert isinstance(report, hd.sr.MeasurementReport)
    out: dict = {"classes": {}, "warnings": []}
    for group in report.get_image_measurement_groups():
        container = group[0]
        algo = {it.ConceptNameCodeSequence[0].CodeMeaning: it.TextValue for it in container.ContentSequence
                if it.ConceptNameCodeSequence[0].CodeValue in ("111001", "111003")}
        params = [it.TextValue for it in _items(container, "111002")]
        values = {m.name.value: (m.value, m.unit) for m in group.get_measurements()}
        unit = values["122157"][1]
        (evaluation,) = group.get_qualitative_evaluations()
        (image,) = _items(container, "121112")
        out["classes"][str(group.finding_type.meaning)] = {
            "code": (group.finding_type.value, group.finding_type.scheme_designator),
            "probability": values["122157"][0], "unit": (unit.value, unit.scheme_designator),
            "threshold": values.get("OP-THRESHOLD", (None,))[0],
            "sensitivity": values.get("OP-VAL-SENS", (None,))[0],
            "specificity": values.get("OP-VAL-SPEC", (None,))[0],
            "present": evaluation.value.meaning == "Present", "evaluation_name": evaluation.name.value,
            "algorithm": algo, "parameters": params, "tracking_uid": group.tracking_uid,
            "image": image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID,
        }
    (evaluations,) = _items(sr, "C0034375")
    for it in evaluations.ContentSequence:
        code = it.ConceptNameCodeSequence[0].CodeValue
        if code == "121071":
            out["finding"] = (it.ConceptCodeSequence[0].CodeValue, it.ConceptCodeSequence[0].CodeMeaning)
        elif code == "121106":
            out["comment"] = it.TextValue
        elif code == "DECISION":
            out["decision"] = it.TextValue
        elif code == "OP-NAME":
            out["operating_point"] = it.TextValue
        elif code == "WARNING":
            out["warnings"].append(it.TextValue)
    (observer,) = report.get_observer_contexts()
    out["observer"] = {it.ConceptNameCodeSequence[0].CodeMeaning: getattr(it, "TextValue", None) or getattr(
        it, "UID", None) or it.ConceptCodeSequence[0].CodeMeaning for it in observer}
    (procedure,) = _items(sr, "121058")
    out["procedure"] = procedure.ConceptCodeSequence[0].CodeValue
    return out
