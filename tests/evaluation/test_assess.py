"""assess / evaluate_fit_predictions: CIs next to every headline number, points chosen on validation only."""

import json
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from covidscreen.evaluation.assess import assess, evaluate_fit_predictions

CLASSES = ["covid", "normal", "pneumonia"]


def _probs(y, rng, strength=2.0):
    z = rng.normal(0, 1, (len(y), 3))
    z[np.arange(len(y)), y] += strength
    return np.exp(z) / np.exp(z).sum(1, keepdims=True)


def _preds(n=600, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.choice(3, n, p=[0.2, 0.4, 0.4])
    probs = _probs(y, rng)
    df = pd.DataFrame({"image": [f"img{i}.png" for i in range(n)], "label": [CLASSES[i] for i in y],
                       "split": np.where(np.arange(n) % 2 == 0, "val", "test"),
                       "site": rng.choice(["a", "b"], n), "view": rng.choice(["PA", "AP"], n),
                       "group": [f"p{i // 2}" for i in range(n)]})
    for i, c in enumerate(CLASSES):
        df[f"prob_{c}"] = probs[:, i]
    return df


def test_every_headline_metric_has_a_ci_containing_it():
    df = _preds()
    y = df["label"].map({c: i for i, c in enumerate(CLASSES)}).to_numpy()
    probs = df[[f"prob_{c}" for c in CLASSES]].to_numpy()
    m = assess(y, probs, CLASSES, "covid", 0.3, df["group"], {"youden": 0.3, "sensitivity_0.95": 0.1}, n_boot=300)
    for block in [m["covid_vs_rest"], *m["per_class"].values()]:
        for k in ("sensitivity", "specificity", "precision", "npv", "f1", "accuracy", "roc_auc", "pr_auc"):
            lo, hi = block["ci"][k]
            assert lo <= block[k] + 1e-9 and block[k] - 1e-9 <= hi, k
    lo, hi = m["covid_vs_rest"]["ci_delong"]["roc_auc"]
    assert lo < m["covid_vs_rest"]["roc_auc"] < hi
    assert m["ci"]["accuracy"][0] <= m["accuracy"] <= m["ci"]["accuracy"][1]
    assert set(m["at_operating_points"]) == {"youden", "sensitivity_0.95"}
    assert m["at_operating_points"]["sensitivity_0.95"]["sensitivity"] >= m["at_operating_points"]["youden"][
        "sensitivity"]
    assert m["bootstrap"]["unit"] == "patient" and m["bootstrap"]["n_units"] == 300
    json.dumps(m)  # serialisable


def test_fit_predictions_choose_points_on_validation_only():
    df = _preds()
    _, metrics, points, temp = evaluate_fit_predictions(df, CLASSES, "covid", SimpleNamespace(bootstrap=100, seed=0))
    assert temp is None
    # scrambling the test probabilities must not move the operating points
    scrambled = df.copy()
    test = scrambled["split"] == "test"
    scrambled.loc[test, "prob_covid"] = np.random.default_rng(5).permutation(scrambled.loc[test, "prob_covid"])
    _, metrics2, points2, _ = evaluate_fit_predictions(scrambled, CLASSES, "covid",
                                                       SimpleNamespace(bootstrap=100, seed=0))
    assert points == points2
    assert metrics2["covid_vs_rest"]["roc_auc"] < metrics["covid_vs_rest"]["roc_auc"]
    # stable keys of metrics.json
    assert {"classes", "n_test", "covid_vs_rest", "operating_points", "breakdown"} <= set(metrics)
    assert {"roc_auc", "sensitivity", "specificity"} <= set(metrics["covid_vs_rest"])
    assert len(metrics["covid_vs_rest"]["ci"]["roc_auc"]) == 2
    assert metrics["n_test"] == int(test.sum())
    sites = {r["site"]: r for r in metrics["breakdown"]["site"]}
    assert sum(r["n"] for r in sites.values()) == metrics["n_test"]


def test_temperature_scaling_is_fitted_on_validation_and_applied():
    df = _preds()
    for c in CLASSES:  # make the model overconfident: square the odds
        df[f"prob_{c}"] = df[f"prob_{c}"] ** 3
    s = df[[f"prob_{c}" for c in CLASSES]].sum(1)
    for c in CLASSES:
        df[f"prob_{c}"] /= s
    cfg = SimpleNamespace(bootstrap=50, seed=0, temperature_scaling=True, target_sensitivity=0.9,
                          target_specificity=0.9)
    out, metrics, points, temp = evaluate_fit_predictions(df, CLASSES, "covid", cfg)
    assert temp == pytest.approx(metrics["calibration_fit"]["temperature_fitted_on_val"])
    assert temp > 1.5  # overconfident -> T > 1
    assert not np.allclose(out["prob_covid"], df["prob_covid"])
    assert "sensitivity_0.9" in points
    plain = evaluate_fit_predictions(df, CLASSES, "covid", SimpleNamespace(bootstrap=50, seed=0))[1]
    assert plain["calibration_if_temperature_scaled"]["ece_top_label"] < plain["test"]["calibration"]["ece_top_label"]


def test_no_positive_class():
    df = _preds()
    _, metrics, points, _ = evaluate_fit_predictions(df, CLASSES, None, SimpleNamespace(bootstrap=50, seed=0))
    assert points == {} and "covid_vs_rest" not in metrics
    assert not math.isnan(metrics["test"]["macro_roc_auc"])
