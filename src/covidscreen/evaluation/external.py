"""Internal versus external performance: the table of what changes when a model meets data from elsewhere.

The internal figures are the run's own test split; the external ones come from another data folder or from a site
held out of training. The change gets an approximate interval from the two bootstrap intervals, treating the two
samples as independent (they share no patient when the audit finds no overlap).
"""

from __future__ import annotations

import math
from typing import Any

from scipy.stats import norm

COMPARED = ("roc_auc", "pr_auc", "sensitivity", "specificity", "precision", "npv", "f1", "accuracy")


def _se(ci: Any, level: float) -> float:
    if not (isinstance(ci, list | tuple) and len(ci) == 2) or any(c is None or math.isnan(c) for c in ci):
        return math.nan
    return (ci[1] - ci[0]) / (2 * float(norm.ppf(0.5 + level / 2)))


def _row(metric: str, a: float, a_ci: Any, b: float, b_ci: Any, level: float) -> dict[str, Any]:
    change = b - a if a is not None and b is not None else math.nan
    se = math.sqrt(_se(a_ci, level) ** 2 + _se(b_ci, level) ** 2)
    z = float(norm.ppf(0.5 + level / 2))
    ci = [change - z * se, change + z * se] if math.isfinite(se) and math.isfinite(change) else [math.nan, math.nan]
    return {"metric": metric, "internal": a, "internal_ci": a_ci, "external": b, "external_ci": b_ci,
            "change": change, "change_ci": ci}


def compare_blocks(internal: dict[str, Any], external: dict[str, Any], level: float = 0.95) -> list[dict[str, Any]]:
    """Rows ``metric, internal (+ci), external (+ci), change (+ci)``.

    The positive-vs-rest metrics when both blocks have them, then multi-class accuracy, macro AUC and the one-vs-rest
    AUC of every class present in both (rows named ``multi-class accuracy``, ``macro_roc_auc``, ``<class>: roc_auc``).
    Metrics the external data cannot define (sensitivity without positives) stay NaN.
    """
    rows = []
    if "covid_vs_rest" in internal and "covid_vs_rest" in external:
        a, b = internal["covid_vs_rest"], external["covid_vs_rest"]
        for k in COMPARED:
            rows.append(_row(k, a.get(k, math.nan), a.get("ci", {}).get(k), b.get(k, math.nan),
                             b.get("ci", {}).get(k), level))
    for k in ("accuracy", "macro_roc_auc"):
        rows.append(_row("multi-class accuracy" if k == "accuracy" else k, internal.get(k, math.nan),
                         internal.get("ci", {}).get(k), external.get(k, math.nan), external.get("ci", {}).get(k),
                         level))
    for c in internal.get("per_class", {}):
        if c in external.get("per_class", {}):
            a, b = internal["per_class"][c], external["per_class"][c]
            rows.append(_row(f"{c}: roc_auc", a.get("roc_auc", math.nan), a.get("ci", {}).get("roc_auc"),
                             b.get("roc_auc", math.nan), b.get("ci", {}).get("roc_auc"), level))
    return rows


def drop_summary(rows: list[dict[str, Any]], metric: str = "roc_auc") -> str:
    """``ROC AUC 0.990 -> 0.712 (change -0.278, 95% CI -0.35 to -0.21)`` for the CLI."""
    for r in rows:
        if r["metric"] == metric and math.isfinite(r["external"]) and math.isfinite(r["internal"]):
            lo, hi = r["change_ci"]
            ci = f", 95% CI {lo:+.3f} to {hi:+.3f}" if math.isfinite(lo) else ""
            return (f"{metric} internal {r['internal']:.3f} -> external {r['external']:.3f} "
                    f"(change {r['change']:+.3f}{ci})")
    return ""
