"""The service's work, without HTTP: a run's Predictor behind a micro-batcher, image-quality warnings, Grad-CAM
overlays made as ``covidscreen explain`` makes them, and the audit log written before any answer is given."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import os
import re
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..auditlog import AuditLog, AuditLogError, PredictionRecord, code_version, sha256_bytes, utc_now
from ..data.preprocess import load_preprocessed
from ..data.quality import ImageFacts, quality_warnings, read_facts
from ..errors import CovidscreenError, DataError, ImageDecodeError, ModalityError
from ..evaluation.calibration import apply_temperature
from ..evaluation.metrics import predict_labels
from ..explain.cam import Explainer
from ..explain.figures import explanation_png, overlay_png
from ..explain.image import explain_image
from ..explain.inputs import run_input_loader
from ..inference.modality import check_dicom_modality
from ..inference.onnx import OnnxModel
from ..ood import PLAIN_WARNING
from ..security.scan import refuse_flagged_model, strip_detector
from ..workflows.predict import open_predictor
from .batcher import MicroBatcher, QueueFull
from .config import ServeConfig
from .metrics import ServiceMetrics
from .modelinfo import model_info, point_info, weights_id
from .schemas import FileResult, ModelInfo

logger = logging.getLogger("covidscreen.serving")
SITE_LABEL = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
NOTICE = "Research tool, not a diagnosis: every result must be checked by a qualified reader."


class ServiceError(Exception):
    """An answer other than 200 for the whole request (the HTTP layer turns it into JSON)."""

    def __init__(self, status: int, code: str, message: str, retry_after_s: int | None = None,
                 results: list[FileResult] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.retry_after_s, self.results = retry_after_s, results


@dataclass
class Upload:
    filename: str
    data: bytes


@dataclass
class _Work:
    upload: Upload
    result: FileResult
    path: Path | None = None
    image: np.ndarray | None = None
    probs: np.ndarray | None = None
    started: float = field(default_factory=time.perf_counter)
    facts: ImageFacts | None = None  # header facts, logged for drift monitoring


def _b64png(arr: np.ndarray | None = None, png: bytes | None = None) -> str:
    if png is None:
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG", optimize=False)
        png = buf.getvalue()
    return base64.b64encode(png).decode()


class Screening:
    """One loaded run answering predictions (create in the serving process; ``await start()`` before use)."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        run_dir = config.run_dir
        # a model that its last backdoor scan flagged is refused unless the operator overrides it (logged then)
        self.scan_warning = refuse_flagged_model(run_dir, config.allow_flagged_model)
        if self.scan_warning:
            logger.warning(self.scan_warning)
        # the engine as predict and the DICOM node choose it (backend auto: ONNX Runtime when exported)
        self.predictor = open_predictor(run_dir, config.backend, config.device, config.operating_point,
                                        expect_sha256=config.expect_sha256, manifest=config.manifest)
        self.backend = backend = self.predictor.backend
        if config.model_threads:
            self._limit_model_threads(config.model_threads)
        # every result carries the out-of-distribution score and flag (a run without an OOD model: a warning)
        self.ood = self.predictor.ood
        run = self.run = self.predictor.run
        self.metrics = ServiceMetrics(run.positive_class, self.ood.val_scores if self.ood is not None else None)
        self.default_point = config.operating_point
        self.model_id = run.model_id
        self.weights_sha256 = weights_id(run)
        self.explain_available = run.kind != "ensemble"  # Grad-CAM of an ensemble is undefined (as in explain)
        self.info: ModelInfo = model_info(run, backend, self.default_point, self.explain_available)
        # STRIP, calibrated now (cached in the run folder) so that a run without validation images fails at start
        self.strip = strip_detector(run_dir, self.predictor, frr=config.strip_frr) if config.strip else None
        self.info.strip_threshold = self.strip.threshold if self.strip is not None else None
        self.audit = AuditLog(config.db or run_dir)
        self.audit_ok = False
        self.ready = False
        self.batcher = MicroBatcher(self._forward, max_batch=config.max_batch,
                                    max_wait_s=config.batch_wait_ms / 1000, max_queue=config.max_queue)
        self._decoders = ThreadPoolExecutor(max_workers=config.decode_threads, thread_name_prefix="covidscreen-decode")
        self._tmp = Path(tempfile.mkdtemp(prefix="covidscreen-serve-"))
        self._explain_parts = None
        self._writer = GroupCommit(self.audit.record_many)

    def _forward(self, images: np.ndarray) -> list[tuple[np.ndarray, float | None]]:
        """One forward pass of a micro-batch: each image's probabilities and out-of-distribution score."""
        probs, scores = self.predictor.score_arrays(images)
        return [(p, None if scores is None else float(scores[i])) for i, p in enumerate(probs)]

    def _limit_model_threads(self, n: int) -> None:
        torch.set_num_threads(n)
        if self.predictor.onnx is not None:
            self.predictor.onnx = OnnxModel(self.predictor.run, threads=n)

    # -- life cycle ------------------------------------------------------------------------------------------------
    async def start(self) -> None:
        await self.batcher.start()
        size = self.predictor.size
        await self.batcher.run_exclusive(self.predictor.predict_arrays, np.zeros((1, size, size), np.uint8))
        self.ready = True
        try:
            await asyncio.to_thread(self.audit.check)
            self.audit_ok = True
        except AuditLogError:
            self.audit_ok = False  # /readyz says why; the service becomes ready when the database answers

    async def stop(self) -> None:
        self.ready = False
        await self.batcher.stop()
        b = self.batcher
        logger.info(json.dumps({"event": "stopped", "forward_passes": b.batches, "images": b.images,
                                "mean_batch": round(b.images / b.batches, 2) if b.batches else 0,
                                "audit_commits": self._writer.commits}))
        self._decoders.shutdown(wait=True)
        self.audit.close()
        shutil.rmtree(self._tmp, ignore_errors=True)

    async def readiness(self) -> list[str]:
        """Why the service is not ready (empty: ready)."""
        reasons = []
        if not self.ready:
            reasons.append("the model is not loaded and warmed up yet")
        try:
            await asyncio.to_thread(self.audit.check)
            self.audit_ok = True
        except AuditLogError as exc:
            self.audit_ok = False
            reasons.append(str(exc))
        return reasons

    # -- requests --------------------------------------------------------------------------------------------------
    def resolve_point(self, name: str | None) -> str:
        name = name or self.default_point
        try:
            self.run.point(name)
        except DataError as exc:
            raise ServiceError(422, "unknown_operating_point", str(exc)) from None
        return name

    async def predict(self, uploads: list[Upload], request_id: str, operating_point: str | None = None,
                      explain: bool = False, target: str | None = None, figure: bool = False,
                      site: str = "") -> list[FileResult]:
        """Results for each upload, in order; raises ServiceError when no answer can be given at all."""
        t0 = time.perf_counter()
        point = self.resolve_point(operating_point)
        if site and not SITE_LABEL.match(site):
            raise ServiceError(422, "bad_site", f"site label {site[:80]!r} is not accepted: use 1-64 letters, digits, "
                               "'.', '_' or '-' (a ward or station name, never a patient identifier)")
        if explain and not self.explain_available:
            raise ServiceError(409, "explain_unavailable", "Grad-CAM of an ensemble is not defined (its members look "
                               "at different layers); use /v1/predict, or serve one member run to explain")
        if explain and target is not None and target not in self.predictor.classes:
            raise ServiceError(422, "unknown_class", f"class {target!r} is not a class of this model; classes: "
                               f"{', '.join(self.predictor.classes)}")
        if not uploads:
            raise ServiceError(422, "no_files", "no files were sent: put one or more PNG, JPEG or DICOM files in the "
                               "multipart form field 'files'")
        if len(uploads) > self.config.max_files:
            raise ServiceError(413, "too_many_files", f"too many files: {len(uploads)} in one request, at most "
                               f"{self.config.max_files}; send them in several requests")
        if not self.ready:
            raise ServiceError(503, "not_ready", "the model is still loading; retry shortly", retry_after_s=2)
        if not self.audit_ok:
            # a prediction that cannot be logged is not given: do not spend the model's time on it
            try:
                await asyncio.to_thread(self.audit.check)
                self.audit_ok = True
            except AuditLogError as exc:
                raise ServiceError(503, "audit_log_unavailable", str(exc), retry_after_s=5) from None
        try:
            self.batcher.reserve(len(uploads))
        except QueueFull as exc:
            raise ServiceError(503, "at_capacity", str(exc), retry_after_s=exc.retry_after_s) from None
        works = [_Work(u, FileResult(filename=_safe_name(u.filename)), started=t0) for u in uploads]
        try:
            await asyncio.gather(*(self._one(w, point) for w in works))
            if explain:
                for w in works:  # one at a time on the model thread, between forward passes
                    if w.result.error is None:
                        await self._explain(w, target, figure)
        finally:
            for w in works:
                if w.path is not None:
                    w.path.unlink(missing_ok=True)
        done = [w for w in works if w.result.error is None]
        if done:
            now = utc_now()
            records = [PredictionRecord(
                time=now, request_id=request_id, source="http", input_sha256=w.result.input_sha256,
                model_id=self.model_id, weights_sha256=self.weights_sha256, code_version=code_version(),
                operating_point=point, probabilities=w.result.probabilities, decision=w.result.decision,
                warnings=w.result.warnings, latency_ms=(time.perf_counter() - w.started) * 1000, site=site,
                ood_score=w.result.ood_score, in_distribution=w.result.in_distribution, **facts_columns(w.facts))
                for w in done]
            try:
                await self._writer.write(records)
            except AuditLogError as exc:
                self.audit_ok = False
                raise ServiceError(503, "audit_log_unavailable", str(exc), retry_after_s=5) from None
        for w in done:
            self.metrics.prediction(w.result.decision, w.result.ood_score, w.result.in_distribution)
        results = [w.result for w in works]
        if not done:
            first = results[0]
            raise ServiceError(first.status, "unreadable_files" if len(results) > 1 else "unreadable_file",
                               first.error if len(results) == 1 else
                               f"none of the {len(results)} files could be used; first: {first.error}",
                               results=results)
        return results

    async def _one(self, w: _Work, point: str) -> None:
        loop = asyncio.get_running_loop()
        res = w.result
        submitted = False
        try:
            image, warnings = await loop.run_in_executor(self._decoders, self._receive, w)
            res.warnings = warnings
            submitted = True
            probs, ood_score = await self.batcher.submit(image)
        except _FileError as exc:
            res.error, res.status = exc.message, exc.status
        except QueueFull as exc:  # pragma: no cover - reservations were made up front
            res.error, res.status = str(exc), 503
        finally:
            if not submitted:
                self.batcher.cancel(1)
        if res.error is not None:
            return
        threshold, temperature = self.run.threshold(point), self.run.temperature_for(point)
        if temperature != self.predictor.temperature:  # the batch was scaled by the service's default point's
            probs = apply_temperature(probs[None], temperature / self.predictor.temperature)[0]
        decision = predict_labels(probs[None], self.predictor.positive_index, threshold)[0]
        info = point_info(self.run, point)
        res.probabilities = {c: float(p) for c, p in zip(self.predictor.classes, probs)}
        res.decision = self.predictor.classes[int(decision)]
        res.operating_point = point
        res.threshold = threshold
        res.sensitivity = info.sensitivity if info else None
        res.specificity = info.specificity if info else None
        if ood_score is not None:
            res.ood_score = ood_score
            res.in_distribution = bool(self.predictor.in_distribution(np.array([ood_score]))[0])
            if not res.in_distribution:  # first, in plain words: the web page lists warnings under the decision
                res.warnings.insert(0, f"out_of_distribution: {PLAIN_WARNING} (OOD score {ood_score:.4g} is above "
                                       f"the threshold {self.ood.threshold:.4g} that flags "
                                       f"{self.ood.flag_rate:.0%} of validation images)")
        if self.strip is not None:  # on the model thread, between forward passes: STRIP is forward passes too
            flags, entropy = await self.batcher.run_exclusive(self.strip.flags, image[None])
            res.strip_entropy, res.strip_flag = float(entropy[0]), bool(flags[0])
            if res.strip_flag:
                res.warnings.append(f"backdoor_trigger_suspected: STRIP entropy {entropy[0]:.3f} is below the "
                                    f"{self.strip.threshold:.3f} of all but {self.strip.frr:.0%} of clean validation "
                                    "images; the prediction may be driven by a planted trigger")

    def _receive(self, w: _Work) -> tuple[np.ndarray, list[str]]:
        """On a decoder thread (hashing and writing a large upload would stall the event loop): the checksum, a
        private temporary file for the decoders, then :meth:`_load`."""
        data = w.upload.data
        w.result.input_sha256 = sha256_bytes(data)
        if not data:
            raise _FileError(422, f"{w.result.filename}: the file is empty (0 bytes); send a PNG, JPEG or DICOM "
                                  "image")
        fd, name = tempfile.mkstemp(dir=self._tmp, suffix=".upload")
        w.path = Path(name)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        w.facts = read_facts(w.path)
        return self._load(w.path, w.result.filename, w.facts, w.result)

    def _load(self, path: Path, filename: str, facts: ImageFacts | None = None,
              result: FileResult | None = None) -> tuple[np.ndarray, list[str]]:
        """On a decoder thread: header facts, pixel limit, then the run's preprocessing."""
        facts = facts if facts is not None else read_facts(path)
        if result is not None and facts.study_uid:
            result._dicom_uids = (facts.study_uid, facts.series_uid, facts.sop_uid)
        if facts.modality is not None:  # a DICOM of the other modality is refused, as predict refuses it
            try:
                check_dicom_modality(facts.modality, self.run.modality, filename)
            except ModalityError as exc:
                raise _FileError(422, str(exc)) from None
        if facts.height and facts.width and facts.height * facts.width > self.config.max_pixels:
            raise _FileError(413, f"the image is {facts.width} x {facts.height} pixels, more than the "
                                  f"{self.config.max_pixels:,} allowed; downscale it first")
        p = self.predictor
        try:
            image = load_preprocessed(path, p.size, p.preprocess, p.segmenter)
        except ImageDecodeError as exc:
            raise _FileError(422, str(exc).replace(str(path), filename)) from None
        except (CovidscreenError, ValueError, OSError, MemoryError) as exc:
            raise _FileError(422, f"{filename}: the image could not be prepared for the model ({exc})") from None
        return image, quality_warnings(facts, image, run_modality=self.run.modality)

    def _explain_setup(self):
        """The explained model, loaded as covidscreen explain loads it (its own copy: the Predictor's is in
        channels-last memory format, which moves Grad-CAM maps by float rounding), and the run's input loader."""
        if self._explain_parts is None:
            model = self.run.load_model(self.predictor.device)
            self._explain_parts = (model, *run_input_loader(self.run.preprocess, self.run.image_size, self.run.path))
        return self._explain_parts

    def _explain_sync(self, path: Path, target: str | None, figure: bool, title: str) -> dict:
        model, load_input, mask_fn = self._explain_setup()
        p = self.predictor
        with Explainer(model, method="gradcam", classes=p.classes, image_size=p.size) as ex:
            e = explain_image(ex, load_input, path, target, mask_fn)
        shown = e.image
        if max(shown.shape) > 256:  # the resolution the overlay is drawn at (figures.overlay_png)
            scale = 256 / max(shown.shape)
            shown = np.asarray(Image.fromarray(shown).resize((max(1, round(shown.shape[1] * scale)),
                                                              max(1, round(shown.shape[0] * scale)))))
        out = {"overlay_png": _b64png(png=overlay_png(e, inches=3.6, dpi=100)), "image_png": _b64png(shown),
               "explained_class": e.target_name}
        if figure:
            out["figure_png"] = _b64png(png=explanation_png(e, title=title))
        return out

    async def _explain(self, w: _Work, target: str | None, figure: bool) -> None:
        try:
            parts = await self.batcher.run_exclusive(self._explain_sync, w.path, target, figure, w.result.filename)
        except ImageDecodeError as exc:  # changed between the two reads: cannot happen to a temp file, but say so
            w.result.error, w.result.status = str(exc).replace(str(w.path), w.result.filename), 422
            return
        except CovidscreenError as exc:
            w.result.warnings.append(f"explain: no heatmap ({exc})")
            return
        for k, v in parts.items():
            setattr(w.result, k, v)


