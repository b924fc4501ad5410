import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score, precision_score, recall_score, roc_auc_score

from covidscreen.evaluation.metrics import binary_metrics, classification_metrics, headline_auc, predict_labels
from covidscreen.evaluation.thresholds import (
    operating_points,
    threshold_for_sensitivity,
    threshold_for_specificity,
    youden_threshold,
)

Y = np.array([1, 1, 1, 0, 0, 0, 0, 1, 0, 0])
S = np.array([0.9, 0.8, 0.4, 0.35, 0.1, 0.6, 0.2, 0.7, 0.05, 0.3])


def test_binary_metrics_hand_checked_and_against_sklearn():
    m = binary_metrics(Y, S, threshold=0.5)
    # predicted positive: 0.9, 0.8, 0.6, 0.7 -> tp=3 (0.9, 0.8, 0.7), fp=1 (0.6), fn=1 (0.4), tn=5
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (3, 1, 1, 5)
    assert m["sensitivity"] == pytest.approx(0.75) and m["specificity"] == pytest.approx(5 / 6)
    assert m["precision"] == pytest.approx(0.75) and m["npv"] == pytest.approx(5 / 6)
    pred = S >= 0.5
    assert m["sensitivity"] == pytest.approx(recall_score(Y, pred))
    assert m["precision"] == pytest.approx(precision_score(Y, pred))
    assert m["f1"] == pytest.approx(f1_score(Y, pred))
    assert m["roc_auc"] == pytest.approx(roc_auc_score(Y, S))
    assert m["pr_auc"] == pytest.approx(average_precision_score(Y, S))
    assert m["roc_auc"] == pytest.approx(23 / 24)  # one discordant pair (0.4 < 0.6) of 4*6


def test_undefined_ratios_are_nan_not_zero():
    m = binary_metrics(np.zeros(4), np.array([0.1, 0.2, 0.3, 0.4]), 0.9)
    assert math.isnan(m["sensitivity"]) and math.isnan(m["roc_auc"]) and math.isnan(m["precision"])
    assert m["specificity"] == 1.0


def test_multiclass_positive_threshold_rule():
    probs = np.array([[0.3, 0.6, 0.1], [0.2, 0.3, 0.5], [0.6, 0.2, 0.2]])
    assert predict_labels(probs, 0, 0.25).tolist() == [0, 2, 0]
    assert predict_labels(probs, 0, None).tolist() == [1, 2, 0]
    m = classification_metrics(np.array([0, 2, 0]), probs, ["covid", "normal", "pneumonia"], "covid", 0.25)
    assert m["accuracy"] == 1.0 and m["confusion_matrix"] == [[2, 0, 0], [0, 0, 0], [0, 0, 1]]
    assert m["covid_vs_rest"]["sensitivity"] == 1.0
    assert math.isnan(m["per_class"]["normal"]["roc_auc"])  # no normal image: undefined, not 0.5
    assert headline_auc(np.array([0, 2, 0]), probs, ["covid", "normal", "pneumonia"], "covid") == 1.0


def test_thresholds_meet_their_targets():
    rng = np.random.default_rng(0)
    y = rng.random(2000) < 0.2
    s = np.clip(rng.normal(0.35 + 0.3 * y, 0.15), 0, 1)
    t = threshold_for_sensitivity(y, s, 0.95)
    assert (s[y] >= t).mean() >= 0.95 and (s[y] >= np.nextafter(t, 2)).mean() < 0.95
    t = threshold_for_specificity(y, s, 0.9)
    assert (s[~y] < t).mean() >= 0.9
    j = youden_threshold(y, s)
    grid = np.linspace(0, 1, 501)
    best = max((s[y] >= g).mean() + (s[~y] < g).mean() for g in grid)
    assert (s[y] >= j).mean() + (s[~y] < j).mean() >= best - 0.01
    pts = operating_points(y, s)
    assert pts["default"] == pts["youden"] and set(pts) >= {"sensitivity_0.95", "specificity_0.95"}
