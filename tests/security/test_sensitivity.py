"""The input-sensitivity map finds the pixels a model cannot see."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from covidscreen.security.sensitivity import corner_ratios, input_sensitivity


class TopLeftOnly(nn.Module):
    """Reads only the 4 x 4 top-left pixels (weights 1) and a constant: blind everywhere else."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x[:, 0, :4, :4].sum((1, 2))
        return torch.stack([s, -s], dim=1)


def test_sensitivity_is_the_input_gradient_and_corners_are_compared_to_the_mean():
    images = np.random.default_rng(0).integers(0, 255, (5, 16, 16), dtype=np.uint8)
    sens = input_sensitivity(TopLeftOnly(), images)
    expected = np.zeros((16, 16))
    expected[:4, :4] = 1.0  # d logit / d pixel (in [0, 1], the model input): 1 for both classes
    np.testing.assert_allclose(sens, expected, rtol=1e-6)
    ratios = corner_ratios(sens, 4)
    assert ratios["top_left"] == 16.0 and ratios["bottom_right"] == 0.0 == ratios["top_right"]
