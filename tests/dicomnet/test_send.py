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


@pytest.mark.parametrize("to,dicomweb", [(None, None), ("127.0.0.1:1:PACS", "http://127.0.0.1:1/dicom-web")])
def test_send_job_needs_exactly_one_destination(tiny_run, tmp_path, to, dicomweb):
    from covidscreen.dicomnet.send import send_job
    from covidscreen.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^give exactly one destination: --to HOST:PORT:AET \(DIMSE\) or "
                                          r"--dicomweb URL \(DICOMweb\)$"):
        send_job(tiny_run, [tmp_path], to, dicomweb, workdir=tmp_path / "o")
    assert not (tmp_path / "o").exists()  # refused before anything was scored or queued
    with pytest.raises(ConfigError, match="destination 'nonsense' is invalid"):
        send_job(tiny_run, [tmp_path], "nonsense")


def test_send_job_to_a_pacs_that_is_down_names_the_resend_command(tiny_run, shared_dicoms, tmp_path):
    from covidscreen.dicomnet.send import send_job

    pacs = Sink()
    (tmp_path / "notes.dcm").write_bytes(b"not dicom at all")
    summary = send_job(tiny_run, [shared_dicoms[0], tmp_path / "notes.dcm"], pacs.address, workdir=tmp_path / "o",
                       db=f"sqlite:///{tmp_path / 'a.sqlite'}", device="cpu", heatmap=False)
    assert summary.destination == pacs.address
    (warning,) = summary.warnings()
    assert warning.startswith(f"skipped {tmp_path / 'notes.dcm'}: ")
    assert summary.summary() == f"scored 1 file(s); 0 result object(s) (SR, heatmap) stored in {pacs.address}"
    assert summary.failure().startswith("error: 1 result object(s) not delivered (")
    outbox = tmp_path / "o"
    assert summary.failure().endswith(f"they wait in {outbox}: covidscreen dicom-outbox resend {outbox}")
