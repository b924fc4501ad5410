"""The durable outbox: results wait on disk until the PACS has confirmed them, so a PACS that is down loses nothing,
and a crash at any step sends no result twice.

Layout: ``<root>/<item id>/`` holds the DICOM files of one input's results (SR, Secondary Capture) and ``item.json``
(destination, attempts, last error, the result UIDs, and the intent of a send in progress). An item is written into
a temporary folder, synced and renamed into place, so a crash leaves either a whole item or none. An item with the
same result UIDs as one already waiting is not added again (the results' UIDs are derived from the input, the model
and the operating point: re-scoring an image after a crash makes the same item).

A send is recorded before and after it happens, each record synced and renamed into place:

1. *intent*: ``item.json`` gets ``intent`` (when, to where) before the first byte goes out;
2. *done*: a ``DONE`` file once the destination answered success for every file of the item;
3. then the item's folder is removed.

After a crash, an item with ``DONE`` is only removed; an item with an intent but no ``DONE`` is *in doubt* (the PACS
may hold it): before sending it again the outbox asks the destination for its SOP Instance UIDs (C-FIND, or QIDO-RS
for a DICOMweb destination) and sends only what is missing. A destination that cannot answer the query gets the
item again, which is still safe: the UIDs are the same, and a PACS keeps one instance per SOP Instance UID.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from ..errors import CovidscreenError
from .address import AeAddress
from .faults import fault_point
from .scu import SendError, find_instances, store

log = logging.getLogger("covidscreen.dicomnet")

ITEM_FILE = "item.json"
DONE_FILE = "DONE"
MAX_ITEMS_PER_ASSOCIATION = 32


@dataclass
class OutboxItem:
    """One input's pending results."""

    id: str
    created: str
    study_uid: str
    files: list[str]
    destination: str | None = None
    attempts: int = 0
    last_error: str = ""
    last_try: str = ""
    path: Path = field(default=Path(), compare=False)
    sop_uids: list[str] = field(default_factory=list)
    series_uids: list[str] = field(default_factory=list)
    intent: str = ""  # "<time> to <destination>": a send was started and not recorded as done

    @property
    def key(self) -> str:
        """What makes two items the same: their result SOP Instance UIDs."""
        return result_key(self.sop_uids) if self.sop_uids else self.id

    def to_json(self) -> str:
        d = asdict(self)
        d.pop("path")
        return json.dumps(d, indent=1)


@dataclass
class SendReport:
    """``sent``: delivered (or found already delivered); ``failed``: still pending, with why; ``confirmed``: the items
    in doubt after a crash that the destination was found to hold already (not sent again)."""

    sent: list[OutboxItem] = field(default_factory=list)
    failed: list[tuple[OutboxItem, str]] = field(default_factory=list)
    confirmed: list[OutboxItem] = field(default_factory=list)


def result_key(sop_uids: Sequence[str]) -> str:
    return hashlib.sha256("\\".join(sorted(sop_uids)).encode()).hexdigest()[:16]


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(folder: Path, name: str, text: str) -> None:
    """``folder/name`` holds ``text`` whole or not at all, synced to disk (file and folder entry)."""
    tmp = folder / f"{name}.tmp"
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(folder / name)
    _fsync_dir(folder)


