"""Metrics per subgroup (site, view) with counts and patient-level bootstrap CIs.

A pooled AUC can be high while every within-site AUC is near chance: the model then separates sources, not
diseases. Sensitivity exists only in subgroups with positives, specificity only with negatives, an AUC only with
both; the rest is NaN (shown as "-"), never a misleading 0 or 1.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ..config import DEFAULT_N_BOOT
from .bootstrap import BinaryTask, bootstrap_tasks
from .metrics import binary_metrics, predict_labels


def subgroup_breakdown(preds: pd.DataFrame, classes: list[str], positive_class: str | None, threshold: float | None,
                       by: str, n_boot: int = DEFAULT_N_BOOT, seed: int = 0, level: float = 0.95
                       ) -> list[dict[str, Any]]:
    """One row per value of column ``by``.

    Args:
        preds: predictions with ``label``, ``prob_<class>`` and (optional) ``group`` columns.
        classes: class names in index order.
        positive_class: the screened class or None.
        threshold: the positive class's decision threshold (None: argmax).
        by: the column to split on (``site``, ``view``, ...).

    Returns:
        Rows with ``n``, ``n_patients``, ``n_<class>``, ``accuracy`` and, with a positive class, ``n_positive``,
        ``sensitivity``, ``specificity``, ``roc_auc`` (within the subgroup) and ``mean_prob``; each metric ``k`` has
        its interval under ``k_ci``.
    """
    pos = classes.index(positive_class) if positive_class in classes else None
    rows = []
    for value, g in preds.groupby(preds[by].astype(str).replace("", "unknown"), sort=True):
        probs = g[[f"prob_{c}" for c in classes]].to_numpy(float)
        y = g["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
        pred = predict_labels(probs, pos, threshold)
        groups = g["group"].to_numpy() if "group" in g else None
        row: dict[str, Any] = {by: value, "n": int(len(g)),
                               "n_patients": int(g["group"].nunique()) if "group" in g else int(len(g))}
        for i, c in enumerate(classes):
            row[f"n_{c}"] = int((y == i).sum())
        row["accuracy"] = float(np.mean(pred == y))
        tasks = []
        if pos is not None:
            yp, sp = y == pos, probs[:, pos]
            m = binary_metrics(yp, sp, 0.5 if threshold is None else threshold)
            row.update({"n_positive": int(yp.sum()), "sensitivity": m["sensitivity"],
                        "specificity": m["specificity"], "roc_auc": m["roc_auc"], "mean_prob": float(sp.mean())})
            tasks.append(BinaryTask("pos", yp, sp >= (0.5 if threshold is None else threshold), sp))
        if n_boot:
            if not tasks:  # bootstrap needs one task; a dummy that shares the replicates is cheapest
                tasks.append(BinaryTask("pos", pred == y, pred == y))
            boot = bootstrap_tasks(tasks, groups, n_boot, seed, level, extra={"accuracy": (pred == y).astype(float)})
            row["accuracy_ci"] = boot["accuracy"]["ci"]
            if pos is not None:
                for k in ("sensitivity", "specificity", "roc_auc"):
                    row[f"{k}_ci"] = boot["pos"]["ci"][k]
        rows.append(row)
    return rows
