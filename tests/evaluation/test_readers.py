import math

import numpy as np
import pytest

from covidscreen.evaluation.readers import compare_readers, mcnemar_exact, parse_decisions, wilson_interval


def test_mcnemar_against_a_hand_computation():
    # 10 images; the model is right where the reader is wrong on 5 images, the reverse on 1 image.
    truth = np.array([1, 1, 1, 1, 1, 0, 0, 0, 0, 0], bool)
    model = np.array([1, 1, 1, 1, 1, 0, 0, 0, 0, 1], bool)   # wrong on the last image only
    reader = np.array([0, 0, 0, 1, 1, 1, 1, 0, 0, 0], bool)  # wrong on images 0, 1, 2, 5, 6
    r = mcnemar_exact(truth, model, reader)
    assert (r["model_right_reader_wrong"], r["model_wrong_reader_right"]) == (5, 1)
    # exact two-sided: 2 * P(X <= 1), X ~ Bin(6, 1/2) = 2 * (1 + 6) / 64
    assert r["p_value"] == pytest.approx(2 * 7 / 64)


def test_mcnemar_without_discordant_pairs_is_one():
    t = np.array([1, 0, 1], bool)
    assert mcnemar_exact(t, t, t)["p_value"] == 1.0


def test_wilson_interval_hand_value():
    lo, hi = wilson_interval(8, 10)  # known values for 8/10 at 95%
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


def test_compare_readers_sens_spec_and_parsing():
    truth = np.array([1, 1, 1, 1, 0, 0, 0, 0], bool)
    reader = parse_decisions(["covid", "covid", "normal", "covid", "pneumonia", "covid", "normal", "normal"], "covid")
    model = parse_decisions([1, 1, 1, 0, 0, 0, 0, 0], "covid")
    out = compare_readers(truth, model, {"r1": reader})
    r1 = out["readers"]["r1"]
    assert r1["sensitivity"] == 0.75 and r1["specificity"] == 0.75
    assert out["model"]["sensitivity"] == 0.75 and out["model"]["specificity"] == 1.0
    assert r1["mcnemar"]["discordant"] == 3
    with pytest.raises(ValueError, match="row 2"):
        parse_decisions(["1", ""], "covid")
