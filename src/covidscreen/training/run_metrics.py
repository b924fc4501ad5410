"""``metrics.json`` of a run from its ``predictions.csv``: the operating points are chosen on the validation rows,
then validation and test are scored. Shared by single runs, ensembles and cross-validation so that all three report
the same keys (``classes``, ``n_test``, ``covid_vs_rest``, ``val``, ``test``, ...)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ..evaluation.metrics import classification_metrics
from ..evaluation.thresholds import operating_points


def prob_matrix(preds: pd.DataFrame, classes: list[str]) -> np.ndarray:
    return preds[[f"prob_{c}" for c in classes]].to_numpy(dtype=float)


def metrics_from_predictions(preds: pd.DataFrame, classes: list[str], positive_class: str | None,
                             points: dict[str, float] | None = None,
                             threshold_source: str = "validation split (max Youden J)") -> dict[str, Any]:
    """Metrics of the ``val`` and ``test`` rows of ``preds`` (columns ``label``, ``split``, ``prob_<class>``).

    Args:
        points: operating points chosen elsewhere; default: chosen on the ``val`` rows (max Youden J).
        threshold_source: how ``points`` were chosen, stored in the result.

    Returns:
        The dict written as ``metrics.json`` (``threshold`` is the default operating point).
    """
    pos = positive_class if positive_class in classes else None
    probs = prob_matrix(preds, classes)
    y = preds["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    val = (preds["split"] == "val").to_numpy()
    if points is None:
        points = operating_points(y[val] == classes.index(pos), probs[val][:, classes.index(pos)]) if pos else {}
    threshold = points.get("default")
    metrics: dict[str, Any] = {"classes": classes, "positive_class": pos, "operating_points": points,
                               "threshold": threshold, "threshold_source": threshold_source if pos else None}
    for split in ("val", "test"):
        m = (preds["split"] == split).to_numpy()
        if m.any():
            metrics[split] = classification_metrics(y[m], probs[m], classes, pos, threshold)
    test = metrics.get("test")
    metrics["n_test"] = int(test["n"]) if test else 0
    if test and "covid_vs_rest" in test:
        metrics["covid_vs_rest"] = test["covid_vs_rest"]
    return metrics
