"""Within-site metrics: positive-vs-rest performance restricted to each site that holds both classes.

On data confounded by source (every COVID image from one collection), a pooled AUC mostly measures how well a model
recognises the collection. Only a site that contributes positive *and* negative images can show whether the model
separates the disease within one source. This module computes, for every such site, ROC AUC, sensitivity and
specificity with percentile-bootstrap confidence intervals, and the scalar used for model selection
(``select_on: within_site_auc``).

The confidence intervals come from the package's one bootstrap (:mod:`covidscreen.evaluation.bootstrap`), which
resamples *patients* (the ``group`` column when present, else images) with replacement, here stratified: separately
among patients that have a positive image and those that do not. A site like cohen has only 10-13 non-COVID
patients in a test split; unstratified, a replicate could draw very few or none of them and its AUC would be
undefined or extreme. Stratified, every replicate keeps the numbers of positive and negative patients of the sample.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..config import DEFAULT_N_BOOT
from ..errors import DataError
from .bootstrap import BinaryTask, bootstrap_tasks
from .metrics import rank_auc as auc_or_nan  # the one rank-based AUC of the package

DEFAULT_LEVEL = 0.95


def _rate(num: int, den: int) -> float:
    return float(num / den) if den > 0 else math.nan


def sens_spec(y: np.ndarray, score: np.ndarray, threshold: float) -> tuple[float, float]:
    """Sensitivity and specificity of the rule ``score >= threshold`` (NaN when a class is absent)."""
    y = np.asarray(y, dtype=bool)
    pred = np.asarray(score, dtype=float) >= threshold
    return _rate(int(np.sum(pred & y)), int(y.sum())), _rate(int(np.sum(~pred & ~y)), int((~y).sum()))


def mixed_sites(preds: pd.DataFrame, positive_class: str) -> list[str]:
    """Sites that hold at least one positive and one negative image, sorted."""
    if "site" not in preds:
        return []
    is_pos = preds["label"] == positive_class
    both = preds.assign(_pos=is_pos).groupby("site")["_pos"].agg(["any", "all"])
    return sorted(str(s) for s, r in both.iterrows() if r["any"] and not r["all"])


def within_site_metrics(
    preds_df: pd.DataFrame,
    classes: list[str],
    positive_class: str,
    threshold: float | None = None,
    n_boot: int = DEFAULT_N_BOOT,
    level: float = DEFAULT_LEVEL,
    seed: int = 0,
) -> dict:
    """Positive-vs-rest metrics within every site that holds both classes.

    Args:
        preds_df: one row per image with ``label``, ``site``, ``prob_<positive_class>`` and optionally ``group``
            (patient), e.g. a run's ``predictions.csv`` restricted to one split.
        classes: the model's classes.
        positive_class: the screened class.
        threshold: operating threshold on the positive probability for sensitivity/specificity (0.5 when None).
        n_boot, level, seed: the stratified patient-level bootstrap (see the module docstring); ``n_boot`` 0: no
            intervals (NaN bounds).

    Returns:
        ``{"positive_class", "threshold", "ci_level", "n_boot", "ci_method", "sites": {site: {...}}}`` where each site
        holds ``n``, ``n_positive``, ``n_negative``, ``n_patients``, ``roc_auc``, ``roc_auc_ci``, ``sensitivity``,
        ``sensitivity_ci``, ``specificity``, ``specificity_ci``. Sites with one class only are absent.

    Raises:
        DataError: the positive class is not a class, or a needed column is missing.
    """
    if positive_class not in classes:
        raise DataError(f"positive class {positive_class!r} is not one of the classes {classes}")
    col = f"prob_{positive_class}"
    missing = [c for c in ("label", "site", col) if c not in preds_df]
    if missing:
        raise DataError(f"predictions lack column(s) {', '.join(missing)} needed for within-site metrics")
    thr = 0.5 if threshold is None else float(threshold)
    out: dict = {"positive_class": positive_class, "threshold": thr, "ci_level": level, "n_boot": n_boot,
                 "ci_method": "percentile bootstrap over patients, stratified by class", "sites": {}}
    for site in mixed_sites(preds_df, positive_class):
        g = preds_df[preds_df["site"].astype(str) == site]
        y = (g["label"] == positive_class).to_numpy()
        s = g[col].to_numpy(dtype=float)
        groups = g["group"].to_numpy() if "group" in g else None
        sens, spec = sens_spec(y, s, thr)
        ci = {k: [math.nan, math.nan] for k in ("roc_auc", "sensitivity", "specificity")}
        if n_boot > 0:
            ci = bootstrap_tasks([BinaryTask("site", y, s >= thr, s)], groups, n_boot=n_boot, seed=seed, level=level,
                                 stratify=y)["site"]["ci"]
        out["sites"][site] = {
            "n": int(len(g)), "n_positive": int(y.sum()), "n_negative": int((~y).sum()),
            "n_patients": int(pd.Series(groups).nunique()) if groups is not None else int(len(g)),
            "roc_auc": auc_or_nan(y, s), "roc_auc_ci": list(ci["roc_auc"]),
            "sensitivity": sens, "sensitivity_ci": list(ci["sensitivity"]),
            "specificity": spec, "specificity_ci": list(ci["specificity"]),
        }
    return out


def within_site_auc(y_positive: np.ndarray, score: np.ndarray, sites: np.ndarray, min_per_class: int = 1) -> float:
    """Mean positive-vs-rest ROC AUC over the sites that hold both classes (NaN when there is none).

    This is the model-selection metric of ``select_on: within_site_auc`` (``min_per_class`` 1): unlike the pooled
    AUC it cannot be raised by recognising which collection an image comes from. Experiment tables average only
    sites with at least ``min_per_class`` (5) images of each class, since an AUC over one or two images of a class
    says nothing.
    """
    y = np.asarray(y_positive, dtype=bool)
    score = np.asarray(score, dtype=float)
    sites = np.asarray(sites).astype(str)
    aucs = []
    for s in np.unique(sites):
        ys = y[sites == s]
        if min(int(ys.sum()), int((~ys).sum())) >= max(min_per_class, 1):
            aucs.append(auc_or_nan(ys, score[sites == s]))
    return float(np.mean(aucs)) if aucs else math.nan


def format_within_site(block: dict) -> list[str]:
    """One human-readable line per site (for logs and the CLI)."""
    lines = []
    for site, m in block.get("sites", {}).items():
        lo, hi = m["roc_auc_ci"]
        lines.append(f"within {site} ({m['n_positive']} {block['positive_class']} vs {m['n_negative']} other, "
                     f"{m['n_patients']} patients): AUC {m['roc_auc']:.3f} [{lo:.3f}, {hi:.3f}], sensitivity "
                     f"{m['sensitivity']:.3f}, specificity {m['specificity']:.3f} at threshold "
                     f"{block['threshold']:.3f}")
    return lines
