"""Operating points on the positive class's probability, chosen on validation data (never on test).

Three named points are stored in the checkpoint sidecar (``operating_points``) and can be picked by
``covidscreen predict --operating-point NAME``:

- ``youden``: maximum Youden J (sensitivity + specificity - 1), the balanced choice; also ``default``;
- ``sensitivity_<t>``: the highest threshold that still reaches sensitivity ``t`` (screening: miss few cases);
- ``specificity_<t>``: the lowest threshold that still reaches specificity ``t`` (confirmation: few false alarms).

The sensitivity and specificity *reached on validation* are recorded with each point; on new data they will differ
(the report shows test values with confidence intervals).
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_curve

from ..errors import ConfigError


def youden_threshold(y_true: np.ndarray, score: np.ndarray) -> float:
    """Threshold maximising Youden's J = sensitivity + specificity - 1 (0.5 when undefined)."""
    y = np.asarray(y_true).astype(bool)
    if y.all() or (~y).all():
        return 0.5
    fpr, tpr, thr = roc_curve(y, score)
    j = tpr - fpr
    best = int(np.argmax(j))
    return float(min(thr[best], 1.0))


def _check_target(target: float, what: str) -> None:
    if not 0 < target < 1:
        raise ConfigError(f"target {what} {target!r} is invalid: expected a number strictly between 0 and 1")


def threshold_for_sensitivity(y_true: np.ndarray, score: np.ndarray, target: float) -> float:
    """Highest threshold whose sensitivity on these data is at least ``target``."""
    _check_target(target, "sensitivity")
    y = np.asarray(y_true).astype(bool)
    pos = np.sort(np.asarray(score, dtype=float)[y])[::-1]
    if len(pos) == 0:
        return 0.5
    k = int(np.ceil(target * len(pos) - 1e-9))  # need at least k positives at or above the threshold
    return float(pos[max(k, 1) - 1])


def threshold_for_specificity(y_true: np.ndarray, score: np.ndarray, target: float) -> float:
    """Lowest threshold whose specificity on these data is at least ``target``."""
    _check_target(target, "specificity")
    y = np.asarray(y_true).astype(bool)
    neg = np.sort(np.asarray(score, dtype=float)[~y])
    if len(neg) == 0:
        return 0.5
    k = int(np.ceil(target * len(neg) - 1e-9))  # at least k negatives strictly below the threshold
    if k >= len(neg):
        return float(np.nextafter(neg[-1], np.inf))
    return float(np.nextafter(neg[k - 1], np.inf)) if k > 0 else float(neg[0])


def point_name(kind: str, target: float) -> str:
    """``sensitivity_0.95`` style names (targets printed without trailing zeros)."""
    return f"{kind}_{target:g}"


def operating_points(y_true: np.ndarray, score: np.ndarray, target_sensitivity: float = 0.95,
                     target_specificity: float = 0.95) -> dict[str, float]:
    """The named operating points stored in the checkpoint sidecar (``default`` is what predict uses)."""
    pts = {
        "youden": youden_threshold(y_true, score),
        point_name("sensitivity", target_sensitivity): threshold_for_sensitivity(y_true, score, target_sensitivity),
        point_name("specificity", target_specificity): threshold_for_specificity(y_true, score, target_specificity),
    }
    pts["default"] = pts["youden"]
    return pts


def describe_points(y_true: np.ndarray, score: np.ndarray, points: dict[str, float]) -> dict[str, dict[str, float]]:
    """Sensitivity and specificity that each threshold reaches on the data it was chosen on."""
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(score, dtype=float)
    out = {}
    for name, t in points.items():
        pred = s >= t
        out[name] = {
            "threshold": float(t),
            "sensitivity": float((pred & y).sum() / y.sum()) if y.any() else float("nan"),
            "specificity": float((~pred & ~y).sum() / (~y).sum()) if (~y).any() else float("nan"),
        }
    return out
