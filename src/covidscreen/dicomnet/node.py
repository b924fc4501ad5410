"""The DICOM node: a C-STORE / C-ECHO SCP (pynetdicom) that scores chest radiographs and files results in the study.

Flow of one instance:

1. C-STORE arrives. The handler answers every dataset with a DIMSE status and never raises:
   - ``0x0122`` (Refused: SOP Class not supported) for anything but CR, DX (for presentation or processing) and
     Secondary Capture images whose Modality is CR or DX (the form many archives hold converted radiographs in);
   - ``0xC210`` when the dataset cannot be parsed, ``0xA900`` (does not match SOP class) when it lacks the UIDs or
     the pixel data an image needs, ``0xC000`` (cannot understand) when its pixels cannot be decoded;
   - ``0xA700`` (Refused: Out of Resources) when the bounded queue is full (or the spool cannot be written): the
     sender keeps the image and may retry; the node never queues without limit;
   - ``0x0000`` once the dataset is in the spool on disk and in the queue (a crash after that loses nothing: the
     spool is scored again at the next start).
2. A worker scores queued images in small batches with the run's Predictor and Grad-CAM (:class:`DicomScorer`),
   writes one audit-log row per image (no patient identifiers: the input is known by its sha256), puts the SR and
   the Secondary Capture into the durable outbox, then removes the spooled input.
3. A forwarder sends the outbox to ``forward_to`` (C-STORE SCU), retrying with exponential backoff while the PACS is
   down; without ``forward_to`` results wait in the outbox for ``covidscreen dicom-outbox resend --to``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    SecondaryCaptureImageStorage,
    Verification,
)

from ..auditlog import AuditLog, AuditLogError, PredictionRecord, new_request_id, utc_now
from ..data.decode import decode_dicom_dataset
from ..data.quality import dicom_facts
from ..errors import ConfigError, ImageDecodeError
from ..security.scan import refuse_flagged_model
from .address import AeAddress, check_ae_title
from .faults import fault_point
from .objects import build_heatmap_segmentation, build_secondary_capture, build_sr, check_uid_root
from .outbox import Outbox
from .scoring import RADIOGRAPH_MODALITIES, DicomScorer, dataset_warnings

log = logging.getLogger("covidscreen.dicomnet")

SUCCESS = 0x0000
SOP_CLASS_NOT_SUPPORTED = 0x0122
OUT_OF_RESOURCES = 0xA700
DATASET_DOES_NOT_MATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
CANNOT_DECODE_DATASET = 0xC210

RADIOGRAPH_SOP_CLASSES = {
    str(ComputedRadiographyImageStorage): "CR Image Storage",
    str(DigitalXRayImageStorageForPresentation): "Digital X-Ray Image Storage - For Presentation",
    str(DigitalXRayImageStorageForProcessing): "Digital X-Ray Image Storage - For Processing",
    str(SecondaryCaptureImageStorage): "Secondary Capture Image Storage (Modality CR or DX only)",
}
_UNCOMPRESSED = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian]
_COMPRESSED = [JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLosslessSV1, JPEGLSLossless, JPEGLSNearLossless,
               JPEG2000Lossless, JPEG2000, RLELossless]


def decodable_transfer_syntaxes() -> list[UID]:
    """Uncompressed syntaxes and the compressed ones pydicom can decode here (so a PACS sends its files unchanged,
    and the node sees exactly the pixels ``covidscreen predict`` would decode from the same file)."""
    # pydicom 3's API; the core decoder (data/decode.py) also reads with pydicom 2
    from pydicom.pixels import get_decoder

    out = list(_UNCOMPRESSED)
    for uid in _COMPRESSED:
        try:
            if get_decoder(uid).is_available:
                out.append(uid)
        except (NotImplementedError, ValueError):
            continue
    return out


def _status(code: int, comment: str = "") -> Dataset:
    ds = Dataset()
    ds.Status = code
    if comment:
        ds.ErrorComment = comment[:64]  # LO: the full reason goes to the node's log
        log.warning("C-STORE answered 0x%04X: %s", code, comment)
    return ds


@dataclass
class NodeConfig:
    """Settings of ``covidscreen dicom-node``.

    Attributes:
        run_dir: the run (or ensemble) folder whose model scores the images.
        ae_title: this node's AE title (the called AE title must match it).
        host: address to listen on (loopback unless told otherwise).
        port: DICOM port.
        workdir: spool and outbox (default: ``<run_dir>/dicomnet``).
        forward_to: the PACS to store results into; None keeps them in the outbox.
        db: audit-log database URL or path (default: the run folder's SQLite file).
        max_queue: images accepted but not yet scored; past it new images get 0xA700.
        batch_size: images scored per forward pass.
        heatmap: also send the Grad-CAM Secondary Capture.
        operating_point: decision threshold (``default``: the run's).
        uid_root: organisation UID root for new Series/SOP Instance UIDs (None: pydicom's generator).
        retry_min_s / retry_max_s: backoff bounds while the PACS is unreachable.
        fsync: sync spooled inputs to disk before answering success (off only in throwaway benchmarks).
        allow_flagged_model: start even when the model's last backdoor scan flagged it (refused otherwise).
    """

    run_dir: Path
    ae_title: str = "COVIDSCREEN"
    host: str = "127.0.0.1"
    port: int = 11112
    workdir: Path | None = None
    forward_to: AeAddress | None = None
    db: str | None = None
    max_queue: int = 16
    batch_size: int = 4
    heatmap: bool = True
    method: str = "gradcam"
    operating_point: str = "default"
    device: str = "auto"
    backend: str = "torch"
    uid_root: str | None = None
    retry_min_s: float = 1.0
    retry_max_s: float = 60.0
    timeout_s: float = 30.0
    fsync: bool = True
    allow_flagged_model: bool = False

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir)
        self.ae_title = check_ae_title(self.ae_title, "--ae-title")
        self.workdir = Path(self.workdir) if self.workdir else self.run_dir / "dicomnet"
        if not 0 <= int(self.port) < 65536:
            raise ConfigError(f"--port {self.port} is invalid: expected 0-65535 (0: any free port)")
        if self.max_queue < 1 or self.batch_size < 1:
            raise ConfigError("--max-queue and --batch-size must be at least 1")
        if not 0 < self.retry_min_s <= self.retry_max_s:
            raise ConfigError("retry bounds must satisfy 0 < retry_min_s <= retry_max_s")
        self.uid_root = check_uid_root(self.uid_root)


@dataclass
class Received:
    """One accepted instance waiting to be scored."""

    id: str
    spool: Path
    dataset: Dataset
    image: np.ndarray
    sha256: str
    calling_aet: str
    received: float = field(default_factory=time.monotonic)


class ResultWriter:
    """Scores batches of decoded datasets, logs them and puts their SR/SC into the outbox (node and dicom-send)."""

    def __init__(self, scorer: DicomScorer, audit: AuditLog, outbox: Outbox, destination: AeAddress | None,
                 uid_root: str | None, source: str = "dicom", on_written: Callable[[], None] | None = None) -> None:
        self.scorer, self.audit, self.outbox = scorer, audit, outbox
        self.destination, self.uid_root, self.source = destination, uid_root, source
        self.on_written = on_written or (lambda: None)

    def write(self, items: list[Received]) -> list[str]:
        """Score, log and put the results into the outbox: first every SR, then (with heatmaps) every heatmap (the
        Secondary Capture and the Segmentation of one image in one item), so that the SRs can leave while the slower
        heatmaps are drawn.

        Returns:
            The outbox item ids (SRs first).

        Raises:
            AuditLogError: the audit log cannot be written (then nothing of this batch is put into the outbox).
        """
        warnings = [dataset_warnings(it.dataset, it.image.shape) for it in items]
        images = [it.image for it in items]
        scores = self.scorer.score(images, warnings=warnings, figures=False)
        s = self.scorer
        reports = [build_sr(it.dataset, score, s.model_id, s.weights_sha256, s.code_version, self.uid_root)
                   for it, score in zip(items, scores, strict=True)]
        records = [PredictionRecord(
            time=utc_now(), request_id=it.id, source=self.source, input_sha256=it.sha256, model_id=s.model_id,
            weights_sha256=s.weights_sha256, code_version=s.code_version, operating_point=score.point.name,
            probabilities=score.probabilities, decision=score.decision, warnings=score.warnings,
            latency_ms=max(0.0, (time.monotonic() - it.received) * 1000.0), site=it.calling_aet[:64],
            ood_score=score.ood_score, in_distribution=score.in_distribution, **_facts_columns(it.dataset))
            for it, score in zip(items, scores, strict=True)]
        self.audit.record_many(records)  # logged before the result leaves: no answer without its row
        fault_point("logged")
        ids = [self.outbox.add([sr], self.destination).id for sr in reports]
        self.on_written()
        fault_point("sr-queued")
        if s.heatmap:
            try:
                s.add_figures(images, scores, [_figure_title(it.dataset) for it in items])
                heatmaps = [[build_secondary_capture(it.dataset, score, s.model_id, s.weights_sha256, self.uid_root),
                             build_heatmap_segmentation(it.dataset, score, s.model_id, s.code_version, self.uid_root)]
                            for it, score in zip(items, scores, strict=True)]
            except Exception:  # the SRs are out already: a heatmap that fails must not send them twice
                log.exception("heatmap failed for %d image(s); their SRs were sent without it", len(items))
                return ids
            ids += [self.outbox.add(objects, self.destination).id for objects in heatmaps]
            fault_point("sc-queued")
        return ids


def _figure_title(ds: Dataset) -> str:
    """The figure's first line: what the image is, never who the patient is (it is burnt into pixels)."""
    parts = [str(getattr(ds, "Modality", "") or "image")]
    if getattr(ds, "ViewPosition", ""):
        parts.append(str(ds.ViewPosition))
    if getattr(ds, "SeriesNumber", None) not in (None, ""):
        parts.append(f"series {ds.SeriesNumber}")
    if getattr(ds, "InstanceNumber", None) not in (None, ""):
        parts.append(f"instance {ds.InstanceNumber}")
    return "input: " + ", ".join(parts)


def check_radiograph(ds: Dataset, sop_class: str) -> tuple[int, str] | None:
    """Why a parsed dataset cannot be scored, as ``(DIMSE status, reason)``; None when it can."""
    if str(getattr(ds, "SOPClassUID", "")) != sop_class:
        return DATASET_DOES_NOT_MATCH, (f"the dataset's SOP Class UID {getattr(ds, 'SOPClassUID', 'missing')} does "
                                        f"not match the C-STORE's {sop_class}")
    missing = [kw for kw in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID") if not getattr(ds, kw, "")]
    if missing:
        return DATASET_DOES_NOT_MATCH, f"the dataset lacks {', '.join(missing)}"
    modality = str(getattr(ds, "Modality", "") or "").upper()
    if sop_class == str(SecondaryCaptureImageStorage) and modality not in RADIOGRAPH_MODALITIES:
        return SOP_CLASS_NOT_SUPPORTED, (f"Secondary Capture with Modality {modality or 'missing'} refused: only "
                                         "CR/DX radiographs are scored")
    if "PixelData" not in ds:
        return DATASET_DOES_NOT_MATCH, "the image has no pixel data"
    return None


def radiograph_pixels(ds: Dataset, name: str, prefix: str = "") -> np.ndarray:
    """The pixels of a dataset that reached covidscreen outside a C-STORE (a local file, a DICOMweb retrieve), refused
    by the node's rules (:func:`check_radiograph`); ``prefix`` starts each message (e.g. the file's path).

    Raises:
        ImageDecodeError: not a CR/DX radiograph SOP class, a dataset the node would refuse, or undecodable pixels.
    """
    sop_class = str(getattr(ds, "SOPClassUID", ""))
    if sop_class not in RADIOGRAPH_SOP_CLASSES:
        raise ImageDecodeError(f"{prefix}SOP class {sop_class or 'missing'} is not accepted; accepted: "
                               f"{', '.join(RADIOGRAPH_SOP_CLASSES.values())}")
    problem = check_radiograph(ds, sop_class)
    if problem is not None:
        raise ImageDecodeError(f"{prefix}{problem[1]}")
    return decode_dicom_dataset(ds, name)


class DicomNode:
    """The running node: ``DicomNode(NodeConfig(run_dir)).start()``, then ``stop()`` (or use ``with``)."""

    def __init__(self, config: NodeConfig, scorer: DicomScorer | None = None, audit: AuditLog | None = None) -> None:
        self.config = config
        # a model that its last backdoor scan flagged is refused unless the operator overrides it (logged then)
        scan_warning = refuse_flagged_model(config.run_dir, config.allow_flagged_model)
        if scan_warning:
            log.warning(scan_warning)
        self.workdir = Path(config.workdir)
        self.spool = self.workdir / "spool"
        self.failed = self.workdir / "failed"
        for folder in (self.spool, self.failed):
            folder.mkdir(parents=True, exist_ok=True)
        self.outbox = Outbox(self.workdir / "outbox")
        self.scorer = scorer or DicomScorer(config.run_dir, config.operating_point, config.device, config.backend,
                                            config.heatmap, config.method)
        self.audit = audit or AuditLog(config.db or config.run_dir)
        self._wake_forwarder = threading.Event()
        self.writer = ResultWriter(self.scorer, self.audit, self.outbox, config.forward_to, config.uid_root,
                                   on_written=self._wake_forwarder.set)
        self.queue: queue.Queue[Received] = queue.Queue(maxsize=config.max_queue)
        self.syntaxes = decodable_transfer_syntaxes()
        self._stop = threading.Event()
        self._inflight = 0  # accepted and not yet scored (queued, or in the worker's batch)
        self._inflight_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._server = None
        self.stats = {"received": 0, "refused": 0, "out_of_resources": 0, "scored": 0, "forwarded": 0,
                      "failed": 0}
        self._stats_lock = threading.Lock()

    # -- lifecycle -----------------------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        return int(self._server.server_address[1]) if self._server else self.config.port

    def start(self) -> DicomNode:
        ae = AE(ae_title=self.config.ae_title)
        ae.require_called_aet = True
        ae.maximum_pdu_size = 0  # no limit on what we accept; senders split by their own PDU size
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.config.timeout_s
        ae.add_supported_context(Verification)
        for cx in AllStoragePresentationContexts:  # accept every storage class: refusals get a DIMSE status
            ae.add_supported_context(cx.abstract_syntax, self.syntaxes)
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_C_ECHO, self._on_echo)]
        self._ae = ae
        self._threads = [threading.Thread(target=self._work, name="dicomnet-worker", daemon=True),
                         threading.Thread(target=self._forward, name="dicomnet-forwarder", daemon=True),
                         threading.Thread(target=self._recover, name="dicomnet-recover", daemon=True)]
        for t in self._threads:
            t.start()
        self._server = ae.start_server((self.config.host, self.config.port), block=False, evt_handlers=handlers)
        log.info("DICOM node %s listening on %s:%d (model %s); results %s", self.config.ae_title, self.config.host,
                 self.port, self.scorer.model_id,
                 f"forwarded to {self.config.forward_to}" if self.config.forward_to else
                 f"kept in {self.outbox.root}")
        return self

    def stop(self) -> None:
        """Stop listening and stop the threads; queued inputs stay in the spool and are scored at the next start."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        self._stop.set()
        self._wake_forwarder.set()
        for t in self._threads:
            t.join(timeout=30)
        self.audit.close()

    def __enter__(self) -> DicomNode:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def serve_forever(self) -> None:
        """Block until interrupted (Ctrl-C), then stop."""
        try:
            while not self._stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    def wait_idle(self, timeout_s: float = 60.0, delivered: bool = True) -> bool:
        """True once nothing is queued or being scored (and, with ``delivered``, the outbox is empty)."""
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if self._inflight == 0 and not any(self.spool.glob("*.dcm")) and (
                    not delivered or len(self.outbox) == 0):
                return True
            time.sleep(0.05)
        return False

    def _put(self, item: Received, timeout: float | None = None) -> None:
        """Queue an item (``timeout`` None: without waiting); raises queue.Full."""
        with self._inflight_lock:
            self._inflight += 1
        try:
            if timeout is None:
                self.queue.put_nowait(item)
            else:
                self.queue.put(item, timeout=timeout)
        except queue.Full:
            self._done(1)
            raise

    def _done(self, n: int) -> None:
        with self._inflight_lock:
            self._inflight -= n

    def _count(self, key: str, n: int = 1) -> None:
        with self._stats_lock:
            self.stats[key] += n

    # -- handlers ------------------------------------------------------------------------------------------------
    def _on_echo(self, event) -> int:
        return SUCCESS

    def _on_store(self, event) -> Dataset | int:
        try:
            return self._store(event)
        except Exception as exc:  # the node answers every dataset; a bug must not take the association down
            log.exception("C-STORE handler failed")
            self._count("refused")
            return _status(CANNOT_UNDERSTAND, f"the node could not process the dataset: {exc}")

    def _store(self, event) -> Dataset | int:
        sop_class = str(event.request.AffectedSOPClassUID)
        if sop_class not in RADIOGRAPH_SOP_CLASSES:
            self._count("refused")
            name = getattr(UID(sop_class), "name", sop_class)
            return _status(SOP_CLASS_NOT_SUPPORTED, f"{name} not accepted: CR/DX images only")
        if self.queue.full():  # answer overload before spending time on decoding
            self._count("out_of_resources")
            return _status(OUT_OF_RESOURCES, f"queue full ({self.config.max_queue} images); retry later")
        raw = event.request.DataSet.getvalue() if event.request.DataSet is not None else b""
        try:
            ds = event.dataset
            ds.file_meta = event.file_meta
            problem = check_radiograph(ds, sop_class)
        except Exception as exc:
            self._count("refused")
            return _status(CANNOT_DECODE_DATASET, f"dataset could not be parsed: {exc}")
        if problem is not None:
            self._count("refused")
            return _status(*problem)
        try:
            image = decode_dicom_dataset(ds, f"SOP Instance {ds.SOPInstanceUID}")
        except ImageDecodeError as exc:
            self._count("refused")
            return _status(CANNOT_UNDERSTAND, f"pixel data cannot be decoded: {exc}")
        item_id, sha256 = new_request_id(), hashlib.sha256(raw).hexdigest()
        calling = str(event.assoc.requestor.ae_title).strip()
        # what a restart needs is in the name: order, id, the input's sha256 and the sender's AE title (hex)
        spool = self.spool / f"{time.time_ns():020d}-{item_id}-{sha256}-{calling.encode().hex()}.dcm"
        try:
            self._write_spool(spool, event.encoded_dataset())
        except OSError as exc:
            self._count("out_of_resources")
            return _status(OUT_OF_RESOURCES, f"cannot spool the image to disk: {exc}")
        fault_point("spooled")
        item = Received(item_id, spool, ds, image, sha256, calling)
        try:
            self._put(item)
        except queue.Full:
            spool.unlink(missing_ok=True)
            self._count("out_of_resources")
            return _status(OUT_OF_RESOURCES, f"queue full ({self.config.max_queue} images); retry later")
        self._count("received")
        return SUCCESS

    def _write_spool(self, path: Path, data: bytes) -> None:
        tmp = path.with_suffix(".part")
        with open(tmp, "wb") as fh:
            fh.write(data)
            if self.config.fsync:
                fh.flush()
                os.fsync(fh.fileno())
        tmp.replace(path)

    # -- worker --------------------------------------------------------------------------------------------------
    def _recover(self) -> None:
        """Inputs accepted before a crash or stop: score them again (blocking puts: the queue stays bounded)."""
        leftovers = sorted(self.spool.glob("*.dcm"))
        if leftovers:
            log.info("re-scoring %d image(s) accepted before the last stop", len(leftovers))
        for path in leftovers:
            if self._stop.is_set():
                return
            try:
                _, item_id, sha256, calling = path.stem.split("-")
                ds = pydicom.dcmread(path)
                image = decode_dicom_dataset(ds, str(path))
                item = Received(item_id, path, ds, image, sha256, bytes.fromhex(calling).decode(errors="replace"))
            except Exception as exc:  # unreadable leftovers are kept aside, never dropped silently
                log.error("spooled %s cannot be read (%s); moved to %s", path.name, exc, self.failed)
                path.replace(self.failed / path.name)
                continue
            while not self._stop.is_set():
                try:
                    self._put(item, timeout=0.5)
                    break
                except queue.Full:
                    continue

    def _next_batch(self) -> list[Received]:
        try:
            first = self.queue.get(timeout=0.2)
        except queue.Empty:
            return []
        batch = [first]
        while len(batch) < self.config.batch_size:
            try:
                batch.append(self.queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _work(self) -> None:
        while not self._stop.is_set():
            batch = self._next_batch()
            if not batch:
                continue
            try:
                self._score(batch)
            finally:
                self._done(len(batch))
            self._wake_forwarder.set()

    def _score(self, batch: list[Received]) -> None:
        try:
            self.writer.write(batch)
        except AuditLogError as exc:
            # no answer without its audit row: the inputs stay spooled and are scored at the next start
            log.error("audit log unavailable, %d image(s) left in the spool: %s", len(batch), exc)
            self._count("failed", len(batch))
            return
        except Exception:
            log.exception("scoring failed; the inputs are kept in %s", self.failed)
            for it in batch:
                it.spool.replace(self.failed / it.spool.name)
            self._count("failed", len(batch))
            return
        for it in batch:
            it.spool.unlink(missing_ok=True)
        self._count("scored", len(batch))

    # -- forwarder -----------------------------------------------------------------------------------------------
    def _forward(self) -> None:
        dest = self.config.forward_to
        if dest is None:
            return
        delay = self.config.retry_min_s
        while not self._stop.is_set():
            self._wake_forwarder.clear()
            pending = self.outbox.pending()
            if not pending:
                self._wake_forwarder.wait(1.0)
                continue
            report = self.outbox.send(dest, self.config.ae_title, pending, self.config.timeout_s)
            self._count("forwarded", len(report.sent))
            if report.failed:
                log.warning("%d result(s) not delivered to %s (%s); retrying in %.1f s", len(report.failed), dest,
                            report.failed[0][1], delay)
                self._stop.wait(delay)
                delay = min(delay * 2, self.config.retry_max_s)
            else:
                delay = self.config.retry_min_s


def _facts_columns(ds: Dataset) -> dict:
    """The audit-log columns of a received dataset's acquisition facts (drift monitoring; no patient data)."""
    f = dicom_facts(ds)
    return {"manufacturer": f.manufacturer, "manufacturer_model": f.manufacturer_model, "photometric": f.photometric,
            "pixel_spacing": f.pixel_spacing, "image_rows": f.height, "image_columns": f.width,
            "view_position": f.view_position, "file_type": f.file_type}


def node_job(config: NodeConfig, require_commissioning: str | None = None, say: Callable[[str], None] = print) -> None:
    """``covidscreen dicom-node``: with ``require_commissioning`` NAME, refuse to start unless the run holds a ``go``
    site commissioning record of that name (``say`` is told its one-line summary); then start the node, say where it
    listens, and serve until interrupted.

    Raises:
        ConfigError: no such ``go`` record (the message names the command that makes one).
    """
    if require_commissioning is not None:
        # imported per command: the commissioning module loads scikit-learn's model selection and matplotlib, which
        # a node needs only for this check (start-up)
        from ..workflows.commission import require_commissioning as check

        say(check(config.run_dir, require_commissioning))
    node = DicomNode(config).start()
    say(f"DICOM node {config.ae_title} listening on {config.host}:{node.port}; Ctrl-C stops it")
    node.serve_forever()

