"""report.html and model_card.md from a folder of files (no training): sections, the heatmap hook, old files."""

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from covidscreen.evaluation.assess import evaluate_fit_predictions
from covidscreen.evaluation.external import compare_blocks, drop_summary
from covidscreen.evaluation.metrics import classification_metrics
from covidscreen.reporting.model_card import write_model_card
from covidscreen.reporting.report import select_examples, write_report
from tests.synthetic import make_dataset

CLASSES = ["covid", "normal", "pneumonia"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = make_dataset(tmp_path_factory.mktemp("data"), per_site=20, plant=False)
    meta = pd.read_csv(root / "metadata.csv", keep_default_na=False)
    rng = np.random.default_rng(0)
    y = meta["label"].map({c: i for i, c in enumerate(CLASSES)}).to_numpy()
    z = rng.normal(0, 1, (len(meta), 3))
    z[np.arange(len(meta)), y] += 1.5
    probs = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    preds = meta[["image", "label", "site", "view"]].assign(
        group=meta["patient_id"], split=np.where(np.arange(len(meta)) % 2 == 0, "val", "test"))
    for i, c in enumerate(CLASSES):
        preds[f"prob_{c}"] = probs[:, i]
    preds, metrics, _, _ = evaluate_fit_predictions(preds, CLASSES, "covid", SimpleNamespace(bootstrap=100, seed=0))
    metrics["data_dir"] = str(root)
    out = tmp_path_factory.mktemp("run")
    (out / "metrics.json").write_text(json.dumps(metrics))
    preds.to_csv(out / "predictions.csv", index=False)
    preds.to_csv(out / "split.csv", index=False)
    return out, root, preds


def test_report_sections_in_reading_order(folder):
    out, _, _ = folder
    html = write_report(out).read_text()
    order = ["Read this first", "Data: images by site and label", "Summary: covid vs rest", "Operating points",
             "ROC and precision-recall curves", "Calibration", "Confusion matrices", "Results by site and by view",
             "Example decisions"]
    positions = [html.index(s) for s in order]
    assert positions == sorted(positions)
    assert "All 20 &#x27;covid&#x27; images come from one site (alpha)" in html  # no audit.json: split.csv warnings
    assert "&ndash;" in html  # intervals are printed


def test_heatmap_hook_is_called_for_example_images(folder):
    out, root, _ = folder
    calls = []

    def heatmap(path):
        calls.append(path)
        return np.full((96, 96), 0.5)

    html = write_report(out, out_name="with_heatmaps.html", heatmap_fn=heatmap).read_text()
    assert "Example decisions with heatmaps" in html
    assert calls and all(p.is_file() and root in p.parents for p in calls)


def test_examples_are_the_most_confident_of_each_kind(folder):
    _, _, preds = folder
    test = preds[preds["split"] == "test"]
    ex = select_examples(test, CLASSES, "covid", 0.5, per_kind=2)
    fp = ex[ex["kind"] == "false positive"]
    candidates = test[(test["label"] != "covid") & (test["prob_covid"] >= 0.5)]
    assert list(fp["prob"]) == sorted(candidates["prob_covid"], reverse=True)[:2]


def test_old_metrics_files_still_render(tmp_path, folder):
    _, root, preds = folder
    test = preds[preds["split"] == "test"]
    y = test["label"].map({c: i for i, c in enumerate(CLASSES)}).to_numpy()
    m = classification_metrics(y, test[[f"prob_{c}" for c in CLASSES]].to_numpy(), CLASSES, "covid", 0.4)
    (tmp_path / "metrics.json").write_text(json.dumps({"classes": CLASSES, "positive_class": "covid",
                                                       "operating_points": {"default": 0.4}, "test": m}))
    test.to_csv(tmp_path / "predictions.csv", index=False)
    html = write_report(tmp_path).read_text()
    assert "No confidence intervals" in html and "By site" in html


def test_model_card(folder):
    out, _, _ = folder
    card = write_model_card(out).read_text()
    for s in ("## Intended use", "**Not for**", "## Performance on the test split", "ROC AUC |", "## Limitations"):
        assert s in card, s


def test_compare_blocks_hand_checked():
    internal = {"covid_vs_rest": {"roc_auc": 0.95, "ci": {"roc_auc": [0.93, 0.97]}}}
    external = {"covid_vs_rest": {"roc_auc": 0.70, "ci": {"roc_auc": [0.66, 0.74]}}}
    row = {r["metric"]: r for r in compare_blocks(internal, external)}["roc_auc"]
    assert row["change"] == pytest.approx(-0.25)
    # se = width / (2 * 1.96): 0.0102 and 0.0204 -> combined 0.0228 -> half width 0.0447
    assert row["change_ci"] == pytest.approx([-0.25 - 0.04472, -0.25 + 0.04472], abs=1e-4)
    assert "internal 0.950 -> external 0.700 (change -0.250" in drop_summary([row])
    no_pos = compare_blocks({"accuracy": 0.9, "per_class": {"a": {"roc_auc": 0.8}}},
                            {"accuracy": 0.6, "per_class": {"a": {"roc_auc": 0.7}}})
    assert [r["metric"] for r in no_pos] == ["multi-class accuracy", "macro_roc_auc", "a: roc_auc"]


def test_operating_points_show_their_validation_sites_and_name_the_weakest(tmp_path, folder):
    out, _, preds = folder
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["operating_points_val_sites"]) == set(metrics["operating_points"])  # recorded for every point
    rec = {"sites": {"nih": {"n_negative": 130, "n_positive": 0, "specificity": 0.39, "specificity_ci": [0.31, 0.48]},
                     "kermany": {"n_negative": 300, "n_positive": 0, "specificity": 0.99, "specificity_ci": [0.97, 1]}},
           "weakest_site": "nih", "min_site_negatives": 20, "note": "worst_group: fell back, because"}
    metrics["operating_points_val_sites"] = {name: rec for name in metrics["operating_points"]}
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    preds.to_csv(tmp_path / "predictions.csv", index=False)
    html = write_report(tmp_path).read_text()
    assert "Operating points by validation site" in html and "specificity 0.390 on nih" in html
    assert "worst_group: fell back, because" in html
    assert f"{metrics['default_operating_point']} (default)" in html
    card = write_model_card(tmp_path).read_text()
    assert "| specificity 0.390 on nih |" in card and f"`default` = `{metrics['default_operating_point']}`" in card

    del metrics["operating_points_val_sites"]  # a run trained before per-site figures were stored
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    assert "records no per-site validation figures" in write_report(tmp_path).read_text()
    assert "No per-site validation figures are recorded" in write_model_card(tmp_path).read_text()
