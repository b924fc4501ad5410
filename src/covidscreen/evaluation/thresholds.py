"""Operating points on the positive class's probability, chosen on validation data (never on test)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_curve


def youden_threshold(y_true: np.ndarray, score: np.ndarray) -> float:
    """Threshold maximising Youden's J = sensitivity + specificity - 1 (0.5 when undefined)."""
    y = np.asarray(y_true).astype(bool)
    if y.all() or (~y).all():
        return 0.5
    fpr, tpr, thr = roc_curve(y, score)
    j = tpr - fpr
    best = int(np.argmax(j))
    return float(min(thr[best], 1.0))


def threshold_for_sensitivity(y_true: np.ndarray, score: np.ndarray, target: float) -> float:
    """Highest threshold whose sensitivity on these data is at least ``target``."""
    y = np.asarray(y_true).astype(bool)
    pos = np.sort(np.asarray(score, dtype=float)[y])[::-1]
    if len(pos) == 0:
        return 0.5
    k = int(np.ceil(target * len(pos)))  # need at least k positives at or above the threshold
    return float(pos[max(k, 1) - 1])


def threshold_for_specificity(y_true: np.ndarray, score: np.ndarray, target: float) -> float:
    """Lowest threshold whose specificity on these data is at least ``target``."""
    y = np.asarray(y_true).astype(bool)
    neg = np.sort(np.asarray(score, dtype=float)[~y])
    if len(neg) == 0:
        return 0.5
    k = int(np.ceil(target * len(neg)))  # at least k negatives strictly below the threshold
    if k >= len(neg):
        return float(np.nextafter(neg[-1], np.inf))
    return float(np.nextafter(neg[k - 1], np.inf)) if k > 0 else float(neg[0])


def operating_points(y_true: np.ndarray, score: np.ndarray) -> dict[str, float]:
    """The named operating points stored in the checkpoint sidecar (``default`` is what predict uses)."""
    pts = {
        "youden": youden_threshold(y_true, score),
        "sensitivity_0.95": threshold_for_sensitivity(y_true, score, 0.95),
        "specificity_0.95": threshold_for_specificity(y_true, score, 0.95),
    }
    pts["default"] = pts["youden"]
    return pts
