"""The durable outbox: results wait on disk until the PACS has confirmed them, so a PACS that is down loses nothing.

Layout: ``<root>/<item id>/`` holds the DICOM files of one input's results (SR, Secondary Capture) and ``item.json``
(destination, attempts, last error). An item is written into a temporary folder, synced and renamed into place, so
a crash leaves either a whole item or none; it is removed only after the destination has answered success for every
file in it. Sending again is safe: a PACS keeps one copy per SOP Instance UID.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from ..errors import CovidscreenError
from .address import AeAddress
from .scu import SendError, store

ITEM_FILE = "item.json"
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

    def to_json(self) -> str:
        d = asdict(self)
        d.pop("path")
        return json.dumps(d, indent=1)


@dataclass
class SendReport:
    sent: list[OutboxItem] = field(default_factory=list)
    failed: list[tuple[OutboxItem, str]] = field(default_factory=list)


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


def _utc() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Outbox:
    """Pending results under ``root`` (created when missing)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def add(self, datasets: Sequence[Dataset], destination: AeAddress | None) -> OutboxItem:
        """Write one input's results durably; returns the item."""
        item_id = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
        tmp = self.root / f".tmp-{item_id}"
        tmp.mkdir()
        names = []
        for i, ds in enumerate(datasets):
            name = f"{i}-{'sr' if ds.Modality == 'SR' else 'sc'}.dcm"
            with open(tmp / name, "wb") as fh:
                pydicom.dcmwrite(fh, ds, enforce_file_format=True)
                fh.flush()
                os.fsync(fh.fileno())
            names.append(name)
        item = OutboxItem(item_id, _utc(), str(datasets[0].StudyInstanceUID) if datasets else "", names,
                          str(destination) if destination else None, path=self.root / item_id)
        self._write_state(item, tmp)
        _fsync_dir(tmp)
        tmp.rename(item.path)
        _fsync_dir(self.root)
        return item

    def _write_state(self, item: OutboxItem, folder: Path | None = None) -> None:
        folder = folder or item.path
        tmp = folder / f"{ITEM_FILE}.tmp"
        with open(tmp, "w") as fh:
            fh.write(item.to_json())
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(folder / ITEM_FILE)

    def pending(self) -> list[OutboxItem]:
        """Items waiting to be sent, oldest first (leftovers of interrupted writes are ignored)."""
        items = []
        for folder in sorted(self.root.iterdir()):
            if folder.name.startswith(".") or not (folder / ITEM_FILE).is_file():
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

    def send(self, to: AeAddress | None = None, calling_aet: str = "COVIDSCREEN",
             items: Sequence[OutboxItem] | None = None, timeout_s: float = 30.0) -> SendReport:
        """Send pending items (all, or ``items``) to ``to`` or to each item's own destination.

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
            address = AeAddress.parse(dest)
            for start in range(0, len(group), MAX_ITEMS_PER_ASSOCIATION):
                self._send_group(group[start:start + MAX_ITEMS_PER_ASSOCIATION], address, calling_aet, timeout_s,
                                 report)
        return report

    def _send_group(self, group: list[OutboxItem], to: AeAddress, calling_aet: str, timeout_s: float,
                    report: SendReport) -> None:
        loaded: list[tuple[OutboxItem, list[Dataset]]] = []
        for item in group:
            try:
                loaded.append((item, self.datasets(item)))
            except (OSError, pydicom.errors.InvalidDicomError) as exc:
                self.mark_failed(item, f"cannot read the stored result: {exc}")
                report.failed.append((item, item.last_error))
        flat = [ds for _, dss in loaded for ds in dss]
        try:
            results = store(flat, to, calling_aet, timeout_s)
        except SendError as exc:
            for item, _ in loaded:
                self.mark_failed(item, str(exc))
                report.failed.append((item, str(exc)))
            return
        pos = 0
        for item, dss in loaded:
            errors = [e for e in results[pos:pos + len(dss)] if e]
            pos += len(dss)
            if errors:
                self.mark_failed(item, f"{to} refused: {'; '.join(errors)}")
                report.failed.append((item, item.last_error))
            else:
                self.remove(item)
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
