"""The HTML report of a run folder (plots embedded as PNG, no external files), written as ``report.html``.

It reads only the files of the run folder (``metrics.json``, ``predictions.csv``, ``split.csv``, ``history.csv``)
so it can be rebuilt at any time. The data composition table (label by site and split) comes first: on confounded
data that is what a reader must see before any metric.
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from . import plots


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _fmt(v) -> str:
    if isinstance(v, float):
        return "n/a" if math.isnan(v) else f"{v:.3f}"
    return html.escape(str(v))


def _metric_table(block: dict, keys: list[str]) -> str:
    rows = "".join(f"<tr><th>{k}</th><td>{_fmt(block.get(k, float('nan')))}</td></tr>" for k in keys)
    return f"<table>{rows}</table>"


def confounding_warnings(split: pd.DataFrame) -> list[str]:
    """Plain-language warnings about label/site confounding in a split table."""
    warnings = []
    by = split.groupby(["label", "site"]).size().unstack(fill_value=0)
    for label, row in by.iterrows():
        sites = [s for s, n in row.items() if n > 0]
        if len(sites) == 1 and len(by.columns) > 1:
            warnings.append(f"All {int(row.sum())} '{label}' images come from one site ({sites[0]}): a model can "
                            f"detect '{label}' by recognising that source instead of the disease.")
    for site, col in by.items():
        labels = [lab for lab, n in col.items() if n > 0]
        if len(labels) == 1 and len(by.index) > 1:
            warnings.append(f"Site '{site}' contributes only '{labels[0]}' images ({int(col.sum())}).")
    return warnings


STYLE = """
body{font-family:system-ui,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.2em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f4f4f4}.warn{background:#fff3cd;border:1px solid #e0c36b;padding:.6em 1em;margin:.4em 0}
.grid{display:flex;flex-wrap:wrap;gap:12px}h2{border-bottom:1px solid #ddd;padding-bottom:3px;margin-top:1.6em}
.small{color:#666;font-size:.9em}
"""


def write_report(run_dir: str | Path, metrics_file: str = "metrics.json", predictions_file: str = "predictions.csv",
                 split_name: str = "test", out_name: str = "report.html", title: str | None = None) -> Path:
    """Write the HTML report of a run (or of an evaluation folder with the same files)."""
    run_dir = Path(run_dir)
    metrics = json.loads((run_dir / metrics_file).read_text())
    preds = pd.read_csv(run_dir / predictions_file)
    classes = metrics["classes"]
    pos = metrics.get("positive_class")
    points = metrics.get("operating_points", {})
    parts = [f"<html><head><meta charset='utf-8'><title>covidscreen report</title><style>{STYLE}</style></head><body>",
             f"<h1>{html.escape(title or 'covidscreen run report')}</h1>",
             f"<p class='small'>{html.escape(str(run_dir.resolve()))}</p>"]

    split_file = run_dir / "split.csv"
    if split_file.is_file():
        split = pd.read_csv(split_file, keep_default_na=False)
        warns = confounding_warnings(split)
        if warns:
            parts.append("<h2>Read this first: data confounding</h2>")
            parts += [f"<div class='warn'>{html.escape(w)}</div>" for w in warns]
        comp = split.groupby(["site", "label"]).size().unstack(fill_value=0)
        parts.append("<h2>Data: images by site and label</h2>" + comp.to_html())
        parts.append("<h3>Images by split and label (patient-grouped split)</h3>"
                     + split.groupby(["split", "label"]).size().unstack(fill_value=0).to_html())

    block = metrics.get(split_name, metrics)
    if pos and "covid_vs_rest" in block:
        cv = block["covid_vs_rest"]
        parts.append(f"<h2>{html.escape(pos)} vs rest on the {split_name} split (n={cv['n']}, "
                     f"{cv['n_positive']} positive)</h2>")
        parts.append(f"<p>Operating threshold {cv['threshold']:.3f} ({html.escape(str(metrics.get('threshold_source')))})"
                     "</p>")
        parts.append(_metric_table(cv, ["roc_auc", "pr_auc", "sensitivity", "specificity", "precision", "npv", "f1",
                                        "accuracy", "tp", "fp", "tn", "fn"]))
        sub = preds[preds["split"] == split_name] if "split" in preds else preds
        y = (sub["label"] == pos).to_numpy()
        s = sub[f"prob_{pos}"].to_numpy()
        if y.any() and (~y).any():
            parts.append("<div class='grid'>" + _img(plots.roc_plot(y, s, f"ROC: {pos} vs rest", points), "ROC")
                         + _img(plots.pr_plot(y, s, f"PR: {pos} vs rest"), "PR") + "</div>")

    if "per_class" in block:
        rows = []
        for name, m in block["per_class"].items():
            rows.append({"class": name, **{k: m[k] for k in ("n_positive", "sensitivity", "specificity", "precision",
                                                             "f1", "roc_auc", "pr_auc")}})
        parts.append(f"<h2>Per class (one vs rest, {split_name} split)</h2>"
                     + pd.DataFrame(rows).to_html(index=False, float_format=lambda v: f"{v:.3f}"))
        parts.append(f"<p>Accuracy {_fmt(block['accuracy'])}, macro ROC AUC {_fmt(block['macro_roc_auc'])}</p>")
        parts.append(_img(plots.confusion_plot(block["confusion_matrix"], classes, f"confusion ({split_name})"),
                          "confusion matrix"))

    if "site" in preds:
        sub = preds[preds["split"] == split_name] if "split" in preds else preds
        rows = []
        for site, g in sub.groupby("site"):
            y = g["label"].to_numpy()
            row = {"site": site, "n": len(g)}
            for c in classes:
                row[f"n_{c}"] = int((y == c).sum())
            if pos:
                yy = y == pos
                row[f"mean p({pos})"] = float(g[f"prob_{pos}"].mean())
                if yy.any() and (~yy).any():
                    from sklearn.metrics import roc_auc_score

                    row[f"{pos}-vs-rest AUC within site"] = float(roc_auc_score(yy, g[f"prob_{pos}"]))
            rows.append(row)
        parts.append(f"<h2>By site ({split_name} split)</h2><p class='small'>An AUC can only be computed within a "
                     "site that has both classes; a high pooled AUC with low within-site AUCs means the model "
                     "separates sources, not diseases.</p>"
                     + pd.DataFrame(rows).to_html(index=False, float_format=lambda v: f"{v:.3f}", na_rep="-"))

    hist = run_dir / "history.csv"
    if hist.is_file():
        h = pd.read_csv(hist)
        if len(h):
            parts.append("<h2>Training history</h2>" + _img(plots.history_plot(h), "history")
                         + h.to_html(index=False, float_format=lambda v: f"{v:.4f}"))
    # --- explanations (covidscreen.explain, issue 5): Grad-CAM audit of the test split when there is a checkpoint ---
    if (run_dir / "model.safetensors").is_file():
        try:
            from ..explain.summary import heatmap_summary

            parts.append(heatmap_summary(run_dir))
        except Exception as exc:  # the report must render even when the explanations fail
            parts.append(f"<h2>Explanations</h2><div class='warn'>Grad-CAM audit failed: {html.escape(str(exc))}</div>")
    # --- end explanations ---
    parts.append("</body></html>")
    out = run_dir / out_name
    out.write_text("\n".join(parts))
    return out


__all__ = ["write_report", "confounding_warnings", "np"]
