"""Pooling the fold runs of a cross-validation: within-site metrics of the out-of-fold predictions."""

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from covidscreen.config import TrainConfig
from covidscreen.evaluation.thresholds import operating_points
from covidscreen.workflows.crossval import summarise_folds
from tests.training.fake_runs import write_folds


@pytest.fixture(scope="module")
def pooled(tmp_path_factory):
    cv = tmp_path_factory.mktemp("cv")
    images = write_folds(cv, k=3)
    summarise_folds(cv, TrainConfig(folds=3, output=str(cv)))
    return cv, images


def test_pooled_within_site_block_matches_a_manual_computation(pooled):
    pooled, images = pooled
    metrics = json.loads((pooled / "metrics.json").read_text())
    preds = pd.read_csv(pooled / "predictions.csv")
    # the threshold is the one chosen on the pooled out-of-fold validation predictions
    val = preds[preds["split"] == "val"]
    thr = operating_points((val["label"] == "covid").to_numpy(), val["prob_covid"].to_numpy(),
                           sites=val["site"].astype(str).to_numpy())["default"]
    assert metrics["threshold"] == pytest.approx(thr)
    block = metrics["test"]["within_site"]
    assert block["threshold"] == pytest.approx(thr) and set(block["sites"]) == {"cohen"}
    cohen = preds[(preds["split"] == "test") & (preds["site"] == "cohen")]
    y, s = (cohen["label"] == "covid").to_numpy(), cohen["prob_covid"].to_numpy()
    site = block["sites"]["cohen"]
    # every cohen image is tested once, by the fold model that did not train on it
    assert site["n"] == len(cohen) == int((images["site"] == "cohen").sum()) and cohen["image"].is_unique
    assert (site["n_positive"], site["n_negative"]) == (int(y.sum()), int((~y).sum()))
    assert site["roc_auc"] == pytest.approx(roc_auc_score(y, s))
    assert site["sensitivity"] == pytest.approx(np.mean(s[y] >= thr))
    assert site["specificity"] == pytest.approx(np.mean(s[~y] < thr))
    assert site["roc_auc_ci"][0] < site["roc_auc"] < site["roc_auc_ci"][1]
    assert "within_site" in metrics["val"]


def test_folds_table_and_report_show_within_site(pooled):
    pooled, _ = pooled
    folds = pd.read_csv(pooled / "folds.csv")
    preds = pd.read_csv(pooled / "predictions.csv")
    for _, row in folds.iterrows():
        t = preds[(preds["split"] == "test") & (preds["fold"] == row["fold"]) & (preds["site"] == "cohen")]
        assert row["within_cohen_test_auc"] == pytest.approx(roc_auc_score(t["label"] == "covid", t["prob_covid"]))
    metrics = json.loads((pooled / "metrics.json").read_text())
    assert "within_cohen_test_auc" in metrics["cross_validation"]["mean_sd"]
    ci = metrics["cross_validation"]["pooled_test_auc_ci"]
    assert ci["low"] < ci["roc_auc"] < ci["high"] and ci["roc_auc"] == metrics["covid_vs_rest"]["roc_auc"]
    report = (pooled / "report.html").read_text()
    assert "Within sites holding both classes" in report and "within cohen (" in report
