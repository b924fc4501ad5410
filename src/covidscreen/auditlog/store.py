"""The audit-log database, through SQLAlchemy: a SQLite file by default, PostgreSQL (or any SQLAlchemy URL) by URL.

Each :meth:`AuditLog.record` runs in its own transaction, committed before it returns, so that an answer is only
given once its row is on disk (SQLite in WAL mode with ``synchronous=FULL``): killing the process loses no answered
prediction. A database that cannot be reached or written (down, full, read-only) raises :class:`AuditLogError`;
callers must then refuse to answer. The schema is created on first contact, so a service can start while its
database is still down and become ready when it comes up.
"""

from __future__ import annotations

import csv
import json
import threading
from collections.abc import Iterator
from datetime import date, datetime, time, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    event,
    func,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.types import TypeDecorator

from ..errors import CovidscreenError
from .records import PredictionRecord, utc_now
from .summary import summarise

DEFAULT_FILE = "audit_log.sqlite"
CSV_COLUMNS = ("time", "request_id", "source", "site", "input_sha256", "model_id", "weights_sha256", "code_version",
               "operating_point", "decision", "probabilities", "warnings", "latency_ms", "ood_score",
               "in_distribution", "manufacturer", "manufacturer_model", "photometric", "pixel_spacing", "image_rows",
               "image_columns", "view_position", "file_type")


class AuditLogError(CovidscreenError):
    """The audit log cannot be reached, written or read (database down, full, read-only, wrong URL)."""


class _UtcDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive, in UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


metadata = MetaData()
predictions = Table(
    "predictions", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("time", _UtcDateTime, nullable=False, index=True),
    Column("request_id", String(200), nullable=False, index=True),
    Column("source", String(16), nullable=False),
    Column("site", String(64), nullable=False, default=""),
    Column("input_sha256", String(64), nullable=False, index=True),
    Column("model_id", String(200), nullable=False),
    Column("weights_sha256", String(200), nullable=False),
    Column("code_version", String(200), nullable=False),
    Column("operating_point", String(200), nullable=False),
    Column("probabilities", JSON, nullable=False),
    Column("decision", String(200), nullable=False),
    Column("warnings", JSON, nullable=False),
    Column("latency_ms", Float, nullable=False),
    # added for drift monitoring; nullable, and added to older databases by _add_missing_columns
    Column("ood_score", Float, nullable=True),
    Column("in_distribution", Boolean, nullable=True),
    Column("manufacturer", String(64), nullable=True),
    Column("manufacturer_model", String(64), nullable=True),
    Column("photometric", String(64), nullable=True),
    Column("pixel_spacing", String(64), nullable=True),
    Column("image_rows", Integer, nullable=True),
    Column("image_columns", Integer, nullable=True),
    Column("view_position", String(64), nullable=True),
    Column("file_type", String(64), nullable=True),
)
# one row, rewritten by check(): readiness means "a committed write works", which a SELECT cannot tell on a full disk
heartbeat = Table(
    "audit_log_heartbeat", metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("time", _UtcDateTime, nullable=False),
)


def resolve_url(url_or_path: str | Path) -> URL:
    """A SQLAlchemy URL from a URL, a SQLite file path, or a run folder (its ``audit_log.sqlite``).

    ``postgresql://`` URLs use psycopg 3 (``postgresql+psycopg://``), the driver the ``serve`` extra installs.
    """
    text = str(url_or_path)
    if "://" in text:
        try:
            url = make_url(text)
        except (ArgumentError, ValueError):
            raise AuditLogError(f"audit log URL {text!r} is not a database URL; give sqlite:///PATH, "
                                "postgresql://USER@HOST/DB, or a file or run folder path") from None
        if url.drivername in ("postgresql", "postgres"):
            url = url.set(drivername="postgresql+psycopg")
        return url
    path = Path(text).expanduser()
    if path.is_dir():
        path = path / DEFAULT_FILE
    return URL.create("sqlite", database=str(path.resolve()))


