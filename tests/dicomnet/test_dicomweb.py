"""DICOMweb against a real Orthanc with its DICOMweb plugin (Debian orthanc-dicomweb) on loopback: dicomweb-watch
finds new radiographs by QIDO-RS, fetches them by WADO-RS, stores SR and heatmaps by STOW-RS into their study; and
the bad answers a server can give (down, 4xx/5xx, not DICOM) are clear errors that lose nothing."""

from __future__ import annotations

import contextlib
import http.server
import json
import shutil
import subprocess
import sys
import threading

import pydicom
import pytest

from covidscreen.dicomnet import Outbox
from covidscreen.dicomnet.dicomweb import DicomwebError, DicomwebServer
from covidscreen.dicomnet.send import dicom_send
from covidscreen.dicomnet.watch import MARKER_FILE, dicomweb_watch
from tests.binaries import require_binaries
from tests.conftest import LIVENESS_S
from tests.test_cli import run_cli_in_process

from .conftest import free_port
from .orthanc import DICOMWEB_PLUGIN, Orthanc, dciodvfy, distinct_copies
from .srcheck import read_result

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    missing = [b for b in ("Orthanc", "dciodvfy") if shutil.which(b) is None]
    require_binaries(not missing and DICOMWEB_PLUGIN.is_file(),
                     f"{', '.join(missing) or DICOMWEB_PLUGIN} not installed (Debian packages orthanc, "
                     "orthanc-dicomweb, dicom3tools; scripts/apt.d/dicomnet.txt lists them)")
    orthanc = Orthanc(tmp_path_factory.mktemp("orthanc_dicomweb"), free_port(), free_port(), free_port(),
                      dicomweb=True).start()
    yield orthanc
    orthanc.stop()


