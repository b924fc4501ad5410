"""The list of audits. Each audit is one module that registers itself here with three things: its analysis (what
goes under its name in ``audit.json``), its findings (plain-words warnings, from every audit's results) and its
section of the audit page, given as data (:class:`Section`) that the reporting floor renders. A new audit is one
module in ``audit/`` plus its import in ``audit/__init__.py``; no runner or page is edited by hand.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .imagestats import ImageStats

SEVERITIES = ("high", "medium", "info")  # most serious first
EVAL_SPLITS = ("train", "val", "test", "external")  # splits whose images are audited (not "unused")


@dataclass
class AuditContext:
    """What every audit may read, computed once by the runner (``workflows/audit.py``)."""

    table: pd.DataFrame  # one row per image, with split, group, path, image, label, site
    images: np.ndarray  # cached uint8 images; images[rows[i]] is row i
    rows: np.ndarray
    stats: ImageStats  # thumbnails and intensity statistics
    sha256: list[str]  # of every file
    seed: int = 0
    pediatric_sites: tuple[str, ...] = ()
    features: np.ndarray | None = None  # the trained model's pooled features of ``feature_rows``
    feature_rows: np.ndarray | None = None
    artefacts: dict[str, pd.DataFrame] = field(default_factory=dict)  # written as CSV beside audit.json


@dataclass
class Cell:
    """A table cell: ``text`` and an optional small ``detail`` after it (CSS class ``style``)."""

    text: str
    detail: str = ""
    style: str = "ci"


@dataclass
class Table:
    columns: list[str]
    rows: list[dict[str, str | Cell]]
    title: str = ""  # a sub-heading above the table
    left: int = 1  # columns aligned left


@dataclass
class Section:
    """An audit's part of the audit page: a heading, then notes (str, shown small) and tables in order."""

    title: str
    blocks: list[str | Table]


Finding = dict[str, str]  # {"severity": one of SEVERITIES, "text": ...}


@dataclass(frozen=True)
class Audit:
    """One registered audit.

    Attributes:
        name: its key in ``audit.json``.
        order: position of its section on the page (and of its findings among equally severe ones).
        analyse: ``analyse(ctx) -> block`` (JSON-serialisable).
        findings: ``findings(results) -> [finding]``; ``results`` maps every audit's name to its block.
        section: ``section(block) -> Section`` (None when there is nothing to show).
    """

    name: str
    order: int
    analyse: Callable[[AuditContext], dict[str, Any]]
    findings: Callable[[dict[str, dict[str, Any]]], list[Finding]]
    section: Callable[[dict[str, Any]], Section | None]


_AUDITS: dict[str, Audit] = {}


def register(audit: Audit) -> Audit:
    if audit.name in _AUDITS and _AUDITS[audit.name] is not audit:
        raise ValueError(f"an audit named {audit.name!r} is already registered")
    _AUDITS[audit.name] = audit
    return audit


def registered() -> list[Audit]:
    """Every registered audit, in report order."""
    return sorted(_AUDITS.values(), key=lambda a: a.order)


def all_findings(results: dict[str, dict[str, Any]]) -> list[Finding]:
    """Every audit's findings, most serious first (audit order within a severity)."""
    found = [f for a in registered() if a.name in results for f in a.findings(results)]
    return sorted(found, key=lambda f: SEVERITIES.index(f["severity"]) if f["severity"] in SEVERITIES else 3)
