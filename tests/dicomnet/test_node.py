"""The node against pynetdicom's own SCU on 127.0.0.1: statuses, results, overload, a PACS that is down, audit log."""

from __future__ import annotations

import sqlite3
import threading
import time

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import BasicTextSRStorage, ComputedRadiographyImageStorage, Verification

from covidscreen.dicomnet import node as node_module
from covidscreen.dicomnet.objects import PATIENT_STUDY_KEYWORDS
from covidscreen.inference.predictor import Predictor
from tests.conftest import LIVENESS_S

from .conftest import Sink, free_port, scu_store
from .srcheck import read_result


def wait_for(condition, timeout: float = LIVENESS_S) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.05)
    return False


def cr_dataset(rows: int = 96, seed: int = 0, **tags) -> Dataset:
    """A small uncompressed CR image with patient identifiers that must never reach the audit log."""
    rng = np.random.default_rng(seed)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ComputedRadiographyImageStorage
    ds.SOPClassUID = ComputedRadiographyImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.AccessionNumber = "Doe^Jane", "SECRET-PID-4711", "ACC-0815-XYZ"
    ds.PatientBirthDate, ds.PatientSex, ds.StudyDate, ds.StudyTime = "19700101", "F", "20260101", "101010"
    ds.StudyID, ds.ReferringPhysicianName = "S1", "Who^Doctor"
    ds.Modality, ds.ViewPosition, ds.BodyPartExamined, ds.PixelSpacing = "CR", "PA", "CHEST", [0.2, 0.2]
    ds.SeriesNumber, ds.InstanceNumber = 3, 7
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows = ds.Columns = rows
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = (rng.random((rows, rows)) * 4000).astype(np.uint16).tobytes()
    for k, v in tags.items():
        setattr(ds, k, v)
    return ds


def results_by_modality(received) -> dict[str, Dataset]:
    return {ds.Modality: ds for ds in received}


