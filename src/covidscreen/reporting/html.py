"""Small HTML helpers shared by the run report and the audit page (self-contained pages, PNGs embedded)."""

from __future__ import annotations

import base64
import html
import math
from typing import Any

STYLE = """
body{font-family:system-ui,Segoe UI,Helvetica,Arial,sans-serif;max-width:1150px;margin:2em auto;color:#222;
line-height:1.4}
table{border-collapse:collapse;margin:.5em 0 1.2em;max-width:100%}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right;overflow-wrap:anywhere}
th{background:#f4f4f4}td.l,th.l{text-align:left}
.warn{background:#fff3cd;border:1px solid #e0c36b;padding:.6em 1em;margin:.4em 0}
.high{background:#f8d7da;border:1px solid #d9534f;padding:.6em 1em;margin:.4em 0;font-weight:500}
.info{background:#e8f1fb;border:1px solid #9cc1e8;padding:.6em 1em;margin:.4em 0}
.grid{display:flex;flex-wrap:wrap;gap:12px}h2{border-bottom:1px solid #ddd;padding-bottom:3px;margin-top:1.6em}
.small{color:#666;font-size:.9em}figure{margin:0;text-align:center;font-size:.8em}
figure img{display:block;margin:auto}.ci{color:#555;font-size:.9em}
"""


def esc(v: Any) -> str:
    return html.escape(str(v))


def img(png: bytes, alt: str) -> str:
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def fmt(v: Any, digits: int = 3) -> str:
    """A number with ``digits`` decimals ("n/a" for NaN/None), anything else escaped."""
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return "n/a" if math.isnan(v) else f"{v:.{digits}f}"
    return esc(v)


def fmt_ci(value: Any, ci: Any, digits: int = 3) -> str:
    """``0.912 (0.871-0.944)``; the interval is omitted when missing or undefined."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    out = fmt(value, digits)
    if isinstance(ci, list | tuple) and len(ci) == 2 and all(is_num(c) and not math.isnan(c) for c in ci):
        sep = " to " if min(ci) < 0 else "&ndash;"  # "-0.46--0.33" would be unreadable
        out += f" <span class='ci'>({ci[0]:.{digits}f}{sep}{ci[1]:.{digits}f})</span>"
    return out


def table(rows: list[dict[str, Any]], columns: list[str] | None = None, left: int = 1) -> str:
    """An HTML table of already formatted cells (strings are inserted as they are: escape them first)."""
    if not rows:
        return "<p class='small'>(none)</p>"
    cols = columns or list(rows[0])
    head = "".join(f"<th class='{'l' if i < left else ''}'>{esc(c)}</th>" for i, c in enumerate(cols))
    body = "".join("<tr>" + "".join(f"<td class='{'l' if i < left else ''}'>{r.get(c, '')}</td>"
                                    for i, c in enumerate(cols)) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def page(title: str, body: list[str]) -> str:
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{esc(title)}</title><style>{STYLE}</style>"
            "</head><body>" + "\n".join(body) + "</body></html>")
