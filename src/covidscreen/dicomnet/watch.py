"""``covidscreen dicomweb-watch``: score the chest radiographs a DICOMweb server holds and store the results back.

The same refusal rules, Predictor, audit log and durable outbox as the DIMSE node; results go into the input's study
by STOW-RS (:class:`~covidscreen.dicomnet.dicomweb.DicomwebServer`).

The marker (``WORKDIR/dicomweb-marker.json``) records every SOP Instance UID that was handled (scored with its
results in the outbox, or refused with why), written atomically after the results are durable; a watch finds "new"
radiographs as the QIDO-RS answer (Modality CR or DX) minus the marker, so a restart neither skips nor repeats one
(and a repeat would give the same result UIDs anyway).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO

from ..auditlog import AuditLog, new_request_id
from ..errors import ConfigError, ImageDecodeError
from .dicomweb import DicomwebError, DicomwebServer
from .node import Received, ResultWriter, radiograph_pixels
from .objects import check_uid_root
from .outbox import Outbox
from .scoring import DicomScorer

log = logging.getLogger("covidscreen.dicomnet")

MARKER_FILE = "dicomweb-marker.json"


class Marker:
    """The instances a watch has handled (atomic JSON file)."""

    def __init__(self, path: Path, url: str) -> None:
        self.path, self.url = Path(path), url
        self.handled: dict[str, str] = {}
        if self.path.is_file():
            try:
                data = json.loads(self.path.read_text())
            except ValueError as exc:
                raise ConfigError(f"{self.path} is not a readable marker ({exc}); move it aside to start over") \
                    from None
            if data.get("url") == url:
                self.handled = dict(data.get("handled", {}))

    def add(self, updates: dict[str, str]) -> None:
        self.handled.update(updates)
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as fh:
            json.dump({"url": self.url, "handled": self.handled}, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(self.path)


@dataclass
class WatchSummary:
    """What a watch did: instances scored, refused (with why), results delivered and still waiting."""

    scored: list[str] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)
    delivered: int = 0
    pending: int = 0
    errors: list[str] = field(default_factory=list)

    def warnings(self) -> list[str]:
        """Lines for standard error: each instance refused (and why), then each pass that failed."""
        return [f"refused {sop}: {why}" for sop, why in self.refused] + [f"error: {why}" for why in self.errors]

    def summary(self) -> str:
        """The line for standard output: instances scored, results stored and waiting."""
        return (f"scored {len(self.scored)} instance(s); {self.delivered} result item(s) stored; {self.pending} "
                "waiting in the outbox")

    def failure(self) -> str | None:
        """The error (exit code 1) when results wait in the outbox; None when every result was stored."""
        return "error: results wait in the outbox: covidscreen dicom-outbox resend RUN_DIR" if self.pending else None


def _received(ds: Dataset) -> Received:
    image = radiograph_pixels(ds, f"SOP Instance {ds.SOPInstanceUID}")
    buf = DicomBytesIO()
    ds.save_as(buf, enforce_file_format=False)
    digest = hashlib.sha256(buf.getvalue()).hexdigest()
    # the audit log knows the input by its sha256 and a request id of its own, never by its UIDs
    return Received(new_request_id(), Path(str(ds.SOPInstanceUID)), ds, image, digest, "dicomweb")


def dicomweb_watch(run_dir: str | Path, url: str, auth: str | None = None, workdir: str | Path | None = None,
                   db: str | None = None, once: bool = False, interval_s: float = 10.0, heatmap: bool = True,
                   operating_point: str = "default", uid_root: str | None = None, device: str = "auto",
                   batch_size: int = 4, stop: threading.Event | None = None, timeout_s: float = 30.0) -> WatchSummary:
    """Score the CR/DX instances of a DICOMweb server that the marker has not seen, and store their results back.

    With ``once``: one pass, and a server that cannot be asked raises. Otherwise: a pass every ``interval_s``
    seconds until ``stop`` is set (Ctrl-C), errors logged and retried.

    Raises:
        DicomwebError: (``once``) the server cannot be searched.
    """
    server = DicomwebServer(url, auth, timeout_s)
    work = Path(workdir) if workdir else Path(run_dir) / "dicomnet"
    work.mkdir(parents=True, exist_ok=True)
    marker = Marker(work / MARKER_FILE, server.url)
    outbox = Outbox(work / "outbox")
    scorer = DicomScorer(run_dir, operating_point, device, heatmap=heatmap)
    summary = WatchSummary()
    stop = stop or threading.Event()
    with AuditLog(db or run_dir) as audit:
        writer = ResultWriter(scorer, audit, outbox, server.url, check_uid_root(uid_root), source="dicom")
        while True:
            try:
                _one_pass(server, marker, writer, outbox, batch_size, summary)
            except DicomwebError as exc:
                if once:
                    raise
                summary.errors.append(str(exc))
                log.warning("%s; trying again in %.0f s", exc, interval_s)
            if once or stop.wait(interval_s):
                break
    summary.pending = len(outbox.pending())
    return summary


def _one_pass(server: DicomwebServer, marker: Marker, writer, outbox, batch_size: int, summary: WatchSummary) -> None:
    new = [uids for uids in server.radiographs() if uids[2] not in marker.handled]
    if new:
        log.info("%d new radiograph(s) on %s", len(new), server.url)
    for start in range(0, len(new), batch_size):
        ready, refused = [], {}
        for study, series, sop in new[start:start + batch_size]:
            ds = server.retrieve(study, series, sop)
            try:
                ready.append(_received(ds))
            except ImageDecodeError as exc:
                refused[sop] = f"refused: {exc}"
                summary.refused.append((sop, str(exc)))
                log.warning("instance %s refused: %s", sop, exc)
        if ready:
            writer.write(ready)  # audit rows, then the results in the outbox (durable) ...
        scored = [str(r.dataset.SOPInstanceUID) for r in ready]
        marker.add({**refused, **{uid: f"scored {time.strftime('%Y-%m-%dT%H:%M:%S')}" for uid in scored}})  # then
        summary.scored += scored
    report = outbox.send(server)
    summary.delivered += len(report.sent)
    if report.failed:
        summary.errors += [f"result item {item.id} not stored on {server.url}: {why}" for item, why in report.failed]
        log.warning("%d result item(s) not stored on %s: %s", len(report.failed), server.url, report.failed[0][1])
