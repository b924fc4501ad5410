"""Point metrics against scikit-learn and hand-checked numbers."""

import math

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from covidscreen.evaluation.metrics import (
    binary_metrics,
    classification_metrics,
    headline_auc,
    predict_labels,
    rank_auc,
)


def test_binary_metrics_against_sklearn():
    rng = np.random.default_rng(0)
    y = rng.random(400) < 0.25
    s = rng.normal(y * 1.0, 1)
    m = binary_metrics(y, s, 0.3)
    pred = s >= 0.3
    assert m["sensitivity"] == pytest.approx(recall_score(y, pred))
    assert m["specificity"] == pytest.approx(recall_score(~y, ~pred))
    assert m["precision"] == pytest.approx(precision_score(y, pred))
    assert m["npv"] == pytest.approx(precision_score(~y, ~pred))
    assert m["f1"] == pytest.approx(f1_score(y, pred))
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, s))
    assert m["pr_auc"] == pytest.approx(average_precision_score(y, s))


def test_hand_checked_confusion_and_undefined_ratios():
    y = np.array([1, 1, 0, 0, 0], bool)
    s = np.array([0.9, 0.2, 0.8, 0.1, 0.3])
    m = binary_metrics(y, s, 0.5)  # TP 1, FN 1, FP 1, TN 2
    assert (m["tp"], m["fn"], m["fp"], m["tn"]) == (1, 1, 1, 2)
    assert m["sensitivity"] == 0.5 and m["specificity"] == pytest.approx(2 / 3) and m["npv"] == pytest.approx(2 / 3)
    none = binary_metrics(np.zeros(3, bool), np.array([0.1, 0.2, 0.3]), 0.5)
    assert math.isnan(none["sensitivity"]) and math.isnan(none["roc_auc"]) and math.isnan(none["precision"])


def test_decisions_use_the_threshold_for_the_positive_class_only():
    probs = np.array([[0.30, 0.50, 0.20], [0.10, 0.20, 0.70], [0.25, 0.15, 0.60]])
    # positive class 0 at threshold 0.25: rows 0 and 2 become class 0; row 1 is argmax of the rest
    np.testing.assert_array_equal(predict_labels(probs, 0, 0.25), [0, 2, 0])
    np.testing.assert_array_equal(predict_labels(probs, None, None), [1, 2, 2])
    m = classification_metrics(np.array([0, 2, 2]), probs, ["covid", "normal", "pneumonia"], "covid", 0.25)
    assert m["confusion_matrix"] == [[1, 0, 0], [0, 0, 0], [1, 0, 1]]
    assert m["covid_vs_rest"]["fp"] == 1


def test_multiclass_positive_threshold_rule():
    probs = np.array([[0.3, 0.6, 0.1], [0.2, 0.3, 0.5], [0.6, 0.2, 0.2]])
    assert predict_labels(probs, 0, 0.25).tolist() == [0, 2, 0]
    assert predict_labels(probs, 0, None).tolist() == [1, 2, 0]
    m = classification_metrics(np.array([0, 2, 0]), probs, ["covid", "normal", "pneumonia"], "covid", 0.25)
    assert m["accuracy"] == 1.0 and m["confusion_matrix"] == [[2, 0, 0], [0, 0, 0], [0, 0, 1]]
    assert m["covid_vs_rest"]["sensitivity"] == 1.0
    assert math.isnan(m["per_class"]["normal"]["roc_auc"])  # no normal image: undefined, not 0.5
    assert headline_auc(np.array([0, 2, 0]), probs, ["covid", "normal", "pneumonia"], "covid") == 1.0


def test_rank_auc_equals_sklearn_with_ties_and_is_nan_with_one_class():
    rng = np.random.default_rng(2)
    y = rng.random(200) < 0.3
    s = np.round(rng.random(200) + y * 0.3, 1)  # many ties
    assert rank_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert math.isnan(rank_auc(np.ones(4, bool), np.arange(4.0)))
