"""Patient-level bootstrap confidence intervals, vectorised.

Images of one patient are not independent (follow-up films, several views), so resampling images would give
intervals that are too narrow. Here whole patients (the table's ``group`` column) are resampled with replacement:
replicate ``b`` gives each image the weight "how often its patient was drawn", and every metric is a weighted
statistic of the original predictions. All replicates of one chunk are computed at once with matrix products and
sorted cumulative sums, so 1,000 replicates of a few thousand images take well under a second.

The interval is the percentile interval of the replicates. Replicates in which a metric is undefined (no positive
patient drawn, say) are left out of that metric's interval; their count is reported.

Optionally (``stratify``) patients are drawn separately among those with at least one positive image and those
without, each stratum keeping its size. Within-site metrics use this: cohen holds only 10-13 non-COVID patients in a
test split, so an unstratified replicate can draw too few (or no) negatives and its AUC would be undefined or
wild; stratification keeps the class balance of the sample fixed, as the design of the study fixed it. Pooled
metrics resample unstratified (the class balance of a test split is itself random there).

This is the one bootstrap of the package: ``metrics.json`` (``assess.py``), within-site metrics
(``within_site.py``), experiment tables (``training/comparison.py``), cross-validation and the judged defences
(``security/defence_report.py``, paired: :func:`paired_binary_changes`) all use it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..config import DEFAULT_N_BOOT
from ..errors import ConfigError

BINARY_METRICS = ("sensitivity", "specificity", "precision", "npv", "f1", "accuracy", "roc_auc", "pr_auc")


def group_codes(groups: Sequence | np.ndarray | None, n: int) -> tuple[np.ndarray, int]:
    """Integer code of each image's patient (every image its own patient when ``groups`` is None)."""
    if groups is None:
        return np.arange(n), n
    groups = np.asarray(groups)
    if len(groups) != n:
        raise ConfigError(f"groups has {len(groups)} entries but there are {n} predictions")
    codes, uniques = pd.factorize(pd.Series(groups).astype(str), sort=True)
    return codes.astype(np.int64), len(uniques)


def group_strata(codes: np.ndarray, n_groups: int, flags: np.ndarray) -> np.ndarray:
    """Stratum of each patient: True when at least one of its images is flagged (e.g. positive)."""
    return np.bincount(codes, weights=np.asarray(flags, dtype=float), minlength=n_groups) > 0


def bootstrap_weights(codes: np.ndarray, n_groups: int, n_boot: int, rng: np.random.Generator,
                      strata: np.ndarray | None = None) -> np.ndarray:
    """``(n_boot, N)`` image weights: how often each image's patient was drawn in each replicate.

    Args:
        codes: patient code of every image (``0 .. n_groups - 1``).
        n_groups: number of patients.
        n_boot: number of replicates.
        rng: the random generator.
        strata: optional ``(n_groups,)`` stratum of every patient; patients are then drawn within each stratum,
            as many as it holds, so every replicate keeps the strata's sizes.
    """
    if strata is None:
        draws = rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=n_boot)
    else:
        strata = np.asarray(strata)
        draws = np.zeros((n_boot, n_groups), dtype=np.int64)
        for s in np.unique(strata):
            members = np.flatnonzero(strata == s)
            draws[:, members] = rng.multinomial(len(members), np.full(len(members), 1.0 / len(members)),
                                                size=n_boot)
    return draws[:, codes].astype(np.float64)


def _div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


@dataclass
class _Ranked:
    """A score vector sorted once, with the start of every run of tied scores."""

    order: np.ndarray
    starts: np.ndarray
    y_sorted: np.ndarray

    @classmethod
    def of(cls, y: np.ndarray, score: np.ndarray) -> _Ranked:
        order = np.argsort(score, kind="mergesort")
        s = score[order]
        starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
        return cls(order, starts, y[order])


