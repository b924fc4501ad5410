"""One audit-log row: what was asked (the input's sha256, never its pixels), which model answered, and the answer.

Patient identifiers never enter a record: DICOM inputs are known only by the sha256 of their bytes, and the record
has no free-form field for tags. Warnings are short strings ``"<code>: <message>"`` (e.g. ``"modality: DICOM
Modality is CT, the model was trained on CR/DX radiographs"``); the summary counts them by code.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
import subprocess
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import CovidscreenError

SOURCES = ("http", "dicom", "cli")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class RecordError(CovidscreenError):
    """A prediction record is malformed (a bug in the caller, reported with the field at fault)."""


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def new_request_id() -> str:
    """A random request id (32 hex characters)."""
    return uuid.uuid4().hex


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def warning_code(warning: str) -> str:
    """The code of a ``"<code>: <message>"`` warning (the whole text when it has no code)."""
    head, sep, _ = warning.partition(":")
    return head.strip() if sep and head.strip() and " " not in head.strip() else warning.strip()


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """``covidscreen <version>``, plus the git commit (``+g<sha>``, ``.dirty``) when running from a checkout."""
    version = __version__
    root = Path(__file__).resolve().parents[3]
    if (root / ".git").exists():
        try:
            sha = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                                 text=True, timeout=5, check=True).stdout.strip()
            dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=5, check=True).stdout.strip()
            version += f"+g{sha}" + (".dirty" if dirty else "")
        except (OSError, subprocess.SubprocessError):
            pass
    return version


@dataclass(frozen=True, kw_only=True)
class PredictionRecord:
    """One prediction given to a caller.

    Attributes:
        time: when the answer was given (timezone-aware; stored in UTC).
        request_id: the id of the request (one HTTP request or DICOM association may give several records).
        source: ``"http"``, ``"dicom"`` or ``"cli"``.
        input_sha256: sha256 of the input file's bytes, as received.
        model_id: the run's name/architecture (e.g. ``"r1:efficientnet_lite0"``).
        weights_sha256: sha256 of the weights file (or of an ensemble's manifest).
        code_version: :func:`code_version` of the process that answered.
        operating_point: name of the operating point whose threshold made the decision.
        probabilities: class name -> probability.
        decision: the class decided at that operating point.
        warnings: image-quality warnings (``"<code>: <message>"``), empty when none.
        latency_ms: time from receiving the input to the answer.
        site: optional sending station or site label (a DICOM calling AE title, an HTTP client's label), for
            drift per site; never a patient identifier.
        ood_score, in_distribution: the out-of-distribution score and flag (None: the run has no OOD model).
        manufacturer ... file_type: acquisition facts from the header (None when unknown), for drift monitoring.
    """

    time: datetime
    request_id: str
    source: str
    input_sha256: str
    model_id: str
    weights_sha256: str
    code_version: str
    operating_point: str
    probabilities: dict[str, float]
    decision: str
    warnings: list[str] = field(default_factory=list)
    latency_ms: float
    site: str = ""
    ood_score: float | None = None
    in_distribution: bool | None = None
    manufacturer: str | None = None
    manufacturer_model: str | None = None
    photometric: str | None = None
    pixel_spacing: str | None = None
    image_rows: int | None = None
    image_columns: int | None = None
    view_position: str | None = None
    file_type: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.time, datetime) or self.time.tzinfo is None:
            raise RecordError("PredictionRecord.time must be a timezone-aware datetime (use auditlog.utc_now())")
        if self.source not in SOURCES:
            raise RecordError(f"PredictionRecord.source {self.source!r} is unknown; use one of {', '.join(SOURCES)}")
        if not isinstance(self.input_sha256, str) or not _SHA256.match(self.input_sha256):
            raise RecordError("PredictionRecord.input_sha256 must be the 64 lower-case hex digits of a sha256")
        for name in ("request_id", "model_id", "weights_sha256", "code_version", "operating_point", "decision"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value or len(value) > 200:
                raise RecordError(f"PredictionRecord.{name} must be a non-empty string of at most 200 characters")
        if not isinstance(self.site, str) or len(self.site) > 64:
            raise RecordError("PredictionRecord.site must be a string of at most 64 characters")
        if not isinstance(self.probabilities, dict) or not self.probabilities:
            raise RecordError("PredictionRecord.probabilities must be a non-empty dict of class name -> probability")
        probs = {}
        for k, v in self.probabilities.items():
            if not isinstance(k, str) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
                raise RecordError(f"PredictionRecord.probabilities[{k!r}] must map a class name to a finite number")
            probs[k] = float(v)
        object.__setattr__(self, "probabilities", probs)
        if not isinstance(self.warnings, (list, tuple)) or not all(isinstance(w, str) for w in self.warnings):
            raise RecordError("PredictionRecord.warnings must be a list of strings")
        object.__setattr__(self, "warnings", list(self.warnings))
        if not isinstance(self.latency_ms, (int, float)) or not math.isfinite(self.latency_ms) or self.latency_ms < 0:
            raise RecordError("PredictionRecord.latency_ms must be a finite number >= 0")
        object.__setattr__(self, "time", self.time.astimezone(timezone.utc))
        if self.ood_score is not None and not (isinstance(self.ood_score, (int, float))
                                               and not math.isnan(float(self.ood_score))):
            raise RecordError("PredictionRecord.ood_score must be a number or None")
        for name in ("manufacturer", "manufacturer_model", "photometric", "pixel_spacing", "view_position",
                     "file_type"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, str(value)[:64])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
