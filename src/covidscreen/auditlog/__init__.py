"""The audit log: one database row per prediction given, so that a quality officer can later say which model gave
which answer to which image (HTTP service, DICOM node and CLI alike).

- ``records.py``: :class:`PredictionRecord`, the row, and its validation (no pixel data, no patient identifiers:
  images are known only by the sha256 of their bytes).
- ``store.py``: :class:`AuditLog`, the SQLAlchemy store (SQLite file by default, PostgreSQL by URL); every
  ``record`` is committed before it returns; an unreachable or full database raises :class:`AuditLogError`.
- ``summary.py``: decisions and warnings per day (and per site), drift warnings, CSV export.

Usage::

    from covidscreen.auditlog import AuditLog, PredictionRecord
    log = AuditLog("runs/r1")                  # runs/r1/audit_log.sqlite; or "sqlite:///x.db", "postgresql://..."
    log.check()                                # readiness: a committed write, AuditLogError when it fails
    log.record(PredictionRecord(...))          # written and committed before returning
    log.query(since=date(2026, 11, 1)); log.summary(); log.export_csv("log.csv")
"""

from .records import SOURCES, PredictionRecord, code_version, new_request_id, sha256_bytes, utc_now, warning_code
from .store import DEFAULT_FILE, AuditLog, AuditLogError, resolve_url
from .summary import AuditSummary, DaySummary, describe, summarise

__all__ = [
    "DEFAULT_FILE",
    "SOURCES",
    "AuditLog",
    "AuditLogError",
    "AuditSummary",
    "DaySummary",
    "PredictionRecord",
    "code_version",
    "describe",
    "new_request_id",
    "resolve_url",
    "sha256_bytes",
    "summarise",
    "utc_now",
    "warning_code",
]
