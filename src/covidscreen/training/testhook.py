"""A test hook, inert unless its environment variables are set: hold a training process at a known point so that
fault-injection tests (SIGKILL, Ctrl-C mid-run) send their signal while the process is certainly still training,
instead of racing a tiny run that may already have finished.

``COVIDSCREEN_TEST_PAUSE_AFTER_EPOCH=N`` with ``COVIDSCREEN_TEST_PAUSE_DIR=DIR``: once epoch ``N``'s checkpoint is on
disk, the process writes ``DIR/paused`` (the epoch number) and waits until ``DIR/release`` exists (or a signal ends
it). Users never set these; nothing else reads them.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

PAUSE_AFTER_EPOCH = "COVIDSCREEN_TEST_PAUSE_AFTER_EPOCH"
PAUSE_DIR = "COVIDSCREEN_TEST_PAUSE_DIR"


def pause_after_epoch(epoch: int) -> None:
    """Hold here after ``epoch`` when the test hook asks for it (see the module docstring); return at once otherwise."""
    wanted = os.environ.get(PAUSE_AFTER_EPOCH)
    if not wanted or int(wanted) != epoch:
        return
    folder = Path(os.environ[PAUSE_DIR])
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "paused.tmp"
    tmp.write_text(str(epoch))
    tmp.replace(folder / "paused")  # atomic: a test never reads a half-written marker
    while not (folder / "release").exists():
        time.sleep(0.02)  # held on purpose; SIGINT raises here, SIGKILL ends the process here
