"""Tests of covidscreen.explain.sanity: the model-randomisation test and ROAD faithfulness."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from covidscreen.explain import Explainer, ExplainError
from covidscreen.explain.sanity import (
    per_image_checks,
    randomisation_test,
    randomise_top_layers,
    rank_correlation,
    road_faithfulness,
    top_layer_paths,
)
from tests.explain_fixtures import SIZE, hook_count, make_tiny, synthetic_images


def test_rank_correlation():
    a = np.arange(16.0).reshape(4, 4)
    assert rank_correlation(a, a ** 3) == pytest.approx(1.0)
    assert rank_correlation(a, -a) == pytest.approx(-1.0)
    assert math.isnan(rank_correlation(np.zeros((4, 4)), a))  # nothing to compare with
    assert rank_correlation(a, np.zeros((4, 4))) == 0.0


def test_randomise_top_layers_changes_only_the_top_and_leaves_the_original_alone():
    model = make_tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rand = randomise_top_layers(model, n_stages=1, seed=0)
    assert top_layer_paths(model, 1) == ["fc", "features.6"]
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])  # original untouched
    new = rand.state_dict()
    for k in before:
        changed = not torch.equal(new[k], before[k])
        assert changed == (k.startswith("backbone.fc.") or k.startswith("backbone.features.6.")), k
    again = randomise_top_layers(model, n_stages=1, seed=0).state_dict()
    assert all(torch.equal(again[k], new[k]) for k in new)  # seeded
    with pytest.raises(ExplainError, match="3 registry stages"):
        randomise_top_layers(model, n_stages=4)


def test_randomise_strips_hooks_copied_from_an_open_explainer():
    model = make_tiny()
    with Explainer(model, image_size=SIZE):
        rand = randomise_top_layers(model, 0)
    assert hook_count(rand) == 0 and hook_count(model) == 0


def test_randomisation_test_flags_a_map_that_ignores_the_weights(planted_model):
    images = synthetic_images(6, "centre", 7)
    result = randomisation_test(planted_model, images, [1] * 6, image_size=SIZE, levels=(0, 1))
    assert [lv["randomised"] for lv in result["levels"]] == ["the head", "the head and the last stage"]
    assert result["max_mean"] > 0.99
    assert result["passed"] is False
    per_image = per_image_checks(result, None, 6)
    assert all(c["randomisation"]["passed"] is False for c in per_image)  # survives every level, image by image


def test_randomisation_test_passes_a_trained_model(trained_corner):
    images = synthetic_images(6, "corner", 8)
    result = randomisation_test(trained_corner, images, [1] * 6, image_size=SIZE)
    assert len(result["levels"]) == 3
    assert result["max_mean"] < 0.5, result
    assert result["passed"] is True
    assert hook_count(trained_corner) == 0
    checks = per_image_checks(result, np.zeros(6), 6)
    assert checks[0]["randomisation"]["spearman"] == [lv["spearman"][0] for lv in result["levels"]]
    assert checks[0]["road"] == 0.0


def test_eigencam_does_not_depend_on_the_head_and_the_test_says_so(trained_corner):
    images = synthetic_images(4, "corner", 9)
    result = randomisation_test(trained_corner, images, [1] * 4, method="eigencam", image_size=SIZE, levels=(0,))
    assert result["levels"][0]["mean"] > 0.99  # the head plays no part in Eigen-CAM
    assert result["passed"] is False


def test_road_ranks_the_true_map_above_its_inverse(trained_centre):
    images = synthetic_images(4, "centre", 10)
    with Explainer(trained_centre, image_size=SIZE) as ex:
        maps, _, idx = ex.maps(images, 1)
    good = road_faithfulness(trained_centre, images, maps, idx, percentiles=(20, 50, 80))
    bad = road_faithfulness(trained_centre, images, 1 - maps, idx, percentiles=(20, 50, 80))
    assert good.shape == (4,)
    assert good.mean() > 0.2, good  # removing the blob kills the prediction, removing the rest does not
    assert bad.mean() < good.mean() - 0.3
    again = road_faithfulness(trained_centre, images, maps, idx, percentiles=(20, 50, 80))
    np.testing.assert_allclose(good, again)  # seeded imputation noise
    with pytest.raises(ExplainError, match="differ in shape"):
        road_faithfulness(trained_centre, images, maps[:, :32], idx)
