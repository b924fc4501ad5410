"""DeLong variance: against the O(m n) textbook definition, and coverage on independent data."""

import math

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from covidscreen.evaluation.delong import delong_auc_variance, delong_ci


def _reference(y, s):
    pos, neg = s[y], s[~y]
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    v10, v01 = psi.mean(1), psi.mean(0)
    return psi.mean(), v10.var(ddof=1) / len(pos) + v01.var(ddof=1) / len(neg)


def test_matches_the_definition_with_ties():
    rng = np.random.default_rng(0)
    y = rng.random(80) < 0.4
    s = np.round(rng.normal(y * 0.8, 1), 1)
    auc, var = delong_auc_variance(y, s)
    ref_auc, ref_var = _reference(y, s)
    assert auc == pytest.approx(roc_auc_score(y, s))
    assert auc == pytest.approx(ref_auc)
    assert var == pytest.approx(ref_var, rel=1e-10)


def test_hand_checked_small_case():
    # positives .9,.6 negatives .7,.2: psi rows [1,1],[0,1] => AUC .75; V10 = [1,.5], V01 = [.5,1]
    y = np.array([1, 1, 0, 0], bool)
    s = np.array([0.9, 0.6, 0.7, 0.2])
    auc, var = delong_auc_variance(y, s)
    assert auc == pytest.approx(0.75)
    assert var == pytest.approx(0.125 / 2 + 0.125 / 2)


def test_undefined_cases():
    assert all(math.isnan(v) for v in delong_auc_variance(np.ones(5, bool), np.arange(5.0)))
    assert all(math.isnan(v) for v in delong_ci(np.array([1, 0], bool), np.array([0.2, 0.1])))


def test_coverage_on_independent_data():
    rng = np.random.default_rng(7)
    mu = 1.0
    truth = norm.cdf(mu / math.sqrt(2))
    hits = 0
    for _ in range(200):
        y = rng.random(200) < 0.3
        s = rng.normal(mu * y, 1.0)
        lo, hi = delong_ci(y, s)
        hits += lo <= truth <= hi
    assert 0.90 <= hits / 200 <= 0.99
