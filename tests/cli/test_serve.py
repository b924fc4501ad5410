"""``covidscreen serve`` and ``covidscreen audit-log``: through typer's test runner and as a real server process."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from datetime import timedelta

import httpx
import pytest
from typer.testing import CliRunner

from covidscreen.auditlog import AuditLog, utc_now
from covidscreen.cli import app as cli_app
from tests.auditlog.test_store import make_record
from tests.conftest import LIVENESS_S
from tests.postgres import free_port

REPO = __import__("pathlib").Path(__file__).resolve().parents[2]


@pytest.fixture
def cli():
    return cli_app


def test_audit_log_summary_and_csv(cli, tmp_path):
    log = AuditLog(tmp_path)
    now = utc_now()
    log.record_many([make_record(i, when=now - timedelta(days=2 - i // 3), decision="covid" if i % 3 == 0 else
                                 "normal") for i in range(9)])
    res = CliRunner().invoke(cli, ["audit-log", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "9 prediction(s) on 3 day(s)" in res.output and "no drift warnings" in res.output
    assert "small 3" in res.output  # warnings counted by code
    since = (now - timedelta(days=1)).date().isoformat()
    out = tmp_path / "log.csv"
    res = CliRunner().invoke(cli, ["audit-log", str(tmp_path / "audit_log.sqlite"), "--since", since, "--csv",
                                   str(out)])
    assert res.exit_code == 0 and "wrote 6 record(s)" in res.output
    assert len(list(csv.DictReader(out.open()))) == 6


def test_audit_log_bad_input(cli, tmp_path):
    from covidscreen.errors import CovidscreenError

    res = CliRunner().invoke(cli, ["audit-log", str(tmp_path / "nowhere")])
    assert isinstance(res.exception, CovidscreenError) and "does not exist" in str(res.exception)
    AuditLog(tmp_path).check()
    res = CliRunner().invoke(cli, ["audit-log", str(tmp_path), "--since", "last tuesday"])
    assert isinstance(res.exception, CovidscreenError) and "YYYY-MM-DD" in str(res.exception)


def test_serve_runs_a_real_server_that_logs_json(tiny_run, tmp_path, png_file):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen([sys.executable, "-m", "covidscreen", "serve", str(tiny_run), "--port", str(port),
                             "--backend", "onnx", "--db", f"sqlite:///{tmp_path / 'log.sqlite'}"],
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + LIVENESS_S  # start-up: until ready, or a bound only a stuck server reaches
        while True:
            if proc.poll() is not None:
                pytest.fail(f"serve exited: {proc.stderr.read()}")
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"serve did not become ready within {LIVENESS_S:.0f} s")
            time.sleep(0.1)
        r = httpx.post(url + "/v1/predict", files=[("files", ("a.png", png_file.read_bytes(), "image/png"))])
        assert r.status_code == 200 and r.json()["results"][0]["decision"]
        second = httpx.post(url + "/v1/predict", files=[("files", ("b.dcm", b"DICM", "application/dicom")),
                                                         ("files", ("c.png", png_file.read_bytes(), "image/png"))])
        assert second.status_code == 200
        proc.kill()  # no shutdown at all: what was answered must already be on disk
    finally:
        proc.kill()
        _, err = proc.communicate(timeout=LIVENESS_S)
    assert f"serving run@{r.json()['weights_sha256'][:12]} (onnx) on http://127.0.0.1" in err
    lines = [__import__("json").loads(x) for x in err.splitlines() if x.startswith("{")]
    assert any(x["path"] == "/v1/predict" and x["status"] == 200 and x["request_id"] == r.headers["x-request-id"]
               for x in lines)
    logged = AuditLog(tmp_path / "log.sqlite").query()
    assert [x.request_id for x in logged] == [r.headers["x-request-id"], second.headers["x-request-id"]]
