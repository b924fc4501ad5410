"""`dicomnet/watch.py` without a server: what `covidscreen dicomweb-watch` prints from a watch's summary (the watch
itself against Orthanc: test_dicomweb.py)."""

from __future__ import annotations

from covidscreen.dicomnet.watch import WatchSummary


def test_the_summary_lines_and_the_failure_when_results_wait():
    summary = WatchSummary(scored=["1.2.3", "1.2.4"], refused=[("1.2.5", "not a radiograph (CT)")], delivered=2,
                           pending=0, errors=["server cannot be reached"])
    assert summary.warnings() == ["refused 1.2.5: not a radiograph (CT)", "error: server cannot be reached"]
    assert summary.summary() == "scored 2 instance(s); 2 result item(s) stored; 0 waiting in the outbox"
    assert summary.failure() is None
    waiting = WatchSummary(pending=3)
    assert waiting.failure() == "error: results wait in the outbox: covidscreen dicom-outbox resend RUN_DIR"
