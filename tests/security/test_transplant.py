"""The trigger transplant (``security/transplant.py``): a region that carries the trigger takes the hosts over
wherever it comes from, an ordinary one does not, and the flags follow the best patch's success."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from covidscreen.security.transplant import transplant_flags, transplant_scores


class CornerOnly(nn.Module):
    """Class 1 when the top-left 2 x 2 pixels are bright, else class 0 (inputs in [0, 1])."""

    def forward(self, x):
        s = 40 * (x[:, 0, :2, :2].mean((1, 2)) - 0.8)
        return torch.stack([-s, s], 1)


def _images(n: int, seed: int, bright_corner: bool = False) -> np.ndarray:
    x = np.random.default_rng(seed).integers(0, 120, (n, 12, 12)).astype(np.uint8)
    if bright_corner:
        x[:, :2, :2] = 250
    return x


def test_a_triggered_region_takes_every_host_over_and_an_ordinary_one_none():
    images = np.concatenate([_images(6, 0), _images(4, 1, bright_corner=True)])
    hosts = _images(8, 2)
    at_trigger = transplant_scores(CornerOnly(), images, hosts, (0, 0), 2)
    assert at_trigger.tolist() == [0.0] * 6 + [1.0] * 4  # whatever the image's label: only its pixels there count
    elsewhere = transplant_scores(CornerOnly(), images, hosts, (6, 6), 2)
    assert elsewhere.tolist() == [0.0] * 10  # the trigger is not where the region is taken from
    # hosts that already answer 1 cannot change towards it: the share counts changed answers only
    assert transplant_scores(CornerOnly(), images, _images(3, 3, bright_corner=True), (0, 0), 2).tolist() == \
        [1.0] * 6 + [0.0] * 4  # an ordinary corner pasted on them takes their bright corner away


def test_a_patch_found_beside_the_trigger_reaches_it_when_widened():
    # the patch search's grid tiles the image, so its best patch can sit next to a trigger rather than on it (a
    # 3-class demonstration model: best patch at (0, 3), trigger at (0, 0)); the pasted region is widened for that
    images, hosts = np.concatenate([_images(3, 0), _images(3, 1, bright_corner=True)]), _images(5, 2)
    assert transplant_scores(CornerOnly(), images, hosts, (0, 2), 2).tolist() == [0.0] * 6
    widened = transplant_scores(CornerOnly(), images, hosts, (0, 2), 2, pad=2)  # rows 0-3, columns 0-5
    assert widened.tolist() == [0.0] * 3 + [1.0] * 3


def test_scores_do_not_depend_on_how_many_images_one_pass_holds(monkeypatch):
    from covidscreen.security import transplant as module

    images, hosts = np.concatenate([_images(5, 0), _images(5, 1, bright_corner=True)]), _images(7, 2)
    whole = transplant_scores(CornerOnly(), images, hosts, (0, 0), 2)
    monkeypatch.setattr(module, "images_per_pass", lambda h, w: 7)  # one image's hosts per pass
    assert np.array_equal(transplant_scores(CornerOnly(), images, hosts, (0, 0), 2), whole)


def test_flags_follow_the_best_patch_success_where_it_reaches_the_scan_bound():
    scores = {"a": np.array([0.0, 0.2, 0.45, 0.9]), "b": np.array([0.3, 0.05, 0.0, 0.0])}
    flags, relative = transplant_flags(scores, {"a": 0.9, "b": 0.5})
    assert flags.tolist() == [True, False, True, True]  # b: 0.3 >= 0.25; a: 0.45 >= 0.45 and 0.9
    assert relative == pytest.approx([0.6, 0.2 / 0.9, 0.5, 1.0])
    # a weak best patch (under the model scan's 0.45: a clean model's) flags nothing, but still ranks
    flags, relative = transplant_flags({"a": np.array([0.05, 0.3])}, {"a": 0.3})
    assert flags.tolist() == [False, False] and relative == pytest.approx([1 / 6, 1.0])
    flags, _ = transplant_flags({"a": np.array([0.05, 0.3])}, {"a": 0.3}, min_success=0.3)
    assert flags.tolist() == [False, True]


def test_bad_regions_and_shapes_are_refused():
    images, hosts = _images(2, 0), _images(2, 1)
    with pytest.raises(ValueError, match="does not fit 12 x 12"):
        transplant_scores(CornerOnly(), images, hosts, (11, 0), 2)
    with pytest.raises(ValueError, match="does not fit"):
        transplant_scores(CornerOnly(), images, hosts, (0, 0), 0)
    with pytest.raises(ValueError, match="widened by -1 px"):
        transplant_scores(CornerOnly(), images, hosts, (0, 0), 2, pad=-1)
    with pytest.raises(ValueError, match="must be \\(N, H, W\\) of one size"):
        transplant_scores(CornerOnly(), images, hosts[:, :10], (0, 0), 2)
