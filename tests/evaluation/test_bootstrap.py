"""Patient-level bootstrap: exact agreement with scikit-learn on weighted data, seeding, and CI coverage."""

import math

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import average_precision_score, roc_auc_score

from covidscreen.errors import ConfigError
from covidscreen.evaluation.bootstrap import (
    BinaryTask,
    _Ranked,
    binary_ci,
    bootstrap_tasks,
    bootstrap_weights,
    group_codes,
    group_strata,
    percentile_interval,
    weighted_auc_ap,
    weighted_binary_metrics,
)
from covidscreen.evaluation.metrics import binary_metrics


def _data(n=300, seed=0, ties=True):
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.3
    s = rng.normal(y * 1.0, 1.0)
    return y, (np.round(s, 1) if ties else s)


def test_weighted_auc_and_ap_equal_sklearn_with_sample_weights():
    y, s = _data()
    w = np.random.default_rng(1).integers(0, 4, size=(6, len(y))).astype(float)
    auc, ap = weighted_auc_ap(w, _Ranked.of(y, s))
    for b in range(len(w)):
        assert auc[b] == pytest.approx(roc_auc_score(y, s, sample_weight=w[b]), abs=1e-12)
        assert ap[b] == pytest.approx(average_precision_score(y, s, sample_weight=w[b]), abs=1e-12)


def test_unit_weights_reproduce_the_point_estimates():
    y, s = _data(ties=False)
    pred = s >= 0.4
    m = weighted_binary_metrics(np.ones((1, len(y))), y, pred, _Ranked.of(y, s))
    ref = binary_metrics(y, s, 0.4)
    for k in ("sensitivity", "specificity", "precision", "npv", "f1", "accuracy", "roc_auc", "pr_auc"):
        assert m[k][0] == pytest.approx(ref[k], abs=1e-12), k


def test_hand_checked_auc_with_a_tie():
    # positives 0.8, 0.4; negatives 0.4, 0.1: pairs (0.8>0.4) (0.8>0.1) (0.4=0.4 -> 1/2) (0.4>0.1) => 3.5/4
    y = np.array([1, 1, 0, 0], bool)
    s = np.array([0.8, 0.4, 0.4, 0.1])
    auc, ap = weighted_auc_ap(np.ones((1, 4)), _Ranked.of(y, s))
    assert auc[0] == pytest.approx(0.875)
    # AP: threshold 0.8 -> P=1, R=.5; threshold 0.4 -> P=2/3, R=1 => .5*1 + .5*2/3
    assert ap[0] == pytest.approx(0.5 + 1 / 3)


def test_weights_resample_whole_patients():
    codes, g = group_codes(np.array(["a", "a", "b", "c", "c", "c"]), 6)
    assert g == 3
    w = bootstrap_weights(codes, g, 50, np.random.default_rng(0))
    # images of one patient always share a weight; each replicate draws exactly 3 patients
    assert (w[:, 0] == w[:, 1]).all() and (w[:, 3] == w[:, 5]).all()
    assert np.all(w[:, [0, 2, 3]].sum(1) == 3)


def test_seeded_and_undefined_replicates_counted():
    y, s = _data(n=40)
    a = binary_ci(y, s > 0, s, n_boot=200, seed=3)
    b = binary_ci(y, s > 0, s, n_boot=200, seed=3)
    c = binary_ci(y, s > 0, s, n_boot=200, seed=4)
    assert a == b and a != c
    # one positive among 40: many replicates have no positive; they are left out and counted
    y1 = np.zeros(40, bool)
    y1[0] = True
    res = bootstrap_tasks([BinaryTask("t", y1, s > 0, s)], n_boot=300, seed=0)
    assert res["t"]["undefined"]["sensitivity"] > 50
    lo, hi = res["t"]["ci"]["sensitivity"]
    assert 0 <= lo <= hi <= 1


def test_chunking_does_not_change_the_result():
    y, s = _data(n=120)
    g = np.arange(120) // 2
    full = bootstrap_tasks([BinaryTask("t", y, s > 0, s)], g, n_boot=100, seed=1)
    chunked = bootstrap_tasks([BinaryTask("t", y, s > 0, s)], g, n_boot=100, seed=1, chunk_cells=1000)
    assert full["t"]["ci"] == chunked["t"]["ci"]