def _utc() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Outbox:
    """Pending results under ``root`` (created when missing)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def add(self, datasets: Sequence[Dataset], destination: AeAddress | None) -> OutboxItem:
        """Write one input's results durably; returns the item (the one already waiting, when an item with the same
        result UIDs is pending: scoring the same image twice queues its results once)."""
        sop_uids = [str(ds.SOPInstanceUID) for ds in datasets]
        key = result_key(sop_uids)
        for waiting in self.pending():
            if waiting.key == key:
                log.info("results %s are already in the outbox (item %s): not added again", key, waiting.id)
                return waiting
        item_id = f"{time.time_ns():020d}-{key}"
        tmp = self.root / f".tmp-{item_id}"
        tmp.mkdir()
        names = []
        for i, ds in enumerate(datasets):
            name = f"{i}-{ {'SR': 'sr', 'SEG': 'seg'}.get(str(ds.Modality), 'sc')}.dcm"
            with open(tmp / name, "wb") as fh:
                pydicom.dcmwrite(fh, ds, enforce_file_format=True)
                fh.flush()
                os.fsync(fh.fileno())
            names.append(name)
        item = OutboxItem(item_id, _utc(), str(datasets[0].StudyInstanceUID) if datasets else "", names,
                          str(destination) if destination else None, path=self.root / item_id, sop_uids=sop_uids,
                          series_uids=[str(ds.SeriesInstanceUID) for ds in datasets])
        self._write_state(item, tmp)
        _fsync_dir(tmp)
        tmp.rename(item.path)
        _fsync_dir(self.root)
        return item

    def _write_state(self, item: OutboxItem, folder: Path | None = None) -> None:
        _atomic_write(folder or item.path, ITEM_FILE, item.to_json())

    def pending(self) -> list[OutboxItem]:
        """Items waiting to be sent, oldest first (leftovers of interrupted writes are ignored)."""
        items = []
        for folder in sorted(self.root.iterdir()):
            if folder.name.startswith(".") or not (folder / ITEM_FILE).is_file():
                continue
            if (folder / DONE_FILE).is_file():  # delivered; the process stopped before it removed the folder
                shutil.rmtree(folder, ignore_errors=True)
                continue
            try:
                d = json.loads((folder / ITEM_FILE).read_text())
                items.append(OutboxItem(**d, path=folder))
            except (OSError, ValueError, TypeError):
                continue  # removed meanwhile, or not ours
        return items

    def __len__(self) -> int:
        return len(self.pending())

    def datasets(self, item: OutboxItem) -> list[Dataset]:
        return [pydicom.dcmread(item.path / name) for name in item.files]

    def mark_failed(self, item: OutboxItem, error: str) -> None:
        item.attempts += 1
        item.last_error = error[:500]
        item.last_try = _utc()
        if item.path.is_dir():
            self._write_state(item)

    def remove(self, item: OutboxItem) -> None:
        shutil.rmtree(item.path, ignore_errors=True)

    def mark_intent(self, item: OutboxItem, destination: str) -> None:
        """Record, durably, that ``item`` is about to be sent to ``destination``."""
        item.intent = f"{_utc()} to {destination}"
        self._write_state(item)

    def mark_done(self, item: OutboxItem) -> None:
        """Record, durably, that the destination holds every file of ``item``; then remove it."""
        _atomic_write(item.path, DONE_FILE, f"{_utc()} {item.intent}\n")
        fault_point("send-done")
        self.remove(item)

    def send(self, to=None, calling_aet: str = "COVIDSCREEN",
             items: Sequence[OutboxItem] | None = None, timeout_s: float = 30.0, auth: str | None = None
             ) -> SendReport:
        """Send pending items (all, or ``items``) to ``to`` (an :class:`AeAddress`, a
        :class:`~covidscreen.dicomnet.dicomweb.DicomwebServer`) or to each item's own destination (``HOST:PORT:AET``
        by C-STORE, or a DICOMweb URL by STOW-RS, with ``auth``).

        Items the destination confirmed are removed; the others stay, with the error recorded.

        Raises:
            CovidscreenError: an item has no destination and ``to`` is not given.
        """
        items = list(self.pending() if items is None else items)
        report = SendReport()
        groups: dict[str, list[OutboxItem]] = {}
        for item in items:
            dest = str(to) if to is not None else item.destination
            if not dest:
                raise CovidscreenError(f"outbox item {item.id} has no destination: give one (--to HOST:PORT:AET)")
            groups.setdefault(dest, []).append(item)
        for dest, group in groups.items():
            if to is not None and str(to) == dest:
                target = to
            elif dest.startswith(("http://", "https://")):
                # DICOMweb only: dicomweb-client loads only for an outbox that sends by STOW-RS
                from .dicomweb import DicomwebServer

                target = DicomwebServer(dest, auth, timeout_s)
            else:
                target = AeAddress.parse(dest)
            if isinstance(target, AeAddress):
                def stow(dss, a=target):
                    return store(dss, a, calling_aet, timeout_s)

                def held(dss, a=target):
                    return find_instances(dss, a, calling_aet, timeout_s)
            else:
                stow, held = target.store, target.held
            for start in range(0, len(group), MAX_ITEMS_PER_ASSOCIATION):
                self._send_group(group[start:start + MAX_ITEMS_PER_ASSOCIATION], str(target), stow, held, report)
        return report

    def _send_group(self, group: list[OutboxItem], to: str, stow, held, report: SendReport) -> None:
        loaded: list[tuple[OutboxItem, list[Dataset]]] = []
        for item in group:
            try:
                loaded.append((item, self.datasets(item)))
            except (OSError, pydicom.errors.InvalidDicomError) as exc:
                self.mark_failed(item, f"cannot read the stored result: {exc}")
                report.failed.append((item, item.last_error))
        loaded = self._check_in_doubt(loaded, held, to, report)
        if not loaded:
            return
        for item, _ in loaded:
            self.mark_intent(item, str(to))
            fault_point("send-intent")
        flat = [ds for _, dss in loaded for ds in dss]
        try:
            results = stow(flat)
        except SendError as exc:
            for item, _ in loaded:
                self.mark_failed(item, str(exc))
                report.failed.append((item, str(exc)))
            return
        self._record(loaded, results, to, report)

    def _check_in_doubt(self, loaded: list[tuple[OutboxItem, list[Dataset]]], find, to: str,
                        report: SendReport) -> list[tuple[OutboxItem, list[Dataset]]]:
        """Items whose last send may have reached the destination: ask it (``find(datasets)``: the SOP Instance
        UIDs it holds, None when it cannot tell); drop what it holds from the send, and finish items it holds whole."""
        out = []
        for item, dss in loaded:
            if not item.intent:
                out.append((item, dss))
                continue
            try:
                held = find(dss)
            except SendError as exc:
                held = None
                log.info("cannot ask %s whether it holds item %s (%s): sending it again (same UIDs)", to, item.id,
                         exc)
            if held is None:
                out.append((item, dss))
                continue
            missing = [ds for ds in dss if str(ds.SOPInstanceUID) not in held]
            if not missing:
                log.info("item %s was in doubt after a stop during its send; %s holds it already: not sent again",
                         item.id, to)
                self.mark_done(item)
                report.confirmed.append(item)
                report.sent.append(item)
            else:
                out.append((item, missing))
        return out

    def _record(self, loaded: list[tuple[OutboxItem, list[Dataset]]], results: list[str | None], to: str,
                report: SendReport) -> None:
        pos = 0
        for item, dss in loaded:
            errors = [e for e in results[pos:pos + len(dss)] if e]
            pos += len(dss)
            if errors:
                self.mark_failed(item, f"{to} refused: {'; '.join(errors)}")
                report.failed.append((item, item.last_error))
            else:
                fault_point("send-stored")
                self.mark_done(item)
                report.sent.append(item)


def resolve_outbox(path: str | Path) -> Outbox:
    """The outbox a user means by ``path``: an outbox folder, a node's work folder, or a run folder (its
    ``dicomnet/outbox``).

    Raises:
        CovidscreenError: ``path`` is none of these.
    """
    path = Path(path)
    for candidate in (path / "dicomnet" / "outbox", path / "outbox", path):
        if candidate.is_dir() and (candidate.name == "outbox" or any(candidate.glob(f"*/{ITEM_FILE}"))):
            return Outbox(candidate)
    raise CovidscreenError(f"{path} holds no outbox: give a run folder, a node's --workdir or its outbox/ folder")


def outbox_lines(folder: str | Path) -> list[str]:
    """``covidscreen dicom-outbox list``: the count and one line per result the PACS has not confirmed yet (where
    it goes, its files, its attempts and last error).

    Raises:
        CovidscreenError: ``folder`` holds no outbox.
    """
    outbox = resolve_outbox(folder)
    items = outbox.pending()
    lines = [f"{len(items)} pending in {outbox.root}"]
    for it in items:
        error = f"; last error: {it.last_error}" if it.last_error else ""
        lines.append(f"{it.id}  created {it.created}  to {it.destination or '(none)'}  {len(it.files)} file(s)  "
                     f"attempts {it.attempts}{error}")
    return lines


@dataclass(frozen=True)
class ResendOutcome:
    """What ``covidscreen dicom-outbox resend`` did (the delivery report)."""

    report: SendReport

    def warnings(self) -> list[str]:
        """Lines for standard error before the summary: none (the failure names the first error)."""
        return []

    def summary(self) -> str:
        """The line for standard output: sent, and still pending."""
        return f"sent {len(self.report.sent)}, still pending {len(self.report.failed)}"

    def failure(self) -> str | None:
        """The error (exit code 1) when results are still pending: the first one's; None when all were sent."""
        return f"error: {self.report.failed[0][1]}" if self.report.failed else None


def resend_job(folder: str | Path, to: str | None = None, calling_aet: str = "COVIDSCREEN", timeout_s: float = 30.0,
               auth: str | None = None) -> ResendOutcome:
    """``covidscreen dicom-outbox resend``: send the pending results of the outbox ``folder`` means
    (:func:`resolve_outbox`) to ``to`` (``HOST:PORT:AET``) or each to its own destination.

    Raises:
        CovidscreenError: no outbox there, a destination that does not parse, an item without a destination.
    """
    outbox = resolve_outbox(folder)
    return ResendOutcome(outbox.send(AeAddress.parse(to) if to else None, calling_aet, timeout_s=timeout_s, auth=auth))

