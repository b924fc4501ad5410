"""FHIR R4 answers of the service: every response is validated with fhir.resources (R4B models), and its values are
the JSON answer's."""

from __future__ import annotations

import pydicom
import pytest
from fastapi.testclient import TestClient
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.operationoutcome import OperationOutcome

from covidscreen.serving import ServeConfig, create_app

from .test_app import dicom_bytes, png_bytes, shared_dicom, upload

FHIR = "application/fhir+json"


@pytest.fixture(scope="module")
def client(tiny_run, tmp_path_factory):
    db = tmp_path_factory.mktemp("fhirdb") / "log.sqlite"
    with TestClient(create_app(ServeConfig(run_dir=tiny_run, db=str(db), backend="torch", max_files=4))) as c:
        yield c


def bundle_of(r) -> dict:
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith(FHIR)
    Bundle.model_validate(r.json())  # raises on anything that is not a valid R4B Bundle
    return r.json()


def outcome_of(r, status: int) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(FHIR) and "Traceback" not in r.text
    OperationOutcome.model_validate(r.json())
    return r.json()


def resources(bundle: dict, kind: str) -> list[dict]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == kind]


def test_dicom_input_gives_report_observations_device_and_imaging_study(client):
    data = dicom_bytes()
    plain = client.post("/v1/predict", files=upload(("chest.dcm", data))).json()["results"][0]
    bundle = bundle_of(client.post("/v1/predict", files=upload(("chest.dcm", data)), headers={"Accept": FHIR}))
    assert bundle["type"] == "collection"
    (device,) = resources(bundle, "Device")
    model = client.get("/v1/model").json()
    assert device["identifier"][0]["value"] == model["model_id"]
    assert {v["type"]["text"]: v["value"] for v in device["version"]} == {
        "covidscreen": model["code_version"], "weights sha256": model["weights_sha256"]}
    (report,) = resources(bundle, "DiagnosticReport")
    assert report["status"] == "preliminary" and report["code"]["coding"][0]["code"] == "18748-4"
    study_uid = pydicom.dcmread(shared_dicom()).StudyInstanceUID
    assert report["imagingStudy"][0]["identifier"] == {"system": "urn:dicom:uid", "value": f"urn:oid:{study_uid}"}
    observations = resources(bundle, "Observation")
    urls = {e["resource"].get("id") or e["fullUrl"]: e["resource"] for e in bundle["entry"]}
    assert [urls[ref["reference"]] for ref in report["result"]] == observations
    by_class = {o["code"]["text"].split("'")[1]: o for o in observations}
    assert set(by_class) == set(plain["probabilities"])
    assert by_class["covid"]["code"]["coding"][0] == {"system": "http://snomed.info/sct", "code": "840539006",
                                                      "display": "COVID-19"}
    for name, obs in by_class.items():
        q = obs["valueQuantity"]
        assert q["value"] == pytest.approx(plain["probabilities"][name], abs=1e-12)
        assert (q["system"], q["code"]) == ("http://unitsofmeasure.org", "1")
        assert obs["interpretation"][0]["coding"][0]["code"] == ("DET" if name == plain["decision"] else "ND")
        assert plain["operating_point"] in obs["interpretation"][0]["text"]
        assert obs["device"]["reference"] == next(e["fullUrl"] for e in bundle["entry"]
                                                  if e["resource"]["resourceType"] == "Device")
        assert obs["derivedFrom"][0]["identifier"]["value"] == f"urn:oid:{study_uid}"
    assert "Research tool" in report["conclusion"]
    text = str(bundle)
    assert str(pydicom.dcmread(shared_dicom()).PatientID) not in text  # the patient is never named


def test_fhir_route_and_png_input_have_no_imaging_study(client):
    bundle = bundle_of(client.post("/fhir/predict", files=upload(("chest.png", png_bytes()))))
    (report,) = resources(bundle, "DiagnosticReport")
    assert "imagingStudy" not in report and len(resources(bundle, "Observation")) == 3
    assert all("derivedFrom" not in o for o in resources(bundle, "Observation"))


def test_a_refused_image_gets_an_operation_outcome(client):
    r = client.post("/fhir/predict", files=upload(("ct.dcm", dicom_bytes(Modality="CT"))))
    body = outcome_of(r, 422)
    assert body["issue"][0]["severity"] == "error" and body["issue"][0]["code"] == "invalid"
    assert "Modality CT" in body["issue"][0]["diagnostics"] and "ct.dcm" in body["issue"][0]["diagnostics"]
    r = client.post("/v1/predict", files=upload(("notes.png", b"not an image")), headers={"Accept": FHIR})
    assert "notes.png" in outcome_of(r, 422)["issue"][0]["diagnostics"]


def test_a_mixed_request_reports_the_refused_file_inside_the_bundle(client):
    r = client.post("/fhir/predict", files=upload(("chest.png", png_bytes()), ("ct.dcm", dicom_bytes(Modality="CT"))))
    bundle = bundle_of(r)
    assert len(resources(bundle, "DiagnosticReport")) == 1
    (problem,) = resources(bundle, "OperationOutcome")
    assert "ct.dcm" in problem["issue"][0]["diagnostics"]


def test_request_errors_are_operation_outcomes(client):
    body = outcome_of(client.post("/fhir/predict"), 422)
    assert "multipart/form-data" in body["issue"][0]["diagnostics"]
    body = outcome_of(client.post("/fhir/predict?operating_point=nonsense", files=upload(("a.png", png_bytes()))),
                      422)
    assert "nonsense" in body["issue"][0]["diagnostics"]
    assert client.post("/v1/predict", files=upload(("a.png", png_bytes()))).headers["content-type"].startswith(
        "application/json")  # plain JSON stays the default
