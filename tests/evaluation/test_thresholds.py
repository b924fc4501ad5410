"""Operating points: each is the extreme threshold reaching its target (brute force), Youden against the ROC."""

import numpy as np
import pytest

from covidscreen.errors import ConfigError
from covidscreen.evaluation.thresholds import (
    describe_points,
    operating_points,
    threshold_for_sensitivity,
    threshold_for_specificity,
    youden_threshold,
)


def _sens(y, s, t):
    return ((s >= t) & y).sum() / y.sum()


def _spec(y, s, t):
    return ((s < t) & ~y).sum() / (~y).sum()


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("target", [0.8, 0.9, 0.95, 0.99])
def test_targets_are_reached_by_the_most_extreme_threshold(seed, target):
    rng = np.random.default_rng(seed)
    y = rng.random(150) < 0.3
    s = np.round(rng.normal(y * 1.2, 1), 2)  # ties on purpose
    candidates = np.unique(np.concatenate([s, np.nextafter(s, np.inf)]))
    t = threshold_for_sensitivity(y, s, target)
    assert _sens(y, s, t) >= target
    assert t == max(c for c in candidates if _sens(y, s, c) >= target)
    t = threshold_for_specificity(y, s, target)
    assert _spec(y, s, t) >= target
    assert t == min(c for c in candidates if _spec(y, s, c) >= target)


def test_hand_checked_points():
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0], bool)
    s = np.array([0.9, 0.8, 0.7, 0.3, 0.6, 0.4, 0.2, 0.1])
    # sensitivity 0.75 needs 3 of 4 positives: highest such threshold is 0.7
    assert threshold_for_sensitivity(y, s, 0.75) == 0.7
    # specificity 0.75 needs 3 negatives below: just above 0.4
    t = threshold_for_specificity(y, s, 0.75)
    assert 0.4 < t < 0.4 + 1e-12
    # Youden: t=0.7 gives 0.75 + 1.0 - 1 = 0.75, the maximum
    assert youden_threshold(y, s) == 0.7


def test_operating_points_names_and_description():
    rng = np.random.default_rng(1)
    y = rng.random(300) < 0.2
    s = rng.random(300) + y
    pts = operating_points(y, s, 0.9, 0.8)
    assert set(pts) == {"youden", "sensitivity_0.9", "specificity_0.8", "default"}
    assert pts["default"] == pts["youden"]
    d = describe_points(y, s, pts)
    assert d["sensitivity_0.9"]["sensitivity"] >= 0.9 and d["specificity_0.8"]["specificity"] >= 0.8


def test_bad_targets_and_degenerate_data():
    with pytest.raises(ConfigError, match="between 0 and 1"):
        threshold_for_sensitivity(np.array([1, 0], bool), np.array([0.3, 0.2]), 1.0)
    with pytest.raises(ConfigError):
        operating_points(np.array([1, 0], bool), np.array([0.3, 0.2]), target_specificity=0)
    assert youden_threshold(np.ones(3, bool), np.array([0.1, 0.2, 0.3])) == 0.5
    assert threshold_for_specificity(np.ones(3, bool), np.array([0.1, 0.2, 0.3]), 0.9) == 0.5