def test_percentile_interval_and_bad_arguments():
    assert percentile_interval(np.arange(101.0), 0.9) == pytest.approx([5.0, 95.0])
    assert all(math.isnan(v) for v in percentile_interval(np.array([np.nan, np.nan])))
    y, s = _data(n=20)
    with pytest.raises(ConfigError):
        binary_ci(y, s > 0, s, n_boot=0)
    with pytest.raises(ConfigError):
        binary_ci(y, s > 0, s, level=1.5)
    with pytest.raises(ConfigError):
        binary_ci(y, s > 0, s, groups=np.arange(3))


def _clustered(rng, n_patients=120, k=3, mu=1.5, su=0.7, se=0.7):
    yp = rng.random(n_patients) < 0.3
    u = rng.normal(0, su, n_patients)
    y = np.repeat(yp, k)
    s = mu * y + np.repeat(u, k) + rng.normal(0, se, n_patients * k)
    return y, s, np.repeat(np.arange(n_patients), k)


def test_patient_level_bootstrap_covers_the_true_value():
    """200 simulated datasets with 3 correlated images per patient: the 95% intervals of the patient-level bootstrap
    must cover the true sensitivity, specificity and AUC 90-99% of the time; an image-level bootstrap of the same
    data must cover less often (it ignores the clustering), which shows the test can fail."""
    mu, su, se, thr = 1.5, 0.7, 0.7, 0.75
    sd = math.hypot(su, se)
    truth = {"sensitivity": 1 - norm.cdf((thr - mu) / sd), "specificity": norm.cdf(thr / sd),
             "roc_auc": norm.cdf(mu / (math.sqrt(2) * sd))}
    rng = np.random.default_rng(2024)
    hits = {k: 0 for k in truth}
    hits_image = {k: 0 for k in truth}
    runs = 200
    for r in range(runs):
        y, s, g = _clustered(rng)
        task = [BinaryTask("t", y, s >= thr, s)]
        ci = bootstrap_tasks(task, g, n_boot=400, seed=r)["t"]["ci"]
        ci_img = bootstrap_tasks(task, None, n_boot=400, seed=r)["t"]["ci"]
        for k, v in truth.items():
            hits[k] += ci[k][0] <= v <= ci[k][1]
            hits_image[k] += ci_img[k][0] <= v <= ci_img[k][1]
    for k in truth:
        assert 0.90 <= hits[k] / runs <= 0.99, (k, hits[k] / runs)
    assert sum(hits_image.values()) < sum(hits.values())


def _auc_ci(y, s, groups=None, stratified=False, n_boot=400, seed=0, level=0.95):
    return binary_ci(y, s >= 0, s, groups, n_boot=n_boot, seed=seed, level=level, stratified=stratified)["roc_auc"]


def test_stratified_weights_keep_the_size_of_each_stratum():
    codes, g = group_codes(np.array(["a", "a", "b", "c", "d", "e"]), 6)
    strata = group_strata(codes, g, np.array([1, 0, 0, 1, 0, 0]))  # a (one positive image) and c are positive
    assert strata.tolist() == [True, False, True, False, False]
    w = bootstrap_weights(codes, g, 200, np.random.default_rng(0), strata)
    assert (w[:, 0] == w[:, 1]).all()  # images of one patient still share a weight
    assert np.all(w[:, 0] + w[:, 3] == 2) and np.all(w[:, [2, 4, 5]].sum(1) == 3)


@pytest.mark.parametrize("stratified", [False, True])
def test_interval_brackets_the_estimate_and_shrinks_with_more_patients(stratified):
    rng = np.random.default_rng(1)

    def data(n):
        y = rng.integers(0, 2, n).astype(bool)
        return y, rng.normal(size=n) + y

    y, s = data(100)
    lo, hi = _auc_ci(y, s, stratified=stratified)
    assert lo < roc_auc_score(y, s) < hi
    y2, s2 = data(1600)
    lo2, hi2 = _auc_ci(y2, s2, stratified=stratified)
    assert (hi2 - lo2) < 0.5 * (hi - lo)


@pytest.mark.parametrize("stratified", [False, True])
def test_duplicated_images_of_a_patient_do_not_fake_precision(stratified):
    """Five copies of every image of a patient carry no more evidence: resampling patients must give about the
    width of the deduplicated data; resampling images would give intervals ~sqrt(5) times too narrow."""
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(30, bool), np.zeros(30, bool)]
    s = np.r_[rng.normal(1, 1, 30), rng.normal(0, 1, 30)]
    rep_y, rep_s, rep_g = np.repeat(y, 5), np.repeat(s, 5), np.repeat(np.arange(60), 5)
    width = lambda ci: ci[1] - ci[0]  # noqa: E731
    single = _auc_ci(y, s, stratified=stratified)
    grouped = _auc_ci(rep_y, rep_s, rep_g, stratified=stratified)
    naive = _auc_ci(rep_y, rep_s, stratified=stratified)
    assert width(grouped) == pytest.approx(width(single), rel=0.25)
    assert width(naive) < 0.7 * width(grouped)


