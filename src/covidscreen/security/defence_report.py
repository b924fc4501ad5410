"""Judging a sanitized model against issue 26's goal, with the uncertainty of a small test set.

The goal: attack success under 5%, clean test AUC lower by at most 0.01, sensitivity and specificity by at most 2
points. On the demonstration's 180 test images (60 COVID) one image is 1.7 points of sensitivity, so a point figure
alone cannot say whether a defence cost anything. Each change is therefore given with a paired 95% interval
(the same test images before and after, resampled together by the package's bootstrap, stratified by class,
percentile method) and, for sensitivity and specificity, the exact McNemar test on the images whose decision changed
(``scipy.stats.binomtest``); attack success gets its Wilson interval. Beside it stands the rate a *clean* model of
the experiment reaches with the same trigger and the same measure: the goal's 5% can lie below it (a clean 2-class
model calls 8% of stamped COVID images non-COVID, its own misses), and no defence should be asked to beat a model
that never saw the trigger.

The verdict follows the issue's point figures ("goal met" / "goal missed: ..."); the intervals say how far the test
set can tell.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import binomtest

from ..config import DEFAULT_N_BOOT
from ..evaluation.bootstrap import paired_binary_changes
from ..evaluation.thresholds import wilson_interval

GOAL_ASR = 0.05  # attack success below this
GOAL_AUC_DROP = 0.01  # clean test AUC lower by at most this
GOAL_RATE_DROP = 0.02  # sensitivity and specificity lower by at most this


def image_figures(probs: np.ndarray, decided: np.ndarray, positive: int) -> dict[str, list]:
    """What :func:`paired_changes` needs of one model on the test images: the positive class's probability and
    whether it was called, per image (JSON-ready lists)."""
    return {"p": [round(float(v), 6) for v in probs[:, positive]], "called": [bool(v) for v in decided == positive]}


def paired_changes(before: dict[str, list], after: dict[str, list], truth: np.ndarray,
                   seed: int = 0, resamples: int = DEFAULT_N_BOOT) -> dict[str, dict[str, Any]]:
    """AUC, sensitivity and specificity before and after, their change (after - before) with a paired 95%
    bootstrap interval, and for the two rates the exact McNemar p-value (images whose decision changed).

    The package's one bootstrap (:func:`covidscreen.evaluation.bootstrap.paired_binary_changes`): every replicate
    weighs the same test images for both models, drawn within the positive and the negative images (stratified);
    images, not patients, are drawn.

    Args:
        before, after: :func:`image_figures` of the same test images.
        truth: True where an image is of the positive class.
    """
    truth = np.asarray(truth, dtype=bool)
    if len(before["p"]) != len(truth) or len(after["p"]) != len(truth):
        raise ValueError(f"before ({len(before['p'])}), after ({len(after['p'])}) and truth ({len(truth)}) must "
                         "describe the same test images")
    if truth.all() or not truth.any():
        raise ValueError("the test images must hold both classes to compare AUC, sensitivity and specificity")
    p0, p1 = np.asarray(before["p"], float), np.asarray(after["p"], float)
    c0, c1 = np.asarray(before["called"], bool), np.asarray(after["called"], bool)
    out = paired_binary_changes(truth, (c0, p0), (c1, p1), n_boot=resamples, seed=seed)
    for name, keep, right0, right1 in (("sensitivity", truth, c0, c1), ("specificity", ~truth, ~c0, ~c1)):
        a, b = right0[keep], right1[keep]
        lost, gained = int((a & ~b).sum()), int((~a & b).sum())
        out[name].update({"images_lost": lost, "images_gained": gained,
                          "mcnemar_p": float(binomtest(lost, lost + gained).pvalue) if lost + gained else 1.0})
    return out


def attack_figure(trigger: dict[str, Any]) -> dict[str, Any]:
    """The attack success that the goal is judged by, from :func:`~covidscreen.security.backdoor.attack_success`'s
    record: a targeted attack's rate on the images not of the target; a non-targeted one's on the images the model
    gets right without the trigger (its misses are not the trigger's doing). With its Wilson 95% interval."""
    if "target_rate_without_trigger" in trigger:
        rate, n, measure = trigger["attack_success_rate"], trigger["n"], "images not of the target class"
    else:
        rate, n, measure = (trigger["attack_success_rate_on_correct"], trigger["n_correct_clean"],
                            "images the model gets right without the trigger")
    return {"rate": float(rate), "n": int(n), "ci": wilson_interval(int(round(rate * n)), n), "measure": measure}


def judge_defence(changes: dict[str, dict[str, Any]], attack: dict[str, Any] | None,
                  clean_rate: float | None = None) -> dict[str, Any]:
    """The issue's goal on point figures, and the reasons it is missed (``clean_rate``: what a clean model of the
    experiment reaches with the same trigger and measure, reported beside the attack success)."""
    missed = []
    if attack is not None and attack["rate"] >= GOAL_ASR:
        floor = f"; a clean model: {clean_rate:.1%}" if clean_rate is not None else ""
        missed.append(f"attack success {attack['rate']:.1%} >= {GOAL_ASR:.0%}{floor}")
    auc = changes["roc_auc"]
    if auc["change"] < -GOAL_AUC_DROP:
        missed.append(f"AUC {auc['change']:+.3f} (95% CI {auc['ci'][0]:+.3f} to {auc['ci'][1]:+.3f})")
    for name in ("sensitivity", "specificity"):
        c = changes[name]
        if c["change"] < -GOAL_RATE_DROP - 1e-9:
            missed.append(f"{name} {100 * c['change']:+.1f} points ({c['images_lost'] - c['images_gained']} "
                          f"image(s); 95% CI {100 * c['ci'][0]:+.1f} to {100 * c['ci'][1]:+.1f}; McNemar p = "
                          f"{c['mcnemar_p']:.2f})")
    return {"goal_met": not missed, "missed": missed,
            "verdict": "goal met" if not missed else "goal missed: " + "; ".join(missed),
            "attack": attack, "clean_model_rate": clean_rate, "changes": changes}


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _change(c: dict[str, Any], scale: float, digits: int) -> str:
    lo, hi = c["ci"]
    return (f"{scale * c['before']:.{digits}f} -> {scale * c['after']:.{digits}f} ({scale * c['change']:+.{digits}f}; "
            f"{scale * lo:+.{digits}f} to {scale * hi:+.{digits}f})")


REPORT_COLUMNS = ("model", "defence", "attack success (95% CI)", "a clean model", "AUC (change; 95% CI)",
                  "sensitivity % (change; 95% CI)", "specificity % (change; 95% CI)", "verdict")


def report_rows(found: dict[str, Any]) -> list[tuple[str, ...]]:
    """One row per sanitized model of ``defences.json`` (:data:`REPORT_COLUMNS`), judged ones only: what
    ``covidscreen security defences`` prints."""
    rows = []
    for run, entry in found.get("models", {}).items():
        for label, after in entry.get("after", {}).items():
            judged = after.get("judged")
            if judged is None:
                continue
            ch, attack = judged["changes"], judged["attack"]
            if attack is None:
                asr = "clean model"
            else:
                before = attack_figure(next(iter(entry["before"]["trigger"].values())))["rate"]
                asr = f"{_pct(before)} -> {_pct(attack['rate'])} ({_pct(attack['ci'][0])}-{_pct(attack['ci'][1])})"
            verdict = "goal met" if judged["goal_met"] else "missed: " + "; ".join(
                m.split(" (")[0] for m in judged["missed"])
            rows.append((run, label, asr, _pct(judged["clean_model_rate"]), _change(ch["roc_auc"], 1, 3),
                         _change(ch["sensitivity"], 100, 1), _change(ch["specificity"], 100, 1), verdict))
    return rows
