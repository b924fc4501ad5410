import json
import time

import pytest

from covidscreen.workflows.timing import PhaseTimer, cpu_seconds


def test_phases_accumulate_in_order_and_are_written(tmp_path):
    timer = PhaseTimer()
    with timer.phase("cache"):
        time.sleep(0.02)
    with timer.phase("epochs"):
        time.sleep(0.01)
    with timer.phase("cache"):  # a phase run twice adds up
        time.sleep(0.02)
    with pytest.raises(ValueError), timer.phase("report"):  # a failing phase still counts its time
        raise ValueError
    assert list(timer.seconds) == ["cache", "epochs", "report"]
    assert timer.seconds["cache"] >= 0.04 and timer.seconds["epochs"] >= 0.01
    assert timer.total() >= sum(timer.seconds.values())
    line = timer.summary()
    assert line.startswith("time per phase: cache ") and "epochs" in line and "total" in line
    body = json.loads(timer.write(tmp_path).read_text())
    assert set(body["phases"]) == {"cache", "epochs", "report"} and body["total_seconds"] >= 0.05
    assert set(body["cpu_seconds"]) == set(body["phases"]) and body["total_cpu_seconds"] >= 0
    assert all(v >= 0 for v in body["cpu_seconds"].values()) and "(CPU " in line


def test_cpu_seconds_count_work_not_waiting():
    timer = PhaseTimer()
    with timer.phase("sleep"):
        time.sleep(0.2)
    with timer.phase("work"):  # until 0.2 CPU seconds are spent, not 0.2 s of wall time (a busy machine gives less)
        t = cpu_seconds()
        while cpu_seconds() - t < 0.2:
            sum(range(1000))
    assert timer.cpu_seconds["sleep"] < timer.cpu_seconds["work"]
