"""Crash points for the tests of "exactly one result per image": ``COVIDSCREEN_FAULT=POINT[:N]`` makes the process
kill itself (SIGKILL, as ``kill -9`` does) the N-th time (default: the first) it reaches ``POINT``.

The points sit between the steps of receiving, scoring and sending whose order matters after a crash (:data:`POINTS`);
a test sets the variable for a node or ``dicom-send`` process, lets it die at that exact step (no timing race), starts
it again and checks what the PACS holds. Unset (always, outside such tests) the check is one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
import threading

ENV = "COVIDSCREEN_FAULT"

#: Where a process may be stopped, in the order one image passes them.
POINTS = (
    "spooled",        # the node wrote the received image to its spool, and has not answered the C-STORE yet
    "logged",         # the audit row is committed; the SR is not in the outbox yet
    "sr-queued",      # the SR is in the outbox; the heatmap is not drawn yet
    "sc-queued",      # the heatmap is in the outbox; the spooled input is not removed yet
    "send-intent",    # the outbox recorded that it is about to send an item; nothing is sent yet
    "send-stored",    # the PACS answered success for the item; the outbox has not recorded it yet
    "send-done",      # the outbox recorded the success; the item's folder is not removed yet
)

_hits: dict[str, int] = {}
_lock = threading.Lock()


def fault_point(name: str) -> None:
    """Kill this process here when ``COVIDSCREEN_FAULT`` names this point (and this is its N-th passage)."""
    wanted = os.environ.get(ENV)
    if not wanted:
        return
    point, _, nth = wanted.partition(":")
    if point != name:
        return
    with _lock:
        _hits[name] = _hits.get(name, 0) + 1
        if _hits[name] == int(nth or 1):
            os.kill(os.getpid(), signal.SIGKILL)
