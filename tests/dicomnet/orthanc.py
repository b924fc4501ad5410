"""A real Orthanc PACS for tests: started in a temporary folder on 127.0.0.1 free ports, stopped afterwards.

Its configuration declares covidscreen's node as the modality ``covidscreen`` and lets only that modality (on
127.0.0.1) store over DICOM; the REST API answers local connections only.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

from tests.binaries import require_binaries
from tests.conftest import LIVENESS_S

ORTHANC_AET = "ORTHANC"
#: the Debian package orthanc-dicomweb's plugin
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def require_pacs_tools() -> None:
    missing = [b for b in ("Orthanc", "dciodvfy") if shutil.which(b) is None]
    require_binaries(not missing, f"{' and '.join(missing)} not installed (Debian packages orthanc, dicom3tools; "
                     "scripts/apt.d/dicomnet.txt lists them)")


def dciodvfy(path: Path) -> list[str]:
    """dciodvfy's Error lines for a file (warnings are allowed)."""
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=LIVENESS_S)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


def distinct_copies(files: list[Path], folder: Path) -> list[Path]:
    """The shared files share their Study/Series/SOP UIDs (one PACS would keep one of them): copies with new UIDs,
    pixels and everything else unchanged."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for f in files:
        ds = pydicom.dcmread(f)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.save_as(folder / f.name, enforce_file_format=True)
        out.append(folder / f.name)
    return out




class Orthanc:
    """``Orthanc(folder, node_port).start()``; REST helpers; ``stop()``."""

    def __init__(self, folder: Path, node_port: int, http_port: int, dicom_port: int,
                 node_aet: str = "COVIDSCREEN", lua: str | None = None, dicomweb: bool = False) -> None:
        self.folder, self.http_port, self.dicom_port = Path(folder), http_port, dicom_port
        self.config = {
            "Name": "covidscreen-test-pacs",
            "StorageDirectory": str(self.folder / "storage"),
            "IndexDirectory": str(self.folder / "storage"),
            "HttpPort": http_port,
            "DicomPort": dicom_port,
            "DicomAet": ORTHANC_AET,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomAlwaysAllowStore": False,
            "DicomCheckModalityHost": True,
            "DicomModalities": {"covidscreen": {"AET": node_aet, "Host": "127.0.0.1", "Port": node_port}},
            "Plugins": [],
            "SaveJobs": False,
            "DicomScuTimeout": 30,
        }
        if dicomweb:  # the DICOMweb plugin on the same HTTP port, under /dicom-web/
            self.config["Plugins"] = [str(DICOMWEB_PLUGIN)]
            self.config["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/", "EnableWado": False,
                                       "Host": f"127.0.0.1:{http_port}", "Ssl": False}
        if lua:
            self.folder.mkdir(parents=True, exist_ok=True)
            (self.folder / "route.lua").write_text(lua)
            self.config["LuaScripts"] = [str(self.folder / "route.lua")]
        self.process: subprocess.Popen | None = None

    @staticmethod
    def binary() -> str | None:
        return shutil.which("Orthanc")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, timeout_s: float = LIVENESS_S) -> Orthanc:
        self.folder.mkdir(parents=True, exist_ok=True)
        config = self.folder / "orthanc.json"
        config.write_text(json.dumps(self.config, indent=1))
        self.log = open(self.folder / "orthanc.log", "wb")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen([self.binary(), str(config)], stdout=self.log, stderr=subprocess.STDOUT,
                                        cwd=self.folder)
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with code {self.process.returncode}: {self.log_tail()}")
            try:
                self.get("/system")
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer on {self.url} within {timeout_s} s: {self.log_tail()}")

    def log_tail(self) -> str:
        path = self.folder / "orthanc.log"
        return path.read_text(errors="replace")[-2000:] if path.is_file() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None
        if getattr(self, "log", None):
            self.log.close()

    def _request(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None):
        req = urllib.request.Request(self.url + path, data=body, method=method)
        if content_type:
            req.add_header("Content-Type", content_type)
        with urllib.request.urlopen(req, timeout=LIVENESS_S) as resp:  # a synchronous job may be slow
            data = resp.read()
            return json.loads(data) if resp.headers.get_content_type() == "application/json" else data

    def get(self, path: str):
        return self._request("GET", path)

    def post(self, path: str, body: bytes | dict, content_type: str = "application/json"):
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        return self._request("POST", path, data, content_type)

    def upload(self, dicom_file: Path) -> dict:
        """POST /instances: ``{"ID", "ParentStudy", "Status", ...}``."""
        return self.post("/instances", Path(dicom_file).read_bytes(), "application/dicom")

    def series_of_study(self, study_id: str) -> list[dict]:
        return [self.get(f"/series/{s}") for s in self.get(f"/studies/{study_id}")["Series"]]