@contextlib.contextmanager
def web_page(body: bytes, content_type: str, status: int = 200):
    """A loopback HTTP server that answers every GET with ``body`` (a server that is not DICOMweb)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the http.server API)
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/dicom-web"
    finally:
        server.shutdown()
        server.server_close()


def modalities(pacs: Orthanc, study: str) -> list[str]:
    return sorted(s["MainDicomTags"]["Modality"] for s in pacs.series_of_study(study))


def test_watch_scores_new_radiographs_and_stores_results_in_their_study(pacs, tiny_run, shared_dicoms, tmp_path):
    (image,) = distinct_copies(shared_dicoms[:1], tmp_path / "in")
    study = pacs.upload(image)["ParentStudy"]
    # the HTTP timeout is the suite's liveness bound, not 30 s: a loaded CI machine must not fail a STOW on the clock
    kw = {"workdir": tmp_path / "w", "db": f"sqlite:///{tmp_path / 'a.sqlite'}", "device": "cpu", "once": True,
          "timeout_s": LIVENESS_S}
    summary = dicomweb_watch(tiny_run, f"{pacs.url}/dicom-web", **kw)
    uid = str(pydicom.dcmread(image).SOPInstanceUID)
    assert uid in summary.scored and not summary.refused
    assert summary.pending == 0 and summary.delivered == 2, summary.errors
    assert modalities(pacs, study) == ["CR", "OT", "SEG", "SR"]
    sr_series = next(s for s in pacs.series_of_study(study) if s["MainDicomTags"]["Modality"] == "SR")
    path = tmp_path / "sr.dcm"
    path.write_bytes(pacs.get(f"/instances/{sr_series['Instances'][0]}/file"))
    assert dciodvfy(path) == []
    assert read_result(path)["classes"]["COVID-19"]["image"] == uid
    assert uid in json.loads((tmp_path / "w" / MARKER_FILE).read_text())["handled"]
    again = dicomweb_watch(tiny_run, f"{pacs.url}/dicom-web", **kw)  # the marker: nothing new, nothing twice
    assert uid not in again.scored
    assert modalities(pacs, study) == ["CR", "OT", "SEG", "SR"]


def test_bad_servers_are_clear_errors(pacs, tiny_run, tmp_path):
    down = f"http://127.0.0.1:{free_port()}/dicom-web"
    with pytest.raises(DicomwebError, match="cannot be reached .* is it running"):
        DicomwebServer(down).radiographs()
    with pytest.raises(DicomwebError, match="HTTP 404 .*DICOMweb root"):
        DicomwebServer(f"{pacs.url}/no-such-root").radiographs()
    with pytest.raises(DicomwebError, match="HTTP 400"):
        DicomwebServer(pacs.url).radiographs()  # Orthanc's own REST API refuses the QIDO parameters
    for body, ctype in ((b"<html><body>login</body></html>", "text/html"), (b'["a", "b"]', "application/json"),
                        (b"{}", "application/dicom+json")):
        with web_page(body, ctype) as url, pytest.raises(DicomwebError, match="did not answer .*DICOM"):
            DicomwebServer(url).radiographs()  # a login page, plain JSON, not a list: not DICOM JSON
    with web_page(b"oops", "text/plain", status=503) as url, pytest.raises(DicomwebError, match="HTTP 503"):
        DicomwebServer(url).radiographs()
    with pytest.raises(DicomwebError, match="cannot be reached"):
        dicomweb_watch(tiny_run, down, workdir=tmp_path / "w", db=f"sqlite:///{tmp_path / 'a.sqlite'}",
                       device="cpu", once=True)
    assert not (tmp_path / "w" / MARKER_FILE).exists()  # nothing marked as handled


def test_send_to_a_dicomweb_server_that_is_down_keeps_results_for_resend(pacs, tiny_run, shared_dicoms, tmp_path):
    (image,) = distinct_copies(shared_dicoms[:1], tmp_path / "in")
    study = pacs.upload(image)["ParentStudy"]
    down = DicomwebServer(f"http://127.0.0.1:{free_port()}/dicom-web")
    summary = dicom_send(tiny_run, [image], down, workdir=tmp_path / "o", db=f"sqlite:///{tmp_path / 'a.sqlite'}",
                         device="cpu", heatmap=False)
    assert not summary.delivery.sent and "cannot be reached" in summary.delivery.failed[0][1]
    outbox = Outbox(tmp_path / "o")
    (item,) = outbox.pending()
    report = outbox.send(DicomwebServer(f"{pacs.url}/dicom-web", timeout_s=LIVENESS_S))  # the PACS is back (or --to)
    assert len(report.sent) == 1 and not outbox.pending()
    assert modalities(pacs, study) == ["CR", "SR"]


def test_cli_dicom_send_dicomweb_and_bad_url(pacs, tiny_run, shared_dicoms, tmp_path):
    (image,) = distinct_copies(shared_dicoms[:1], tmp_path / "in")
    study = pacs.upload(image)["ParentStudy"]
    base = [sys.executable, "-m", "covidscreen", "dicom-send", str(tiny_run), str(image), "--workdir",
            str(tmp_path / "o"), "--db", f"sqlite:///{tmp_path / 'a.sqlite'}", "--device", "cpu", "--no-heatmap",
            "--timeout", str(LIVENESS_S)]
    ok = subprocess.run([*base, "--dicomweb", f"{pacs.url}/dicom-web"], capture_output=True, text=True,
                        timeout=LIVENESS_S)
    assert ok.returncode == 0, ok.stderr
    assert modalities(pacs, study) == ["CR", "SR"]
    # the refusals through main() in this process (the command's subprocess run is the one above)
    bad = run_cli_in_process(*base[3:], "--dicomweb", "ftp://x")
    assert bad.returncode == 2 and bad.stderr.startswith("error: DICOMweb URL 'ftp://x' is invalid")
    both = run_cli_in_process(*base[3:], "--dicomweb", f"{pacs.url}/dicom-web", "--to", "127.0.0.1:1:X")
    assert both.returncode == 2 and "exactly one destination" in both.stderr and "Traceback" not in both.stderr


def test_cli_dicomweb_watch_once_and_bad_options(pacs, tiny_run, shared_dicoms, tmp_path):
    (image,) = distinct_copies(shared_dicoms[:1], tmp_path / "in")
    study = pacs.upload(image)["ParentStudy"]
    base = [sys.executable, "-m", "covidscreen", "dicomweb-watch", str(tiny_run), "--workdir", str(tmp_path / "w"),
            "--db", f"sqlite:///{tmp_path / 'a.sqlite'}", "--device", "cpu", "--no-heatmap", "--once",
            "--timeout", str(LIVENESS_S)]
    ok = subprocess.run([*base, "--url", f"{pacs.url}/dicom-web"], capture_output=True, text=True, timeout=LIVENESS_S)
    assert ok.returncode == 0, ok.stderr
    assert "0 waiting in the outbox" in ok.stdout and modalities(pacs, study) == ["CR", "SR"]
    # the refusals through main() in this process (the command's subprocess run is the one above)
    zero = run_cli_in_process(*base[3:], "--url", f"{pacs.url}/dicom-web", "--timeout", "0")
    assert zero.returncode == 2 and "--timeout" in zero.stderr and "Traceback" not in zero.stderr
    bad_auth = run_cli_in_process(*base[3:], "--url", f"{pacs.url}/dicom-web", "--auth", "nocolon")
    assert bad_auth.returncode == 2 and bad_auth.stderr.startswith("error: --auth is invalid")
    down = run_cli_in_process(*base[3:], "--url", f"http://127.0.0.1:{free_port()}/dicom-web")
    assert down.returncode == 2 and "cannot be reached" in down.stderr and "Traceback" not in down.stderr
