"""Within-site metrics against hand computations, and the patient bootstrap's behaviour."""

import math

import numpy as np
import pandas as pd
import pytest

from covidscreen.errors import DataError
from covidscreen.evaluation.within_site import mixed_sites, within_site_auc, within_site_metrics

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
    df = pd.DataFrame({"site": "a", "label": ["covid"] * 10 + ["normal"] * 10,
                       "prob_covid": [0.9] * 10 + [0.1] * 10})
    m = within_site_metrics(df, CLASSES, "covid", threshold=0.5, n_boot=50)["sites"]["a"]
    assert m["roc_auc_ci"] == [1.0, 1.0] and m["sensitivity_ci"] == [1.0, 1.0] and m["specificity_ci"] == [1.0, 1.0]


def test_few_negatives_stay_in_every_replicate():
    """2 negative patients among 40: the stratified resampling keeps both in every replicate's sample size, so
    every replicate has an AUC; the same data resampled unstratified loses them in some replicates."""
    from covidscreen.evaluation.bootstrap import BinaryTask, bootstrap_tasks

    rng = np.random.default_rng(0)
    y = np.r_[np.ones(38, bool), np.zeros(2, bool)]
    s = rng.random(40) + y * 0.3
    df = pd.DataFrame({"site": "a", "label": np.where(y, "covid", "normal"), "prob_covid": s})
    m = within_site_metrics(df, CLASSES, "covid", n_boot=300)["sites"]["a"]
    assert np.isfinite(m["roc_auc_ci"]).all()
    strat = bootstrap_tasks([BinaryTask("t", y, s >= 0.5, s)], n_boot=300, stratify=y)["t"]
    plain = bootstrap_tasks([BinaryTask("t", y, s >= 0.5, s)], n_boot=300)["t"]
    assert "roc_auc" not in strat["undefined"] and plain["undefined"]["roc_auc"] > 10


def test_selection_metric_can_require_images_of_both_classes():
    df = _preds()
    y, s, site = (df["label"] == "covid").to_numpy(), df["prob_covid"].to_numpy(), df["site"].to_numpy()
    assert within_site_auc(y, s, site, min_per_class=2) == pytest.approx(0.75)  # site b has one positive
    assert math.isnan(within_site_auc(y, s, site, min_per_class=3))
