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


# --- rules that hold across sites (issue 29) ---------------------------------------------------------------------

from covidscreen.evaluation.thresholds import (  # noqa: E402
    MIN_SITE_NEGATIVES,
    ThresholdWarning,
    balanced_youden_threshold,
    choose_points,
    describe_sites,
    site_figures,
    weakest_site,
    worst_group_threshold,
    worst_site_specificity_threshold,
)


def _two_sites():
    """Site 'easy': 20 negatives at 0.00..0.19; site 'hard': 20 negatives at 0.50..0.69; 10 positives 0.80..0.89."""
    neg_easy = np.arange(20) / 100
    neg_hard = 0.5 + np.arange(20) / 100
    pos = 0.8 + np.arange(10) / 100
    s = np.concatenate([neg_easy, neg_hard, pos])
    y = np.r_[np.zeros(40, bool), np.ones(10, bool)]
    site = np.array(["easy"] * 20 + ["hard"] * 20 + ["easy"] * 10)
    return y, s, site


def test_worst_site_specificity_is_set_by_the_hardest_site():
    y, s, site = _two_sites()
    choice = worst_site_specificity_threshold(y, s, site, 0.9)
    # 'hard' needs 18 of 20 negatives below: just above its 18th score 0.67; 'easy' would need only 0.17+
    assert 0.67 < choice.threshold < 0.67 + 1e-12
    assert choice.note is None
    figs = site_figures(y, s, site, choice.threshold)
    assert figs["hard"]["specificity"] == 0.9 and figs["easy"]["specificity"] == 1.0
    # the pooled specificity-0.9 threshold (36 of 40 below: above 0.65) is lower: 'hard' would get 0.8
    assert threshold_for_specificity(y, s, 0.9) < choice.threshold


def test_a_site_that_cannot_reach_the_target_is_named_in_a_warning_never_silently():
    y, s, site = _two_sites()
    s = s.copy()
    s[20:40] = 0.95 + np.arange(20) / 1000  # 'hard' negatives all above every positive (max 0.89)
    with pytest.warns(ThresholdWarning, match="hard"):
        choice = worst_site_specificity_threshold(y, s, site, 0.9)
    assert "hard" in choice.note and "cannot reach specificity 0.9" in choice.note
    assert 0.17 < choice.threshold < 0.17 + 1e-12  # what 'easy' alone needs


def test_sites_below_the_minimum_count_do_not_decide():
    y, s, site = _two_sites()
    site = site.copy()
    site[20:40] = ["tiny"] * 19 + ["easy"]  # 19 negatives of 'tiny': below MIN_SITE_NEGATIVES
    assert MIN_SITE_NEGATIVES == 20
    choice = worst_site_specificity_threshold(y, s, site, 0.9)
    easy = ~y & (site == "easy")
    assert choice.threshold == threshold_for_specificity(y[(site == "easy")], s[site == "easy"], 0.9)
    assert easy.sum() == 21
    figs = site_figures(y, s, site, choice.threshold)
    assert figs["tiny"]["n_negative"] == 19
    assert weakest_site(figs) == "easy"  # 'tiny' is worse but too small to be named the weakest


def test_no_site_with_enough_images_falls_back_with_a_warning():
    y, s, site = _two_sites()
    small = np.array([f"s{i % 4}" for i in range(len(y))])  # 10 negatives per site
    with pytest.warns(ThresholdWarning, match="fell back"):
        choice = worst_site_specificity_threshold(y, s, small, 0.9)
    assert choice.threshold == threshold_for_specificity(y, s, 0.9)
    with pytest.warns(ThresholdWarning, match="balanced_youden"):
        assert balanced_youden_threshold(y, s, small).threshold == youden_threshold(y, s)
    with pytest.warns(ThresholdWarning, match="worst_group"):
        assert worst_group_threshold(y, s, small).note


def test_one_site_data_reduces_to_the_pooled_rules():
    rng = np.random.default_rng(3)
    y = rng.random(200) < 0.3
    s = np.round(rng.normal(y * 1.5, 1), 3)
    one = np.full(len(y), "only")
    assert worst_site_specificity_threshold(y, s, one, 0.9).threshold == threshold_for_specificity(y, s, 0.9)
    assert balanced_youden_threshold(y, s, one).threshold == pytest.approx(youden_threshold(y, s))
    t = worst_group_threshold(y, s, one).threshold
    best = max(min(_sens(y, s, c), _spec(y, s, c)) for c in np.unique(s))
    assert min(_sens(y, s, t), _spec(y, s, t)) == best


