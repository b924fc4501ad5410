"""Summaries per day and site, and drift warnings on synthetic logs whose drift is known."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from covidscreen.auditlog import AuditLog, summarise, warning_code
from tests.auditlog.test_store import make_record

START = datetime(2026, 11, 1, 8, tzinfo=timezone.utc)


def day_records(day: int, site: str, n: int, n_covid: int, n_warn: int = 0, weights: str = "ab" * 32) -> list:
    return [make_record(day * 1000 + i, when=START + timedelta(days=day, minutes=i), site=site,
                        decision="covid" if i < n_covid else "normal", weights_sha256=weights,
                        warnings=["lateral: ViewPosition is LL"] if i < n_warn else [])
            for i in range(n)]


def test_per_day_counts_and_warning_codes():
    recs = day_records(0, "a", 10, 3, n_warn=2) + day_records(1, "a", 5, 1)
    s = summarise(recs)
    assert [(d.day.day, d.n, d.decisions["covid"], d.with_warnings) for d in s.days] == [(1, 10, 3, 2), (2, 5, 1, 0)]
    assert s.days[0].warnings == {"lateral": 2}
    assert s.total == 15 and s.decisions() == {"covid": 4, "normal": 11}
    assert s.days[0].mean_latency_ms == 12.5
    assert s.drift == []


def test_a_sudden_rise_of_positives_at_one_site_is_reported_for_that_site_only():
    recs = []
    for day in range(8):
        recs += day_records(day, "north", 40, 4) + day_records(day, "south", 40, 4)
    recs += day_records(8, "north", 40, 20) + day_records(8, "south", 40, 5)
    drift = summarise(recs).drift
    assert len(drift) == 2, drift  # 'covid' rose and, as its mirror, 'normal' fell; both at north, on day 9
    assert all(d.startswith("2026-11-09 site 'north'") for d in drift)
    assert any("'covid' decisions rose to 50% of 40" in d for d in drift)


def test_small_days_and_short_baselines_are_not_judged():
    recs = day_records(0, "a", 60, 5) + day_records(1, "a", 10, 9)  # day 2 too small to judge
    assert summarise(recs).drift == []
    recs = day_records(0, "a", 30, 3) + day_records(1, "a", 40, 30)  # baseline too small
    assert summarise(recs).drift == []


def test_rise_of_warnings_and_new_weights_are_reported():
    recs = []
    for day in range(7):
        recs += day_records(day, "", 30, 3)
    recs += day_records(7, "", 30, 3, n_warn=15, weights="cd" * 32)
    drift = summarise(recs).drift
    assert any("new model weights (cdcdcdcdcdcd)" in d for d in drift)
    assert any("images with warnings rose to 50% of 30" in d and "all sources" in d for d in drift)


def test_summary_through_the_store(tmp_path):
    log = AuditLog(tmp_path)
    log.record_many(day_records(0, "a", 4, 1) + day_records(3, "a", 2, 2))
    s = log.summary(since=START + timedelta(days=1))
    assert [(d.day.day, d.n) for d in s.days] == [(4, 2)]


def test_warning_code():
    assert warning_code("modality: DICOM Modality is CT") == "modality"
    assert warning_code("a free text warning: with a colon") == "a free text warning: with a colon"