def test_stratified_interval_covers_the_true_auc():
    """Binormal scores with a known AUC: the stratified 90% interval covers it in most simulated samples."""
    true_auc = norm.cdf(1 / math.sqrt(2))
    rng = np.random.default_rng(7)
    hits, n_sim = 0, 60
    for i in range(n_sim):
        y = np.r_[np.ones(40, bool), np.zeros(40, bool)]
        s = np.r_[rng.normal(1, 1, 40), rng.normal(0, 1, 40)]
        lo, hi = _auc_ci(y, s, stratified=True, n_boot=150, level=0.9, seed=i)
        hits += lo <= true_auc <= hi
    assert hits / n_sim >= 0.75


def test_stratify_must_match_the_predictions():
    y, s = _data(n=20)
    with pytest.raises(ConfigError, match="stratify"):
        bootstrap_tasks([BinaryTask("t", y, s > 0, s)], n_boot=10, stratify=y[:5])


def test_paired_auc_difference_matches_the_two_aucs_and_shrinks_with_shared_noise():
    """The point estimate is exactly the difference of the two AUCs; the paired interval is narrower than the two
    unpaired intervals combined when both scores share most of their noise, and excludes 0 for a real gain."""
    from sklearn.metrics import roc_auc_score

    from covidscreen.evaluation.bootstrap import binary_ci, paired_auc_difference

    rng = np.random.default_rng(3)
    n = 400
    y = rng.random(n) < 0.3
    shared = rng.normal(size=n)
    a = shared + 0.6 * y
    b = shared + 0.9 * y + 0.05 * rng.normal(size=n)
    groups = np.repeat(np.arange(n // 2), 2)
    res = paired_auc_difference(y, a, b, groups, n_boot=500, seed=0)
    assert res["auc_a"] == pytest.approx(roc_auc_score(y, a))
    assert res["difference"] == pytest.approx(roc_auc_score(y, b) - roc_auc_score(y, a))
    lo, hi = res["ci"]
    assert 0 < lo < res["difference"] < hi
    assert res["p_b_not_better"] < 0.05
    ci_a = binary_ci(y, a >= 0, a, groups, n_boot=500)["roc_auc"]
    ci_b = binary_ci(y, b >= 0, b, groups, n_boot=500)["roc_auc"]
    assert hi - lo < 0.5 * ((ci_a[1] - ci_a[0]) + (ci_b[1] - ci_b[0]))  # pairing removes the shared noise
    same = paired_auc_difference(y, a, a, groups, n_boot=100)
    assert same["difference"] == 0 and same["ci"] == [0.0, 0.0]
    with pytest.raises(ConfigError, match="equal lengths"):
        paired_auc_difference(y, a, b[:-1])


def test_paired_binary_changes_agree_with_the_paired_auc_difference_and_pair_the_rates():
    """The same replicates as the paired AUC difference give the same AUC change; the rates' changes are exact on
    the images as they are, and an unchanged model changes nothing in any replicate."""
    from sklearn.metrics import roc_auc_score

    from covidscreen.evaluation.bootstrap import paired_auc_difference, paired_binary_changes

    rng = np.random.default_rng(4)
    y = rng.random(200) < 0.3
    a = rng.normal(size=200) + y
    b = a + 0.3 * y
    res = paired_binary_changes(y, (a >= 0.5, a), (b >= 0.5, b), n_boot=300, seed=1)
    auc = paired_auc_difference(y, a, b, n_boot=300, seed=1)
    assert res["roc_auc"]["change"] == pytest.approx(roc_auc_score(y, b) - roc_auc_score(y, a))
    assert res["roc_auc"]["ci"] == pytest.approx(auc["ci"])  # stratified the same way, the same draws
    sens = res["sensitivity"]
    assert sens["before"] == pytest.approx((a[y] >= 0.5).mean())
    assert sens["after"] == pytest.approx((b[y] >= 0.5).mean())
    assert sens["ci"][0] <= sens["change"] <= sens["ci"][1] and res["specificity"]["change"] == 0
    same = paired_binary_changes(y, (a >= 0.5, a), (a >= 0.5, a), n_boot=50)
    assert all(v["change"] == 0 and v["ci"] == [0.0, 0.0] for v in same.values())
