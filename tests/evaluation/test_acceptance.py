"""Acceptance statistics: exact intervals against scipy/hand values, the three verdicts, images needed."""

import math

import numpy as np
import pytest
from scipy.stats import beta

from covidscreen.evaluation import acceptance as acc


def test_exact_interval_is_clopper_pearson():
    lo, hi = acc.binomial_ci(45, 50, 0.95)
    assert lo == pytest.approx(beta.ppf(0.025, 45, 6)) and hi == pytest.approx(beta.ppf(0.975, 46, 5))
    lo, hi = acc.binomial_ci(20, 20, 0.95)  # all successes: lower bound (alpha/2)^(1/n)
    assert lo == pytest.approx(0.025 ** (1 / 20)) and hi == 1.0
    assert all(math.isnan(v) for v in acc.binomial_ci(0, 0))
    f = acc.figure(9, 10)
    assert f["estimate"] == 0.9 and f["n"] == 10 and f["ci_low"] < 0.9 < f["ci_high"]


def test_verdicts():
    assert acc.figure_verdict(acc.figure(200, 200), 0.9) == acc.GO  # lower bound 0.982
    assert acc.figure_verdict(acc.figure(50, 100), 0.9) == acc.NO_GO  # upper bound 0.60
    assert acc.figure_verdict(acc.figure(9, 10), 0.9) == acc.INSUFFICIENT  # straddles
    assert acc.figure_verdict(None, 0.9) == acc.INSUFFICIENT
    assert acc.overall_verdict([acc.GO, acc.GO]) == acc.GO
    assert acc.overall_verdict([acc.GO, acc.INSUFFICIENT]) == acc.INSUFFICIENT
    assert acc.overall_verdict([acc.INSUFFICIENT, acc.NO_GO]) == acc.NO_GO
    assert acc.overall_verdict([]) == acc.INSUFFICIENT


def test_images_needed_is_the_smallest_sufficient_n():
    n = acc.images_needed(0.97, 0.9, 0.95)
    assert n is not None
    assert acc.binomial_ci(math.floor(0.97 * n), n)[0] >= 0.9
    assert acc.binomial_ci(math.floor(0.97 * (n - 1)), n - 1)[0] < 0.9
    assert acc.images_needed(0.9, 0.9) is None and acc.images_needed(0.8, 0.9) is None
    assert acc.images_needed(1.0, 0.9) == math.ceil(math.log(0.025) / math.log(0.9))  # 0.9^n <= 0.025


def test_planned_rate_and_threshold():
    p = acc.planned_rate(0.9, 100)  # planned on 50 images: the rate whose lower bound reaches 0.9
    assert 0.9 < p <= 1 and acc.binomial_ci(round(p * 50), 50)[0] >= 0.9
    scores = np.arange(10) / 10  # 0.0 .. 0.9
    assert acc.threshold_at_rate(scores, 0.8) == pytest.approx(0.75)  # 8 of 10 below
    assert (scores < acc.threshold_at_rate(scores, 1.0)).all()
    assert acc.threshold_at_rate(scores, 0.0) == 0.0
