"""``metrics.json`` of a run from its ``predictions.csv``: the operating points are chosen on the validation rows,
then validation and test are scored with confidence intervals. Shared by single runs, ensembles and
cross-validation so that all three report the same keys (``classes``, ``n_test``, ``covid_vs_rest``, ``val``,
``test``, ``threshold``, ...); the work itself is :func:`covidscreen.evaluation.assess.evaluate_fit_predictions`."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ..evaluation.assess import evaluate_fit_predictions


def prob_matrix(preds: pd.DataFrame, classes: list[str]) -> np.ndarray:
    return preds[[f"prob_{c}" for c in classes]].to_numpy(dtype=float)


def metrics_from_predictions(preds: pd.DataFrame, classes: list[str], positive_class: str | None,
                             threshold_source: str = "validation split",
                             cfg: Any = None) -> dict[str, Any]:
    """Metrics of the ``val`` and ``test`` rows of ``preds`` (columns ``label``, ``split``, ``prob_<class>``,
    optional ``group``, ``site``, ``view``).

    Args:
        threshold_source: how the operating points were chosen, stored in the result.
        cfg: training config whose evaluation keys (targets, bootstrap replicates, seed) apply; defaults otherwise.

    Returns:
        The dict written as ``metrics.json`` (``threshold`` is the default operating point).
    """
    _, metrics, points, _ = evaluate_fit_predictions(preds, classes, positive_class, cfg)
    metrics["threshold"] = points.get("default")
    if metrics["positive_class"]:
        metrics["threshold_source"] = f"{threshold_source} (operating point {metrics.get('default_operating_point')})"
    return metrics