def _describe(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    return (str(orig).strip().splitlines() or [orig.__class__.__name__])[0]


class AuditLog:
    """The audit log of one service, DICOM node or batch job (thread-safe; one instance per process)."""

    def __init__(self, url_or_path: str | Path, connect_timeout_s: float = 5.0) -> None:
        self.url = resolve_url(url_or_path)
        self.display_url = self.url.render_as_string(hide_password=True)
        kwargs: dict[str, Any] = {"pool_pre_ping": True}
        if self.url.get_backend_name() == "sqlite":
            # several worker threads write: one connection per thread is fine, SQLite serialises the writes
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": connect_timeout_s}
        elif self.url.get_backend_name() == "postgresql":
            kwargs["connect_args"] = {"connect_timeout": max(1, int(connect_timeout_s))}
            kwargs["pool_size"] = 4
        try:
            self.engine: Engine = create_engine(self.url, **kwargs)
        except (ArgumentError, ImportError, SQLAlchemyError) as exc:
            raise AuditLogError(f"audit log {self.display_url}: cannot use this database ({_describe(exc)})") from None
        if self.url.get_backend_name() == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._schema_ready = False
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"AuditLog({self.display_url!r})"

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.engine.dispose()

    def _fail(self, action: str, exc: BaseException) -> AuditLogError:
        return AuditLogError(f"audit log {self.display_url}: cannot {action} ({_describe(exc)}); predictions are "
                             "not given while their audit record cannot be written")

    def _ensure_schema(self) -> None:
        if self._schema_ready:
            return
        with self._lock:
            if self._schema_ready:
                return
            if self.url.get_backend_name() == "sqlite" and self.url.database:
                parent = Path(self.url.database).parent
                if not parent.is_dir():
                    raise AuditLogError(f"audit log {self.display_url}: folder {parent} does not exist; create it "
                                        "or give another --db")
            try:
                metadata.create_all(self.engine)
                self._add_missing_columns()
            except SQLAlchemyError as exc:
                raise self._fail("create its tables", exc) from None
            self._schema_ready = True

    def _add_missing_columns(self) -> None:
        """A database written by an older covidscreen lacks the newer (nullable) columns: add them in place, so that
        its rows stay and new rows carry the new facts (``ALTER TABLE ... ADD COLUMN``: SQLite and PostgreSQL)."""
        have = {c["name"] for c in inspect(self.engine).get_columns("predictions")}
        missing = [c for c in predictions.columns if c.name not in have]
        if not missing:
            return
        with self.engine.begin() as conn:
            for col in missing:
                kind = col.type.compile(dialect=self.engine.dialect)
                conn.execute(text(f'ALTER TABLE predictions ADD COLUMN "{col.name}" {kind}'))

    def check(self) -> None:
        """Readiness: connect and commit a write (a heartbeat row). Raises AuditLogError when that fails."""
        self._ensure_schema()
        now = utc_now()
        try:
            with self.engine.begin() as conn:
                if conn.execute(update(heartbeat).where(heartbeat.c.id == 1).values(time=now)).rowcount == 0:
                    conn.execute(insert(heartbeat).values(id=1, time=now))
        except SQLAlchemyError as exc:
            raise self._fail("write", exc) from None

    def record(self, rec: PredictionRecord) -> int:
        """Write one record and commit it before returning; returns its row id. Raises AuditLogError."""
        if not isinstance(rec, PredictionRecord):
            raise TypeError(f"AuditLog.record takes a PredictionRecord, not {type(rec).__name__}")
        return self.record_many([rec])[0]

    def record_many(self, recs: list[PredictionRecord]) -> list[int]:
        """Write several records in one transaction (all or none), committed before returning; their row ids."""
        self._ensure_schema()
        ids: list[int] = []
        try:
            with self.engine.begin() as conn:
                for rec in recs:
                    row = {k: v for k, v in rec.to_dict().items()}
                    ids.append(int(conn.execute(insert(predictions).values(**row)).inserted_primary_key[0]))
        except SQLAlchemyError as exc:
            raise self._fail("write", exc) from None
        return ids

    def iter_records(self, since: date | datetime | None = None, until: date | datetime | None = None,
                     source: str | None = None, batch: int = 1000) -> Iterator[PredictionRecord]:
        """Records in time order, streamed (bounded memory). ``since`` inclusive, ``until`` exclusive; a date means
        its midnight UTC."""
        self._ensure_schema()
        stmt = select(predictions).order_by(predictions.c.time, predictions.c.id)
        if since is not None:
            stmt = stmt.where(predictions.c.time >= _as_datetime(since))
        if until is not None:
            stmt = stmt.where(predictions.c.time < _as_datetime(until))
        if source is not None:
            stmt = stmt.where(predictions.c.source == source)
        try:
            with self.engine.connect() as conn:
                result = conn.execution_options(yield_per=batch).execute(stmt)
                for row in result.mappings():
                    data = dict(row)
                    data.pop("id")
                    yield PredictionRecord(**data)
        except SQLAlchemyError as exc:
            raise self._fail("read", exc) from None

    def query(self, since: date | datetime | None = None, until: date | datetime | None = None,
              source: str | None = None, limit: int | None = None) -> list[PredictionRecord]:
        """Records in time order (at most ``limit``, the oldest first)."""
        out: list[PredictionRecord] = []
        for rec in self.iter_records(since, until, source):
            if limit is not None and len(out) >= limit:
                break
            out.append(rec)
        return out

    def count(self) -> int:
        self._ensure_schema()
        try:
            with self.engine.connect() as conn:
                return int(conn.execute(select(func.count()).select_from(predictions)).scalar_one())
        except SQLAlchemyError as exc:
            raise self._fail("read", exc) from None

    def summary(self, since: date | datetime | None = None, until: date | datetime | None = None, **drift: Any):
        """Decisions and warnings per day and site, with drift warnings (see :func:`summary.summarise`)."""
        return summarise(self.iter_records(since, until), **drift)

    def export_csv(self, path: str | Path, since: date | datetime | None = None,
                   until: date | datetime | None = None) -> int:
        """Write the records to a CSV file (probabilities and warnings as JSON); returns the number of rows."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        n = 0
        with open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(CSV_COLUMNS)
            for rec in self.iter_records(since, until):
                row = rec.to_dict()
                row["time"] = rec.time.isoformat()
                row["probabilities"] = json.dumps(rec.probabilities, sort_keys=True)
                row["warnings"] = json.dumps(rec.warnings)
                writer.writerow([row[c] for c in CSV_COLUMNS])
                n += 1
        tmp.replace(path)
        return n


def _as_datetime(value: date | datetime) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    return datetime.combine(value, time(0), tzinfo=timezone.utc)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")  # readers (summaries, exports) never block the service's writes
    cur.execute("PRAGMA synchronous=FULL")  # a committed row survives a power cut, not only a killed process
    cur.close()
