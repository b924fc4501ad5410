"""The HTTP API through FastAPI's TestClient: every endpoint, every error path, the audit log behind it."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import event, inspect, select, text

from covidscreen.auditlog import AuditLog, sha256_bytes
from covidscreen.security.fuzz import hostile_corpus
from covidscreen.serving import ServeConfig, create_app
from tests.security.test_fuzz import seeds  # noqa: F401  (a fixture: the real files the corpus mutates)
from tests.serving.runs import POINTS, make_run, xray_png

SHARED_DICOM = Path(__file__).resolve().parents[3] / "shared" / "data" / "dicom"
PHI = {"PatientName": "Doe^Johnathan", "PatientID": "PID-778899", "AccessionNumber": "ACC-445566",
       "PatientBirthDate": "19450203"}


def shared_dicom() -> Path:
    files = sorted(SHARED_DICOM.glob("*.dcm"))
    if not files:
        pytest.fail(f"no DICOM files in {SHARED_DICOM}: tests read the shared data")
    return files[0]


def dicom_bytes(**tags) -> bytes:
    ds = pydicom.dcmread(str(shared_dicom()))
    for k, v in tags.items():
        if v is None:
            delattr(ds, k)
        else:
            setattr(ds, k, v)
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


def png_bytes(side: int = 300, seed: int = 0) -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(30, 220, (side, side)).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def upload(*items: tuple[str, bytes]) -> list:
    return [("files", (name, data, "application/octet-stream")) for name, data in items]


@pytest.fixture(scope="module")
def db_path(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("db") / "log.sqlite"


@pytest.fixture(scope="module")
def client(tiny_run, db_path):
    app = create_app(ServeConfig(run_dir=tiny_run, db=str(db_path), backend="torch", max_files=4))
    with TestClient(app) as c:
        yield c


def assert_json_error(r, status: int, *words: str) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"] and body["request_id"] == r.headers["x-request-id"]
    assert "Traceback" not in r.text
    for w in words:
        assert w.lower() in body["error"].lower(), body["error"]
    return body


def test_health_ready_and_model(client):
    assert client.get("/healthz").json() == {"status": "alive", "reasons": []}
    assert client.get("/readyz").json()["status"] == "ready"
    info = client.get("/v1/model").json()
    assert info["classes"] == ["covid", "normal", "pneumonia"] and info["positive_class"] == "covid"
    assert info["image_size"] == 64 and info["backend"] == "torch" and info["kind"] == "model"
    points = {p["name"]: p for p in info["operating_points"]}
    assert points["sensitivity_0.95"]["threshold"] == POINTS["sensitivity_0.95"]
    assert points["sensitivity_0.95"]["sensitivity"] == pytest.approx(0.8)
    assert "one site" in info["audit_warnings"][0]
    assert "not diagnose" in info["intended_use"]
    assert client.get("/docs").status_code == 200 and "/v1/predict" in client.get("/openapi.json").json()["paths"]


def test_predict_png_and_dicom_are_answered_and_logged(client, db_path):
    png, dcm = png_bytes(), shared_dicom().read_bytes()
    r = client.post("/v1/predict", files=upload(("chest.png", png), (shared_dicom().name, dcm)))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_id"] == f"run@{body['weights_sha256'][:12]}" and len(body["weights_sha256"]) == 64
    assert "not a diagnosis" in body["notice"]
    for res, data in zip(body["results"], (png, dcm)):
        assert res["input_sha256"] == sha256_bytes(data)
        assert sum(res["probabilities"].values()) == pytest.approx(1.0)
        assert res["operating_point"] == "default" and res["threshold"] == POINTS["youden"]
        assert res["sensitivity"] == pytest.approx(0.7) and res["specificity"] == pytest.approx(0.7)
        covid = res["probabilities"]["covid"]
        assert (res["decision"] == "covid") == (covid >= POINTS["youden"])
    logged = {r.input_sha256: r for r in AuditLog(db_path).query() if r.request_id == body["request_id"]}
    assert set(logged) == {sha256_bytes(png), sha256_bytes(dcm)}
    rec = logged[sha256_bytes(png)]
    assert rec.source == "http" and rec.decision == body["results"][0]["decision"]
    assert rec.probabilities == pytest.approx(body["results"][0]["probabilities"])
    assert rec.weights_sha256 == body["weights_sha256"] and rec.operating_point == "default" and rec.latency_ms > 0


def test_operating_point_per_request(client):
    data = png_bytes(seed=3)
    low = client.post("/v1/predict?operating_point=sensitivity_0.95", files=upload(("a.png", data))).json()
    high = client.post("/v1/predict?operating_point=specificity_0.95", files=upload(("a.png", data))).json()
    lo, hi = low["results"][0], high["results"][0]
    assert lo["probabilities"] == hi["probabilities"]
    assert lo["threshold"] == 0.2 and hi["threshold"] == 0.7
    assert (lo["decision"] == "covid") == (lo["probabilities"]["covid"] >= 0.2)
    assert (hi["decision"] == "covid") == (hi["probabilities"]["covid"] >= 0.7)
    r = client.post("/v1/predict?operating_point=nonsense", files=upload(("a.png", data)))
    assert_json_error(r, 422, "nonsense", "sensitivity_0.95")


def test_explain_overlay_is_the_one_covidscreen_explain_draws(client, tiny_run, tmp_path):
    from covidscreen.workflows.explain import explain_files

    dcm = shared_dicom()
    r = client.post("/v1/explain?figure=true", files=upload((dcm.name, dcm.read_bytes())))
    assert r.status_code == 200, r.text
    res = r.json()["results"][0]
    overlay = Image.open(io.BytesIO(__import__("base64").b64decode(res["overlay_png"])))
    assert overlay.format == "PNG" and min(overlay.size) > 100
    assert res["explained_class"] in ("covid", "normal", "pneumonia") and res["image_png"]
    table = explain_files(tiny_run, [dcm], tmp_path / "explain", checks=0, device="cpu", progress=False)
    written = (tmp_path / "explain" / table.loc[0, "png"]).read_bytes()
    # the same pixels as the figure covidscreen explain writes for this file (same preprocessing, same map)
    served = np.asarray(Image.open(io.BytesIO(__import__("base64").b64decode(res["figure_png"]))))
    assert np.array_equal(served, np.asarray(Image.open(io.BytesIO(written))))


def test_explain_unknown_class(client):
    r = client.post("/v1/explain?target=flu", files=upload(("a.png", png_bytes())))
    assert_json_error(r, 422, "flu", "covid")


def truncated_png() -> bytes:
    data = png_bytes(side=400, seed=5)
    return data[: len(data) // 2]


@pytest.mark.parametrize(("name", "make", "status", "words"), [
    ("notes.txt", lambda: b"this is a radiology report, not an image", 422, ["not a readable image", "Accepted"]),
    ("cut.png", truncated_png, 422, ["cut.png", "truncated"]),
    ("nopixels.dcm", lambda: dicom_bytes(PixelData=None), 422, ["no pixel data"]),
    ("empty.png", lambda: b"", 422, ["empty", "PNG, JPEG or DICOM"]),
    # a CT slice sent to a chest X-ray model is refused, as covidscreen predict refuses it
    ("ct.dcm", lambda: dicom_bytes(Modality="CT"), 422, ["ct.dcm", "Modality CT", "reads chest radiographs"]),
    ("mr.dcm", lambda: dicom_bytes(Modality="MR"), 422, ["mr.dcm", "Modality MR", "cannot be read"]),
])
def test_bad_files_get_a_4xx_naming_the_fault(client, name, make, status, words):
    r = client.post("/v1/predict", files=upload((name, make())))
    body = assert_json_error(r, status, *words)
    assert body["results"][0]["filename"] == name and body["results"][0]["status"] == status
    assert "/tmp" not in r.text and ".upload" not in r.text  # the server's temporary paths never leak


def test_request_errors(client):
    assert_json_error(client.post("/v1/predict"), 422, "files", "multipart")
    assert_json_error(client.post("/v1/predict", data={"other": "x"}), 422, "files")
    assert_json_error(client.post("/v1/predict", json={"files": "a.png"}), 422, "multipart")
    too_many = upload(*[(f"{i}.png", png_bytes(side=64, seed=i)) for i in range(5)])
    assert_json_error(client.post("/v1/predict", files=too_many), 413, "too many files", "at most 4")
    assert_json_error(client.get("/v1/nothing"), 404, "/docs")
    assert_json_error(client.get("/v1/predict"), 405)


def test_one_bad_file_does_not_spoil_the_others(client):
    r = client.post("/v1/predict", files=upload(("good.png", png_bytes()), ("bad.png", b"\x89PNG\r\n")))
    assert r.status_code == 200
    good, bad = r.json()["results"]
    assert good["decision"] and good["status"] == 200
    assert bad["status"] == 422 and "bad.png" in bad["error"] and "decision" not in bad


def test_the_server_keeps_serving_after_errors(client):
    for data in (b"", b"junk", truncated_png()):
        client.post("/v1/predict", files=upload(("x.png", data)))
    assert client.post("/v1/predict", files=upload(("ok.png", png_bytes()))).status_code == 200
    assert client.get("/readyz").status_code == 200


def test_quality_warnings(client):
    r = client.post("/v1/predict", files=upload(
        ("lat.dcm", dicom_bytes(Modality="DX", ViewPosition="LL", BodyPartExamined="ABDOMEN")),
        ("tiny.png", png_bytes(side=100)), ("fine.dcm", shared_dicom().read_bytes())))
    lat, tiny, fine = (x["warnings"] for x in r.json()["results"])
    assert [w.split(":")[0] for w in lat] == ["lateral", "body-part"]
    assert "LL" in lat[0] and "ABDOMEN" in lat[1]
    assert [w.split(":")[0] for w in tiny] == ["small"]
    assert fine == []


def test_no_patient_identifier_or_pixel_reaches_the_database_or_the_log(client, db_path, caplog):
    data = dicom_bytes(**PHI)
    caplog.set_level(logging.INFO, logger="covidscreen.serving.access")
    r = client.post("/v1/predict", files=upload(("Doe^Johnathan_PID-778899.dcm", data)))
    assert r.status_code == 200
    engine = AuditLog(db_path).engine
    with engine.connect() as conn:
        dump = " ".join(str(row) for table in inspect(engine).get_table_names()
                        for row in conn.execute(text(f"SELECT * FROM {table}")))
    assert sha256_bytes(data) in dump
    for value in [*PHI.values(), "Doe", "Johnathan", "778899", "445566"]:
        assert value not in dump
        assert value not in caplog.text
    assert len(dump) < 200_000  # text only: no pixel data


def test_request_log_is_json_with_the_request_id(client, caplog):
    caplog.set_level(logging.INFO, logger="covidscreen.serving.access")
    r = client.post("/v1/predict", files=upload(("a.png", png_bytes())), headers={"X-Request-ID": "trace-12345678"})
    assert r.headers["x-request-id"] == "trace-12345678" and r.json()["request_id"] == "trace-12345678"
    lines = [json.loads(rec.getMessage()) for rec in caplog.records if rec.name == "covidscreen.serving.access"]
    line = next(x for x in lines if x["request_id"] == "trace-12345678")
    assert line["method"] == "POST" and line["path"] == "/v1/predict" and line["status"] == 200
    assert line["files"] == 1 and line["statuses"] == [200] and line["latency_ms"] > 0
    bad = client.get("/healthz", headers={"X-Request-ID": "no spaces allowed!"})
    assert bad.headers["x-request-id"] != "no spaces allowed!"


def test_upload_size_limit(tiny_run, tmp_path):
    app = create_app(ServeConfig(run_dir=tiny_run, db=str(tmp_path / "l.sqlite"), backend="torch", max_upload_mb=0.5))
    with TestClient(app) as c:
        big = np.random.default_rng(0).integers(0, 255, 700_000, dtype=np.uint8).tobytes()
        assert_json_error(c.post("/v1/predict", files=upload(("big.png", big))), 413, "too large", "MiB")

        def chunks():  # no Content-Length: the limit is enforced while the body streams in
            yield b"--b\r\nContent-Disposition: form-data; name=\"files\"; filename=\"x.png\"\r\n\r\n"
            for _ in range(20):
                yield b"\0" * 65536

        r = c.post("/v1/predict", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"})
        assert_json_error(r, 413, "too large")
        assert c.post("/v1/predict", files=upload(("ok.png", png_bytes()))).status_code == 200
        assert AuditLog(tmp_path / "l.sqlite").count() == 1


def test_pixel_limit_and_queue_limit(tiny_run, tmp_path):
    app = create_app(ServeConfig(run_dir=tiny_run, db=str(tmp_path / "l.sqlite"), backend="torch",
                                 max_pixels=200 * 200, max_queue=2))
    with TestClient(app) as c:
        assert_json_error(c.post("/v1/predict", files=upload(("big.png", png_bytes(side=300)))), 413,
                          "300 x 300", "40,000")
        r = c.post("/v1/predict", files=upload(*[(f"{i}.png", png_bytes(side=100)) for i in range(3)]))
        assert_json_error(r, 503, "capacity")
        assert r.headers["retry-after"] == "1"
        assert c.post("/v1/predict", files=upload(("a.png", png_bytes(side=100)))).status_code == 200


def test_api_keys(tiny_run, tmp_path, caplog):
    key = "k3y-" + "x" * 28
    (tmp_path / "keys").write_text(f"# operators\n{key}\n")
    caplog.set_level(logging.INFO, logger="covidscreen.serving.access")
    app = create_app(ServeConfig(run_dir=tiny_run, db=str(tmp_path / "l.sqlite"), backend="torch",
                                 api_key_file=tmp_path / "keys"))
    with TestClient(app) as c:
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200
        assert c.get("/").status_code == 200  # the page itself holds nothing secret
        assert_json_error(c.get("/v1/model"), 401, "API key")
        assert_json_error(c.get("/v1/model", headers={"X-API-Key": key + "x"}), 401)
        r = c.post("/v1/predict", files=upload(("a.png", png_bytes())))
        assert_json_error(r, 401)
        assert c.get("/v1/model", headers={"X-API-Key": key}).status_code == 200
        r = c.post("/v1/predict", files=upload(("a.png", png_bytes())), headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200
    assert key not in caplog.text
    (tmp_path / "short").write_text("abc\n")
    from covidscreen.errors import ConfigError

    with pytest.raises(ConfigError, match="shorter than 16"):
        create_app(ServeConfig(run_dir=tiny_run, api_key_file=tmp_path / "short"))


def test_unwritable_database_means_no_answer(tiny_run, tmp_path):
    app = create_app(ServeConfig(run_dir=tiny_run, db=str(tmp_path / "l.sqlite"), backend="torch"))
    with TestClient(app) as c:
        assert c.post("/v1/predict", files=upload(("a.png", png_bytes()))).status_code == 200
        engine = app.state.screening.audit.engine
        engine.dispose()
        # every write now fails, as on a full disk (tests/auditlog fill a size-capped database for real)
        event.listen(engine, "connect", lambda conn, _: conn.execute("PRAGMA query_only=ON"))
        r = c.post("/v1/predict", files=upload(("b.png", png_bytes(seed=9))))
        body = assert_json_error(r, 503, "audit log", "not given")
        assert "results" not in body and r.headers["retry-after"]
        assert c.get("/readyz").status_code == 503
    with AuditLog(tmp_path / "l.sqlite").engine.connect() as conn:
        from covidscreen.auditlog.store import predictions

        assert len(conn.execute(select(predictions)).all()) == 1


def test_unreachable_postgres_fails_readiness_and_predictions(tiny_run, postgres):
    app = create_app(ServeConfig(run_dir=tiny_run, db=postgres.new_database(), backend="torch"))
    with TestClient(app) as c:
        assert c.get("/readyz").status_code == 200
        assert c.post("/v1/predict", files=upload(("a.png", png_bytes()))).status_code == 200
        postgres.stop()
        try:
            ready = c.get("/readyz")
            assert ready.status_code == 503 and "audit log" in ready.json()["reasons"][0]
            assert_json_error(c.post("/v1/predict", files=upload(("b.png", png_bytes()))), 503, "audit log")
            assert c.get("/healthz").status_code == 200  # alive, only not ready
        finally:
            postgres.start()
        assert c.get("/readyz").status_code == 200
        assert c.post("/v1/predict", files=upload(("c.png", png_bytes()))).status_code == 200
        assert app.state.screening.audit.count() == 2


def test_onnx_backend_agrees_with_torch(tiny_run, tmp_path, png_file):
    data = png_file.read_bytes()
    probs = {}
    for backend in ("onnx", "torch"):
        app = create_app(ServeConfig(run_dir=tiny_run, db=str(tmp_path / f"{backend}.sqlite"), backend=backend))
        with TestClient(app) as c:
            assert c.get("/v1/model").json()["backend"] == backend
            probs[backend] = c.post("/v1/predict", files=upload(("a.png", data))).json()["results"][0]["probabilities"]
    assert probs["onnx"] == pytest.approx(probs["torch"], abs=1e-4)
    auto = create_app(ServeConfig(run_dir=tiny_run, db=str(tmp_path / "a.sqlite")))
    assert auto.state.screening.backend == "onnx"  # the run has model.onnx


def test_page_is_served(client):
    page = client.get("/")
    assert page.status_code == 200 and "not a diagnosis" in page.text and "/static/app.js" in page.text
    assert client.get("/static/app.js").status_code == 200


def test_bad_configuration_fails_before_serving(tiny_run, tmp_path):
    from covidscreen.errors import CovidscreenError

    with pytest.raises(CovidscreenError, match="not a covidscreen run folder|does not exist"):
        create_app(ServeConfig(run_dir=tmp_path))
    with pytest.raises(CovidscreenError, match="backend"):
        ServeConfig(run_dir=tiny_run, backend="tensorrt")
    with pytest.raises(CovidscreenError, match="operating point"):
        create_app(ServeConfig(run_dir=tiny_run, operating_point="nope"))
    _ = xray_png


def test_an_ensemble_folder_is_served(tmp_path, png_file):
    from covidscreen.inference.ensemble import write_manifest
    from covidscreen.inference.run import load_run
    from tests.serving.runs import make_run

    a, b = make_run(tmp_path / "a"), make_run(tmp_path / "b")
    ens = tmp_path / "ens"
    write_manifest(ens, [load_run(a), load_run(b)], {"default": 0.5, "youden": 0.5}, "test")
    app = create_app(ServeConfig(run_dir=ens, db=str(tmp_path / "l.sqlite"), backend="torch"))
    with TestClient(app) as c:
        info = c.get("/v1/model").json()
        assert info["kind"] == "ensemble" and not info["explain_available"] and len(info["weights_sha256"]) == 64
        r = c.post("/v1/predict", files=upload(("a.png", png_file.read_bytes())))
        assert r.status_code == 200 and r.json()["results"][0]["threshold"] == 0.5
        assert_json_error(c.post("/v1/explain", files=upload(("a.png", png_file.read_bytes()))), 409, "ensemble")


def test_model_threads_limits_the_forward_pass_threads(tiny_run, tmp_path):
    import torch

    before = torch.get_num_threads()
    try:
        app = create_app(ServeConfig(run_dir=tiny_run, db=str(tmp_path / "l.sqlite"), backend="onnx",
                                     model_threads=1))
        assert torch.get_num_threads() == 1
        assert app.state.screening.predictor.onnx.session.get_session_options().intra_op_num_threads == 1
    finally:
        torch.set_num_threads(before)


def test_site_label_goes_into_the_audit_log(client, db_path):
    r = client.post("/v1/predict?site=ward-3", files=upload(("a.png", png_bytes(seed=11))))
    assert r.status_code == 200
    [rec] = [x for x in AuditLog(db_path).query() if x.request_id == r.json()["request_id"]]
    assert rec.site == "ward-3"
    bad = client.post("/v1/predict?site=Doe%5EJohn%20PID-1", files=upload(("a.png", png_bytes())))
    assert_json_error(bad, 422, "site label", "letters, digits")


def test_the_fuzz_corpus_through_the_api_gets_no_5xx(client, seeds):  # noqa: F811
    """The decoders' hostile corpus (truncated, bit-flipped, header-mangled, bombs, random bytes, absurd DICOM tags),
    posted four files at a time: every file is answered with a result or a 4xx naming it, never a 5xx."""
    cases = list(hostile_corpus(seeds, mutations_per_seed=130, seed=2))
    assert len(cases) >= 1000
    statuses: dict[int, int] = {}
    for start in range(0, len(cases), 4):
        part = cases[start:start + 4]
        r = client.post("/v1/predict", files=upload(*[(f"case{start + i}.bin", data) for i, (_, data) in
                                                      enumerate(part)]))
        assert r.status_code < 500 and "Traceback" not in r.text, (part[0][0], r.text[:300])
        for res in r.json().get("results", []):
            statuses[res["status"]] = statuses.get(res["status"], 0) + 1
            assert res["status"] == 200 or (400 <= res["status"] < 500 and res["error"])
    assert sum(statuses.values()) == len(cases) and statuses.get(200, 0) > 0
    assert client.get("/readyz").status_code == 200  # still serving


def test_model_info_names_each_points_weakest_validation_site(client, tmp_path):
    # the module's run predates per-site figures: said, not left blank
    old = {p["name"]: p for p in client.get("/v1/model").json()["operating_points"]}
    assert old["youden"]["sites"] == [] and old["youden"]["weakest_site"] is None
    assert "no per-site validation figures" in old["youden"]["site_summary"]

    run_dir = make_run(tmp_path / "run")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    rec = {"sites": {"nih": {"n_negative": 130, "n_positive": 0, "specificity": 0.39, "specificity_ci": [0.31, 0.48]},
                     "kermany": {"n_negative": 300, "n_positive": 0, "specificity": 0.99,
                                 "specificity_ci": [0.97, 1.0]}},
           "weakest_site": "nih", "note": None}
    metrics["operating_points_val_sites"] = {"youden": rec, "default": rec}
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    with TestClient(create_app(ServeConfig(run_dir=run_dir, db=str(tmp_path / "db.sqlite"), backend="torch"))) as c:
        info = c.get("/v1/model").json()
    points = {p["name"]: p for p in info["operating_points"]}
    for name in ("youden", "default"):
        p = points[name]
        assert p["weakest_site"] == "nih" and p["weakest_site_specificity"] == pytest.approx(0.39)
        assert "specificity 0.39 [0.31, 0.48] on nih" in p["site_summary"]
        assert {s["site"]: s["n_negative"] for s in p["sites"]} == {"kermany": 300, "nih": 130}
    assert points["sensitivity_0.95"]["sites"] == []  # no record for that point
