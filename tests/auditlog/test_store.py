"""The audit-log store on SQLite and on a real PostgreSQL server: round trips, commits, outages, a full disk."""

from __future__ import annotations

import csv
import json
import threading
from datetime import date, datetime, timedelta, timezone

import pytest
from sqlalchemy import event, inspect, text

from covidscreen.auditlog import AuditLog, AuditLogError, PredictionRecord, resolve_url, sha256_bytes
from covidscreen.auditlog.records import RecordError
from covidscreen.errors import CovidscreenError


def make_record(i: int = 0, when: datetime | None = None, **over) -> PredictionRecord:
    fields = dict(time=when or datetime(2026, 11, 20, 9, 30, tzinfo=timezone.utc) + timedelta(minutes=i),
                  request_id=f"req{i}", source="http", input_sha256=sha256_bytes(str(i).encode()), model_id="run:m",
                  weights_sha256="ab" * 32, code_version="0.1.0", operating_point="youden",
                  probabilities={"covid": 0.25, "normal": 0.75}, decision="normal",
                  warnings=["small: the image is 100 x 100 pixels"], latency_ms=12.5)
    fields.update(over)
    return PredictionRecord(**fields)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'log.sqlite'}"
    return request.getfixturevalue("postgres").new_database()


def test_record_is_committed_and_read_back_by_another_connection(db_url):
    log = AuditLog(db_url)
    log.check()
    rec = make_record(1, site="ward-3")
    assert log.record(rec) >= 1
    # a separate engine (another process, in effect) sees the row: record() committed before returning
    other = AuditLog(db_url)
    [back] = other.query()
    assert back == rec
    assert back.time.tzinfo is not None and back.time == rec.time
    log.close()
    other.close()


def test_query_filters_by_time_and_source_in_time_order(db_url):
    log = AuditLog(db_url)
    day = datetime(2026, 11, 20, tzinfo=timezone.utc)
    log.record_many([make_record(i, when=day + timedelta(days=i), source="dicom" if i % 2 else "http")
                     for i in (3, 0, 2, 1)])
    assert [r.request_id for r in log.query()] == ["req0", "req1", "req2", "req3"]
    assert [r.request_id for r in log.query(since=date(2026, 11, 22))] == ["req2", "req3"]
    assert [r.request_id for r in log.query(since=date(2026, 11, 21), until=date(2026, 11, 23))] == ["req1", "req2"]
    assert [r.request_id for r in log.query(source="dicom")] == ["req1", "req3"]
    assert [r.request_id for r in log.query(limit=1)] == ["req0"]
    assert log.count() == 4


def test_concurrent_writers_lose_nothing(db_url):
    log = AuditLog(db_url)
    errors: list[Exception] = []

    def write(t: int) -> None:
        try:
            for i in range(15):
                log.record(make_record(t * 100 + i))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(t,)) for t in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert log.count() == 90
    assert len({r.request_id for r in log.query()}) == 90


def test_schema_has_no_column_for_pixels_or_patient_identifiers(db_url):
    log = AuditLog(db_url)
    log.check()
    columns = {c["name"] for c in inspect(log.engine).get_columns("predictions")}
    assert columns == {"id", "time", "request_id", "source", "site", "input_sha256", "model_id", "weights_sha256",
                       "code_version", "operating_point", "probabilities", "decision", "warnings", "latency_ms",
                       # drift monitoring: the OOD score and flag, acquisition facts of the header (no patient tags)
                       "ood_score", "in_distribution", "manufacturer", "manufacturer_model", "photometric",
                       "pixel_spacing", "image_rows", "image_columns", "view_position", "file_type"}


def test_export_csv(db_url, tmp_path):
    log = AuditLog(db_url)
    log.record_many([make_record(i) for i in range(3)])
    out = tmp_path / "log.csv"
    assert log.export_csv(out, since=date(2026, 11, 20)) == 3
    rows = list(csv.DictReader(out.open()))
    assert [r["request_id"] for r in rows] == ["req0", "req1", "req2"]
    assert json.loads(rows[0]["probabilities"]) == {"covid": 0.25, "normal": 0.75}
    assert json.loads(rows[0]["warnings"]) == ["small: the image is 100 x 100 pixels"]
    assert rows[0]["time"] == "2026-11-20T09:30:00+00:00"


def test_postgres_outage_raises_then_recovers(postgres):
    log = AuditLog(postgres.new_database(), connect_timeout_s=2)
    log.check()
    log.record(make_record(0))
    postgres.stop()
    try:
        with pytest.raises(AuditLogError, match="cannot write"):
            log.check()
        with pytest.raises(AuditLogError, match="not given"):
            log.record(make_record(1))
    finally:
        postgres.start()
    log.check()  # the pool replaces its dead connections
    log.record(make_record(2))
    assert [r.request_id for r in log.query()] == ["req0", "req2"]


def test_postgres_url_uses_psycopg_and_hides_the_password():
    url = resolve_url("postgresql://audit:s3cret@db.example:5432/covid")
    assert url.drivername == "postgresql+psycopg"
    log = AuditLog("postgresql://audit:s3cret@db.example:5432/covid")
    assert "s3cret" not in log.display_url and "s3cret" not in repr(log)


def test_unreachable_sqlite_folder(tmp_path):
    log = AuditLog(tmp_path / "missing" / "log.sqlite")
    with pytest.raises(AuditLogError, match="does not exist"):
        log.check()
    with pytest.raises(AuditLogError):
        log.record(make_record(0))


def test_full_database_raises_audit_log_error(tmp_path):
    log = AuditLog(tmp_path / "log.sqlite")
    log.check()
    log.engine.dispose()
    # a database that may not grow past its current size: the next pages cannot be allocated, as on a full disk
    event.listen(log.engine, "connect", lambda conn, _: conn.execute("PRAGMA max_page_count=8"))
    big = ["x: " + "y" * 3000]
    with pytest.raises(AuditLogError, match="full"):
        for i in range(100):
            log.record(make_record(i, warnings=big))
    with pytest.raises(AuditLogError):
        for i in range(100):
            log.check()
            log.record(make_record(200 + i, warnings=big))


def test_run_folder_means_its_sqlite_file(tmp_path):
    assert resolve_url(tmp_path).database == str(tmp_path / "audit_log.sqlite")
    log = AuditLog(tmp_path)
    log.record(make_record(0))
    assert (tmp_path / "audit_log.sqlite").is_file()
    with log.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"


def test_bad_url_and_bad_records_are_clear_errors():
    assert issubclass(AuditLogError, CovidscreenError)
    with pytest.raises(AuditLogError, match="not a database URL"):
        AuditLog("nonsense://::")
    with pytest.raises(AuditLogError, match="cannot use"):
        AuditLog("oracle+nodriver://x/y")
    with pytest.raises(RecordError, match="source"):
        make_record(0, source="email")
    with pytest.raises(RecordError, match="timezone"):
        make_record(0, when=datetime(2026, 1, 1))
    with pytest.raises(RecordError, match="input_sha256"):
        make_record(0, input_sha256="Doe^John")
    with pytest.raises(RecordError, match="probabilities"):
        make_record(0, probabilities={"covid": float("nan")})
