"""Label/site confounding: the label-by-site table, how strongly site and label are associated, and warnings.

On the shared data every COVID image comes from one collection; a model can then score well by recognising the
collection. The warnings say so in plain words.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from .registry import EVAL_SPLITS, Audit, AuditContext, Finding, Section, Table, register

SINGLE_SOURCE_SHARE = 0.9  # a class with at least this share of its images from one site is flagged


def label_site_table(table: pd.DataFrame) -> pd.DataFrame:
    """Image counts, labels in rows and sites in columns."""
    return table.groupby(["label", "site"]).size().unstack(fill_value=0)


def cramers_v(counts: pd.DataFrame) -> float:
    """Cramér's V of a contingency table (0: independent, 1: one determines the other)."""
    obs = counts.to_numpy(dtype=float)
    n = obs.sum()
    if n == 0 or min(obs.shape) < 2:
        return math.nan
    expected = obs.sum(1, keepdims=True) * obs.sum(0, keepdims=True) / n
    with np.errstate(divide="ignore", invalid="ignore"):
        chi2 = np.nansum(np.where(expected > 0, (obs - expected) ** 2 / expected, 0.0))
    return float(math.sqrt(chi2 / (n * (min(obs.shape) - 1))))


def confounding_warnings(table: pd.DataFrame) -> list[str]:
    """Plain-language warnings about label/site confounding (a class from one site, a site with one class)."""
    warnings = []
    by = label_site_table(table)
    for label, row in by.iterrows():
        total = int(row.sum())
        if total == 0 or len(by.columns) < 2:
            continue
        top_site, top_n = row.idxmax(), int(row.max())
        if top_n == total:
            warnings.append(f"All {total} '{label}' images come from one site ({top_site}): a model can detect "
                            f"'{label}' by recognising that source instead of the disease.")
        elif top_n / total >= SINGLE_SOURCE_SHARE:
            warnings.append(f"{100 * top_n / total:.0f}% of the '{label}' images ({top_n} of {total}) come from one "
                            f"site ({top_site}).")
    for site, col in by.items():
        labels = [lab for lab, n in col.items() if n > 0]
        if len(labels) == 1 and len(by.index) > 1:
            warnings.append(f"Site '{site}' contributes only '{labels[0]}' images ({int(col.sum())}).")
    return warnings


def confounding_audit(table: pd.DataFrame) -> dict[str, Any]:
    """The ``confounding`` block of ``audit.json``."""
    by = label_site_table(table)
    single = {}
    for label, row in by.iterrows():
        if len(by.columns) > 1 and row.sum() and row.max() / row.sum() >= SINGLE_SOURCE_SHARE:
            single[str(label)] = {"site": str(row.idxmax()), "share": float(row.max() / row.sum())}
    return {
        "label_by_site": {str(lab): {str(s): int(n) for s, n in row.items()} for lab, row in by.iterrows()},
        "cramers_v": cramers_v(by),
        "single_source_classes": single,
        "warnings": confounding_warnings(table),
    }


def is_aligned(block: dict[str, Any]) -> bool:
    """Site and label aligned: a class (almost) from one site, or Cramér's V of at least 0.5."""
    v = block.get("cramers_v")
    return bool(block.get("single_source_classes")) or (v is not None and not math.isnan(v) and v >= 0.5)


def _analyse(ctx: AuditContext) -> dict[str, Any]:
    return confounding_audit(ctx.table[ctx.table["split"].isin(EVAL_SPLITS)])


def _findings(results: dict[str, dict[str, Any]]) -> list[Finding]:
    return [{"severity": "medium", "text": w} for w in results["confounding"].get("warnings", [])]


def _section(conf: dict[str, Any]) -> Section | None:
    lbs = conf.get("label_by_site", {})
    if not lbs:
        return None
    sites = sorted({s for row in lbs.values() for s in row})
    v = conf.get("cramers_v")
    shown = "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"
    return Section("Label by site (images)", [
        Table(["label", *sites],
              [{"label": lab, **{s: str(row.get(s, 0)) for s in sites}} for lab, row in lbs.items()]),
        f"Cramér's V between site and label: {shown} (0 = independent, 1 = the site determines the label)."])


register(Audit("confounding", order=0, analyse=_analyse, findings=_findings, section=_section))
