"""The service's security options: pinned weights (``--expect-sha256``, ``--manifest``) and STRIP screening of
every upload (``--strip``), which must agree with ``covidscreen scan --inputs`` and reach the audit log."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from covidscreen.auditlog import AuditLog
from covidscreen.errors import CovidscreenError
from covidscreen.security.integrity import sha256_of
from covidscreen.security.scan import scan_inputs
from covidscreen.serving import ServeConfig, create_app
from tests.serving.runs import make_run
from tests.test_cli import assert_clean_error, run_cli_in_process


@pytest.fixture(scope="module")
def run_with_val(tmp_path_factory):
    """A tiny run whose split.csv names 12 validation images, on which STRIP calibrates."""
    root = tmp_path_factory.mktemp("striprun")
    run = make_run(root / "run")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(12):
        path = root / f"val{i}.png"
        Image.fromarray(rng.integers(0, 200, (80, 80), dtype=np.uint8)).save(path)
        rows.append({"image": path.name, "path": str(path), "label": ["covid", "normal", "pneumonia"][i % 3],
                     "split": "val", "group": f"p{i}"})
    pd.DataFrame(rows).to_csv(run / "split.csv", index=False)
    return run


def test_strip_screens_every_upload_like_the_scan_command(run_with_val, tmp_path):
    frr = 0.45  # a high false-rejection rate, so that some of the clean files are flagged and the warning is seen
    files = sorted(run_with_val.parent.glob("val*.png"))
    expected = scan_inputs(run_with_val, files, frr=frr, record=False).set_index("path")
    db = tmp_path / "log.sqlite"
    app = create_app(ServeConfig(run_dir=run_with_val, db=str(db), backend="torch", strip=True, strip_frr=frr,
                                 max_files=len(files)))
    with TestClient(app) as c:
        info = c.get("/v1/model").json()
        r = c.post("/v1/predict", files=[("files", (f.name, f.read_bytes(), "image/png")) for f in files])
    assert r.status_code == 200, r.text
    assert info["strip_threshold"] is not None
    results = r.json()["results"]
    flagged = 0
    for f, res in zip(files, results, strict=True):
        want = expected.loc[str(f)]
        assert res["strip_entropy"] == pytest.approx(want["strip_entropy"], abs=1e-6)
        assert res["strip_flag"] == bool(want["strip_flag"])
        warned = any(w.startswith("backdoor_trigger_suspected") for w in res["warnings"])
        assert warned == res["strip_flag"]
        flagged += res["strip_flag"]
    assert 0 < flagged < len(files)
    with AuditLog(str(db)) as log:
        logged = [rec.warnings for rec in log.query()]
    assert len(logged) == len(files)
    assert sum(any(w.startswith("backdoor_trigger_suspected") for w in ws) for ws in logged) == flagged


def test_without_strip_nothing_is_screened(run_with_val, tmp_path, png_file):
    app = create_app(ServeConfig(run_dir=run_with_val, db=str(tmp_path / "l.sqlite"), backend="torch"))
    with TestClient(app) as c:
        assert c.get("/v1/model").json()["strip_threshold"] is None
        res = c.post("/v1/predict", files=[("files", ("x.png", png_file.read_bytes(), "image/png"))]).json()
    assert "strip_flag" not in res["results"][0] and "strip_entropy" not in res["results"][0]  # None is left out


def test_pinned_weights_refuse_another_model_before_serving(run_with_val, tmp_path):
    good = sha256_of(run_with_val / "model.safetensors")
    create_app(ServeConfig(run_dir=run_with_val, db=str(tmp_path / "a.sqlite"), backend="torch", expect_sha256=good))
    with pytest.raises(CovidscreenError, match="sha256"):
        create_app(ServeConfig(run_dir=run_with_val, db=str(tmp_path / "b.sqlite"), backend="torch",
                               expect_sha256="0" * 64))
    manifest = tmp_path / "allowed.yaml"
    manifest.write_text(json.dumps({"models": [{"name": "other", "weights_sha256": "1" * 64}]}))
    with pytest.raises(CovidscreenError, match="does not allow"):
        create_app(ServeConfig(run_dir=run_with_val, db=str(tmp_path / "c.sqlite"), backend="torch",
                               manifest=manifest))
    manifest.write_text(json.dumps({"models": [{"name": "ours", "weights_sha256": good}]}))
    create_app(ServeConfig(run_dir=run_with_val, db=str(tmp_path / "d.sqlite"), backend="torch", manifest=manifest))
    # the CLI refuses with exit 2 and a message, before binding a port (in process: serve's subprocess test is
    # cli/test_serve.py)
    assert_clean_error(run_cli_in_process("serve", str(run_with_val), "--expect-sha256", "0" * 64, "--port", "1"),
                       "expect-sha256 expects")
    assert_clean_error(run_cli_in_process("serve", str(run_with_val), "--strip", "--strip-frr", "0.9"), "strip_frr")


def test_strip_serves_when_its_calibration_cannot_be_written(run_with_val, tmp_path, png_file):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(run_with_val, run)
    (run / "strip_calibration.npz").unlink(missing_ok=True)
    (run / "strip_calibration.npz").mkdir()  # unwritable as a file (as in a read-only deployment), even for root
    app = create_app(ServeConfig(run_dir=run, db=str(tmp_path / "l.sqlite"), backend="torch", strip=True))
    with TestClient(app) as c:
        r = c.post("/v1/predict", files=[("files", ("x.png", png_file.read_bytes(), "image/png"))])
    assert r.status_code == 200 and "strip_flag" in r.json()["results"][0]


def test_strip_needs_the_runs_validation_images(tmp_path):
    run = make_run(tmp_path / "bare")  # no split.csv
    with pytest.raises(CovidscreenError, match="split.csv"):
        create_app(ServeConfig(run_dir=run, db=str(tmp_path / "l.sqlite"), backend="torch", strip=True))