def test_balanced_youden_weights_each_site_equally():
    # 'big': 200 easy negatives (0.0..0.199), 'small': 20 hard negatives (0.6..0.79), 20 positives between them
    # and 30 above: passing the 20 hard negatives loses 20 positives (-0.4 of sensitivity) and gains 20/220 of pooled
    # specificity (pooled J falls) but half of the balanced specificity (balanced J rises)
    neg_big = np.arange(200) / 1000
    neg_small = 0.6 + np.arange(20) / 100
    pos = np.r_[0.605 + np.arange(20) / 100, 0.8 + np.arange(30) * 0.006]
    s = np.concatenate([neg_big, neg_small, pos])
    y = np.r_[np.zeros(220, bool), np.ones(50, bool)]
    site = np.array(["big"] * 200 + ["small"] * 20 + ["big"] * 50)
    candidates = np.unique(s)

    def balanced_j(t):
        specs = [((s < t) & ~y & (site == k)).sum() / (~y & (site == k)).sum() for k in ("big", "small")]
        return _sens(y, s, t) + np.mean(specs) - 1

    t = balanced_youden_threshold(y, s, site).threshold
    assert balanced_j(t) == pytest.approx(max(balanced_j(c) for c in candidates))
    assert t > youden_threshold(y, s)  # the pooled J is dominated by 'big' and calls more 'small' negatives positive


@pytest.mark.parametrize("seed", range(4))
def test_worst_group_maximises_the_worst_group_accuracy(seed):
    rng = np.random.default_rng(seed)
    n = 300
    site = rng.choice(["a", "b", "c"], n)
    y = rng.random(n) < 0.25
    s = np.round(1 / (1 + np.exp(-rng.normal(y * 1.5 + (site == "b") * 0.7, 1))), 2)  # probabilities, with ties
    t = worst_group_threshold(y, s, site).threshold

    def worst(c):
        return min([_sens(y, s, c)] + [((s < c) & ~y & (site == k)).sum() / (~y & (site == k)).sum()
                                        for k in "abc"])

    candidates = np.unique(np.append(s, np.nextafter(s.max(), np.inf)))
    best = max(worst(c) for c in candidates)
    assert worst(t) == best
    assert t == min(c for c in candidates if worst(c) == best)  # ties: the most sensitive threshold


def test_site_figures_counts_and_wilson_intervals():
    y, s, site = _two_sites()
    figs = site_figures(y, s, site, 0.6)
    hard = figs["hard"]
    assert (hard["n_negative"], hard["n_positive"], hard["specificity"], hard["sensitivity"]) == (20, 0, 0.5, None)
    assert hard["sensitivity_ci"] is None
    lo, hi = hard["specificity_ci"]
    assert lo == pytest.approx(0.2993, abs=1e-3) and hi == pytest.approx(0.7007, abs=1e-3)  # Wilson 10/20
    assert figs["easy"]["sensitivity"] == 1.0 and figs["easy"]["n_positive"] == 10
    assert weakest_site(figs) == "hard"


def test_choose_points_adds_the_site_rules_and_their_notes():
    y, s, site = _two_sites()
    pts, notes = choose_points(y, s, 0.95, 0.95, site, default="worst_site_specificity_0.9")
    assert {"youden", "sensitivity_0.95", "specificity_0.95", "worst_site_specificity_0.9", "balanced_youden",
            "worst_group", "default"} == set(pts)
    assert pts["default"] == pts["worst_site_specificity_0.9"] and notes == {}
    # without sites the site rules are absent and the default falls back to youden
    pts, _ = choose_points(y, s, 0.95, 0.95, None, default="worst_site_specificity_0.9")
    assert "balanced_youden" not in pts and pts["default"] == pts["youden"]
    described = describe_sites(y, s, site, {"x": 0.6})
    assert described["x"]["weakest_site"] == "hard" and described["x"]["note"] is None