def weighted_auc_ap(w: np.ndarray, ranked: _Ranked) -> tuple[np.ndarray, np.ndarray]:
    """ROC AUC (ties count one half) and average precision (scikit-learn's definition) for each row of weights.

    Args:
        w: ``(B, N)`` image weights.
        ranked: the scores and labels, sorted.

    Returns:
        Two ``(B,)`` arrays; NaN where a replicate lacks positives or negatives.
    """
    ws = w[:, ranked.order]
    ys = ranked.y_sorted
    # weight of positives and negatives at each distinct score (ascending)
    pk = np.add.reduceat(ws * ys, ranked.starts, axis=1)
    nk = np.add.reduceat(ws * ~ys, ranked.starts, axis=1)
    p_tot, n_tot = pk.sum(1), nk.sum(1)
    neg_below = np.cumsum(nk, axis=1) - nk
    auc = _div(np.sum(pk * (neg_below + 0.5 * nk), axis=1), p_tot * n_tot)
    # average precision: thresholds at distinct scores, from the highest down
    tp = np.cumsum(pk[:, ::-1], axis=1)
    fp = np.cumsum(nk[:, ::-1], axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        prec = np.where(tp + fp > 0, tp / np.where(tp + fp > 0, tp + fp, 1), 0.0)
    ap = _div(np.sum(pk[:, ::-1] * prec, axis=1), p_tot)
    ap = np.where(n_tot > 0, ap, np.nan)
    return auc, ap


def weighted_binary_metrics(w: np.ndarray, y: np.ndarray, pred: np.ndarray, ranked: _Ranked | None) -> dict:
    """Every binary screening metric for each row of ``w`` (``(B, N)`` weights); values are ``(B,)`` arrays."""
    y = np.asarray(y, dtype=bool)
    pred = np.asarray(pred, dtype=bool)
    tp = w @ (y & pred).astype(float)
    fp = w @ (~y & pred).astype(float)
    fn = w @ (y & ~pred).astype(float)
    tn = w @ (~y & ~pred).astype(float)
    out = {
        "sensitivity": _div(tp, tp + fn),
        "specificity": _div(tn, tn + fp),
        "precision": _div(tp, tp + fp),
        "npv": _div(tn, tn + fn),
        "f1": _div(2 * tp, 2 * tp + fp + fn),
        "accuracy": _div(tp + tn, tp + tn + fp + fn),
    }
    if ranked is not None:
        out["roc_auc"], out["pr_auc"] = weighted_auc_ap(w, ranked)
    return out


def percentile_interval(replicates: np.ndarray, level: float = 0.95) -> list[float]:
    """Percentile interval of the finite replicates (``[nan, nan]`` when none is finite)."""
    r = np.asarray(replicates, dtype=float)
    r = r[np.isfinite(r)]
    if len(r) == 0:
        return [math.nan, math.nan]
    alpha = (1 - level) / 2
    lo, hi = np.quantile(r, [alpha, 1 - alpha])
    return [float(lo), float(hi)]


@dataclass
class BinaryTask:
    """One binary question to bootstrap: truth, decisions at the operating point, and scores (for AUCs)."""

    name: str
    y: np.ndarray
    pred: np.ndarray
    score: np.ndarray | None = None


def bootstrap_tasks(
    tasks: list[BinaryTask],
    groups: Sequence | np.ndarray | None = None,
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = 0,
    level: float = 0.95,
    extra: dict[str, np.ndarray] | None = None,
    chunk_cells: int = 4_000_000,
    stratify: np.ndarray | None = None,
) -> dict[str, dict]:
    """Percentile CIs of every binary metric of several tasks, all from the same patient-level replicates.

    Args:
        tasks: binary tasks over the same ``N`` images.
        groups: patient of each image (None: images are independent).
        n_boot: number of replicates.
        seed: the replicates are a function of the seed, the groups and ``n_boot`` only.
        level: confidence level.
        extra: named ``(N,)`` 0/1 arrays whose weighted mean also gets an interval (e.g. multi-class correctness).
        chunk_cells: replicates are processed in chunks of about this many weight cells to bound memory.
        stratify: optional ``(N,)`` 0/1 flag per image (e.g. positive); patients with a flagged image and patients
            without are then resampled separately (see the module docstring).

    Returns:
        ``{task name: {"ci": {metric: [lo, hi]}, "undefined": {metric: count}}}`` plus, for each ``extra`` array,
        ``{name: {"ci": [lo, hi]}}``; and ``"_replicates"`` holding the raw replicate arrays for callers that
        combine them (e.g. a macro average).
    """
    if n_boot < 1:
        raise ConfigError(f"n_boot must be at least 1, got {n_boot}")
    if not 0 < level < 1:
        raise ConfigError(f"confidence level must be in (0, 1), got {level}")
    if not tasks:
        return {}
    n = len(tasks[0].y)
    codes, n_groups = group_codes(groups, n)
    strata = None
    if stratify is not None:
        if len(stratify) != n:
            raise ConfigError(f"stratify has {len(stratify)} entries but there are {n} predictions")
        strata = group_strata(codes, n_groups, stratify)
    if n == 0:
        return {t.name: {"ci": {k: [math.nan, math.nan] for k in BINARY_METRICS}, "undefined": {}} for t in tasks}
    ranked = {t.name: _Ranked.of(np.asarray(t.y, bool), np.asarray(t.score, float)) if t.score is not None else None
              for t in tasks}
    reps: dict[str, dict[str, list[np.ndarray]]] = {t.name: {} for t in tasks}
    extra_reps: dict[str, list[np.ndarray]] = {k: [] for k in (extra or {})}
    rng = np.random.default_rng(seed)
    step = max(1, chunk_cells // max(n, 1))
    for start in range(0, n_boot, step):
        w = bootstrap_weights(codes, n_groups, min(step, n_boot - start), rng, strata)
        for t in tasks:
            for k, v in weighted_binary_metrics(w, t.y, t.pred, ranked[t.name]).items():
                reps[t.name].setdefault(k, []).append(v)
        for k, v in (extra or {}).items():
            extra_reps[k].append(_div(w @ np.asarray(v, float), w.sum(1)))
    out: dict[str, dict] = {}
    raw: dict[str, dict[str, np.ndarray]] = {}
    for t in tasks:
        arrays = {k: np.concatenate(v) for k, v in reps[t.name].items()}
        raw[t.name] = arrays
        out[t.name] = {"ci": {k: percentile_interval(a, level) for k, a in arrays.items()},
                       "undefined": {k: int(np.sum(~np.isfinite(a))) for k, a in arrays.items()
                                     if np.any(~np.isfinite(a))}}
    for k, v in extra_reps.items():
        a = np.concatenate(v)
        raw[k] = {"mean": a}
        out[k] = {"ci": percentile_interval(a, level)}
    out["_replicates"] = raw
    return out


def binary_ci(y: np.ndarray, pred: np.ndarray, score: np.ndarray | None = None,
              groups: Sequence | np.ndarray | None = None, n_boot: int = DEFAULT_N_BOOT, seed: int = 0,
              level: float = 0.95, stratified: bool = False) -> dict[str, list[float]]:
    """Patient-level bootstrap CIs of the binary metrics of one task: ``{metric: [lo, hi]}``.

    ``stratified``: resample patients with a positive image and patients without separately (see the module
    docstring).
    """
    y = np.asarray(y, bool)
    res = bootstrap_tasks([BinaryTask("task", y, np.asarray(pred, bool), score)], groups, n_boot, seed, level,
                          stratify=y if stratified else None)
    return res["task"]["ci"]


def paired_auc_difference(y: np.ndarray, score_a: np.ndarray, score_b: np.ndarray,
                          groups: Sequence | np.ndarray | None = None, n_boot: int = DEFAULT_N_BOOT, seed: int = 0,
                          level: float = 0.95, stratified: bool = True) -> dict[str, Any]:
    """``AUC(b) - AUC(a)`` on the same images, with a paired patient-level bootstrap interval.

    Both scores are evaluated on the same resampled patients in every replicate, so what the two models share (which
    images are hard) cancels out of the difference: this is how to compare two variants tested on the same images
    (the out-of-fold predictions of two cross-validations with the same folds, or two runs of the same split).

    Args:
        y: binary truth per image.
        score_a, score_b: the two models' scores of the positive class, per image (same order).
        groups: patient of every image (None: every image its own patient).
        stratified: resample patients with a positive image and those without separately (as within-site metrics).

    Returns:
        ``{"auc_a", "auc_b", "difference", "ci": [lo, hi], "p_b_not_better": share of replicates with
        difference <= 0, "n_boot", "undefined"}``.
    """
    y = np.asarray(y, dtype=bool)
    a, b = np.asarray(score_a, dtype=float), np.asarray(score_b, dtype=float)
    if not len(y) == len(a) == len(b):
        raise ConfigError(f"paired AUC difference needs equal lengths, got {len(y)}, {len(a)} and {len(b)}")
    codes, n_groups = group_codes(groups, len(y))
    strata = group_strata(codes, n_groups, y) if stratified else None
    ra, rb = _Ranked.of(y, a), _Ranked.of(y, b)
    ones = np.ones((1, len(y)))
    auc_a, auc_b = float(weighted_auc_ap(ones, ra)[0][0]), float(weighted_auc_ap(ones, rb)[0][0])
    rng = np.random.default_rng(seed)
    diffs = []
    step = max(1, 4_000_000 // max(len(y), 1))
    for start in range(0, n_boot, step):
        w = bootstrap_weights(codes, n_groups, min(step, n_boot - start), rng, strata)
        diffs.append(weighted_auc_ap(w, rb)[0] - weighted_auc_ap(w, ra)[0])
    d = np.concatenate(diffs) if diffs else np.zeros(0)
    finite = d[np.isfinite(d)]
    return {"auc_a": auc_a, "auc_b": auc_b, "difference": auc_b - auc_a, "ci": percentile_interval(d, level),
            "p_b_not_better": float(np.mean(finite <= 0)) if len(finite) else math.nan, "n_boot": int(n_boot),
            "undefined": int(len(d) - len(finite))}


def paired_binary_changes(y: np.ndarray, before: tuple[np.ndarray, np.ndarray], after: tuple[np.ndarray, np.ndarray],
                          names: Sequence[str] = ("roc_auc", "sensitivity", "specificity"),
                          groups: Sequence | np.ndarray | None = None, n_boot: int = DEFAULT_N_BOOT, seed: int = 0,
                          level: float = 0.95, stratified: bool = True) -> dict[str, dict[str, Any]]:
    """Binary metrics of two models on the same images, ``after - before``, with a paired bootstrap interval.

    As :func:`paired_auc_difference`, for any of :data:`BINARY_METRICS`: every replicate weighs the same images for
    both, so what they share cancels out of the change (a model before and after a change of its weights).

    Args:
        y: binary truth per image.
        before, after: ``(decisions, scores)`` of the positive class per image, for each model.

    Returns:
        ``{name: {"before", "after", "change", "ci": [lo, hi]}}``.
    """
    y = np.asarray(y, dtype=bool)
    tasks = [BinaryTask(name, y, np.asarray(pred, bool), np.asarray(score, float))
             for name, (pred, score) in (("before", before), ("after", after))]
    # the replicates of bootstrap_tasks: the same draws for both models, in chunks of bounded memory
    reps = bootstrap_tasks(tasks, groups, n_boot, seed, level, stratify=y if stratified else None)["_replicates"]
    ones = np.ones((1, len(y)))
    m0, m1 = (weighted_binary_metrics(ones, y, t.pred, _Ranked.of(y, t.score)) for t in tasks)
    out = {}
    for name in names:
        change = float(m1[name][0] - m0[name][0])
        out[name] = {"before": float(m0[name][0]), "after": float(m1[name][0]), "change": change,
                     "ci": percentile_interval(reps["after"][name] - reps["before"][name], level)}
    return out
