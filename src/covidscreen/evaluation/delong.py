"""DeLong's variance of the ROC AUC (DeLong et al. 1988), in the fast midrank form of Sun & Xu (2014).

DeLong treats every image as independent. With several images per patient that understates the variance, so the
report's primary AUC interval is the patient-level bootstrap; the DeLong interval is shown next to it as a check
(when both agree, clustering matters little).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import norm, rankdata


def _midranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank."""
    return rankdata(x, method="average")


def delong_auc_variance(y_true: np.ndarray, score: np.ndarray) -> tuple[float, float]:
    """AUC and its DeLong variance.

    Returns:
        ``(auc, variance)``; both NaN when one class is missing, variance NaN when a class has a single image.
    """
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(score, dtype=float)
    pos, neg = s[y], s[~y]
    m, n = len(pos), len(neg)
    if m == 0 or n == 0:
        return math.nan, math.nan
    tx, ty, tz = _midranks(pos), _midranks(neg), _midranks(np.concatenate([pos, neg]))
    auc = float((tz[:m].sum() - m * (m + 1) / 2) / (m * n))
    if m < 2 or n < 2:
        return auc, math.nan
    v01 = (tz[:m] - tx) / n  # per positive: share of negatives ranked below it
    v10 = 1.0 - (tz[m:] - ty) / m  # per negative: share of positives ranked above it
    var = float(np.var(v01, ddof=1) / m + np.var(v10, ddof=1) / n)
    return auc, var


def delong_ci(y_true: np.ndarray, score: np.ndarray, level: float = 0.95) -> list[float]:
    """Normal-approximation CI of the AUC with DeLong's variance, clipped to [0, 1]."""
    auc, var = delong_auc_variance(y_true, score)
    if not (math.isfinite(auc) and math.isfinite(var)):
        return [math.nan, math.nan]
    z = float(norm.ppf(0.5 + level / 2))
    half = z * math.sqrt(max(var, 0.0))
    return [max(0.0, auc - half), min(1.0, auc + half)]
