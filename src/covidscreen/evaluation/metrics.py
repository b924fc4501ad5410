"""Classification metrics for screening: per class (one-vs-rest) and for the positive class (COVID) vs the rest.

Conventions: ``probs`` is ``(N, C)`` with rows summing to 1; ``y`` holds class indices. The positive class's
decision uses an operating threshold on its probability (chosen on validation data); the other classes compete by
argmax among themselves. Undefined ratios (no positives, no predicted positives) are ``NaN``, never 0 or 1, so a
reader is not misled.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import average_precision_score, confusion_matrix, roc_auc_score


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den > 0 else math.nan


def binary_metrics(y_true: np.ndarray, score: np.ndarray, threshold: float) -> dict[str, float]:
    """Metrics of the rule ``score >= threshold`` against binary ``y_true``.

    Returns sensitivity, specificity, precision (PPV), NPV, F1, accuracy, ROC AUC, PR AUC (average precision),
    the threshold and the four confusion counts.
    """
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(score, dtype=float)
    pred = s >= threshold
    tp = int(np.sum(pred & y))
    fp = int(np.sum(pred & ~y))
    tn = int(np.sum(~pred & ~y))
    fn = int(np.sum(~pred & y))
    sens = _ratio(tp, tp + fn)
    prec = _ratio(tp, tp + fp)
    both = y.any() and (~y).any()
    return {
        "sensitivity": sens,
        "specificity": _ratio(tn, tn + fp),
        "precision": prec,
        "npv": _ratio(tn, tn + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "accuracy": _ratio(tp + tn, len(y)),
        "roc_auc": float(roc_auc_score(y, s)) if both else math.nan,
        "pr_auc": float(average_precision_score(y, s)) if both else math.nan,
        "threshold": float(threshold),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "n": int(len(y)),
        "n_positive": int(y.sum()),
    }


def predict_labels(probs: np.ndarray, positive_index: int | None, threshold: float | None) -> np.ndarray:
    """Class decisions: the positive class when its probability reaches ``threshold``, else argmax of the rest."""
    probs = np.asarray(probs, dtype=float)
    if positive_index is None or threshold is None:
        return probs.argmax(1)
    rest = probs.copy()
    rest[:, positive_index] = -np.inf
    return np.where(probs[:, positive_index] >= threshold, positive_index, rest.argmax(1))


def classification_metrics(
    y: np.ndarray,
    probs: np.ndarray,
    classes: list[str],
    positive_class: str | None = "covid",
    threshold: float | None = None,
) -> dict:
    """Everything ``metrics.json`` reports for one set of predictions.

    Args:
        y: true class indices ``(N,)``.
        probs: predicted probabilities ``(N, C)``.
        classes: class names in index order.
        positive_class: the screened class; when it is not among ``classes`` the COVID-vs-rest block is omitted.
        threshold: operating threshold on the positive class's probability (default: argmax decisions).
    """
    y = np.asarray(y, dtype=int)
    probs = np.asarray(probs, dtype=float)
    pos = classes.index(positive_class) if positive_class in classes else None
    pred = predict_labels(probs, pos, threshold)
    out: dict = {
        "classes": list(classes),
        "n": int(len(y)),
        "accuracy": float(np.mean(pred == y)) if len(y) else math.nan,
        "confusion_matrix": confusion_matrix(y, pred, labels=list(range(len(classes)))).tolist(),
        "per_class": {},
    }
    for i, name in enumerate(classes):
        m = binary_metrics(y == i, probs[:, i], threshold=0.5)
        # decisions of the per-class block are the model's decisions (not 0.5 per class)
        yi, pi = y == i, pred == i
        tp, fp, fn, tn = int(np.sum(yi & pi)), int(np.sum(~yi & pi)), int(np.sum(yi & ~pi)), int(np.sum(~yi & ~pi))
        m.update({
            "sensitivity": _ratio(tp, tp + fn), "specificity": _ratio(tn, tn + fp), "precision": _ratio(tp, tp + fp),
            "npv": _ratio(tn, tn + fn), "f1": _ratio(2 * tp, 2 * tp + fp + fn), "accuracy": _ratio(tp + tn, len(y)),
            "tp": tp, "fp": fp, "tn": tn, "fn": fn,
        })
        m.pop("threshold")
        out["per_class"][name] = m
    aucs = [m["roc_auc"] for m in out["per_class"].values() if not math.isnan(m["roc_auc"])]
    out["macro_roc_auc"] = float(np.mean(aucs)) if aucs else math.nan
    if pos is not None:
        thr = 0.5 if threshold is None else threshold
        out["covid_vs_rest"] = binary_metrics(y == pos, probs[:, pos], thr)
    return out


def headline_auc(y: np.ndarray, probs: np.ndarray, classes: list[str], positive_class: str | None) -> float:
    """The model-selection metric: positive-vs-rest ROC AUC, or macro one-vs-rest AUC without a positive class."""
    y = np.asarray(y, dtype=int)
    if positive_class in classes:
        i = classes.index(positive_class)
        yi = y == i
        return float(roc_auc_score(yi, probs[:, i])) if yi.any() and (~yi).any() else math.nan
    aucs = [roc_auc_score(y == i, probs[:, i]) for i in range(len(classes)) if (y == i).any() and (y != i).any()]
    return float(np.mean(aucs)) if aucs else math.nan


def rank_auc(y: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC by the Mann-Whitney rank formula (ties count half; equal to scikit-learn's), NaN with one class.

    About 20x faster than ``roc_auc_score`` per call, which matters inside the thousands of calls of a bootstrap.
    """
    y = np.asarray(y, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(np.asarray(score, dtype=float))
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
