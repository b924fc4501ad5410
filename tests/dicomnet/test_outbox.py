"""The outbox's records of a send (intent, done) and what a restart does with them, with a stand-in PACS."""

from __future__ import annotations

from pydicom.dataset import Dataset

from covidscreen.dicomnet import AeAddress, Outbox
from covidscreen.dicomnet import outbox as outbox_module
from covidscreen.dicomnet.objects import build_sr
from covidscreen.dicomnet.outbox import DONE_FILE

from .conftest import Sink
from .test_objects import minimal_source, score


def result(src: Dataset | None = None) -> Dataset:
    return build_sr(src or minimal_source(), score(), "run@abc", "a" * 64, "v")


def test_the_same_results_are_queued_once(tmp_path):
    outbox = Outbox(tmp_path)
    src = minimal_source()
    first = outbox.add([result(src)], None)
    again = outbox.add([result(src)], None)  # the same image scored again (after a crash): same UIDs
    other = outbox.add([result()], None)
    assert again.id == first.id and other.id != first.id
    assert [i.id for i in outbox.pending()] == [first.id, other.id]


def test_a_done_item_is_only_removed_after_a_restart(tmp_path):
    outbox = Outbox(tmp_path)
    item = outbox.add([result()], AeAddress.parse("127.0.0.1:1:PACS"))
    (item.path / DONE_FILE).write_text("sent\n")  # the process stopped between recording success and removing it
    assert outbox.pending() == [] and not item.path.exists()


def test_intent_is_recorded_before_and_done_after_a_send(tmp_path, monkeypatch):
    sink = Sink().start()
    try:
        outbox = Outbox(tmp_path)
        item = outbox.add([result()], AeAddress.parse(sink.address))
        seen = []
        store = outbox_module.store

        def spying_store(datasets, to, calling_aet, timeout_s):
            seen.append(Outbox(tmp_path).pending()[0].intent)  # what a crash now would leave on disk
            return store(datasets, to, calling_aet, timeout_s)

        monkeypatch.setattr("covidscreen.dicomnet.outbox.store", spying_store)
        report = outbox.send()
        assert seen and seen[0].endswith(f"to {sink.address}")
        assert [i.id for i in report.sent] == [item.id] and not item.path.exists()
    finally:
        sink.stop()


def test_an_item_in_doubt_is_checked_and_not_sent_again_when_the_pacs_holds_it(tmp_path, monkeypatch):
    sink = Sink().start()
    try:
        outbox = Outbox(tmp_path)
        held, missing = outbox.add([result()], AeAddress.parse(sink.address)), outbox.add([result()], None)
        for it in (held, missing):
            outbox.mark_intent(it, sink.address)  # as a process killed during the send leaves them
        in_pacs = set(held.sop_uids)
        monkeypatch.setattr("covidscreen.dicomnet.outbox.find_instances", lambda dss, *a: in_pacs & {
            str(d.SOPInstanceUID) for d in dss})
        report = Outbox(tmp_path).send(AeAddress.parse(sink.address))
        assert [i.id for i in report.confirmed] == [held.id]
        assert sorted(i.id for i in report.sent) == sorted([held.id, missing.id]) and not outbox.pending()
        assert [str(ds.SOPInstanceUID) for ds in sink.received] == missing.sop_uids  # only the missing one went
    finally:
        sink.stop()


def test_a_pacs_without_c_find_gets_the_item_in_doubt_again(tmp_path):
    sink = Sink().start()  # a pynetdicom storage SCP: no C-FIND
    try:
        outbox = Outbox(tmp_path)
        item = outbox.add([result()], AeAddress.parse(sink.address))
        outbox.mark_intent(item, sink.address)
        report = outbox.send()
        assert not report.confirmed and [i.id for i in report.sent] == [item.id]
        assert [str(ds.SOPInstanceUID) for ds in sink.received] == item.sop_uids
    finally:
        sink.stop()


def test_the_list_and_resend_jobs_say_what_waits_and_what_was_sent(tmp_path):
    from covidscreen.dicomnet.outbox import outbox_lines, resend_job

    pacs = Sink()
    Outbox(tmp_path / "outbox").add([result()], AeAddress.parse(pacs.address))
    lines = outbox_lines(tmp_path)  # a run folder's dicomnet/outbox, a work folder's outbox/ or the outbox itself
    assert lines[0] == f"1 pending in {tmp_path / 'outbox'}" and len(lines) == 2
    assert f"to {pacs.address}  1 file(s)  attempts 0" in lines[1] and "last error" not in lines[1]
    down = resend_job(tmp_path / "outbox", timeout_s=5)
    assert down.summary() == "sent 0, still pending 1" and down.failure().startswith("error: ")
    assert down.warnings() == [] and "last error: " in outbox_lines(tmp_path / "outbox")[1]
    pacs.start()
    try:
        sent = resend_job(tmp_path / "outbox", pacs.address)
    finally:
        pacs.stop()
    assert sent.summary() == "sent 1, still pending 0" and sent.failure() is None
    assert outbox_lines(tmp_path / "outbox") == [f"0 pending in {tmp_path / 'outbox'}"]
