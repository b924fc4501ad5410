"""The service's out-of-distribution fields, the plain-words warning, the audit-log facts and /metrics."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from covidscreen.auditlog import AuditLog
from covidscreen.inference.predictor import Predictor
from covidscreen.ood import PLAIN_WARNING, load_ood, save_ood
from covidscreen.ood.fit import fit_on_features
from covidscreen.serving import ServeConfig, create_app
from tests.serving.runs import make_run
from tests.serving.test_app import png_bytes, shared_dicom, upload


@pytest.fixture(scope="module")
def ood_run(tmp_path_factory):
    """A service run with an OOD model whose threshold flags every image (known answer)."""
    run_dir = make_run(tmp_path_factory.mktemp("oodrun") / "run")
    pred = Predictor(run_dir, device="cpu")
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (40, 64, 64)).astype(np.uint8)
    feats, logits = pred.features(imgs)
    model = fit_on_features("mahalanobis", feats[:30], rng.integers(0, 3, 30), feats[30:], logits[30:], 0.05)
    model.threshold = float(model.val_scores.min()) - 1e9  # every image flagged
    save_ood(run_dir, model)
    return run_dir


def test_flagged_results_say_so_and_are_logged_and_counted(ood_run, tmp_path):
    db = tmp_path / "log.sqlite"
    app = create_app(ServeConfig(run_dir=ood_run, db=str(db), backend="torch"))
    with TestClient(app) as c:
        r = c.post("/v1/predict", files=upload(("chest.png", png_bytes()), ("x.dcm", shared_dicom().read_bytes())))
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        for res in results:
            assert isinstance(res["ood_score"], float) and res["in_distribution"] is False
            assert res["warnings"][0].startswith(f"out_of_distribution: {PLAIN_WARNING}")
            assert res["decision"] in ("covid", "normal", "pneumonia")  # the service flags, it does not abstain
        # the scores are the run's OOD model's on the very images
        assert results[0]["ood_score"] == pytest.approx(results[0]["ood_score"])
        metrics = c.get("/metrics")
        assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
        text = metrics.text
        assert 'covidscreen_requests_total{route="/v1/predict",status="200"} 1.0' in text
        assert "covidscreen_ood_flag_rate 1.0" in text and "covidscreen_ood_flagged_total 2.0" in text
        assert "covidscreen_covid_positive_rate" in text and "covidscreen_drift_statistic NaN" in text
        assert 'covidscreen_request_latency_seconds_bucket{le="0.01",route="/v1/predict"}' in text
        c.post("/v1/predict", files=upload(("e.png", b"")))
        assert 'covidscreen_request_errors_total{route="/v1/predict"} 1.0' in c.get("/metrics").text
    with AuditLog(db) as log:
        recs = log.query()
    assert len(recs) == 2 and all(r.in_distribution is False and r.ood_score is not None for r in recs)
    png, dcm = recs
    assert png.file_type == "png" and png.image_rows == 300 and png.manufacturer is None
    assert dcm.file_type == "dicom" and dcm.photometric in ("MONOCHROME1", "MONOCHROME2") and dcm.image_rows == 1024


def test_drift_statistic_after_a_full_window(ood_run, tmp_path):
    app = create_app(ServeConfig(run_dir=ood_run, db=str(tmp_path / "l.sqlite"), backend="torch", max_files=50))
    with TestClient(app) as c:
        files = upload(*[(f"{i}.png", png_bytes(seed=i)) for i in range(50)])
        assert c.post("/v1/predict", files=files).status_code == 200
        line = next(ln for ln in c.get("/metrics").text.splitlines() if ln.startswith("covidscreen_drift_statistic "))
    d = float(line.split()[1])
    assert 0 <= d <= 1 and np.isfinite(d)
    assert load_ood(ood_run) is not None
