"""FHIR answers of the service (``Accept: application/fhir+json`` on ``/v1/predict``, or ``POST /fhir/predict``).

Built and validated with ``fhir.resources`` as FHIR R4B (4.3.0: the R4 line of the pydantic-2 releases; the resources
used here are the same in R4 4.0.1). One request gives a ``Bundle`` (type ``collection``) that holds, per scored
image, a ``DiagnosticReport`` (LOINC 18748-4 "Diagnostic imaging study", status ``preliminary``: nobody verified it)
whose ``result`` lists one ``Observation`` per class (the finding in SNOMED CT, the probability as ``valueQuantity``
in UCUM ``1``, ``interpretation`` detected / not detected from the decision at the operating point), the ``Device``
that made them (the model: its id, covidscreen's version, the weights' sha256), and, for a DICOM input, a reference
to its ``ImagingStudy`` by Study Instance UID; an image that got no prediction is an ``OperationOutcome`` entry. A
request that gives no prediction at all is answered with an ``OperationOutcome`` alone, with the HTTP status of the
JSON answer. Nothing in them names the patient (the service never reads patient tags).
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.operationoutcome import OperationOutcome

from .schemas import FileResult, ModelInfo

FHIR_JSON = "application/fhir+json"
SNOMED, LOINC, UCUM = "http://snomed.info/sct", "http://loinc.org", "http://unitsofmeasure.org"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
#: the finding of each class a covidscreen run may have (as in the DICOM SR)
CLASS_CODES = {"covid": ("840539006", "COVID-19"), "covid19": ("840539006", "COVID-19"),
               "covid-19": ("840539006", "COVID-19"), "pneumonia": ("233604007", "Pneumonia"),
               "normal": ("17621005", "Normal")}
MODEL_ID_SYSTEM = "urn:covidscreen:model-id"  # identifiers of covidscreen's own (no registered system exists)


def _urn() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def _class_concept(name: str) -> dict:
    code = CLASS_CODES.get(name.lower())
    coding = [{"system": SNOMED, "code": code[0], "display": code[1]}] if code else []
    return {"coding": coding, "text": f"covidscreen class '{name}'"} if coding else {"text": f"covidscreen class "
                                                                                            f"'{name}'"}


def device_resource(info: ModelInfo, notice: str) -> dict:
    return {
        "resourceType": "Device", "status": "active", "manufacturer": "covidscreen project",
        "identifier": [{"system": MODEL_ID_SYSTEM, "value": info.model_id}],
        "deviceName": [{"name": "covidscreen", "type": "manufacturer-name"},
                       {"name": info.model_id, "type": "model-name"}],
        "type": {"text": f"AI software ({info.architecture}, {info.kind}); research tool, not a medical device"},
        "version": [{"type": {"text": "covidscreen"}, "value": info.code_version},
                    {"type": {"text": "weights sha256"}, "value": info.weights_sha256}],
        "note": [{"text": notice}],
    }


def _observations(result: FileResult, device_ref: str, study_ref: dict | None, issued: str) -> list[dict]:
    point = (f"operating point '{result.operating_point}'"
             + (f", threshold {result.threshold:.4f}" if result.threshold is not None else "")
             + (f", validation sensitivity {result.sensitivity:.3f}" if result.sensitivity is not None else "")
             + (f", validation specificity {result.specificity:.3f}" if result.specificity is not None else ""))
    out = []
    for name, p in (result.probabilities or {}).items():
        detected = name == result.decision
        obs = {
            "resourceType": "Observation", "status": "preliminary",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                      "code": "imaging", "display": "Imaging"}]}],
            "code": _class_concept(name), "issued": issued,
            "valueQuantity": {"value": float(p), "unit": "probability", "system": UCUM, "code": "1"},
            "interpretation": [{"coding": [{"system": INTERPRETATION, "code": "DET" if detected else "ND",
                                            "display": "Detected" if detected else "Not detected"}],
                                "text": f"{'decided' if detected else 'not decided'} at the {point}"}],
            "method": {"text": f"covidscreen classifier, {point}"},
            "device": {"reference": device_ref},
        }
        if study_ref:
            obs["derivedFrom"] = [study_ref]
        if result.warnings:
            obs["note"] = [{"text": w} for w in result.warnings]
        out.append(obs)
    return out


def outcome(message: str, code: str = "processing", severity: str = "error") -> dict:
    """An ``OperationOutcome`` (validated) with one issue."""
    return OperationOutcome.model_validate({"resourceType": "OperationOutcome", "issue": [
        {"severity": severity, "code": code, "diagnostics": message}]}).model_dump(mode="json", exclude_none=True)


def _issue_code(status: int) -> str:
    return {401: "security", 409: "not-supported", 413: "too-costly", 503: "transient"}.get(status, "processing" if
                                                                                            status >= 500 else
                                                                                            "invalid")


def error_outcome(status: int, message: str, results: list[FileResult] | None = None) -> dict:
    """The FHIR form of an error answer: one issue for the request, one per file that got no prediction."""
    issues = [{"severity": "error", "code": _issue_code(status), "diagnostics": message}]
    for r in results or []:
        if r.error and r.error != message:
            issues.append({"severity": "error", "code": _issue_code(r.status), "diagnostics": r.error,
                           "expression": [f"files[{r.filename}]"[:200]]})
    return OperationOutcome.model_validate({"resourceType": "OperationOutcome", "issue": issues}).model_dump(
        mode="json", exclude_none=True)


def report_bundle(results: list[FileResult], info: ModelInfo, request_id: str, notice: str) -> dict:
    """The ``Bundle`` of one answered request (validated by fhir.resources before it is returned)."""
    issued = datetime.now(timezone.utc).isoformat(timespec="seconds")
    device_url = _urn()
    entries = [{"fullUrl": device_url, "resource": device_resource(info, notice)}]
    for r in results:
        if r.error is not None:
            entries.append({"fullUrl": _urn(), "resource": outcome(f"{r.filename}: {r.error}",
                                                                   _issue_code(r.status))})
            continue
        uids = r._dicom_uids
        study_ref = {"type": "ImagingStudy", "identifier": {"system": "urn:dicom:uid", "value": f"urn:oid:{uids[0]}"},
                     "display": f"DICOM study {uids[0]}"} if uids and uids[0] else None
        observations = _observations(r, device_url, study_ref, issued)
        obs_urls = [_urn() for _ in observations]
        decided = _class_concept(r.decision or "")
        report = {
            "resourceType": "DiagnosticReport", "status": "preliminary",
            "identifier": [{"system": "urn:covidscreen:request", "value": f"{request_id}/{r.input_sha256}"}],
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD",
                                      "display": "Radiology"}]}],
            "code": {"coding": [{"system": LOINC, "code": "18748-4", "display": "Diagnostic imaging study"}],
                     "text": "covidscreen screening of a chest radiograph (research tool)"},
            "issued": issued,
            "result": [{"reference": u} for u in obs_urls],
            "conclusion": f"{r.decision} at the operating point '{r.operating_point}' ({r.filename}). {notice}",
            "conclusionCode": [decided],
        }
        if study_ref:
            report["imagingStudy"] = [study_ref]
        entries.append({"fullUrl": _urn(), "resource": report})
        entries += [{"fullUrl": u, "resource": o} for u, o in zip(obs_urls, observations, strict=True)]
    bundle = Bundle.model_validate({"resourceType": "Bundle", "type": "collection", "timestamp": issued,
                                    "identifier": {"system": "urn:covidscreen:request", "value": request_id},
                                    "entry": entries})
    return bundle.model_dump(mode="json", exclude_none=True)


def wants_fhir(accept: str | None, path: str) -> bool:
    """True for the ``/fhir/`` routes and for an ``Accept`` header that names FHIR JSON."""
    return path.startswith("/fhir/") or (accept is not None and FHIR_JSON in accept.lower())
