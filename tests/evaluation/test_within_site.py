"""Within-site metrics against hand computations, and the patient bootstrap's behaviour."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from covidscreen.errors import DataError
from covidscreen.evaluation.within_site import bootstrap_ci, mixed_sites, within_site_auc, within_site_metrics

CLASSES = ["covid", "normal", "pneumonia"]


def _preds() -> pd.DataFrame:
    rows = [
        # site A: positives 0.9, 0.4; negatives 0.5, 0.1 -> pairs won 3 of 4 -> AUC 0.75
        ("a", "covid", 0.9), ("a", "covid", 0.4), ("a", "normal", 0.5), ("a", "pneumonia", 0.1),
        # site B: positive 0.8; negatives 0.7, 0.2, 0.9 -> pairs won 2 of 3
        ("b", "covid", 0.8), ("b", "normal", 0.7), ("b", "normal", 0.2), ("b", "pneumonia", 0.9),
        # site C: one class only -> no within-site metric
        ("c", "normal", 0.3), ("c", "normal", 0.6),
    ]
    df = pd.DataFrame(rows, columns=["site", "label", "prob_covid"])
    df["group"] = [f"p{i}" for i in range(len(df))]
    return df


def test_point_estimates_match_hand_computation():
    out = within_site_metrics(_preds(), CLASSES, "covid", threshold=0.45, n_boot=50)
    assert set(out["sites"]) == {"a", "b"}
    a, b = out["sites"]["a"], out["sites"]["b"]
    assert a["roc_auc"] == pytest.approx(0.75)
    assert (a["sensitivity"], a["specificity"]) == (0.5, 0.5)  # 0.5 >= 0.45 is a false positive
    assert b["roc_auc"] == pytest.approx(2 / 3)
    assert b["sensitivity"] == 1.0 and b["specificity"] == pytest.approx(1 / 3)
    assert (a["n"], a["n_positive"], a["n_negative"], b["n_negative"]) == (4, 2, 2, 3)
    assert out["threshold"] == 0.45


def test_rank_auc_equals_sklearn_with_ties():
    from sklearn.metrics import roc_auc_score

    from covidscreen.evaluation.within_site import auc_or_nan

    rng = np.random.default_rng(2)
    y = rng.random(200) < 0.3
    s = np.round(rng.random(200), 1)  # many ties
    assert auc_or_nan(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_selection_metric_is_mean_over_mixed_sites():
    df = _preds()
    auc = within_site_auc((df["label"] == "covid").to_numpy(), df["prob_covid"].to_numpy(), df["site"].to_numpy())
    assert auc == pytest.approx((0.75 + 2 / 3) / 2)
    assert math.isnan(within_site_auc(np.array([1, 1, 0]), np.array([0.1, 0.2, 0.3]), np.array(["x", "x", "y"])))


def test_mixed_sites_and_errors():
    assert mixed_sites(_preds(), "covid") == ["a", "b"]
    with pytest.raises(DataError, match="positive class"):
        within_site_metrics(_preds(), CLASSES, "sars")
    with pytest.raises(DataError, match="site"):
        within_site_metrics(_preds().drop(columns=["site"]), CLASSES, "covid")


def test_bootstrap_is_seeded_and_brackets_the_estimate():
    rng = np.random.default_rng(1)
    y = np.r_[np.ones(60, bool), np.zeros(60, bool)]
    s = np.r_[rng.normal(1, 1, 60), rng.normal(0, 1, 60)]
    df = pd.DataFrame({"site": "a", "label": np.where(y, "covid", "normal"), "prob_covid": s})
    m1 = within_site_metrics(df, CLASSES, "covid", n_boot=300, seed=3)["sites"]["a"]
    m2 = within_site_metrics(df, CLASSES, "covid", n_boot=300, seed=3)["sites"]["a"]
    m3 = within_site_metrics(df, CLASSES, "covid", n_boot=300, seed=4)["sites"]["a"]
    assert m1["roc_auc_ci"] == m2["roc_auc_ci"] != m3["roc_auc_ci"]
    lo, hi = m1["roc_auc_ci"]
    assert lo < m1["roc_auc"] < hi and 0.05 < hi - lo < 0.35


def test_perfect_separation_gives_degenerate_interval():
    y = np.r_[np.ones(10, bool), np.zeros(10, bool)]
    s = np.r_[np.full(10, 0.9), np.full(10, 0.1)]
    (auc_ci,) = bootstrap_ci(y, s, lambda a, b: float(np.mean(b[a]) > np.mean(b[~a])), n_boot=50)
    assert auc_ci == (1.0, 1.0)


def test_patient_resampling_is_not_fooled_by_duplicated_images():
    """Five copies of each image of one patient carry no more evidence: the interval must not shrink ~sqrt(5)x."""
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(30, bool), np.zeros(30, bool)]
    s = np.r_[rng.normal(1, 1, 30), rng.normal(0, 1, 30)]
    from covidscreen.evaluation.within_site import auc_or_nan

    (single,) = bootstrap_ci(y, s, auc_or_nan, n_boot=400, seed=0)
    rep_y, rep_s, rep_g = np.repeat(y, 5), np.repeat(s, 5), np.repeat(np.arange(60), 5)
    (grouped,) = bootstrap_ci(rep_y, rep_s, auc_or_nan, groups=rep_g, n_boot=400, seed=0)
    (naive,) = bootstrap_ci(rep_y, rep_s, auc_or_nan, n_boot=400, seed=0)
    width = lambda ci: ci[1] - ci[0]  # noqa: E731
    assert width(grouped) == pytest.approx(width(single), rel=0.25)
    assert width(naive) < 0.7 * width(grouped)


def test_interval_coverage_on_simulated_data():
    """Binormal scores with a known AUC: the 90% interval should cover it in most simulated samples."""
    true_auc = norm.cdf(1 / math.sqrt(2))
    from covidscreen.evaluation.within_site import auc_or_nan

    rng = np.random.default_rng(7)
    hits = 0
    n_sim = 60
    for i in range(n_sim):
        y = np.r_[np.ones(40, bool), np.zeros(40, bool)]
        s = np.r_[rng.normal(1, 1, 40), rng.normal(0, 1, 40)]
        (ci,) = bootstrap_ci(y, s, auc_or_nan, n_boot=150, level=0.9, seed=i)
        hits += ci[0] <= true_auc <= ci[1]
    assert hits / n_sim >= 0.75
