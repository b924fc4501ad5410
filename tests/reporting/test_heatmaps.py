"""Tests of covidscreen.reporting.heatmaps: the heatmap audit of a run's test split in the evaluation report."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from covidscreen.reporting.heatmaps import heatmap_summary, outcomes, sample_rows


def test_outcomes_follow_the_runs_threshold():
    classes = ["covid", "normal"]
    probs = np.array([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4], [0.1, 0.9]])
    labels = np.array(["covid", "covid", "normal", "normal"])
    assert list(outcomes(labels, probs, classes, "covid", 0.5)) == ["TP", "FN", "FP", "TN"]
    assert list(outcomes(labels, probs, classes, "covid", 0.2)) == ["TP", "TP", "FP", "TN"]
    assert list(outcomes(labels, probs, classes, None, None)) == ["correct", "wrong", "wrong", "correct"]


def test_sample_takes_each_outcome_first_then_spreads_over_groups():
    table = pd.DataFrame({"outcome": ["TN"] * 20 + ["TP"] * 5 + ["FP"] * 2,
                          "label": ["normal"] * 20 + ["covid"] * 5 + ["normal"] * 2,
                          "site": ["b"] * 10 + ["c"] * 10 + ["a"] * 5 + ["b"] * 2})
    rows = sample_rows(table, n=12, per_outcome=2, seed=0)
    assert len(rows) == len(set(rows)) == 12
    first = table.loc[rows[:6], "outcome"].tolist()
    assert sorted(first) == ["FP", "FP", "TN", "TN", "TP", "TP"]
    assert first[:3] == ["TP", "FP", "TN"]  # interleaved, so the first few (sanity-checked) mix outcomes
    assert set(table.loc[rows, "site"]) == {"a", "b", "c"}
    assert rows == sample_rows(table, n=12, per_outcome=2, seed=0)
    assert len(sample_rows(table, n=100, per_outcome=2)) == len(table)


def test_heatmap_summary_writes_outputs_and_a_fragment(tiny_run):
    frag = heatmap_summary(tiny_run, n=8, per_outcome=2, worst=2, checks=2, output=tiny_run / "explain-test")
    out = tiny_run / "explain-test"
    summary = json.loads((out / "summary.json").read_text())
    table = pd.read_csv(out / "heatmaps.csv")
    assert summary["n_explained"] == len(table) == min(8, summary["n_test"])
    assert summary["explained_class"] == "covid"
    assert {r["site"] for r in summary["per_site"]} == set(table["site"])
    assert {r["label"] for r in summary["per_class"]} == set(table["label"])
    assert sum(r["n"] for r in summary["per_outcome"]) == len(table)
    assert "randomisation" in summary["sanity"] and "road" in summary["sanity"]
    shown = table["png"].dropna()
    assert len(shown) >= 2 and all((out / p).is_file() for p in shown)
    assert frag.startswith("<h2>Where the model looks")
    assert "Border fraction by site" in frag and "data:image/png;base64," in frag


def test_the_run_report_contains_the_audit(tiny_run):
    report = (tiny_run / "report.html").read_text()
    assert "Where the model looks: Grad-CAM audit of the test split" in report
    assert "Grad-CAM audit failed" not in report
    assert (tiny_run / "explain" / "summary.json").is_file()


def _copy_run(tiny_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    return run


def test_report_still_renders_when_the_audit_fails(tiny_run, tmp_path):
    from covidscreen.reporting.report import write_report

    run = _copy_run(tiny_run, tmp_path)
    (run / "model.safetensors").write_bytes(b"damaged")  # load_checkpoint raises inside the audit
    html = write_report(run).read_text()
    assert "Per class" in html and html.rstrip().endswith("</body></html>")
    assert "Grad-CAM audit failed" in html and "sha256" in html


def test_audit_says_so_when_the_images_are_gone(tiny_run, tmp_path):
    run = _copy_run(tiny_run, tmp_path)
    meta = json.loads((run / "model.json").read_text())
    meta["data_dir"] = str(tmp_path / "gone")
    (run / "model.json").write_text(json.dumps(meta))
    # the sidecar's sha256 covers the weights, not the sidecar, so the checkpoint still loads
    assert "None of the sampled test images could be read" in heatmap_summary(run)


@pytest.mark.parametrize("bad", ["lime"])
def test_unknown_method_is_rejected(tiny_run, bad):
    from covidscreen.explain import ExplainError

    with pytest.raises(ExplainError, match="unknown explanation method"):
        heatmap_summary(tiny_run, method=bad)


def test_heatmap_summary_accepts_a_chest_mask(tiny_run):
    out = tiny_run / "explain-mask"
    frag = heatmap_summary(tiny_run, n=6, checks=0, worst=1, output=out, mask_fn=lambda img: np.ones(img.shape, bool))
    table = pd.read_csv(out / "heatmaps.csv")
    finite = table["border_fraction"].dropna()
    assert (finite == 0).all() and (table["border_area"] == 0).all()  # the whole image is "chest"
    assert json.loads((out / "summary.json").read_text())["region"] == "chest mask"
    assert "outside the chest mask" in frag


def test_heatmap_provider_gives_maps_in_each_images_geometry(tiny_run, tmp_path):
    from PIL import Image

    from covidscreen.reporting.heatmaps import heatmap_provider
    from tests.explain_fixtures import synthetic_images

    path = tmp_path / "wide.png"
    Image.fromarray(synthetic_images(1, "corner", 3)[0]).resize((90, 50)).save(path)
    fn = heatmap_provider(tiny_run)
    heat = fn(path)
    assert heat.shape == (50, 90) and np.isfinite(heat).all() and heat.min() >= 0 and heat.max() <= 1
    np.testing.assert_array_equal(heat, fn(path))  # deterministic, nothing left over between calls


def test_heatmap_audit_of_a_cropping_run_says_the_border_was_cropped_away(crop_run, fake_lungs):
    out = crop_run / "explain-crop"
    frag = heatmap_summary(crop_run, n=8, per_outcome=2, worst=2, checks=1, output=out)
    table = pd.read_csv(out / "heatmaps.csv")
    assert (table["border_fraction"].dropna() == 0).all() and (table["border_area"] == 0).all()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["crop"] and summary["border_visible"] is False
    assert summary["mean_view_fraction"] == pytest.approx(27 * 32 / (60 * 72))  # the 27 x 32 view of 60 x 72
    assert "The model cannot see the border: it was cropped away" in frag
    assert "Grad-CAM audit failed" not in (crop_run / "report.html").read_text()
    assert "cannot see the border" in (crop_run / "report.html").read_text()
