"""The comparison table of an experiment, from run folders written by the tests (no training): metrics with CIs,
within-site columns (read or computed), the columns of the issue-6 runs, cross-validation folders, the seed
aggregate with paired differences, and the files written."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import roc_auc_score

from covidscreen.config import TrainConfig
from covidscreen.evaluation.within_site import within_site_auc, within_site_metrics
from covidscreen.reporting.comparison import (
    aggregate_over_seeds,
    display_by_variant,
    display_table,
    markdown_table,
    seed_variants,
    summarise_run,
    write_comparison,
)
from covidscreen.workflows.crossval import summarise_folds
from covidscreen.workflows.experiment import load_plan
from tests.training.fake_runs import CLASSES, fake_predictions, split_in_two, write_folds, write_run


def _run(tmp_path, name="run", seed=0, **kw):
    preds = split_in_two(fake_predictions(120, seed))
    return write_run(tmp_path / name, preds, **kw), preds


def test_summary_row_matches_the_predictions(tmp_path):
    run, preds = _run(tmp_path, threshold=0.6)
    row = summarise_run(run, n_boot=200)
    test = preds[preds["split"] == "test"]
    y, s = test["label"] == "covid", test["prob_covid"]
    assert row["test_auc"] == pytest.approx(roc_auc_score(y, s))
    assert row["test_auc_lo"] <= row["test_auc"] <= row["test_auc_hi"]
    assert row["test_sensitivity"] == pytest.approx(((s >= 0.6) & y).sum() / y.sum())
    assert row["test_specificity"] == pytest.approx(((s < 0.6) & ~y).sum() / (~y).sum())
    assert row["test_sensitivity_lo"] <= row["test_sensitivity"] <= row["test_sensitivity_hi"]
    assert row["n_train"] == 100 and row["n_test"] == len(test) and row["minutes"] == pytest.approx(1.0)


def test_without_a_positive_class_the_auc_is_the_macro_one_vs_rest(tmp_path):
    run, preds = _run(tmp_path)
    m = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").write_text(json.dumps({**m, "positive_class": None, "threshold": None}))
    row = summarise_run(run, n_boot=100)
    test = preds[preds["split"] == "test"]
    macro = np.mean([roc_auc_score(test["label"] == c, test[f"prob_{c}"]) for c in CLASSES])
    assert row["test_auc"] == pytest.approx(macro) and row["test_auc_lo"] < macro < row["test_auc_hi"]
    assert "test_sensitivity" not in row and not any(k.startswith("within_") for k in row)


def test_within_site_columns_are_computed_from_predictions_when_the_run_has_no_block(tmp_path):
    run, preds = _run(tmp_path, threshold=0.55)
    row = summarise_run(run, n_boot=200)
    cohen = preds[(preds["split"] == "test") & (preds["site"] == "cohen")]
    y, s = (cohen["label"] == "covid").to_numpy(), cohen["prob_covid"].to_numpy()
    assert row["within_cohen_test_auc"] == pytest.approx(roc_auc_score(y, s))
    assert row["within_cohen_test_auc_lo"] < row["within_cohen_test_auc"] < row["within_cohen_test_auc_hi"]
    assert row["within_cohen_test_sensitivity"] == pytest.approx(np.mean(s[y] >= 0.55))
    assert row["within_cohen_test_specificity"] == pytest.approx(np.mean(s[~y] < 0.55))
    assert (row["within_cohen_test_n_pos"], row["within_cohen_test_n_neg"]) == (y.sum(), (~y).sum())
    assert not any(k.startswith("within_kermany") for k in row)  # one class only
    assert row["test_within_site_auc"] == pytest.approx(roc_auc_score(y, s))
    assert row["within_site_sites"] == f"cohen ({y.sum()}+/{(~y).sum()}-)"


def test_within_site_block_of_metrics_json_is_read_as_stored(tmp_path):
    stored = {"positive_class": "covid", "threshold": 0.5, "sites": {"cohen": {
        "n": 30, "n_positive": 26, "n_negative": 4, "n_patients": 20, "roc_auc": 0.123, "roc_auc_ci": [0.05, 0.3],
        "sensitivity": 0.9, "sensitivity_ci": [0.8, 1.0], "specificity": 0.25, "specificity_ci": [0.0, 0.75]}}}
    run, _ = _run(tmp_path, within_site=stored)
    row = summarise_run(run, n_boot=50)
    assert (row["within_cohen_test_auc"], row["within_cohen_test_auc_lo"], row["within_cohen_test_auc_hi"]) == (
        0.123, 0.05, 0.3)
    assert (row["within_cohen_test_n_pos"], row["within_cohen_test_n_neg"]) == (26, 4)
    assert row["within_site_sites"] == "cohen (26+/4-, too few)"  # fewer than 5 of a class


def test_within_site_mean_needs_enough_images_of_both_classes():
    """The table's mean over sites counts only sites with at least 5 images of each class (the same function as
    the selection metric, with its minimum raised)."""
    site = np.array(["a"] * 12 + ["b"] * 4)
    y = np.array([1] * 6 + [0] * 6 + [1, 1, 1, 0], bool)
    s = np.r_[np.linspace(0.9, 0.4, 6), np.linspace(0.5, 0.1, 6), [0.2, 0.3, 0.4, 0.9]]
    assert within_site_auc(y, s, site, min_per_class=5) == pytest.approx(roc_auc_score(y[:12], s[:12]))
    assert math.isnan(within_site_auc(y[12:], s[12:], site[12:], min_per_class=5))
    assert within_site_auc(y, s, site) == pytest.approx((roc_auc_score(y[:12], s[:12]) + 0.0) / 2)


def test_columns_of_the_issue6_runs(tmp_path):
    run, preds = _run(tmp_path, site_probe=(0.72, 0.42), roi_fallback=3, best_epoch=2, val_within=[0.5, 0.66, 0.7])
    row = summarise_run(run, n_boot=50)
    assert row["val_within_site_auc"] == 0.66  # history.csv at the selected epoch
    assert (row["site_probe_balanced_accuracy"], row["site_probe_chance"]) == (0.72, 0.42)
    assert row["lungs_not_found"] == 3 and row["best_epoch"] == 2
    # older runs: no history column -> computed on the validation predictions (those of the selected epoch)
    bare, _ = _run(tmp_path, name="bare")
    row = summarise_run(bare, n_boot=50)
    val = preds[preds["split"] == "val"]
    assert row["val_within_site_auc"] == pytest.approx(
        within_site_auc(val["label"] == "covid", val["prob_covid"], val["site"]))
    assert "site_probe_balanced_accuracy" not in row and "lungs_not_found" not in row


def test_site_probe_falls_back_to_the_audits_within_label_probe(tmp_path):
    """Runs trained without ``site_probe`` but audited: the audit's within-label probe on the model's features."""
    run, _ = _run(tmp_path)
    (run / "audit.json").write_text(json.dumps({"shortcut": {"model_features": {
        "site": {"balanced_accuracy": 0.9, "chance": 0.25},  # the plain probe, inflated by the label: not used
        "site_within_label": {"balanced_accuracy": 0.61, "chance": 0.4, "n": 300}}}}))
    row = summarise_run(run, n_boot=50)
    assert (row["site_probe_balanced_accuracy"], row["site_probe_chance"]) == (0.61, 0.4)
    assert row["site_probe_source"] == "audit"
    trained, _ = _run(tmp_path, name="trained", site_probe=(0.72, 0.42))  # the training probe wins when present
    (trained / "audit.json").write_text((run / "audit.json").read_text())
    row = summarise_run(trained, n_boot=50)
    assert row["site_probe_balanced_accuracy"] == 0.72 and row["site_probe_source"] == "training (site_probe)"
    (run / "audit.json").write_text("{ damaged")  # a damaged audit leaves the column empty, the row intact
    row = summarise_run(run, n_boot=50)
    assert "site_probe_balanced_accuracy" not in row and row["site_probe_source"] == ""


def test_cross_validation_folder_pooled_before_within_site_existed(tmp_path):
    """A CV folder whose pooled metrics.json lacks the within-site blocks (written by older code) still tabulates:
    the within-site columns are computed from its pooled out-of-fold predictions, equal to what the new code stores;
    site probe and best epoch come from the folds."""
    cv = tmp_path / "cv"
    write_folds(cv, k=3)
    summarise_folds(cv, TrainConfig(folds=3, output=str(cv)))
    metrics = json.loads((cv / "metrics.json").read_text())
    written = metrics["test"]["within_site"]["sites"]["cohen"]
    row_new = summarise_run(cv, n_boot=1000)
    for split in ("val", "test"):
        metrics[split].pop("within_site")
    (cv / "metrics.json").write_text(json.dumps(metrics))
    row = summarise_run(cv, n_boot=1000)
    assert row["within_cohen_test_auc"] == row_new["within_cohen_test_auc"] == pytest.approx(written["roc_auc"])
    assert [row["within_cohen_test_auc_lo"], row["within_cohen_test_auc_hi"]] == pytest.approx(written["roc_auc_ci"])
    assert row["within_cohen_test_n_neg"] == written["n_negative"]
    preds = pd.read_csv(cv / "predictions.csv")
    val = preds[preds["split"] == "val"]
    assert row["val_within_site_auc"] == pytest.approx(
        within_site_auc(val["label"] == "covid", val["prob_covid"], val["site"]))
    assert row["site_probe_balanced_accuracy"] == pytest.approx(0.7)  # mean of 0.6, 0.7, 0.8 over the folds
    assert row["best_epoch"] == "1/2/3" and row["lungs_not_found"] == 2 and row["n_train"] == 100
    assert row["cv_test_auc_mean_sd"].count("±") == 1


def test_display_puts_within_site_first(tmp_path):
    run, _ = _run(tmp_path, site_probe=(0.72, 0.42), roi_fallback=0, val_within=[0.5, 0.66, 0.7])
    table = pd.DataFrame([{"name": "a", "kind": "run", "loss": "focal", **summarise_run(run, n_boot=50)},
                          {"name": "b", "kind": "run", "loss": "ce", "status": "failed: boom"}])
    shown = display_table(table, ["loss"])
    cols = list(shown.columns)
    assert cols[:6] == ["name", "kind", "loss", "cohen test AUC [95% CI]", "cohen sens/spec", "cohen test n (pos/neg)"]
    assert cols.index("val auc") < cols.index("test auc") < cols.index("val within-site AUC (selected epoch)") < \
        cols.index("site probe bal. acc. (chance)") < cols.index("lungs not found") < cols.index("best epoch")
    a, b = shown.iloc[0], shown.iloc[1]
    r = table.iloc[0]
    assert a["cohen test AUC [95% CI]"] == (f"{r['within_cohen_test_auc']:.3f} [{r['within_cohen_test_auc_lo']:.3f}, "
                                            f"{r['within_cohen_test_auc_hi']:.3f}]")
    assert a["site probe bal. acc. (chance)"] == "0.720 (0.42)" and a["best epoch"] == "2"
    assert b["cohen test AUC [95% CI]"] == "-" and b["cohen test n (pos/neg)"] == "-" and b["status"] == "failed: boom"
    assert "within site sites" not in shown  # the per-site columns say it, with counts
    assert markdown_table(shown).count("\n") == 4


def test_aggregation_over_seeds():
    t = pd.DataFrame({"seed": ["0", "1", "0", "1"], "variant": ["a", "a", "b", "b"],
                      "within_cohen_test_auc": [0.6, 0.8, 0.5, float("nan")], "test_auc": [0.9, 0.95, 0.91, 0.92],
                      "site_probe_balanced_accuracy": [0.9, 0.7, 0.8, 0.8]})
    agg, baseline = aggregate_over_seeds(t, ["variant"])
    assert baseline == "a"  # no variant named baseline: the first one
    assert list(agg["variant"]) == ["a", "b"] and list(agg["seeds"]) == [2, 2]
    a, b = agg.iloc[0], agg.iloc[1]
    assert a["within_cohen_test_auc_mean"] == pytest.approx(0.7)
    assert a["within_cohen_test_auc_sd"] == pytest.approx(np.std([0.6, 0.8], ddof=1))
    assert b["within_cohen_test_auc_mean"] == 0.5 and math.isnan(b["within_cohen_test_auc_sd"])  # NaN seed left out
    assert b["within_cohen_test_auc_pairs"] == 1 and b["within_cohen_test_auc_delta_mean"] == pytest.approx(-0.1)
    shown = display_by_variant(agg, baseline)
    assert shown.loc[0, "within-cohen test AUC mean (sd)"] == "0.700 (0.141)"
    assert shown.loc[1, "within-cohen test AUC mean (sd)"] == "0.500 (-)"
    assert shown.loc[0, "within-cohen test AUC range"] == "0.600-0.800"
    assert shown.loc[0, "within-cohen test AUC - a, paired: mean [min, max]"] == ""
    md = markdown_table(shown).splitlines()
    assert md[0].startswith("| variant | seeds |") and md[1].startswith("|---|") and len(md) == 4


def test_paired_differences_to_the_baseline_of_the_same_seed():
    t = pd.DataFrame({"seed": ["0", "0", "1", "1"], "variant": ["x", "baseline", "x", "baseline"],
                      "within_cohen_test_auc": [0.70, 0.60, 0.82, 0.80]})
    agg, baseline = aggregate_over_seeds(t, ["variant"])
    assert baseline == "baseline"
    shown = display_by_variant(agg, baseline).set_index("variant")
    assert shown.loc["x", "within-cohen test AUC - baseline, paired: mean [min, max]"] == "+0.060 [+0.020, +0.100]"
    assert shown.loc["baseline", "within-cohen test AUC - baseline, paired: mean [min, max]"] == ""
    # several variant axes name a variant by all of their values
    t2 = t.assign(loss=["ce", "ce", "focal", "focal"])
    agg2, _ = aggregate_over_seeds(t2.assign(seed=["0", "1", "0", "1"]), ["variant", "loss"])
    assert list(agg2["variant"]) == ["variant=x__loss=ce", "variant=baseline__loss=ce", "variant=x__loss=focal",
                                     "variant=baseline__loss=focal"]


def test_write_comparison_of_a_seed_by_variant_grid(tmp_path):
    grid = tmp_path / "g.yaml"
    grid.write_text(yaml.safe_dump({"base": {"epochs": 1}, "grid": {"seed": [0, 1], "variant": {
        "baseline": {}, "clahe": {"intensity": "clahe"}}}, "runs": [{"name": "extra", "epochs": 2}]}, sort_keys=False))
    plan = load_plan(grid, tmp_path / "exp")
    assert plan.grid_axes == ["seed", "variant"] and seed_variants(plan) == ["variant"]
    names = [r.name for r in plan.runs]
    assert names == ["seed=0__variant=baseline", "seed=0__variant=clahe", "seed=1__variant=baseline",
                     "seed=1__variant=clahe", "extra"]
    for i, r in enumerate(plan.runs):
        preds = split_in_two(fake_predictions(100, seed=i))
        block = within_site_metrics(preds[preds["split"] == "test"], CLASSES, "covid", 0.5, n_boot=50)
        write_run(r.cfg.output, preds, within_site=block, site_probe=(0.7, 0.4), roi_fallback=0)
    plan.output.mkdir(parents=True, exist_ok=True)
    table = write_comparison(plan, {n: "trained" for n in names}, n_boot=50)
    out = plan.output
    assert set(pd.read_csv(out / "comparison.csv")["name"]) == set(names)
    assert table["within_cohen_test_auc"].notna().all()
    agg = pd.read_csv(out / "comparison_by_variant.csv")
    assert list(agg["variant"]) == ["baseline", "clahe"] and list(agg["seeds"]) == [2, 2]  # the extra run is not in
    by_name = table.set_index("name")["within_cohen_test_auc"]
    deltas = [by_name[f"seed={k}__variant=clahe"] - by_name[f"seed={k}__variant=baseline"] for k in (0, 1)]
    assert agg.loc[1, "within_cohen_test_auc_delta_mean"] == pytest.approx(np.mean(deltas))
    assert agg.loc[1, "within_cohen_test_auc_delta_min"] == pytest.approx(min(deltas))
    assert "paired" in (out / "comparison_by_variant.md").read_text().splitlines()[0]
    page = (out / "comparison.html").read_text()
    assert "cohen test AUC [95% CI]" in page and "Over seeds, per variant" in page
    assert (out / "comparison.png").stat().st_size > 1000
    assert (out / "comparison.md").read_text().startswith(
        "| name | kind | seed | variant | epochs | cohen test AUC [95% CI] | cohen sens/spec |")


def test_no_seed_axis_no_aggregate(tmp_path):
    grid = tmp_path / "g.yaml"
    grid.write_text(yaml.safe_dump({"grid": {"loss": ["cross_entropy", "focal"]}}))
    plan = load_plan(grid, tmp_path / "exp")
    assert seed_variants(plan) is None
    for i, r in enumerate(plan.runs):
        write_run(r.cfg.output, split_in_two(fake_predictions(80, seed=i)))
    write_comparison(plan, {}, n_boot=20)
    assert (plan.output / "comparison.csv").is_file() and not (plan.output / "comparison_by_variant.csv").exists()


def test_leave_one_site_out_columns_come_from_the_holdout_block(tmp_path):
    """A run trained with holdout_site: the table shows the unseen site's specificity and per-class AUCs with CIs, as
    the held-out evaluation's comparison rows (built here by the real compare_blocks) store them."""
    from covidscreen.evaluation.external import compare_blocks
    from covidscreen.reporting.comparison import holdout_columns

    internal = {"covid_vs_rest": {"specificity": 0.95, "ci": {"specificity": [0.93, 0.97]}},
                "per_class": {"pneumonia": {"roc_auc": 0.97, "ci": {"roc_auc": [0.95, 0.98]}}}}
    external = {"covid_vs_rest": {"specificity": 0.61, "roc_auc": math.nan, "ci": {"specificity": [0.55, 0.66]}},
                "per_class": {"pneumonia": {"roc_auc": 0.72, "ci": {"roc_auc": [0.67, 0.77]}}}}
    run = write_run(tmp_path / "run", split_in_two(fake_predictions()))
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["holdout_site"] = {"site": "nih", "n_images": 500, "comparison": compare_blocks(internal, external)}
    (run / "metrics.json").write_text(json.dumps(metrics))
    row = holdout_columns(metrics)
    assert row["holdout"] == "nih" and row["holdout_specificity"] == pytest.approx(0.61)
    assert (row["holdout_specificity_lo"], row["holdout_specificity_hi"]) == (0.55, 0.66)
    assert row["holdout_pneumonia_auc"] == pytest.approx(0.72)
    shown = display_table(pd.DataFrame([{"name": "r", "kind": "run", **summarise_run(run, n_boot=50)}]), [])
    assert shown.loc[0, "held-out site (images)"] == "nih (500)"
    assert shown.loc[0, "held-out site: COVID-vs-rest specificity [95% CI]"] == "0.610 [0.550, 0.660]"
    assert shown.loc[0, "held-out site: pneumonia AUC [95% CI]"] == "0.720 [0.670, 0.770]"
    assert holdout_columns({"classes": CLASSES}) == {}


