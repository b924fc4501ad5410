"""``dicom-send``: score local files and store the results; a PACS that is down keeps them in the outbox."""

from __future__ import annotations

import pytest

from covidscreen.dicomnet import AeAddress, Outbox
from covidscreen.dicomnet.send import dicom_send
from covidscreen.errors import DataError

from .conftest import Sink
from .orthanc import distinct_copies


def test_send_scores_files_and_stores_results(tiny_run, shared_dicoms, sink, tmp_path):
    sink.start()
    (tmp_path / "notes.dcm").write_bytes(b"not dicom at all")
    files = distinct_copies(shared_dicoms, tmp_path / "inputs")  # the shared files share their SOP Instance UID
    summary = dicom_send(tiny_run, [*files, tmp_path / "notes.dcm"], AeAddress.parse(sink.address),
                         workdir=tmp_path / "outbox", db=f"sqlite:///{tmp_path / 'a.sqlite'}", device="cpu")
    assert len(summary.scored) == len(shared_dicoms)
    assert [p for p, _ in summary.refused] == [str(tmp_path / "notes.dcm")]
    assert len(summary.delivery.sent) == 2 * len(shared_dicoms) and not summary.delivery.failed  # SRs, heatmaps
    assert sorted(ds.Modality for ds in sink.received) == sorted(["OT", "SEG", "SR"] * len(shared_dicoms))
    assert not Outbox(tmp_path / "outbox").pending()


def test_send_to_a_pacs_that_is_down_keeps_results_for_resend(tiny_run, shared_dicoms, tmp_path):
    pacs = Sink()
    summary = dicom_send(tiny_run, shared_dicoms[:1], AeAddress.parse(pacs.address), workdir=tmp_path / "outbox",
                         db=f"sqlite:///{tmp_path / 'a.sqlite'}", device="cpu", heatmap=False)
    assert not summary.delivery.sent and len(summary.delivery.failed) == 1
    outbox = Outbox(tmp_path / "outbox")
    (item,) = outbox.pending()
    assert item.attempts == 1 and item.destination == pacs.address and item.files == ["0-sr.dcm"]
    pacs.start()
    try:
        report = outbox.send()
        assert len(report.sent) == 1 and [ds.Modality for ds in pacs.received] == ["SR"]
    finally:
        pacs.stop()


def test_send_with_nothing_scorable_is_a_clear_error(tiny_run, tmp_path):
    (tmp_path / "a.dcm").write_bytes(b"\0" * 10)
    with pytest.raises(DataError, match="none of the 1 file"):
        dicom_send(tiny_run, [tmp_path / "a.dcm"], AeAddress.parse("127.0.0.1:1:PACS"), workdir=tmp_path / "o",
                   db=f"sqlite:///{tmp_path / 'a.sqlite'}", device="cpu")


def test_the_same_image_sent_twice_gives_one_result(tiny_run, shared_dicoms, sink, tmp_path):
    """Result UIDs come from the input's SOP Instance UID, the model and the operating point: scoring an image again
    (a resend, a restart) stores the same objects again, which a PACS keeps once."""
    sink.start()
    kw = {"workdir": tmp_path / "outbox", "db": f"sqlite:///{tmp_path / 'a.sqlite'}", "device": "cpu",
          "heatmap": False}
    dicom_send(tiny_run, shared_dicoms[:1], AeAddress.parse(sink.address), **kw)
    dicom_send(tiny_run, shared_dicoms[:1], AeAddress.parse(sink.address), **kw)
    first, second = sink.received
    assert first.SOPInstanceUID == second.SOPInstanceUID and first.SeriesInstanceUID == second.SeriesInstanceUID
    other_point = dicom_send(tiny_run, shared_dicoms[:1], AeAddress.parse(sink.address), operating_point=
                             "sensitivity_0.95", **kw)
    assert len(other_point.delivery.sent) == 1 and sink.received[2].SOPInstanceUID != first.SOPInstanceUID
