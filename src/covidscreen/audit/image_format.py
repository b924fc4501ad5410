"""Source confounding in the image *format*: can the label be told from how an image was made?

It runs on chest X-rays and on CT alike, because the question does not depend on the modality. When every image of
one label comes from one kind of source, the site column may not show it (one site, or sites named after
collections) while the pixels do: image size and aspect ratio, borders, saturated white (windowing and figure
processing), arrows and text burnt in near the edges. On the shared CT data the COVID slices were cut out of figures
in papers and the others come from clinical archives; on the shared chest X-rays every COVID image comes from one
collection (published at varied sizes, many with arrows and text burnt in) while most others were re-saved by their
collections at one fixed size (224 x 224). This module computes such non-anatomical properties per image and asks a
patient-grouped, cross-validated logistic regression to predict the label from them alone. A label that is
predictable from the format is a shortcut a classifier can take; the audit says so first. Radiographs carry
laterality markers, rulers and collimation edges in every collection; the probe flags them only when their amount
differs by label.

Properties (per image; the pixel ones on the cached, square image):

- ``log_width``, ``log_height``, ``aspect``: original size (``width``/``height`` columns, else the file header);
- ``white``, ``black``: share of saturated (>= 250) and empty (<= 5) pixels;
- ``border_mean``, ``border_std``: brightness and uniformity of the outer 5% frame;
- ``edge_marks``: share of strong horizontal steps (> 60 grey levels) in the outer 15% ring (text, arrows, rulers).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from ..data.decode import read_dicom_header
from .registry import Audit, AuditContext, Finding, Section, Table, register
from .shortcut import probe

FEATURES = ("log_width", "log_height", "aspect", "white", "black", "border_mean", "border_std", "edge_marks")
FRAME, RING, STEP = 0.05, 0.15, 60
FLAG_AUC = 0.75  # a label told from format alone at this ROC AUC (or better) is reported as a shortcut


def _original_size(path: str) -> tuple[float, float]:
    try:
        with Image.open(path) as im:
            return float(im.size[0]), float(im.size[1])
    except (OSError, UnidentifiedImageError, ValueError):
        pass
    try:
        ds = read_dicom_header(path)
        return float(ds.Columns), float(ds.Rows)
    except Exception:  # unreadable header: the size is simply unknown for this image
        return math.nan, math.nan


def original_sizes(table: pd.DataFrame) -> np.ndarray:
    """``(N, 2)`` width, height of each row's original image (metadata columns first, file headers otherwise)."""
    w = pd.to_numeric(table.get("width", pd.Series(index=table.index, dtype=float)), errors="coerce").to_numpy()
    h = pd.to_numeric(table.get("height", pd.Series(index=table.index, dtype=float)), errors="coerce").to_numpy()
    out = np.stack([w, h], 1).astype(np.float64)
    for i in np.flatnonzero(np.isnan(out).any(1)):
        out[i] = _original_size(str(table["path"].iloc[i]))
    return out


def format_features(images: np.ndarray, rows: np.ndarray, sizes: np.ndarray, batch: int = 256) -> pd.DataFrame:
    """The properties of the module doc, one row per ``images[rows[i]]``."""
    n = len(rows)
    cols = {k: np.empty(n) for k in FEATURES}
    with np.errstate(invalid="ignore", divide="ignore"):
        cols["log_width"], cols["log_height"] = np.log(sizes[:, 0]), np.log(sizes[:, 1])
        cols["aspect"] = sizes[:, 0] / sizes[:, 1]
    for start in range(0, n, batch):
        x = np.asarray(images[np.asarray(rows[start:start + batch])]).astype(np.int16)
        sl = slice(start, start + len(x))
        h, w = x.shape[1:]
        f, r = max(1, int(round(FRAME * h))), max(1, int(round(RING * h)))
        cols["white"][sl] = (x >= 250).mean((1, 2))
        cols["black"][sl] = (x <= 5).mean((1, 2))
        frame = np.ones((h, w), bool)
        frame[f:h - f, f:w - f] = False
        cols["border_mean"][sl] = x[:, frame].mean(1)
        cols["border_std"][sl] = x[:, frame].std(1)
        ring = np.ones((h, w - 1), bool)
        ring[r:h - r, r:w - 1 - r] = False
        steps = np.abs(np.diff(x, axis=2)) > STEP
        cols["edge_marks"][sl] = steps[:, ring].mean(1)
    df = pd.DataFrame(cols)
    return df.fillna(df.median(numeric_only=True)).fillna(0.0)