def test_echo(make_node):
    node = make_node()
    ae = AE("TESTSCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="COVIDSCREEN")
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()


def test_shared_cr_scored_and_results_filed_in_the_study(make_node, sink, shared_dicoms, tiny_run, tmp_path):
    sink.start()
    node = make_node(forward_to=node_module.AeAddress.parse(sink.address))
    src = shared_dicoms[0]
    assert scu_store(node.port, [src]) == [0x0000]
    assert wait_for(lambda: len(sink.received) == 3), f"results not delivered: {node.stats}"
    got = results_by_modality(sink.received)
    sr, sc, seg = got["SR"], got["OT"], got["SEG"]
    original = pydicom.dcmread(src)
    expected = Predictor(tiny_run, device="cpu").predict_files([src], progress=False)
    for ds in (sr, sc, seg):
        assert ds.StudyInstanceUID == original.StudyInstanceUID
        assert ds.PatientID == original.PatientID and ds.PatientName == original.PatientName
        assert ds.SeriesInstanceUID != original.SeriesInstanceUID
        assert ds.SOPInstanceUID != original.SOPInstanceUID
        # nothing of the input beyond the patient/study modules: no pixel spacing, no view, no lossy JPEG syntax
        assert "PixelSpacing" not in ds and "ViewPosition" not in ds and "SeriesDescription" in ds
        assert ds.SeriesDescription != original.SeriesDescription
    assert sr.SeriesInstanceUID != sc.SeriesInstanceUID
    assert "PatientAge" not in sr  # the input's "62" is not a valid AS value: left out rather than copied
    got = read_result(sr, tmp_path / "sr.dcm")
    covid = got["classes"]["COVID-19"]
    assert covid["probability"] == pytest.approx(expected.loc[0, "prob_covid"], abs=1e-9)
    assert expected.loc[0, "prediction"] in got["decision"]
    assert (covid["sensitivity"], covid["specificity"]) == (0.875, 0.8125)
    assert "youden" in got["operating_point"]
    assert "not a medical device" in got["comment"]
    assert len(covid["parameters"][1].split()[-1]) == 64  # the weights' sha256
    assert covid["image"] == original.SOPInstanceUID
    assert sc.PhotometricInterpretation == "RGB" and sc.BurnedInAnnotation == "YES"
    assert sc.pixel_array.shape == (sc.Rows, sc.Columns, 3)
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == original.SOPInstanceUID
    # the overlay: a fractional Segmentation on the input's own pixel grid, pointing at it
    assert seg.SegmentationType == "FRACTIONAL" and (seg.Rows, seg.Columns) == (original.Rows, original.Columns)
    assert seg.SourceImageSequence[0].ReferencedSOPInstanceUID == original.SOPInstanceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == original.SeriesInstanceUID
    assert "not a probability" in seg.SegmentSequence[0].SegmentLabel


def test_only_patient_and_study_modules_are_copied(make_node, sink):
    sink.start()
    node = make_node(forward_to=node_module.AeAddress.parse(sink.address), uid_root="1.2.826.0.1.3680043.10.999")
    src = cr_dataset(InstitutionName="Secret Hospital", OperatorsName="Op^Erator", DeviceSerialNumber="SN1")
    assert scu_store(node.port, [src]) == [0x0000]
    assert wait_for(lambda: len(sink.received) == 3)
    for ds in sink.received:
        for kw in ("InstitutionName", "OperatorsName", "PixelSpacing", "ViewPosition"):
            assert kw not in ds
        # the Segmentation must name its own device (Type 1): the model, never the modality's serial number
        assert ds.get("DeviceSerialNumber") in (None, node.scorer.model_id)
        for kw in PATIENT_STUDY_KEYWORDS:
            if kw in src:
                assert ds[kw].value == src[kw].value, kw
        assert ds.SOPInstanceUID.startswith("1.2.826.0.1.3680043.10.999.")
        assert ds.SeriesInstanceUID.startswith("1.2.826.0.1.3680043.10.999.")


def test_non_image_sop_class_refused_and_node_keeps_serving(make_node):
    node = make_node()
    sr = Dataset()
    sr.file_meta = FileMetaDataset()
    sr.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    sr.SOPClassUID, sr.SOPInstanceUID = BasicTextSRStorage, generate_uid()
    sr.StudyInstanceUID, sr.SeriesInstanceUID, sr.Modality = generate_uid(), generate_uid(), "SR"
    ot = cr_dataset(seed=1)  # a Secondary Capture that is not a radiograph
    ot.SOPClassUID = ot.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ot.Modality = "OT"
    assert scu_store(node.port, [sr, ot, cr_dataset(seed=2)]) == [0x0122, 0x0122, 0x0000]
    assert node.stats["refused"] == 2


def test_corrupt_datasets_answered_with_failure_statuses(make_node, tmp_path, monkeypatch):
    import pynetdicom

    monkeypatch.setattr(pynetdicom._config, "STORE_SEND_CHUNKED_DATASET", True)  # send file bytes unparsed
    node = make_node()
    no_pixels = cr_dataset(seed=3)
    del no_pixels.PixelData
    truncated = cr_dataset(seed=4)
    truncated.PixelData = truncated.PixelData[:100]
    # a file whose dataset bytes are garbage: pynetdicom sends a file's dataset bytes as they are
    garbage = tmp_path / "garbage.dcm"
    good = cr_dataset(seed=5)
    good.save_as(garbage, enforce_file_format=True)
    data = garbage.read_bytes()
    meta_end = 132 + 12 + int.from_bytes(data[140:144], "little")  # preamble, DICM, group length element
    garbage.write_bytes(data[:meta_end] + b"\x08\x00\x16\x00ZZ\x04\x00abcd")  # an unknown VR
    statuses = scu_store(node.port, [no_pixels, truncated, str(garbage), cr_dataset(seed=6)])
    assert statuses[0] == node_module.DATASET_DOES_NOT_MATCH
    assert statuses[1] == node_module.CANNOT_UNDERSTAND
    assert statuses[2] == node_module.CANNOT_DECODE_DATASET
    assert statuses[3] == 0x0000  # still serving, on the same association
    assert scu_store(node.port, [cr_dataset(seed=7)]) == [0x0000]  # and on a new one


def test_overload_answers_out_of_resources_and_keeps_serving(make_node, sink, monkeypatch):
    sink.start()
    node = make_node(max_queue=1, batch_size=1, forward_to=node_module.AeAddress.parse(sink.address))
    entered, release = threading.Event(), threading.Event()
    write = node.writer.write

    def slow_write(items):
        entered.set()
        assert release.wait(60)
        return write(items)

    monkeypatch.setattr(node.writer, "write", slow_write)
    assert scu_store(node.port, [cr_dataset(seed=10)]) == [0x0000]
    assert entered.wait(30)  # the worker holds the first image: the queue (1 place) is empty
    statuses = scu_store(node.port, [cr_dataset(seed=11), cr_dataset(seed=12), cr_dataset(seed=13)])
    assert statuses == [0x0000, node_module.OUT_OF_RESOURCES, node_module.OUT_OF_RESOURCES]
    assert node.stats["out_of_resources"] == 2
    release.set()
    assert node.wait_idle(LIVENESS_S)
    assert len(sink.received) == 6  # SR, SC and SEG of each of the two accepted images
    assert scu_store(node.port, [cr_dataset(seed=14)]) == [0x0000]


def test_pacs_down_then_up_pending_results_arrive(make_node, tmp_path):
    pacs = Sink()  # its port is chosen but nothing listens yet: the PACS is down
    node = make_node(forward_to=node_module.AeAddress.parse(pacs.address))
    assert scu_store(node.port, [cr_dataset(seed=20), cr_dataset(seed=21)]) == [0x0000, 0x0000]
    assert wait_for(lambda: len(node.outbox.pending()) == 4 and all(i.attempts >= 1 for i in node.outbox.pending()))
    assert "could not be reached" in node.outbox.pending()[0].last_error
    pacs.start()
    try:
        assert node.wait_idle(LIVENESS_S), f"pending results not delivered: {node.outbox.pending()}"
        assert sorted(ds.Modality for ds in pacs.received) == ["OT", "OT", "SEG", "SEG", "SR", "SR"]
    finally:
        pacs.stop()


def test_pending_results_survive_a_restart_and_can_be_resent(make_node, tmp_path, tiny_run):
    pacs = Sink()
    node = make_node(forward_to=node_module.AeAddress.parse(pacs.address), workdir=tmp_path / "w")
    assert scu_store(node.port, [cr_dataset(seed=30)]) == [0x0000]
    assert wait_for(lambda: len(node.outbox.pending()) == 2)  # the SR, then the heatmap
    node.stop()
    outbox = node_module.Outbox(tmp_path / "w" / "outbox")
    assert [i.files for i in outbox.pending()] == [["0-sr.dcm"], ["0-sc.dcm", "1-seg.dcm"]]
    assert all(i.destination == pacs.address for i in outbox.pending())
    report = outbox.send()  # still down: kept, attempt recorded
    assert not report.sent and len(outbox.pending()) == 2 and outbox.pending()[0].attempts >= 1
    pacs.start()
    try:
        report = outbox.send()
        assert len(report.sent) == 2 and not report.failed and not outbox.pending()
        assert sorted(ds.Modality for ds in pacs.received) == ["OT", "SEG", "SR"]
    finally:
        pacs.stop()


def test_spooled_inputs_are_scored_after_a_restart(make_node, sink, tmp_path, monkeypatch):
    from covidscreen.auditlog import AuditLogError

    sink.start()
    node = make_node(workdir=tmp_path / "w", forward_to=node_module.AeAddress.parse(sink.address))

    def db_down(items):
        raise AuditLogError("database is down")

    monkeypatch.setattr(node.writer, "write", db_down)
    assert scu_store(node.port, [cr_dataset(seed=40)], calling="WARD3CR") == [0x0000]
    assert wait_for(lambda: node.stats["failed"] == 1)
    node.stop()
    # no result without its audit row: the accepted image waits in the spool, not lost
    assert len(list((tmp_path / "w" / "spool").glob("*.dcm"))) == 1 and not sink.received
    again = make_node(workdir=tmp_path / "w", forward_to=node_module.AeAddress.parse(sink.address))
    assert again.wait_idle(LIVENESS_S)
    assert sorted(ds.Modality for ds in sink.received) == ["OT", "SEG", "SR"]
    assert [r.site for r in again.audit.query()] == ["WARD3CR"]  # the sender is still known after the restart


def test_audit_log_rows_without_patient_identifiers(make_node, tmp_path):
    node = make_node(db=f"sqlite:///{tmp_path / 'a.sqlite'}", heatmap=False)
    src = cr_dataset(seed=50)
    assert scu_store(node.port, [src], calling="MODALITY7") == [0x0000]
    assert node.wait_idle(LIVENESS_S, delivered=False)
    node.stop()
    rows = node.audit.query()
    assert len(rows) == 1
    rec = rows[0]
    assert rec.source == "dicom" and rec.site == "MODALITY7" and rec.operating_point == "youden"
    assert set(rec.probabilities) == {"covid", "normal", "pneumonia"}
    dump = "\n".join(sqlite3.connect(tmp_path / "a.sqlite").iterdump())
    blob = (tmp_path / "a.sqlite").read_bytes() + dump.encode()
    for secret in ("Doe", "Jane", "SECRET-PID-4711", "ACC-0815-XYZ", "19700101"):
        assert secret.encode() not in blob, f"{secret} reached the audit log"
    assert len(node.outbox.pending()) == 1  # no destination: the SR waits in the outbox (no heatmap asked)
    assert [f.endswith("sr.dcm") for f in node.outbox.pending()[0].files] == [True]


def test_port_and_config_errors_are_clear(tiny_run):
    from covidscreen.errors import ConfigError

    with pytest.raises(ConfigError, match="ae-title .* 1-16 printable ASCII"):
        node_module.NodeConfig(tiny_run, ae_title="X" * 17)
    with pytest.raises(ConfigError, match="UID root"):
        node_module.NodeConfig(tiny_run, uid_root="1.02.abc")
    with pytest.raises(ConfigError, match="HOST:PORT:AET"):
        node_module.AeAddress.parse("localhost:104")
    assert str(node_module.AeAddress.parse("127.0.0.1:104:PACS")) == "127.0.0.1:104:PACS"
    assert free_port() > 0


def test_a_ct_run_is_refused_by_the_radiograph_node(tiny_run, tmp_path):
    """The node receives CR/DX images: serving them with a model that reads CT slices would score the wrong thing."""
    import json
    import shutil

    from covidscreen.dicomnet.scoring import DicomScorer
    from covidscreen.errors import ConfigError

    ct_run = tmp_path / "ct_run"
    shutil.copytree(tiny_run, ct_run)
    meta = json.loads((ct_run / "model.json").read_text())
    (ct_run / "model.json").write_text(json.dumps({**meta, "modality": "ct"}))
    with pytest.raises(ConfigError, match="reads ct images, but the DICOM node receives chest radiographs"):
        DicomScorer(ct_run, device="cpu")


class _FakeNode:
    """Stands in for DicomNode in node_job: records what the job did with it."""

    started: list[str] = []

    def __init__(self, config):
        self.config, self.port = config, 4242

    def start(self):
        self.started.append("start")
        return self

    def serve_forever(self):
        self.started.append("serve_forever")


def test_node_job_checks_commissioning_then_starts_and_says_where(tiny_run, monkeypatch):
    from covidscreen.dicomnet.node import NodeConfig, node_job
    from covidscreen.errors import ConfigError
    from covidscreen.workflows import commission

    monkeypatch.setattr(node_module, "DicomNode", _FakeNode)
    _FakeNode.started = []
    said = []
    with pytest.raises(ConfigError, match="no 'go' commissioning record named 'ward8'"):
        node_job(NodeConfig(tiny_run, port=0), "ward8", say=said.append)
    assert said == [] and _FakeNode.started == []  # refused before the node started
    monkeypatch.setattr(commission, "require_commissioning", lambda run_dir, name: f"commissioning '{name}': go")
    node_job(NodeConfig(tiny_run, ae_title="NODE", host="127.0.0.1"), "ward8", say=said.append)
    assert said == ["commissioning 'ward8': go", "DICOM node NODE listening on 127.0.0.1:4242; Ctrl-C stops it"]
    assert _FakeNode.started == ["start", "serve_forever"]
    said.clear()
    node_job(NodeConfig(tiny_run, ae_title="NODE"), say=said.append)  # no record asked for: none checked
    assert said == ["DICOM node NODE listening on 127.0.0.1:4242; Ctrl-C stops it"]
