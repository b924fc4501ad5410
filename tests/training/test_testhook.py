"""The test hook that holds training at a known point (training/testhook.py): inert when unset, and once set, held
until released, with the marker written before it waits."""

from __future__ import annotations

import threading

from covidscreen.training import testhook
from tests.conftest import LIVENESS_S


def test_inert_without_the_environment_variables(monkeypatch, tmp_path):
    monkeypatch.delenv(testhook.PAUSE_AFTER_EPOCH, raising=False)
    monkeypatch.setenv(testhook.PAUSE_DIR, str(tmp_path / "hold"))
    testhook.pause_after_epoch(1)  # returns at once
    assert not (tmp_path / "hold").exists()


def test_other_epochs_pass_and_the_named_one_is_held_until_released(monkeypatch, tmp_path):
    hold = tmp_path / "hold"
    monkeypatch.setenv(testhook.PAUSE_AFTER_EPOCH, "2")
    monkeypatch.setenv(testhook.PAUSE_DIR, str(hold))
    testhook.pause_after_epoch(1)
    assert not hold.exists()
    passed = threading.Event()
    thread = threading.Thread(target=lambda: (testhook.pause_after_epoch(2), passed.set()), daemon=True)
    thread.start()
    while not (hold / "paused").exists():  # the marker is written before the hold: no timing involved
        assert thread.is_alive()
        passed.wait(0.01)
    assert (hold / "paused").read_text() == "2" and not passed.is_set()  # held: it leaves only on release
    (hold / "release").touch()
    thread.join(timeout=LIVENESS_S)
    assert passed.is_set() and not thread.is_alive()
