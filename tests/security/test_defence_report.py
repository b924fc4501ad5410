"""`security/defence_report.py`: paired before/after changes with intervals, the attack figure the goal reads, the
verdict, and the table `covidscreen security defences` prints (on synthetic figures; the demonstration's:
docs/security.md)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest

from covidscreen.security.backdoor import judge_all, sanitized_folder
from covidscreen.security.defence_report import (
    REPORT_COLUMNS,
    attack_figure,
    image_figures,
    judge_defence,
    paired_changes,
    report_rows,
)
from tests.test_cli import run_cli_in_process

TRUTH = np.array([True] * 50 + [False] * 100)


def figures(p: np.ndarray, threshold: float = 0.5) -> dict[str, list]:
    probs = np.stack([p, 1 - p], 1)
    return image_figures(probs, np.where(p >= threshold, 0, 1), positive=0)


def base_scores(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    p = np.where(TRUTH, rng.uniform(0.55, 1.0, len(TRUTH)), rng.uniform(0.0, 0.45, len(TRUTH)))
    p[:3] = 0.4  # three missed positives
    p[50:55] = 0.6  # five false positives
    return p


def test_the_auc_is_sklearns():
    from sklearn.metrics import roc_auc_score

    p0, p1 = base_scores().round(1), base_scores(1).round(1)  # ties
    auc = paired_changes(figures(p0), figures(p1), TRUTH, resamples=50)["roc_auc"]
    assert auc["before"] == pytest.approx(roc_auc_score(TRUTH, p0))
    assert auc["after"] == pytest.approx(roc_auc_score(TRUTH, p1))


def test_image_figures_keep_the_positive_probability_and_decision():
    probs = np.array([[0.9, 0.1], [0.2, 0.8]])
    assert image_figures(probs, np.array([0, 1]), positive=0) == {"p": [0.9, 0.2], "called": [True, False]}


def test_an_unchanged_model_changes_nothing():
    before = figures(base_scores())
    ch = paired_changes(before, before, TRUTH)
    for name in ("roc_auc", "sensitivity", "specificity"):
        assert ch[name]["change"] == 0 and ch[name]["ci"] == [0.0, 0.0]
    assert ch["sensitivity"]["before"] == pytest.approx(47 / 50) and ch["specificity"]["before"] == pytest.approx(0.95)
    assert ch["sensitivity"]["mcnemar_p"] == 1.0 and ch["sensitivity"]["images_lost"] == 0


def test_lost_positives_are_counted_and_tested_in_pairs():
    p0 = base_scores()
    p1 = p0.copy()
    p1[10:14] = 0.3  # four more positives missed, one of the three misses recovered
    p1[0] = 0.9
    ch = paired_changes(figures(p0), figures(p1), TRUTH)
    sens = ch["sensitivity"]
    assert sens["change"] == pytest.approx(-3 / 50)
    assert (sens["images_lost"], sens["images_gained"]) == (4, 1)
    assert sens["mcnemar_p"] == pytest.approx(binomtest(4, 5).pvalue)
    lo, hi = sens["ci"]
    assert -0.2 < lo < -3 / 50 < hi <= 0.02 + 1e-9  # paired: only the 5 changed images move it
    assert ch["specificity"]["change"] == 0
    assert ch["roc_auc"]["change"] < 0 and ch["roc_auc"]["ci"][0] < ch["roc_auc"]["change"]


def test_paired_changes_refuse_figures_of_other_images():
    before = figures(base_scores())
    with pytest.raises(ValueError, match="same test images"):
        paired_changes(before, figures(base_scores()[:-1]), TRUTH)
    with pytest.raises(ValueError, match="both classes"):
        paired_changes(before, before, np.ones(len(TRUTH), bool))


def test_attack_figure_reads_the_measure_of_each_kind_of_attack():
    targeted = attack_figure({"n": 60, "attack_success_rate": 11 / 60, "target_rate_without_trigger": 0.1})
    assert targeted["rate"] == pytest.approx(11 / 60) and targeted["n"] == 60 and "target" in targeted["measure"]
    ci = binomtest(11, 60).proportion_ci(method="wilson")
    assert targeted["ci"] == pytest.approx([ci.low, ci.high])
    untargeted = attack_figure({"n": 180, "attack_success_rate": 0.09, "error_rate_without_trigger": 0.05,
                                "n_correct_clean": 171, "attack_success_rate_on_correct": 3 / 171})
    assert untargeted["rate"] == pytest.approx(3 / 171) and untargeted["n"] == 171  # the misses are not the trigger's


def test_verdict_follows_the_goal_at_its_bounds():
    p0 = base_scores()
    one_lost = p0.copy()
    one_lost[20] = 0.46  # -2.0 points of sensitivity: at the bound, allowed
    ch = paired_changes(figures(p0), figures(one_lost), TRUTH)
    low = {"rate": 0.04, "n": 60, "ci": [0.01, 0.13], "measure": ""}
    assert judge_defence(ch, low)["goal_met"]
    assert judge_defence(ch, None)["verdict"] == "goal met"  # a clean model: only the clean figures count
    high = dict(low, rate=0.05)
    judged = judge_defence(ch, high, clean_rate=0.083)
    assert not judged["goal_met"] and judged["missed"] == ["attack success 5.0% >= 5%; a clean model: 8.3%"]
    two_lost = one_lost.copy()
    two_lost[21] = 0.46
    judged = judge_defence(paired_changes(figures(p0), figures(two_lost), TRUTH), low)
    (miss,) = judged["missed"]
    assert miss.startswith("sensitivity -4.0 points (2 image(s); 95% CI") and "McNemar p = 0.50" in miss


def test_judge_all_and_the_table(tmp_path):
    p0 = base_scores()
    p1 = p0.copy()
    p1[10:14] = 0.3
    none_right = {"n": 150, "attack_success_rate": 0.1, "error_rate_without_trigger": 0.05, "n_correct_clean": 142,
                  "attack_success_rate_on_correct": 0.02}
    found = {"test_truth": TRUTH.tolist(), "models": {
        "clean_s0": {"kind": "clean", "before": {"images": figures(p0), "trigger": {
            "None": none_right,
            "normal": {"n": 100, "attack_success_rate": 0.08, "target_rate_without_trigger": 0.06}}},
            "after": {"unlearn": {"images": figures(p0), "trigger": {}}}},
        "targeted_10": {"kind": "poisoned", "before": {"images": figures(p0), "trigger": {
            "normal": {"n": 100, "attack_success_rate": 0.97, "target_rate_without_trigger": 0.03}}},
            "after": {"unlearn": {"images": figures(p1), "trigger": {
                "normal": {"n": 100, "attack_success_rate": 0.11, "target_rate_without_trigger": 0.1}}},
                "gone": {"trigger": {"normal": {}}}}}}}  # measured by an older version, folder gone: unjudged

    def measure(*_):
        raise AssertionError("nothing to measure again: every judged model has its per-image figures")

    judge_all(tmp_path, found, "clean_s0", measure)
    after = found["models"]["targeted_10"]["after"]
    assert "judged" not in after["gone"]
    judged = after["unlearn"]["judged"]
    assert judged["clean_model_rate"] == 0.08
    assert judged["missed"][0] == "attack success 11.0% >= 5%; a clean model: 8.0%"
    assert judged["missed"][1].startswith("AUC -0.035 (95% CI -0.0")  # four positives under every negative
    assert judged["missed"][2].startswith("sensitivity -8.0 points (4 image(s)")
    assert found["models"]["clean_s0"]["after"]["unlearn"]["judged"]["goal_met"]
    rows = report_rows(found)
    assert [r[:2] for r in rows] == [("clean_s0", "unlearn"), ("targeted_10", "unlearn")]
    assert all(len(r) == len(REPORT_COLUMNS) for r in rows)
    assert rows[1][2].startswith("97.0% -> 11.0% (") and rows[1][3] == "8.0%"
    assert rows[1][5].startswith("94.0 -> 86.0 (-8.0; ")
    assert rows[1][7] == "missed: attack success 11.0% >= 5%; a clean model: 8.0%; AUC -0.035; sensitivity -8.0 points"
    assert rows[0][2] == "clean model" and rows[0][7] == "goal met"


def test_the_defences_command_prints_the_table(tmp_path, monkeypatch):
    found = {"test_truth": TRUTH.tolist(), "models": {"targeted_10": {"kind": "poisoned", "before": {
        "trigger": {"normal": {"n": 100, "attack_success_rate": 0.97, "target_rate_without_trigger": 0.03}}},
        "after": {"unlearn": {"judged": judge_defence(
            paired_changes(figures(base_scores()), figures(base_scores()), TRUTH),
            attack_figure({"n": 100, "attack_success_rate": 0.02, "target_rate_without_trigger": 0.02}), 0.03)}}}}}
    monkeypatch.setattr("covidscreen.security.backdoor.evaluate_defences", lambda *a, **k: found)
    proc = run_cli_in_process("security", "defences", str(tmp_path), "--method", "unlearn")
    assert proc.returncode == 0, proc.stderr
    assert "sanitized models against the goal" in proc.stdout
    assert "targeted_10" in proc.stdout and "97.0% -> 2.0%" in proc.stdout and "goal met" in proc.stdout


def test_a_settings_label_makes_a_plain_folder_name(tmp_path):
    assert sanitized_folder(tmp_path, "targeted_10", "unlearn+unlearn_anchor=1.0") == (
        tmp_path / "sanitized" / "targeted_10__unlearn+unlearn_anchor=1.0")  # the names of earlier sessions kept
    folder = sanitized_folder(tmp_path, "t", "unlearn+x=('a[1]*', 'b/c')")  # a list setting, a path separator
    assert folder.parent == tmp_path / "sanitized" and folder.name == "t__unlearn+x=__a_1___,__b_c__"

