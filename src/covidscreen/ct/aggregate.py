"""From slice probabilities to one series probability, with a rule chosen on validation patients.

Rules (``name``: what it computes from the series' slice probabilities of the positive class):

- ``max``: the highest slice probability (one convincing slice decides);
- ``top<k>``: the mean of the ``k`` highest (k = 2, 3, 5; all slices when the series has fewer), robust to one
  spurious slice;
- ``mean``: the mean of all slices (a diffuse finding; diluted by the many slices without lungs in a full series).

:func:`fit_aggregation` scores every rule on the run's *validation* patients (each patient's slices play the role of
a series), keeps the one with the highest patient-level ROC AUC (ties: the earlier rule in :data:`RULES`) and its
Youden threshold on those patients. Rules are compared on the patients with two or more slices when there are such
patients of both classes (a patient with one slice scores the same under every rule); the test patients are scored
with every rule only to report how the choice holds. Nothing is tuned on the test split. The result is stored in the
run folder (``ct_aggregation.json``).

A learned rule (e.g. a logistic regression on several of these statistics) was left out on purpose: the shared CT
data has about 35 validation patients, too few to fit more than a choice among a handful of rules.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import CheckpointError, DataError
from ..evaluation.metrics import rank_auc
from ..evaluation.thresholds import youden_threshold

RULES = ("max", "top2", "top3", "top5", "mean")
AGGREGATION_FILE = "ct_aggregation.json"


def rule_k(rule: str, n: int) -> int:
    """How many of the ``n`` highest slices a rule averages."""
    if rule == "max":
        return 1
    if rule == "mean":
        return n
    if rule.startswith("top") and rule[3:].isdigit() and int(rule[3:]) >= 1:
        return min(int(rule[3:]), n)
    raise DataError(f"aggregation rule {rule!r} is not known; use one of {', '.join(RULES)}")


def aggregate(slice_probs: np.ndarray, rule: str) -> tuple[float, np.ndarray]:
    """The series probability under ``rule`` and the indices of the slices it was computed from (highest first)."""
    p = np.asarray(slice_probs, dtype=np.float64)
    if p.ndim != 1 or len(p) == 0:
        raise DataError("a series needs at least one scored slice")
    k = rule_k(rule, len(p))
    top = np.argsort(-p, kind="stable")[:k]
    return float(p[top].mean()), top


def patient_scores(preds: pd.DataFrame, positive_class: str, rule: str) -> pd.DataFrame:
    """One row per patient (``group``): its label (1 = positive) and its aggregated score."""
    col = f"prob_{positive_class}"
    rows = []
    for group, g in preds.groupby("group", sort=True):
        labels = set(g["label"])
        if len(labels) > 1:
            raise DataError(f"patient {group} has slices of several labels ({', '.join(sorted(labels))}); a "
                            "series has one label")
        rows.append({"group": group, "y": int(labels.pop() == positive_class), "n_slices": len(g),
                     "score": aggregate(g[col].to_numpy(), rule)[0]})
    return pd.DataFrame(rows)


def fit_aggregation(preds: pd.DataFrame, positive_class: str) -> dict[str, Any]:
    """Choose the rule and threshold on the validation patients of ``preds`` (a run's ``predictions.csv``).

    Raises:
        DataError: no validation patients of both classes.
    """
    for col in ("split", "group", "label", f"prob_{positive_class}"):
        if col not in preds.columns:
            raise DataError(f"predictions lack column {col!r}; give a run's predictions.csv")
    if "patient" in preds.columns:  # a split group may join patients (near-copies): a series is one patient's
        preds = preds.assign(group=preds["patient"])
    val = preds[preds["split"] == "val"]
    if val.empty or val["label"].eq(positive_class).all() or not val["label"].eq(positive_class).any():
        raise DataError("choosing a series aggregation needs validation patients of both classes")
    # a patient with one slice scores the same under every rule: only patients with several slices tell rules apart
    sizes = val.groupby("group")["label"].agg(["size", "first"])
    multi = sizes[sizes["size"] >= 2]
    use_multi = multi["first"].eq(positive_class).any() and multi["first"].ne(positive_class).any()
    by_rule: dict[str, dict[str, Any]] = {}
    for rule in RULES:
        pv = patient_scores(val, positive_class, rule)
        entry: dict[str, Any] = {"val_auc": rank_auc(pv["y"].to_numpy(), pv["score"].to_numpy()),
                                 "val_patients": int(len(pv))}
        if use_multi:
            pm = pv[pv["group"].isin(multi.index)]
            entry.update(val_auc_multi_slice=rank_auc(pm["y"].to_numpy(), pm["score"].to_numpy()),
                         val_patients_multi_slice=int(len(pm)))
        test = preds[preds["split"] == "test"]
        if not test.empty and test["label"].nunique() > 1:
            pt = patient_scores(test, positive_class, rule)
            entry.update(test_auc=rank_auc(pt["y"].to_numpy(), pt["score"].to_numpy()), test_patients=int(len(pt)))
        by_rule[rule] = entry
    key = "val_auc_multi_slice" if use_multi else "val_auc"
    best = max(RULES, key=lambda r: (by_rule[r][key], -RULES.index(r)))
    pv = patient_scores(val, positive_class, best)
    threshold = float(youden_threshold(pv["y"].to_numpy(), pv["score"].to_numpy()))
    return {"rule": best, "threshold": threshold, "positive_class": positive_class, "chosen_on": "validation patients",
            "criterion": f"patient-level ROC AUC ({key}; Youden threshold on all validation patients)",
            "rules": by_rule,
            "median_slices_per_val_patient": float(pv["n_slices"].median())}


def load_or_fit_aggregation(run_dir: str | Path, positive_class: str) -> dict[str, Any]:
    """The run's ``ct_aggregation.json``; fitted from its ``predictions.csv`` (validation) and written when absent."""
    run_dir = Path(run_dir)
    path = run_dir / AGGREGATION_FILE
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{path} is damaged ({exc.msg}); delete it to choose the rule again") from None
    preds_file = run_dir / "predictions.csv"
    if not preds_file.is_file():
        raise CheckpointError(f"{run_dir} has no predictions.csv: the series rule is chosen on the run's validation "
                              "predictions, which only a run written by covidscreen train has")
    preds = pd.read_csv(preds_file, keep_default_na=False)
    fitted = fit_aggregation(preds, positive_class)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(fitted, indent=2))
    tmp.replace(path)
    return fitted