def facts_columns(facts: ImageFacts | None) -> dict:
    """The audit-log columns of an image's header facts (drift monitoring)."""
    f = facts or ImageFacts()
    return {"manufacturer": f.manufacturer, "manufacturer_model": f.manufacturer_model, "photometric": f.photometric,
            "pixel_spacing": f.pixel_spacing, "image_rows": f.height, "image_columns": f.width,
            "view_position": f.view_position, "file_type": f.file_type}


class GroupCommit:
    """Audit records of requests that finish together go into one transaction (one disk sync instead of one per
    request); each request still waits until its own records are committed, and a failed commit fails them all."""

    def __init__(self, write_many) -> None:
        self.write_many = write_many
        self.pending: list[tuple[list[PredictionRecord], asyncio.Future]] = []
        self.task: asyncio.Task | None = None
        self.commits = 0

    async def write(self, records: list[PredictionRecord]) -> None:
        fut = asyncio.get_running_loop().create_future()
        self.pending.append((records, fut))
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._drain())
        await fut

    async def _drain(self) -> None:
        while self.pending:
            group, self.pending = self.pending, []
            try:
                await asyncio.to_thread(self.write_many, [r for recs, _ in group for r in recs])
            except Exception as exc:  # noqa: BLE001 - every waiting request gets the failure
                for _, fut in group:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            self.commits += 1
            for _, fut in group:
                if not fut.done():
                    fut.set_result(None)


class _FileError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def _safe_name(name: str | None) -> str:
    base = os.path.basename(name or "") or "upload"
    return base[:200]


__all__ = ["NOTICE", "Screening", "ServiceError", "Upload", "DataError"]
