"""HTML of an audit: the findings box (top of the run report) and the detailed section (report and audit.html)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..audit import registered
from ..audit.registry import Cell, Section, Table
from ..runtime import atomic_write_text
from .html import esc, page, table

SEVERITY_CLASS = {"high": "high", "medium": "warn", "info": "info"}


def read_audit(folder: str | Path) -> dict[str, Any] | None:
    """The folder's ``audit.json``, or None when there is none (or it is unreadable)."""
    path = Path(folder) / "audit.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def findings_html(audit: dict[str, Any]) -> str:
    """The audit's findings as coloured boxes, most serious first."""
    items = audit.get("findings", [])
    if not items:
        return "<div class='info'>The audit found no leakage, no label/site confounding and no predictable site.</div>"
    order = {"high": 0, "medium": 1, "info": 2}
    return "".join(f"<div class='{SEVERITY_CLASS.get(f.get('severity'), 'warn')}'>{esc(f.get('text', ''))}</div>"
                   for f in sorted(items, key=lambda f: order.get(f.get("severity"), 3)))


def _cell(value: str | Cell) -> str:
    if not isinstance(value, Cell):
        return esc(value)
    detail = f"<span class='{esc(value.style)}'>{esc(value.detail)}</span>" if value.detail else ""
    return " ".join(part for part in (esc(value.text), detail) if part)


def render_section(section: Section) -> str:
    """An audit's section (``<h3>``, then its notes and tables in order)."""
    parts = [f"<h3>{esc(section.title)}</h3>"]
    for block in section.blocks:
        if isinstance(block, Table):
            rows = [{c: _cell(row.get(c, "")) for c in block.columns} for row in block.rows]
            parts.append((f"<h4>{esc(block.title)}</h4>" if block.title else "") + table(rows, block.columns,
                                                                                            left=block.left))
        else:
            parts.append(f"<p class='small'>{esc(block)}</p>")
    return "".join(parts)


def audit_section(audit: dict[str, Any]) -> str:
    """The detailed section of every registered audit that has results in ``audit``."""
    parts = ["<h2>Audit details</h2>",
             f"<p class='small'>{audit.get('n_images', 0)} images; splits: {esc(audit.get('split_source', ''))}; "
             f"{audit.get('seconds', '?')} s.</p>"]
    sections = [a.section(audit.get(a.name) or {}) for a in registered()]
    return "\n".join(parts + [render_section(s) for s in sections if s is not None])


def write_audit_html(folder: str | Path) -> Path:
    """A standalone ``audit.html`` next to ``audit.json``."""
    folder = Path(folder)
    audit = read_audit(folder)
    if audit is None:
        raise FileNotFoundError(folder / "audit.json")
    body = ["<h1>covidscreen data audit</h1>",
            f"<p class='small'>data: {esc(audit.get('data_dir'))}"
            + (f"; run: {esc(audit['run_dir'])}" if audit.get("run_dir") else "") + "</p>",
            "<h2>Findings</h2>", findings_html(audit), audit_section(audit)]
    out = folder / "audit.html"
    atomic_write_text(out, page("covidscreen audit", body))
    return out
