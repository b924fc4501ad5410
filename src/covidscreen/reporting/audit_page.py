"""HTML of an audit: the findings box (top of the run report) and the detailed section (report and audit.html)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .html import esc, fmt, page, table

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


def _probe_cell(r: dict[str, Any] | None) -> str:
    if not r:
        return "-"
    if "skipped" in r:
        return f"<span class='small'>{esc(r['skipped'])}</span>"
    auc = f"AUC {r['roc_auc']:.2f}, " if "roc_auc" in r else ""
    per = "; ".join(f"{esc(lab)} {100 * v['balanced_accuracy']:.0f}%" for lab, v in r.get("per_label", {}).items())
    return (f"{100 * r['balanced_accuracy']:.0f}% <span class='ci'>(chance {100 * r['chance']:.0f}%, "
            f"{auc}n={r['n']}{'; ' + per if per else ''})</span>")


def audit_section(audit: dict[str, Any]) -> str:
    """Detailed audit tables: confounding, shortcut probes, leakage."""
    parts = ["<h2>Audit details</h2>",
             f"<p class='small'>{audit.get('n_images', 0)} images; splits: {esc(audit.get('split_source', ''))}; "
             f"{audit.get('seconds', '?')} s.</p>"]
    conf = audit.get("confounding", {})
    lbs = conf.get("label_by_site", {})
    if lbs:
        sites = sorted({s for row in lbs.values() for s in row})
        rows = [{"label": esc(lab), **{s: str(row.get(s, 0)) for s in sites}} for lab, row in lbs.items()]
        parts.append("<h3>Label by site (images)</h3>" + table(rows, ["label", *sites])
                     + f"<p class='small'>Cramér's V between site and label: {fmt(conf.get('cramers_v'), 2)} "
                       "(0 = independent, 1 = the site determines the label).</p>")
    sc = audit.get("shortcut", {})
    if sc:
        mf = sc.get("model_features", {})
        rows = []
        names = {"site": "site", "site_within_label": "site, within each label", "low_resolution": "low resolution",
                 "pediatric": "pediatric"}
        for name, shown in names.items():
            rows.append({"what is predicted": esc(shown),
                         "from the images": _probe_cell(sc.get("pixels", {}).get(name)),
                         "from the model's features": _probe_cell(mf.get(name)) if "skipped" not in mf
                         else f"<span class='small'>{esc(mf['skipped'])}</span>"})
        parts.append("<h3>Shortcut probe</h3><p class='small'>Balanced accuracy of a cross-validated logistic "
                     "regression (folds grouped by patient). 'Within each label' predicts the site among images of "
                     "one label only (the mean over labels that hold two or more sites), where the disease cannot "
                     "explain it; when site and label are aligned, the plain site probe is inflated by the label. "
                     "Images: " + esc(sc.get("features", {}).get("pixels", ""))
                     + ". Model: " + esc(sc.get("features", {}).get("model", "")) + ".</p>"
                     + table(rows, ["what is predicted", "from the images", "from the model's features"]))
    leak = audit.get("leakage", {})
    if leak:
        near = leak.get("near_duplicates", {})
        parts.append("<h3>Leakage</h3>" + table([
            {"check": "patients with images in more than one split", "count": str(leak.get(
                "n_patients_in_several_splits", 0))},
            {"check": "sets of byte-identical files", "count": str(leak.get("n_exact_duplicate_sets", 0))},
            {"check": "... of which span splits", "count": str(leak.get("n_exact_duplicate_sets_cross_split", 0))},
            {"check": "near-duplicate pairs across splits (leakage)", "count": str(near.get("n_cross_split", 0))},
            {"check": "near-duplicate pairs within a split, different patients",
             "count": str(near.get("n_within_split_other_patient", 0))},
            {"check": "near-duplicate pairs of the same patient (expected)",
             "count": str(near.get("n_same_patient", 0))},
            {"check": "near-duplicate pairs with different labels", "count": str(near.get("n_label_conflicts", 0))},
        ], ["check", "count"]) + f"<p class='small'>Near-duplicates: {esc(near.get('method', ''))}.</p>")
        multi = leak.get("patients_in_several_splits", [])
        if multi:
            parts.append("<h4>Patients in several splits</h4>" + table(
                [{"patient": esc(m["patient"]), "splits": esc(", ".join(m["splits"])), "images": str(m["n_images"])}
                 for m in multi[:30]], ["patient", "splits", "images"]))
        if near.get("by_site_pair"):
            parts.append("<h4>Near-duplicate pairs by site pair</h4>" + table(
                [{"sites": esc(r["sites"]), "kind": esc(r["kind"]), "pairs": str(r["pairs"])}
                 for r in near["by_site_pair"]], ["sites", "kind", "pairs"], left=2))
        pairs = [p for p in near.get("pairs", []) if p.get("kind") != "unused"]
        if near.get("n_unused"):
            parts.append(f"<p class='small'>{near['n_unused']} more pair(s) involve images this run did not use "
                         "(listed in audit_pairs.csv).</p>")
        if pairs:
            parts.append(f"<h4>Near-duplicate pairs (first {min(30, len(pairs))}; all in audit_pairs.csv)</h4>" + table(
                [{"image a": esc(p["image_a"]), "image b": esc(p["image_b"]),
                  "splits": esc(f"{p['split_a']} / {p['split_b']}"), "labels": esc(f"{p['label_a']} / {p['label_b']}"),
                  "kind": esc(p["kind"]), "correlation": fmt(p["correlation"], 3),
                  "pHash bits": str(p["phash_distance"])} for p in pairs[:30]],
                ["image a", "image b", "splits", "labels", "kind", "correlation", "pHash bits"], left=5))
    return "\n".join(parts)


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
    out.write_text(page("covidscreen audit", body))
    return out
