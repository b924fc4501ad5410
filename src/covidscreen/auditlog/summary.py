"""Summaries of the audit log: decisions and warnings per day and site, and warnings when they drift.

Drift is judged per site against that site's own recent past: a day whose share of some decision (or of images with
warnings) differs from the pooled share of the previous ``baseline_days`` by at least ``min_change`` (absolute) and
by at least ``z`` binomial standard errors is reported, provided both the day and the baseline hold enough
predictions to say so. A change of model (weights sha256) is reported too, since it explains a step change.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, timedelta

from .records import PredictionRecord, warning_code


@dataclass
class DaySummary:
    """Predictions of one site on one UTC day."""

    day: date
    site: str
    n: int = 0
    decisions: Counter = field(default_factory=Counter)
    warnings: Counter = field(default_factory=Counter)  # warning code -> number of predictions with it
    with_warnings: int = 0
    latency_ms_total: float = 0.0
    weights: set = field(default_factory=set)

    @property
    def mean_latency_ms(self) -> float:
        return self.latency_ms_total / self.n if self.n else float("nan")

    def as_row(self) -> dict:
        return {"day": self.day.isoformat(), "site": self.site, "n": self.n,
                **{f"decision_{k}": v for k, v in sorted(self.decisions.items())},
                "with_warnings": self.with_warnings,
                "warnings": ", ".join(f"{k} {v}" for k, v in self.warnings.most_common()),
                "mean_latency_ms": round(self.mean_latency_ms, 1)}


@dataclass
class AuditSummary:
    days: list[DaySummary]
    drift: list[str]

    @property
    def total(self) -> int:
        return sum(d.n for d in self.days)

    def decisions(self) -> Counter:
        out: Counter = Counter()
        for d in self.days:
            out.update(d.decisions)
        return out


def summarise(records: Iterable[PredictionRecord], baseline_days: int = 7, min_day: int = 20,
              min_baseline: int = 50, min_change: float = 0.10, z: float = 3.0) -> AuditSummary:
    """Aggregate records (streamed; memory grows with days x sites only) and look for drift."""
    groups: dict[tuple[date, str], DaySummary] = {}
    for rec in records:
        key = (rec.time.date(), rec.site)
        day = groups.get(key)
        if day is None:
            day = groups[key] = DaySummary(day=key[0], site=key[1])
        day.n += 1
        day.decisions[rec.decision] += 1
        codes = {warning_code(w) for w in rec.warnings}
        day.warnings.update(codes)
        day.with_warnings += bool(codes)
        day.latency_ms_total += rec.latency_ms
        day.weights.add(rec.weights_sha256)
    days = sorted(groups.values(), key=lambda d: (d.day, d.site))
    return AuditSummary(days=days, drift=_drift(days, baseline_days, min_day, min_baseline, min_change, z))


def _drift(days: list[DaySummary], baseline_days: int, min_day: int, min_baseline: int, min_change: float,
           z: float) -> list[str]:
    by_site: dict[str, list[DaySummary]] = defaultdict(list)
    for d in days:
        by_site[d.site].append(d)
    out: list[str] = []
    for site, seq in sorted(by_site.items()):
        where = f"site {site!r}" if site else "all sources"
        for i, day in enumerate(seq):
            past = [p for p in seq[:i] if day.day - timedelta(days=baseline_days) <= p.day < day.day]
            prev_weights = set().union(*(p.weights for p in seq[:i])) if i else set()
            new = day.weights - prev_weights
            if i and new:
                out.append(f"{day.day} {where}: predictions by new model weights ({', '.join(w[:12] for w in new)})")
            base_n = sum(p.n for p in past)
            if day.n < min_day or base_n < min_baseline:
                continue
            shares = {f"{k!r} decisions": (day.decisions[k], sum(p.decisions[k] for p in past))
                      for k in set(day.decisions).union(*(p.decisions for p in past))}
            shares["images with warnings"] = (day.with_warnings, sum(p.with_warnings for p in past))
            for what, (k_day, k_base) in sorted(shares.items()):
                p_day, p_base = k_day / day.n, k_base / base_n
                # the baseline share, kept off 0 and 1 so that a first-ever event still has a finite error
                p0 = min(max(p_base, 0.5 / base_n), 1 - 0.5 / base_n)
                se = math.sqrt(p0 * (1 - p0) / day.n)
                if abs(p_day - p_base) >= min_change and abs(p_day - p_base) >= z * se:
                    direction = "rose" if p_day > p_base else "fell"
                    out.append(f"{day.day} {where}: {what} {direction} to {p_day:.0%} of {day.n} "
                               f"(previous {baseline_days} days: {p_base:.0%} of {base_n})")
    return out


def describe(summary: AuditSummary) -> list[str]:
    """Plain-text lines: a table of days (decisions, warnings) and the drift warnings."""
    if not summary.total:
        return ["no predictions in this period"]
    classes = sorted(summary.decisions())
    head = f"{'day':10} {'site':12} {'n':>6} " + " ".join(f"{c[:10]:>10}" for c in classes) + "  warnings"
    lines = [f"{summary.total} prediction(s) on {len({d.day for d in summary.days})} day(s)", head]
    for d in summary.days:
        warn = ", ".join(f"{k} {v}" for k, v in d.warnings.most_common()) or "-"
        lines.append(f"{d.day.isoformat():10} {(d.site or '-')[:12]:12} {d.n:>6} "
                     + " ".join(f"{d.decisions[c]:>10}" for c in classes) + f"  {warn}")
    lines += ["drift warnings:" if summary.drift else "no drift warnings"] + [f"  {w}" for w in summary.drift]
    return lines
