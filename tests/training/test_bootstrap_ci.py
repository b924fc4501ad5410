"""The patient-level percentile bootstrap of the comparison tables."""

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from covidscreen.training.bootstrap_ci import auc_stat, fast_auc, grouped_bootstrap_ci, rate_stat


def test_fast_auc_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300).astype(bool)
    s = np.round(rng.random(300) + y * 0.3, 1)  # many ties
    assert fast_auc(y, s) == pytest.approx(roc_auc_score(y, s))
    assert math.isnan(fast_auc(np.ones(4, bool), np.arange(4.0)))


def test_interval_contains_estimate_and_shrinks_with_more_patients():
    rng = np.random.default_rng(1)

    def data(n):
        y = rng.integers(0, 2, n).astype(bool)
        return y, rng.normal(size=n) + y

    y, s = data(100)
    est, lo, hi = grouped_bootstrap_ci(auc_stat(y, s), np.arange(100), n_boot=500)
    assert lo < est < hi and est == pytest.approx(roc_auc_score(y, s))
    y2, s2 = data(1600)
    _, lo2, hi2 = grouped_bootstrap_ci(auc_stat(y2, s2), np.arange(1600), n_boot=500)
    assert (hi2 - lo2) < 0.5 * (hi - lo)


def test_resampling_whole_patients_keeps_duplicates_from_faking_precision():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 80).astype(bool)
    s = rng.normal(size=80) + y
    # every patient imaged 5 times with the same score: 400 rows but still 80 patients
    yy, ss, groups = np.repeat(y, 5), np.repeat(s, 5), np.repeat(np.arange(80), 5)
    _, lo_p, hi_p = grouped_bootstrap_ci(auc_stat(y, s), np.arange(80), n_boot=500, seed=3)
    _, lo_g, hi_g = grouped_bootstrap_ci(auc_stat(yy, ss), groups, n_boot=500, seed=3)
    _, lo_i, hi_i = grouped_bootstrap_ci(auc_stat(yy, ss), np.arange(400), n_boot=500, seed=3)
    assert (hi_g - lo_g) == pytest.approx(hi_p - lo_p, rel=0.25)
    assert (hi_i - lo_i) < 0.7 * (hi_g - lo_g)  # image-level resampling would be too narrow


def test_rate_stat_and_degenerate_cases():
    hit = np.array([1, 1, 0, 0, 1], bool)
    pos = np.array([1, 1, 1, 0, 0], bool)
    assert rate_stat(hit, pos)(np.arange(5)) == pytest.approx(2 / 3)
    est, lo, hi = grouped_bootstrap_ci(auc_stat(np.ones(5, bool), np.arange(5.0)), np.arange(5), n_boot=50)
    assert math.isnan(est) and math.isnan(lo) and math.isnan(hi)
