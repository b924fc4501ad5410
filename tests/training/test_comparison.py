"""Rows of the comparison table: metrics with CIs from a run folder's predictions."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from covidscreen.training.comparison import summarise_run, within_site_auc


def _run(tmp_path, n=60, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.array(["covid", "normal", "pneumonia"])[rng.integers(0, 3, n)]
    p_covid = np.clip(0.5 * (labels == "covid") + rng.random(n) * 0.6, 0, 0.99)
    preds = pd.DataFrame({"image": [f"i{i}" for i in range(n)], "label": labels,
                          "split": np.where(np.arange(n) < n // 2, "val", "test"),
                          "site": np.where(np.arange(n) % 2, "a", "b"), "group": [f"p{i // 2}" for i in range(n)],
                          "prob_covid": p_covid, "prob_normal": (1 - p_covid) / 2, "prob_pneumonia": (1 - p_covid) / 2})
    run = tmp_path / f"run{seed}"
    run.mkdir()
    preds.to_csv(run / "predictions.csv", index=False)
    metrics = {"classes": ["covid", "normal", "pneumonia"], "positive_class": "covid", "threshold": 0.5,
               "split_counts": {"train": 123}, "test": {"accuracy": 0.5}}
    (run / "metrics.json").write_text(json.dumps(metrics))
    pd.DataFrame({"epoch": [1, 2], "seconds": [30.0, 30.0]}).to_csv(run / "history.csv", index=False)
    return run, preds


def test_summary_row_matches_the_predictions(tmp_path):
    run, preds = _run(tmp_path)
    row = summarise_run(run, n_boot=200)
    test = preds[preds["split"] == "test"]
    y, s = test["label"] == "covid", test["prob_covid"]
    from sklearn.metrics import roc_auc_score

    assert row["test_auc"] == pytest.approx(roc_auc_score(y, s))
    assert row["test_auc_lo"] <= row["test_auc"] <= row["test_auc_hi"]
    assert row["test_sensitivity"] == pytest.approx(((s >= 0.5) & y).sum() / y.sum())
    assert row["test_specificity"] == pytest.approx(((s < 0.5) & ~y).sum() / (~y).sum())
    assert row["n_train"] == 123 and row["n_test"] == len(test) and row["minutes"] == pytest.approx(1.0)


def test_within_site_auc_needs_enough_images_of_both_classes():
    test = pd.DataFrame({"site": ["a"] * 12 + ["b"] * 4, "label": ["covid"] * 6 + ["normal"] * 6 + ["covid"] * 3
                         + ["normal"], "prob_covid": list(np.linspace(0.9, 0.4, 6)) + list(np.linspace(0.5, 0.1, 6))
                         + [0.2, 0.3, 0.4, 0.9]})
    auc, sites = within_site_auc(test, "covid")
    a = test[test["site"] == "a"]
    from sklearn.metrics import roc_auc_score

    assert auc == pytest.approx(roc_auc_score(a["label"] == "covid", a["prob_covid"]))  # only site a counts
    assert sites == "a (6+/6-); b (3+/1-, too few)"
    assert math.isnan(within_site_auc(test[test["site"] == "b"], "covid")[0])
