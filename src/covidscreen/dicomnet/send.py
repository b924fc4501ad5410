"""``covidscreen dicom-send``: score local DICOM files and store their results (SR, Secondary Capture) in a PACS
(:func:`send_job`: the command's destination check and the lines it prints).

The results go through the same durable outbox as the node's: a PACS that is down keeps them on disk, and
``covidscreen dicom-outbox resend`` delivers them later.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError

from ..auditlog import AuditLog
from ..errors import ConfigError, DataError, ImageDecodeError
from ..inference.predictor import expand_inputs
from .address import AeAddress
from .dicomweb import DicomwebServer
from .node import Received, ResultWriter, radiograph_pixels
from .objects import check_uid_root
from .outbox import Outbox, SendReport
from .scoring import DicomScorer


@dataclass
class SendSummary:
    """What ``dicom-send`` did: scored files, refused files (with why), and the delivery report."""

    scored: list[str] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)
    delivery: SendReport = field(default_factory=SendReport)
    outbox: Path | None = None
    destination: str = ""

    def warnings(self) -> list[str]:
        """Lines for standard error: each file that was refused, and why."""
        return [f"skipped {path}: {why}" for path, why in self.refused]

    def summary(self) -> str:
        """The line for standard output: files scored, result objects stored and where."""
        stored = sum(len(item.files) for item in self.delivery.sent)
        return (f"scored {len(self.scored)} file(s); {stored} result object(s) (SR, heatmap) stored in "
                f"{self.destination}")

    def failure(self) -> str | None:
        """The error (exit code 1) when result objects were not delivered, naming the command that resends them;
        None when all were."""
        if not self.delivery.failed:
            return None
        return (f"error: {len(self.delivery.failed)} result object(s) not delivered ({self.delivery.failed[0][1]}); "
                f"they wait in {self.outbox}: covidscreen dicom-outbox resend {self.outbox}")


def read_radiograph(path: Path) -> Received:
    """A local DICOM file as the node would receive it.

    Raises:
        ImageDecodeError: not DICOM, not a CR/DX radiograph, or undecodable pixels.
    """
    data = path.read_bytes()
    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError) as exc:
        raise ImageDecodeError(f"{path}: not a readable DICOM file ({exc})") from None
    image = radiograph_pixels(ds, str(path), prefix=f"{path}: ")
    return Received(path.name, path, ds, image, hashlib.sha256(data).hexdigest(), "dicom-send")


def dicom_send(run_dir: str | Path, inputs: list[str | Path], to: AeAddress | DicomwebServer,
               workdir: str | Path | None = None, db: str | None = None, calling_aet: str = "COVIDSCREEN",
               heatmap: bool = True,
               operating_point: str = "default", uid_root: str | None = None, device: str = "auto",
               batch_size: int = 4, timeout_s: float = 30.0) -> SendSummary:
    """Score ``inputs`` (DICOM files or folders) and store the results in ``to``.

    Raises:
        DataError: no input could be scored (each file's reason is in the message).
    """
    files = expand_inputs(inputs)
    uid_root = check_uid_root(uid_root)
    outbox = Outbox(Path(workdir) if workdir else Path(run_dir) / "dicomnet" / "outbox")
    scorer = DicomScorer(run_dir, operating_point, device, heatmap=heatmap)
    summary = SendSummary(outbox=outbox.root)
    ids = []
    with AuditLog(db or run_dir) as audit:
        writer = ResultWriter(scorer, audit, outbox, to, uid_root, source="cli")
        ready: list[Received] = []
        for f in files:
            try:
                ready.append(read_radiograph(f))
            except ImageDecodeError as exc:
                summary.refused.append((str(f), str(exc)))
                continue
            if len(ready) >= batch_size:
                ids += writer.write(ready)
                summary.scored += [str(r.spool) for r in ready]
                ready = []
        if ready:
            ids += writer.write(ready)
            summary.scored += [str(r.spool) for r in ready]
    if not summary.scored:
        raise DataError(f"none of the {len(files)} file(s) could be scored; first: {summary.refused[0][1]}")
    items = [i for i in outbox.pending() if i.id in set(ids)]
    summary.delivery = outbox.send(to, calling_aet, items, timeout_s)
    return summary


def send_job(run_dir: str | Path, inputs: list[str | Path], to: str | None = None, dicomweb: str | None = None,
             auth: str | None = None, timeout_s: float = 30.0, **options: Any) -> SendSummary:
    """``covidscreen dicom-send``: the destination (exactly one of ``to``, ``HOST:PORT:AET`` for C-STORE, and
    ``dicomweb``, a DICOMweb root URL for STOW-RS with ``auth``), then :func:`dicom_send` with ``options``.

    Raises:
        ConfigError: no destination or two, or one that does not parse.
        DataError: no input could be scored.
    """
    if (to is None) == (dicomweb is None):
        raise ConfigError("give exactly one destination: --to HOST:PORT:AET (DIMSE) or --dicomweb URL (DICOMweb)")
    dest = AeAddress.parse(to) if to else DicomwebServer(str(dicomweb), auth, timeout_s)
    summary = dicom_send(run_dir, inputs, dest, timeout_s=timeout_s, **options)
    summary.destination = str(dest)
    return summary

