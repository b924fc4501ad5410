"""Integration with a real PACS (Orthanc): Orthanc sends the shared CR images to the node, and the node's SR and
Secondary Capture come back into the same study, valid for dciodvfy and with the Predictor's probability."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from covidscreen.dicomnet import AeAddress
from covidscreen.inference.predictor import Predictor
from tests.binaries import require_binaries
from tests.conftest import LIVENESS_S

from .conftest import free_port
from .orthanc import ORTHANC_AET, Orthanc

pytestmark = pytest.mark.slow


def dciodvfy(path: Path) -> list[str]:
    """dciodvfy's Error lines for a file (warnings are allowed)."""
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
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


#: the auto-routing rule of docs/pacs.md: new radiographs go to the node, its SR/SC results do not
ROUTE_LUA = """
function OnStoredInstance(instanceId, tags, metadata, origin)
  if (tags['Modality'] == 'CR' or tags['Modality'] == 'DX') and origin['RequestOrigin'] ~= 'Lua' then
    SendToModality(instanceId, 'covidscreen')
  end
end
"""


def start_pair(tmp_path, make_node, lua: str | None = None):
    missing = [b for b in ("Orthanc", "dciodvfy") if shutil.which(b) is None]
    require_binaries(not missing, f"{' and '.join(missing)} not installed (Debian packages orthanc, dicom3tools; "
                     "scripts/apt.d/dicomnet.txt lists them)")
    node_port, http_port, dicom_port = free_port(), free_port(), free_port()
    node = make_node(port=node_port, forward_to=AeAddress("127.0.0.1", dicom_port, ORTHANC_AET))
    return Orthanc(tmp_path / "orthanc", node_port, http_port, dicom_port, lua=lua).start(), node


@pytest.fixture()
def orthanc_and_node(tmp_path, make_node):
    pacs, node = start_pair(tmp_path, make_node)
    yield pacs, node
    pacs.stop()


@pytest.fixture()
def routing_orthanc_and_node(tmp_path, make_node):
    pacs, node = start_pair(tmp_path, make_node, ROUTE_LUA)
    yield pacs, node
    pacs.stop()


def test_orthanc_routes_images_and_gets_sr_and_heatmap_back(orthanc_and_node, shared_dicoms, tiny_run, tmp_path):
    pacs, node = orthanc_and_node
    files = distinct_copies(shared_dicoms, tmp_path / "inputs")
    expected = Predictor(tiny_run, device="cpu").predict_files(files, progress=False).set_index("path")
    uploaded = {f: pacs.upload(f) for f in files}
    pacs.post("/modalities/covidscreen/echo", {})  # C-ECHO from Orthanc to the node (HTTP 500 if it fails)
    pacs.post("/modalities/covidscreen/store", {"Resources": [u["ID"] for u in uploaded.values()],
                                                "Synchronous": True})
    assert node.wait_idle(LIVENESS_S), f"results not delivered: {node.stats}, {node.outbox.pending()}"
    assert node.stats["received"] == len(files) and node.stats["refused"] == 0

    for f, up in uploaded.items():
        series = {s["MainDicomTags"]["Modality"]: s for s in pacs.series_of_study(up["ParentStudy"])}
        assert set(series) == {"CR", "SR", "OT"}, f"{f.name}: series in the study: {sorted(series)}"
        original = pydicom.dcmread(f)
        for modality in ("SR", "OT"):
            (instance,) = series[modality]["Instances"]
            path = tmp_path / f"{f.stem}-{modality}.dcm"
            path.write_bytes(pacs.get(f"/instances/{instance}/file"))
            ds = pydicom.dcmread(path)
            assert ds.StudyInstanceUID == original.StudyInstanceUID and ds.PatientID == original.PatientID
            assert dciodvfy(path) == [], f"dciodvfy found errors in the {modality} of {f.name}"
            if modality == "SR":
                items = {it.ConceptNameCodeSequence[0].CodeValue: it for it in ds.ContentSequence}
                got = items["COVID19-PROB"].MeasuredValueSequence[0].FloatingPointValue
                assert got == pytest.approx(expected.loc[str(f), "prob_covid"], abs=1e-6)
            else:
                assert ds.pixel_array.shape == (ds.Rows, ds.Columns, 3)


def test_orthanc_lua_rule_routes_new_radiographs_automatically(routing_orthanc_and_node, shared_dicoms, tmp_path):
    pacs, node = routing_orthanc_and_node
    (f,) = distinct_copies(shared_dicoms[:1], tmp_path / "inputs")
    study = pacs.upload(f)["ParentStudy"]  # no explicit store: the rule sends it
    end = time.monotonic() + LIVENESS_S
    while node.stats["received"] < 1 and time.monotonic() < end:
        time.sleep(0.1)
    assert node.wait_idle(LIVENESS_S)
    while len(pacs.series_of_study(study)) < 3 and time.monotonic() < end:
        time.sleep(0.1)
    assert sorted(s["MainDicomTags"]["Modality"] for s in pacs.series_of_study(study)) == ["CR", "OT", "SR"]
    # its own results are not routed back, checked without waiting "long enough": Orthanc runs the OnStoredInstance
    # callbacks one after another, so a radiograph stored after the results is routed after any send they caused;
    # once the node has this one and every Orthanc job has ended, such a send would have reached the node
    (sentinel,) = distinct_copies(shared_dicoms[:1], tmp_path / "sentinel")
    pacs.upload(sentinel)
    while node.stats["received"] < 2 and time.monotonic() < end:
        time.sleep(0.1)
    while _unfinished_jobs(pacs) and time.monotonic() < end:
        time.sleep(0.1)
    assert not _unfinished_jobs(pacs), pacs.log_tail()
    assert node.wait_idle(LIVENESS_S)
    assert node.stats["received"] == 2 and node.stats["refused"] == 0  # the two radiographs, not their results


def _unfinished_jobs(pacs: Orthanc) -> list[dict]:
    return [job for job in pacs.get("/jobs?expand") if job["State"] not in ("Success", "Failure")]