def test_seeds_on_one_split_are_paired_with_the_baseline_of_their_own_seed(tmp_path):
    """When every seed tests on the same images (one split), a variant is paired with the baseline of its seed,
    not with the first baseline whose images match."""
    from covidscreen.reporting.comparison import paired_baseline_columns

    grid = tmp_path / "g.yaml"
    grid.write_text(yaml.safe_dump({"grid": {"seed": [0, 1], "variant": {"baseline": {}, "other": {"epochs": 2}}}},
                                   sort_keys=False))
    plan = load_plan(grid, tmp_path / "exp")
    base = split_in_two(fake_predictions(200, seed=0))  # the same images and patients in all four runs
    rng = np.random.default_rng(5)
    for r in plan.runs:
        preds = base.copy()
        preds["prob_covid"] = np.clip(preds["prob_covid"] + rng.normal(0, 0.15, len(preds)), 0.001, 0.999)
        write_run(r.cfg.output, preds)
    cols = paired_baseline_columns(plan, [], n_boot=50)

    def pooled(name, split):
        t = pd.read_csv(tmp_path / "exp" / "runs" / name / "predictions.csv")
        t = t[t["split"] == split]
        return roc_auc_score(t["label"] == "covid", t["prob_covid"])
    for seed in (0, 1):
        for split in ("val", "test"):
            expected = pooled(f"seed={seed}__variant=other", split) - pooled(f"seed={seed}__variant=baseline", split)
            assert cols[f"seed={seed}__variant=other"][f"{split}_auc_minus_baseline"] == pytest.approx(expected)
    other_seed = pooled("seed=1__variant=other", "test") - pooled("seed=0__variant=baseline", "test")
    assert cols["seed=1__variant=other"]["test_auc_minus_baseline"] != pytest.approx(other_seed)


