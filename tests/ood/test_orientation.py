"""The orientation check: the turned views, the fitted classifier's score, its stored form and its bad states."""

import numpy as np
import pytest
import torch

from covidscreen.errors import DataError
from covidscreen.ood.detectors import fit_detector
from covidscreen.ood.fit import fit_on_features
from covidscreen.ood.model import OODModel
from covidscreen.ood.orientation import VIEWS, OrientationCheck, fit_orientation, turned


def test_turned_views_are_the_named_rotations_and_flip():
    img = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    np.testing.assert_array_equal(turned(img, 0), img)
    # clockwise: the first column, read bottom-up, becomes the first row
    np.testing.assert_array_equal(turned(img, 1)[0, 0], img[0, ::-1, 0])
    np.testing.assert_array_equal(turned(img, 2)[0, 0], img[0, :, -1])  # anticlockwise
    np.testing.assert_array_equal(turned(img, 3)[0], img[0, ::-1, ::-1])
    np.testing.assert_array_equal(turned(img, 4)[0], img[0, ::-1])  # upside down, left and right kept
    rgb = np.zeros((1, 4, 4, 3), np.uint8)
    assert turned(rgb, 1).shape == rgb.shape
    with pytest.raises(ValueError, match="view 5"):
        turned(img, 5)


def synthetic_views(rng, n=60, dim=16):
    """Features whose view shows in a few directions (as a network's features of turned chest X-rays do)."""
    base = rng.normal(size=(len(VIEWS), dim)) * 3
    return [rng.normal(size=(n, dim)) + base[v] for v in range(len(VIEWS))], base


def test_check_scores_turned_views_above_upright_and_survives_its_tensors():
    rng = np.random.default_rng(0)
    views, base = synthetic_views(rng)
    check = fit_orientation(views, seed=0)
    assert check.n_fit == 60 and check.coef.shape == (len(VIEWS), 16)
    new = [rng.normal(size=(40, 16)) + base[v] for v in range(len(VIEWS))]
    upright = check.score(new[0])
    for v in range(1, len(VIEWS)):
        assert np.median(check.score(new[v])) > np.quantile(upright, 0.95), VIEWS[v]
        assert (check.views(new[v]) == v).mean() > 0.9
    again = OrientationCheck.from_tensors(check.tensors, check.n_fit)
    np.testing.assert_allclose(again.score(new[2]), check.score(new[2]))
    with pytest.raises(DataError, match="lacks coef"):
        OrientationCheck.from_tensors({k: v for k, v in check.tensors.items() if k != "coef"})
    bad = dict(check.tensors, coef=torch.zeros(3, 16, dtype=torch.float64))
    with pytest.raises(DataError, match="shape"):
        OrientationCheck.from_tensors(bad)


def test_too_few_images_in_a_view_is_a_clear_error():
    rng = np.random.default_rng(1)
    views, _ = synthetic_views(rng)
    views[3] = views[3][:4]
    with pytest.raises(DataError, match="at least 10 .* rotated 180"):
        fit_orientation(views)


def test_combined_score_flags_turned_features_at_the_stated_validation_rate():
    rng = np.random.default_rng(2)
    views, base = synthetic_views(rng, n=200)
    check = fit_orientation([v[:150] for v in views])
    labels = rng.integers(0, 2, 150)
    val = views[0][150:]
    logits = rng.normal(size=(len(val), 2))
    model = fit_on_features("mahalanobis", views[0][:150], labels, val, logits, 0.1, orientation=check)
    assert isinstance(model, OODModel) and model.norms is not None and model.norms.shape == (4,)
    assert model.flags(model.val_scores).mean() == pytest.approx(0.1, abs=0.03)
    turned_val = views[4][150:]
    assert model.flags(model.score(turned_val, logits)).mean() > 0.9
    # the combined score is at least the standardised detector score: the check only adds flags
    det = fit_detector("mahalanobis", views[0][:150], labels)
    c1, s1 = model.norms[:2]
    assert (model.score(val, logits) >= (det.score(val, logits) - c1) / s1 - 1e-9).all()
    plain = fit_on_features("mahalanobis", views[0][:150], labels, val, logits, 0.1)
    assert plain.orientation is None and plain.norms is None
