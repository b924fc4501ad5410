"""Tests of covidscreen.explain.regions: the border-fraction shortcut indicator."""

from __future__ import annotations

import math

import numpy as np
import pytest

from covidscreen.errors import CovidscreenError
from covidscreen.explain import Explainer, border_area, border_fraction, central_region
from tests.explain_fixtures import MARKER, SIZE, synthetic_images


def test_central_region_leaves_a_band_of_margin_times_each_side():
    m = central_region((80, 160), margin=0.125)
    assert m.shape == (80, 160)
    rows, cols = np.where(m)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (10, 69, 20, 139)
    assert border_area((80, 160), margin=0.125) == pytest.approx(1 - 0.75 * 0.75)


def test_border_fraction_by_hand():
    heat = np.zeros((8, 8))
    heat[0, 0] = 3.0  # corner (band is 1 px at margin 1/8)
    heat[4, 4] = 1.0  # centre
    assert border_fraction(heat, margin=0.125) == pytest.approx(0.75)
    assert border_fraction(np.ones((8, 8)), margin=0.125) == pytest.approx(border_area((8, 8), margin=0.125))
    assert math.isnan(border_fraction(np.zeros((8, 8))))
    assert border_fraction(-np.ones((8, 8))) != border_fraction(-np.ones((8, 8)))  # negative mass counts as none


def test_a_mask_replaces_the_central_box_at_any_resolution():
    heat = np.zeros((100, 100))
    heat[10:30, 10:30] = 1  # upper-left quarter of the image's inner part
    lungs = np.zeros((50, 50), bool)
    lungs[5:15, 5:15] = True  # same area at half resolution
    assert border_fraction(heat, mask=lungs) == pytest.approx(0.0)
    assert border_fraction(heat, mask=~lungs) == pytest.approx(1.0)
    assert border_area((100, 100), mask=lungs) == pytest.approx(0.96)
    with pytest.raises(CovidscreenError, match="empty"):
        border_fraction(heat, mask=np.zeros((10, 10), bool))
    with pytest.raises(CovidscreenError, match="margin"):
        border_fraction(heat, margin=0.6)


def _mean_border_fraction(model, signal: str) -> float:
    images = synthetic_images(24, signal, seed=123)  # unseen images
    with Explainer(model, classes=["plain", "signal"], image_size=SIZE) as ex:
        maps, probs, _ = ex.maps(images, "signal")
    assert probs[:, 1].min() > 0.9  # the model sees the signal in every one of them
    return float(np.mean([border_fraction(m) for m in maps]))


def test_border_fraction_is_near_one_for_a_learned_corner_marker(trained_corner):
    score = _mean_border_fraction(trained_corner, "corner")
    chance = border_area((SIZE, SIZE))
    assert score > 0.8, f"corner-marker model: border fraction {score:.3f}"
    assert score > chance + 0.3
    assert MARKER <= round(0.125 * SIZE)  # the marker lies inside the border band it should be found in


def test_border_fraction_is_low_for_a_learned_central_signal(trained_centre):
    score = _mean_border_fraction(trained_centre, "centre")
    assert score < 0.15, f"centre-signal model: border fraction {score:.3f}"
