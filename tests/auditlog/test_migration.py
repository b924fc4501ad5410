"""An audit log written before the drift columns existed: opened by this version, its rows stay and new rows carry
the OOD score and acquisition facts."""

from __future__ import annotations

import sqlite3

from covidscreen.auditlog import AuditLog, PredictionRecord, utc_now

OLD_SCHEMA = """CREATE TABLE predictions (id INTEGER PRIMARY KEY AUTOINCREMENT, time DATETIME NOT NULL,
request_id VARCHAR(200) NOT NULL, source VARCHAR(16) NOT NULL, site VARCHAR(64) NOT NULL,
input_sha256 VARCHAR(64) NOT NULL, model_id VARCHAR(200) NOT NULL, weights_sha256 VARCHAR(200) NOT NULL,
code_version VARCHAR(200) NOT NULL, operating_point VARCHAR(200) NOT NULL, probabilities JSON NOT NULL,
decision VARCHAR(200) NOT NULL, warnings JSON NOT NULL, latency_ms FLOAT NOT NULL)"""


def record(**extra) -> PredictionRecord:
    return PredictionRecord(time=utc_now(), request_id="r1", source="http", input_sha256="a" * 64, model_id="m",
                            weights_sha256="w", code_version="v", operating_point="youden",
                            probabilities={"covid": 0.2, "normal": 0.8}, decision="normal", latency_ms=3.0, **extra)


def test_old_database_gains_the_new_columns_and_keeps_its_rows(tmp_path):
    path = tmp_path / "old.sqlite"
    con = sqlite3.connect(path)
    con.execute(OLD_SCHEMA)
    con.execute("INSERT INTO predictions (time, request_id, source, site, input_sha256, model_id, weights_sha256, "
                "code_version, operating_point, probabilities, decision, warnings, latency_ms) VALUES "
                "('2026-11-01 10:00:00', 'old', 'http', '', ?, 'm', 'w', 'v', 'youden', '{\"covid\": 0.9}', 'covid', "
                "'[]', 5.0)", ("b" * 64,))
    con.commit()
    con.close()
    with AuditLog(path) as log:
        log.record(record(ood_score=12.5, in_distribution=False, manufacturer="ACME", image_rows=1024,
                          image_columns=1024, file_type="dicom", photometric="MONOCHROME2", pixel_spacing="0.14\\0.14",
                          view_position="PA", manufacturer_model="X1"))
        old, new = log.query()
    assert old.request_id == "old" and old.ood_score is None and old.manufacturer is None
    assert new.ood_score == 12.5 and new.in_distribution is False and new.manufacturer == "ACME"
    assert new.image_rows == 1024 and new.pixel_spacing == "0.14\\0.14"
    cols = {row[1] for row in sqlite3.connect(path).execute("PRAGMA table_info(predictions)")}
    assert {"ood_score", "in_distribution", "manufacturer", "file_type", "view_position"} <= cols
