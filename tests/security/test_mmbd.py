"""`security/mmbd.py`: the maximum margin found on a model whose answer is known, and the reference-fitted test."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from covidscreen.security.mmbd import MIN_REFERENCES, gamma_p_value, judge_mmbd, max_margins


class Brightness(nn.Module):
    """Two classes: logits (10 * mean brightness, 0); the largest margin of class 0 is 10 (a white image), of class
    1 is 0 (a black one)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.mean((1, 2, 3))
        return torch.stack([10 * m, torch.zeros_like(m)], 1)


def test_max_margins_reach_the_known_maximum():
    margins = max_margins(Brightness(), (6, 6), 2, starts=2, steps=300, lr=0.2)
    assert margins[0] == pytest.approx(10.0, abs=0.3) and margins[1] == pytest.approx(0.0, abs=0.3)


def test_judged_against_the_references_gamma_law():
    refs = [{"a": v, "b": 1.0} for v in (30.0, 33.0, 35.0, 31.0, 34.0)]
    flagged = judge_mmbd({"a": 20.0, "b": 80.0}, refs)
    assert flagged.flagged and flagged.target == "b" and flagged.p_value < 1e-4
    # each reference against the others: the false-alarm check on clean models
    assert flagged.reference_p_values[2] == pytest.approx(gamma_p_value(35.0, [30.0, 33.0, 31.0, 34.0]))
    assert len(flagged.reference_p_values) == MIN_REFERENCES
    usual = judge_mmbd({"a": 32.0, "b": 5.0}, refs)
    assert not usual.flagged and usual.p_value > 0.3
    assert gamma_p_value(32.0, [30.0, 33.0, 35.0, 31.0, 34.0]) == pytest.approx(usual.p_value)
    few = judge_mmbd({"a": 500.0}, refs[:MIN_REFERENCES - 1])  # too few references: reported, not judged
    assert few.p_value is None and not few.flagged and few.statistic == 500.0
