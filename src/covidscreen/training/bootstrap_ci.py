"""A small patient-level percentile bootstrap for the confidence intervals of experiment tables and
cross-validation.

Patients (the ``group`` column), not images, are resampled: images of one patient are correlated, and resampling
them one by one would give intervals that are too narrow. (``evaluation/`` may grow a fuller bootstrap; this one
only serves the comparison tables of ``experiment.py`` and ``crossval.py``.)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from ..evaluation.metrics import rank_auc as fast_auc  # the one rank-based AUC of the package


def grouped_bootstrap_ci(stat: Callable[[np.ndarray], float], groups: np.ndarray, n_boot: int = 1000,
                         level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """Point estimate and percentile interval of ``stat`` under resampling of whole groups.

    Args:
        stat: function of an index array (rows of the data) returning a number; NaN results (e.g. an AUC of a
            resample with one class only) are left out of the interval.
        groups: group (patient) of every row.
        n_boot: number of bootstrap resamples.
        level: coverage of the interval.

    Returns:
        ``(estimate, low, high)``; the bounds are NaN when fewer than half the resamples gave a number.
    """
    groups = np.asarray(groups)
    n = len(groups)
    estimate = float(stat(np.arange(n))) if n else math.nan
    if n == 0 or n_boot <= 0:
        return estimate, math.nan, math.nan
    _, inverse = np.unique(groups, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    starts = np.r_[0, np.cumsum(np.bincount(inverse))]
    members = [order[starts[g]:starts[g + 1]] for g in range(len(starts) - 1)]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        picked = rng.integers(0, len(members), len(members))
        v = stat(np.concatenate([members[g] for g in picked]))
        if not math.isnan(v):
            values.append(v)
    if len(values) < n_boot / 2:
        return estimate, math.nan, math.nan
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return estimate, float(lo), float(hi)


def auc_stat(y: np.ndarray, score: np.ndarray) -> Callable[[np.ndarray], float]:
    """ROC AUC of ``score`` for binary ``y`` on a subset of rows (NaN when the subset has one class)."""
    y = np.asarray(y, dtype=bool)
    score = np.asarray(score, dtype=float)

    def stat(idx: np.ndarray) -> float:
        return fast_auc(y[idx], score[idx])

    return stat


def rate_stat(hit: np.ndarray, eligible: np.ndarray) -> Callable[[np.ndarray], float]:
    """Share of ``hit`` among ``eligible`` rows of a subset (sensitivity: hit = predicted positive, eligible =
    positive)."""
    hit = np.asarray(hit, dtype=bool)
    eligible = np.asarray(eligible, dtype=bool)

    def stat(idx: np.ndarray) -> float:
        e = eligible[idx]
        return float(hit[idx][e].mean()) if e.any() else math.nan

    return stat
