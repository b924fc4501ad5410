"""Integration with a real PACS (Orthanc): Orthanc sends the shared CR images to the node, and the node's SR and
Secondary Capture come back into the same study, valid for dciodvfy and with the Predictor's probability."""

from __future__ import annotations

import time

import pydicom
import pytest

from covidscreen.dicomnet import AeAddress
from covidscreen.inference.predictor import Predictor
from tests.conftest import LIVENESS_S

from .conftest import free_port
from .orthanc import ORTHANC_AET, Orthanc, dciodvfy, distinct_copies, require_pacs_tools
from .srcheck import read_result

pytestmark = pytest.mark.slow


#: the auto-routing rule of docs/pacs.md: new radiographs go to the node, its SR/SC results do not
ROUTE_LUA = """
function OnStoredInstance(instanceId, tags, metadata, origin)
  if (tags['Modality'] == 'CR' or tags['Modality'] == 'DX') and origin['RequestOrigin'] ~= 'Lua' then
    SendToModality(instanceId, 'covidscreen')
  end
end
"""


def start_pair(tmp_path, make_node, lua: str | None = None):
    require_pacs_tools()
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
        assert set(series) == {"CR", "SR", "OT", "SEG"}, f"{f.name}: series in the study: {sorted(series)}"
        original = pydicom.dcmread(f)
        for modality in ("SR", "OT", "SEG"):
            (instance,) = series[modality]["Instances"]
            path = tmp_path / f"{f.stem}-{modality}.dcm"
            path.write_bytes(pacs.get(f"/instances/{instance}/file"))
            ds = pydicom.dcmread(path)
            assert ds.StudyInstanceUID == original.StudyInstanceUID and ds.PatientID == original.PatientID
            assert dciodvfy(path) == [], f"dciodvfy found errors in the {modality} of {f.name}"
            if modality == "SR":  # highdicom reads what Orthanc returns, and it is the Predictor's probability
                got = read_result(path)["classes"]["COVID-19"]["probability"]
                assert got == pytest.approx(expected.loc[str(f), "prob_covid"], abs=1e-6)
            elif modality == "OT":
                assert ds.pixel_array.shape == (ds.Rows, ds.Columns, 3)
            else:  # the overlay on the input's pixel grid
                assert ds.pixel_array.shape == (original.Rows, original.Columns)


def test_orthanc_lua_rule_routes_new_radiographs_automatically(routing_orthanc_and_node, shared_dicoms, tmp_path):
    pacs, node = routing_orthanc_and_node
    (f,) = distinct_copies(shared_dicoms[:1], tmp_path / "inputs")
    study = pacs.upload(f)["ParentStudy"]  # no explicit store: the rule sends it
    end = time.monotonic() + LIVENESS_S
    while node.stats["received"] < 1 and time.monotonic() < end:
        time.sleep(0.1)
    assert node.wait_idle(LIVENESS_S)
    while len(pacs.series_of_study(study)) < 4 and time.monotonic() < end:
        time.sleep(0.1)
    assert sorted(s["MainDicomTags"]["Modality"] for s in pacs.series_of_study(study)) == ["CR", "OT", "SEG", "SR"]
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