def format_audit(table: pd.DataFrame, images: np.ndarray, rows: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """The ``format`` block of ``audit.json``: per-label medians of the properties and the label-from-format probe.

    Args:
        table: one row per image (``label``, ``group``, ``path``; optional ``width``, ``height``).
        images: cached ``uint8`` images, ``images[rows[i]]`` for row ``i``.
    """
    sizes = original_sizes(table)
    feats = format_features(images, np.asarray(rows), sizes)
    labels = table["label"].astype(str).reset_index(drop=True)
    by_label = {}
    for label in sorted(labels.unique()):
        m = (labels == label).to_numpy()
        med = feats[m].median()
        with np.errstate(all="ignore"):
            width, height = (float(np.nanmedian(sizes[m, k])) if np.isfinite(sizes[m, k]).any() else math.nan
                             for k in (0, 1))
        by_label[label] = {"n": int(m.sum()), "width": width, "height": height, "aspect": float(med["aspect"]),
                           "white": float(med["white"]), "black": float(med["black"]),
                           "border_mean": float(med["border_mean"]), "border_std": float(med["border_std"]),
                           "edge_marks": float(med["edge_marks"])}
    result = probe(feats.to_numpy(), labels, table["group"].astype(str).to_numpy(), seed=seed)
    return {"features": list(FEATURES), "by_label": by_label, "label_from_format": result,
            "meaning": "a patient-grouped, cross-validated logistic regression predicts the label from "
                       "non-anatomical image properties only (size, aspect ratio, borders, saturated pixels, marks "
                       "near the edges)"}


def format_finding(block: dict[str, Any]) -> dict[str, str] | None:
    """A plain-words finding when the label is predictable from the format alone (None otherwise)."""
    res = block.get("label_from_format", {})
    auc = res.get("roc_auc")
    if auc is None or not auc >= FLAG_AUC:
        return None
    parts = []
    for label, s in block["by_label"].items():
        size = f"{s['width']:.0f}x{s['height']:.0f} px, " if math.isfinite(s["width"] + s["height"]) else ""
        parts.append(f"'{label}': median {size}{100 * s['white']:.0f}% saturated "
                     f"white pixels, border brightness {s['border_mean']:.0f}/255, "
                     f"{100 * s['edge_marks']:.1f}% sharp steps near the edges")
    return {"severity": "high", "text": (
        f"Source confounding in the image format: using only properties that say how an image was made, not what "
        f"it shows (size and aspect ratio, borders, saturated white, marks or text near the edges), a simple model "
        f"tells the labels apart with ROC AUC {auc:.2f} (balanced accuracy {100 * res['balanced_accuracy']:.0f}%, "
        f"patient-grouped cross-validation, n={res['n']}). " + "; ".join(parts) + ". The labels likely come from "
        "different sources (on chest X-rays, e.g. one public collection's images at their published sizes versus "
        "archives re-saved at one fixed size; on CT, e.g. slices cut out of figures in papers versus clinical "
        "archives): a model can score well by recognising the source instead of the disease. Treat the metrics "
        "below as an upper bound and validate on images from other collections.")}


def _analyse(ctx: AuditContext) -> dict[str, Any]:
    return format_audit(ctx.table, ctx.images, ctx.rows, ctx.seed)


def _findings(results: dict[str, dict[str, Any]]) -> list[Finding]:
    found = format_finding(results["format"])
    return [found] if found else []


def _section(block: dict[str, Any]) -> Section | None:
    by = block.get("by_label", {})
    if not by:
        return None
    cols = ["label", "images", "median size", "saturated white", "empty", "border brightness", "edge marks"]
    rows = [{"label": lab, "images": str(s["n"]),
             "median size": f"{s['width']:.0f}x{s['height']:.0f}" if math.isfinite(s["width"] + s["height"]) else "?",
             "saturated white": f"{100 * s['white']:.1f}%", "empty": f"{100 * s['black']:.1f}%",
             "border brightness": f"{s['border_mean']:.0f}", "edge marks": f"{100 * s['edge_marks']:.2f}%"}
            for lab, s in by.items()]
    res = block.get("label_from_format", {})
    probe_text = (f"Label predicted from these properties alone: ROC AUC {res['roc_auc']:.2f}, balanced accuracy "
                  f"{100 * res['balanced_accuracy']:.0f}% (chance {100 * res['chance']:.0f}%; patient-grouped "
                  f"{res['n_splits']}-fold cross-validation, n={res['n']}). Flagged from AUC {FLAG_AUC}."
                  if "roc_auc" in res else f"Label from format: not probed ({res.get('skipped', 'no result')}).")
    return Section("Image format by label (how the images were made)", [Table(cols, rows), probe_text, EXPLAINED])


EXPLAINED = (
    "What this measures, on chest X-rays and CT alike: properties that say how an image was made, not what it "
    "shows. On chest X-rays a label told apart by image size usually means its images come from another collection "
    "(one published at varied sizes versus archives re-saved at one fixed size), and many sharp steps near the edges "
    "mean text, arrows or scores burnt in; laterality markers (L/R), rulers and collimation edges are in every "
    "clinical radiograph and matter only when their amount differs by label. On CT, saturated white and borders "
    "usually mean slices cut out of figures. A high value means the model's test figures can come from recognising "
    "the source; compare with the within-site results and validate on another collection.")


register(Audit("format", order=1, analyse=_analyse, findings=_findings, section=_section))