def test_paired_difference_to_the_baseline_on_the_same_test_images(tmp_path):
    """A variant tested on the baseline's images gets the within-site AUC difference with a paired interval; a run
    tested on other images (another seed's split) is not paired with it."""
    from covidscreen.reporting.comparison import paired_baseline_columns

    grid = tmp_path / "g.yaml"
    grid.write_text(yaml.safe_dump({"grid": {"seed": [0, 1], "variant": {"baseline": {}, "better": {"epochs": 2}}}},
                                   sort_keys=False))
    plan = load_plan(grid, tmp_path / "exp")
    for r in plan.runs:
        seed = int(r.params["seed"])
        preds = split_in_two(fake_predictions(200, seed=seed))
        if r.params["variant"] == "better":  # push cohen's COVID images up: a real within-cohen gain
            lift = (preds["label"] == "covid") & (preds["site"] == "cohen")
            preds.loc[lift, "prob_covid"] = np.clip(preds.loc[lift, "prob_covid"] + 0.3, 0, 0.999)
        write_run(r.cfg.output, preds)
    cols = paired_baseline_columns(plan, ["cohen"], n_boot=200)
    assert set(cols) == {"seed=0__variant=better", "seed=1__variant=better"}
    for seed in (0, 1):
        def within(name):
            t = pd.read_csv(tmp_path / "exp" / "runs" / name / "predictions.csv")
            t = t[(t["split"] == "test") & (t["site"] == "cohen")]
            return roc_auc_score(t["label"] == "covid", t["prob_covid"])
        c = cols[f"seed={seed}__variant=better"]
        expected = within(f"seed={seed}__variant=better") - within(f"seed={seed}__variant=baseline")
        assert c["within_cohen_test_auc_minus_baseline"] == pytest.approx(expected)
        key = "within_cohen_test_auc_minus_baseline"
        assert 0 < c[f"{key}_lo"] < expected < c[f"{key}_hi"]
        for split in ("val", "test"):  # the pooled COVID-vs-rest AUC of each split, paired the same way
            def pooled(name, split=split):
                t = pd.read_csv(tmp_path / "exp" / "runs" / name / "predictions.csv")
                t = t[t["split"] == split]
                return roc_auc_score(t["label"] == "covid", t["prob_covid"])
            key = f"{split}_auc_minus_baseline"
            expected = pooled(f"seed={seed}__variant=better") - pooled(f"seed={seed}__variant=baseline")
            assert c[key] == pytest.approx(expected)
            assert 0 < c[f"{key}_lo"] < expected < c[f"{key}_hi"]
    shown = write_comparison(plan, {}, n_boot=100)
    md = (plan.output / "comparison.md").read_text()
    assert "cohen AUC minus baseline, paired [95% CI]" in md
    assert "val auc minus baseline, paired [95% CI]" in md and "test auc minus baseline, paired [95% CI]" in md
    assert shown["within_cohen_test_auc_minus_baseline"].notna().sum() == 2
    assert shown["test_auc_minus_baseline"].notna().sum() == 2
    by_variant = (plan.output / "comparison_by_variant.md").read_text()
    assert "pooled validation AUC - baseline, paired" in by_variant
