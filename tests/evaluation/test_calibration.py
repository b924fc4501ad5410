"""Calibration metrics against hand-checked numbers and scikit-learn; temperature scaling recovers a planted T."""

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss, log_loss

from covidscreen.errors import ConfigError
from covidscreen.evaluation.calibration import (
    apply_temperature,
    brier_score,
    calibration_summary,
    expected_calibration_error,
    fit_temperature,
    reliability_curve,
)


def test_ece_hand_checked():
    # bin [0.0,0.5): p .1,.2 y 0,1 -> mean p .15, rate .5; bin [0.5,1]: p .8,.9,1.0 y 1,1,1 -> mean .9, rate 1
    y = np.array([0, 1, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.8, 0.9, 1.0])
    assert expected_calibration_error(y, p, n_bins=2) == pytest.approx((2 * 0.35 + 3 * 0.1) / 5)


def test_reliability_matches_sklearn_and_brier():
    rng = np.random.default_rng(0)
    p = rng.random(500)
    y = (rng.random(500) < p).astype(int)
    c = reliability_curve(y, p, 10)
    rate, mean = calibration_curve(y, p, n_bins=10)
    np.testing.assert_allclose(c["observed_rate"], rate)
    np.testing.assert_allclose(c["mean_predicted"], mean)
    assert sum(c["count"]) == 500
    assert brier_score(y, p) == pytest.approx(brier_score_loss(y, p))
    probs = np.stack([1 - p, p], 1)
    # multi-class Brier sums over classes: twice the binary one for two classes
    assert brier_score(y, probs) == pytest.approx(2 * brier_score_loss(y, p))


def test_temperature_recovers_overconfidence():
    rng = np.random.default_rng(1)
    z = rng.normal(0, 1.5, size=(4000, 3))
    pz = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    y = np.array([rng.choice(3, p=row) for row in pz])  # labels drawn from softmax(z): calibrated at T=1
    over = np.exp(2.5 * z) / np.exp(2.5 * z).sum(1, keepdims=True)  # a model 2.5x overconfident
    t = fit_temperature(over, y)
    assert t == pytest.approx(2.5, rel=0.1)
    fixed = apply_temperature(over, t)
    assert log_loss(y, fixed) < log_loss(y, over)
    np.testing.assert_array_equal(fixed.argmax(1), over.argmax(1))  # ranking of classes unchanged
    np.testing.assert_allclose(apply_temperature(over, 1.0), over, atol=1e-9)


def test_bad_input():
    with pytest.raises(ConfigError, match="two classes"):
        fit_temperature(np.full((5, 2), 0.5), np.zeros(5, int))
    with pytest.raises(ConfigError, match="positive"):
        apply_temperature(np.full((2, 2), 0.5), 0.0)
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        expected_calibration_error(np.array([0, 1]), np.array([0.2, 1.5]))


def test_summary_keys():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6], [0.5, 0.4, 0.1]])
    s = calibration_summary(np.array([0, 1, 2, 1]), probs, positive_index=0)
    assert {"ece_positive", "brier_positive", "brier_multiclass", "ece_top_label", "reliability_positive"} <= set(s)
