"""Everything ``metrics.json`` reports for one set of predictions, with confidence intervals.

:func:`assess` extends :func:`~covidscreen.evaluation.metrics.classification_metrics` (point estimates) with

- patient-level bootstrap CIs (``ci``) of every binary metric, per class and for the positive class vs the rest,
  and of the multi-class accuracy and macro AUC; a DeLong CI of the positive class's AUC (``ci_delong``);
- the metrics at each named operating point (thresholds chosen on validation), with CIs and confusion matrices;
- calibration (ECE, Brier, reliability curve).

:func:`evaluate_fit_predictions` is what training calls on its validation + test predictions: optional temperature
scaling and the operating points are fitted on validation only, then both splits are assessed.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix

from ..config import DEFAULT_N_BOOT
from .bootstrap import BinaryTask, bootstrap_tasks, percentile_interval
from .breakdown import subgroup_breakdown
from .calibration import apply_temperature, calibration_summary, fit_temperature
from .delong import delong_ci
from .metrics import binary_metrics, classification_metrics, predict_labels
from .thresholds import DEFAULT_RULE, choose_points, default_name, describe_points, describe_sites


def assess(
    y: np.ndarray,
    probs: np.ndarray,
    classes: list[str],
    positive_class: str | None = "covid",
    threshold: float | None = None,
    groups: Sequence | np.ndarray | None = None,
    points: dict[str, float] | None = None,
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """Point estimates, patient-level bootstrap CIs, metrics at operating points and calibration.

    Args:
        y: true class indices ``(N,)``.
        probs: probabilities ``(N, C)``.
        classes: class names in index order.
        positive_class: the screened class (its block is ``covid_vs_rest``); None or absent: no such block.
        threshold: decision threshold on the positive class's probability (None: argmax).
        groups: patient of each image, the bootstrap's resampling unit (None: each image its own patient).
        points: named thresholds (chosen on validation) to report metrics at.
        n_boot: bootstrap replicates (0: no intervals).
        seed: bootstrap seed.
        level: confidence level of every interval.
    """
    y = np.asarray(y, dtype=int)
    probs = np.asarray(probs, dtype=float)
    out = classification_metrics(y, probs, classes, positive_class, threshold)
    pos = classes.index(positive_class) if positive_class in classes else None
    pred = predict_labels(probs, pos, threshold)
    thr = 0.5 if threshold is None else threshold
    point_items = [(k, t) for k, t in (points or {}).items() if k != "default"]

    if n_boot and len(y):
        tasks = [BinaryTask(f"class:{c}", y == i, pred == i, probs[:, i]) for i, c in enumerate(classes)]
        if pos is not None:
            tasks.append(BinaryTask("covid_vs_rest", y == pos, probs[:, pos] >= thr, probs[:, pos]))
            tasks += [BinaryTask(f"point:{k}", y == pos, probs[:, pos] >= t) for k, t in point_items]
        boot = bootstrap_tasks(tasks, groups, n_boot=n_boot, seed=seed, level=level,
                               extra={"accuracy": (pred == y).astype(float)})
        for c in classes:
            out["per_class"][c]["ci"] = boot[f"class:{c}"]["ci"]
        reps = boot["_replicates"]
        aucs = np.stack([reps[f"class:{c}"]["roc_auc"] for c in classes])
        with warnings.catch_warnings():  # a replicate with no defined AUC gives NaN, which is what we want
            warnings.simplefilter("ignore", RuntimeWarning)
            macro = np.nanmean(aucs, axis=0)
        out["ci"] = {"accuracy": boot["accuracy"]["ci"], "macro_roc_auc": percentile_interval(macro, level)}
        if pos is not None:
            out["covid_vs_rest"]["ci"] = boot["covid_vs_rest"]["ci"]
            if boot["covid_vs_rest"]["undefined"]:
                out["covid_vs_rest"]["ci_undefined_replicates"] = boot["covid_vs_rest"]["undefined"]
    if pos is not None:
        out["covid_vs_rest"]["ci_delong"] = {"roc_auc": delong_ci(y == pos, probs[:, pos], level)}
        at_points = {}
        for k, t in point_items:
            m = binary_metrics(y == pos, probs[:, pos], t)
            for key in ("roc_auc", "pr_auc"):  # threshold-free: reported once in covid_vs_rest
                m.pop(key)
            if n_boot and len(y):
                m["ci"] = {key: v for key, v in boot[f"point:{k}"]["ci"].items()}
            m["confusion_matrix"] = confusion_matrix(y, predict_labels(probs, pos, t),
                                                     labels=list(range(len(classes)))).tolist()
            at_points[k] = m
        if at_points:
            out["at_operating_points"] = at_points
    out["calibration"] = calibration_summary(y, probs, pos) if len(y) else {}
    out["bootstrap"] = {"n_boot": int(n_boot), "seed": int(seed), "level": level, "method": "percentile",
                        "unit": "patient" if groups is not None else "image",
                        "n_units": int(pd.Series(groups).nunique()) if groups is not None else int(len(y))}
    return out


def prob_matrix(preds: pd.DataFrame, classes: list[str]) -> np.ndarray:
    """The ``prob_<class>`` columns of a predictions table as an ``(N, C)`` array."""
    return preds[[f"prob_{c}" for c in classes]].to_numpy(dtype=float)


def evaluate_fit_predictions(preds: pd.DataFrame, classes: list[str], positive_class: str | None,
                             cfg: Any = None) -> tuple[pd.DataFrame, dict[str, Any], dict[str, float], float | None]:
    """Calibrate (optional) and choose operating points on validation, then assess validation and test.

    Args:
        preds: one row per val/test image with ``label``, ``split``, ``group``, ``site``, ``view`` and
            ``prob_<class>`` columns.
        classes: class names in index order.
        positive_class: the screened class, or None.
        cfg: the training config; optional keys read with defaults: ``temperature_scaling`` (False),
            ``target_sensitivity`` / ``target_specificity`` (0.95), ``bootstrap`` (replicates, 1000), ``seed``.
            With a ``site`` column, the rules that hold across sites are chosen too, and each point's per-site
            validation figures go into ``operating_points_val_sites``.

    Returns:
        ``(preds, metrics, points, temperature)``: predictions (recalibrated when temperature scaling is on),
        the ``metrics.json`` content, the operating points for the sidecar, and the fitted temperature or None.
    """

    def opt(key: str, default: Any) -> Any:
        return getattr(cfg, key, default) if cfg is not None else default

    n_boot = int(opt("bootstrap", DEFAULT_N_BOOT))
    seed = int(opt("seed", 0))
    preds = preds.copy()
    probs = prob_matrix(preds, classes)
    y = preds["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    val = (preds["split"] == "val").to_numpy()
    temperature = None
    calibration_note: dict[str, Any] = {}
    if val.any() and len(np.unique(y[val])) >= 2:
        fitted = fit_temperature(probs[val], y[val])
        if opt("temperature_scaling", False):
            temperature = fitted
            probs = apply_temperature(probs, temperature)
            for i, c in enumerate(classes):
                preds[f"prob_{c}"] = probs[:, i]
        calibration_note = {"temperature_fitted_on_val": fitted, "temperature_applied": temperature is not None}
    pos = positive_class if positive_class in classes else None
    points: dict[str, float] = {}
    notes: dict[str, str] = {}
    val_sites = preds.loc[val, "site"].astype(str).to_numpy() if "site" in preds else None
    if pos is not None and val.any():
        yv = y[val] == classes.index(pos)
        sv = probs[val][:, classes.index(pos)]
        points, notes = choose_points(yv, sv, float(opt("target_sensitivity", 0.95)),
                                      float(opt("target_specificity", 0.95)), val_sites, DEFAULT_RULE)
    threshold = points.get("default")
    default_point = default_name(points, DEFAULT_RULE) if points else None
    metrics: dict[str, Any] = {
        "classes": list(classes), "positive_class": pos, "operating_points": points,
        "threshold_source": f"validation split (operating point {default_point})" if pos else None,
        "default_operating_point": default_point,
        "temperature": temperature, "calibration_fit": calibration_note,
    }
    if points:
        yv = y[val] == classes.index(pos)
        sv = probs[val][:, classes.index(pos)]
        metrics["operating_points_val"] = describe_points(yv, sv, points)
        if val_sites is not None:
            if default_point in notes:
                notes["default"] = notes[default_point]
            metrics["operating_points_val_sites"] = describe_sites(yv, sv, val_sites, points, notes)
    groups = preds["group"].to_numpy() if "group" in preds else None
    for split in ("val", "test"):
        m = (preds["split"] == split).to_numpy()
        if m.any():
            metrics[split] = assess(y[m], probs[m], classes, pos, threshold, groups[m] if groups is not None else None,
                                    points, n_boot=n_boot, seed=seed)
    test = metrics.get("test")
    metrics["n_test"] = int(test["n"]) if test else 0
    if test and "covid_vs_rest" in test:
        metrics["covid_vs_rest"] = test["covid_vs_rest"]
    if test:
        sub = preds[preds["split"] == "test"].reset_index(drop=True)
        metrics["breakdown"] = {by: subgroup_breakdown(sub, classes, pos, threshold, by, n_boot=n_boot, seed=seed)
                                for by in ("site", "view") if by in sub}
        if temperature is None and calibration_note:
            # what temperature scaling (fitted on val) would do to the test calibration, without applying it
            t = calibration_note["temperature_fitted_on_val"]
            yt = y[(preds["split"] == "test").to_numpy()]
            pt = apply_temperature(probs[(preds["split"] == "test").to_numpy()], t)
            metrics["calibration_if_temperature_scaled"] = calibration_summary(
                yt, pt, classes.index(pos) if pos else None)
    return preds, metrics, points, temperature


def nan_to_none(obj: Any) -> Any:
    """Recursively replace NaN floats by None (for strict JSON consumers)."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [nan_to_none(v) for v in obj]
    return obj
