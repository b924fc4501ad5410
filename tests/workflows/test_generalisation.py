"""The generalisation hooks of a training run: subsampling, site-balanced sampling, selection, end to end."""

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from covidscreen.config import PreprocessConfig, TrainConfig
from covidscreen.errors import ConfigError
from covidscreen.workflows.generalisation import (
    selection_score,
    site_balanced_rows,
    subsample_keep_mixed_sites,
)


def _table() -> pd.DataFrame:
    rows = ([("cohen", "covid")] * 40 + [("cohen", "normal")] * 3 + [("cohen", "pneumonia")] * 7
            + [("kids", "pneumonia")] * 300 + [("kids", "normal")] * 100 + [("adults", "normal")] * 200)
    df = pd.DataFrame(rows, columns=["site", "label"])
    df["image"] = [f"{i}.png" for i in range(len(df))]
    return df


def test_subsampling_keeps_every_mixed_site_image():
    df = _table()
    sub = subsample_keep_mixed_sites(df, 30, "covid", seed=0)
    assert (sub["site"] == "cohen").sum() == 50  # all of cohen, covid quota included
    assert (sub["label"] == "normal").sum() == 30 and (sub["label"] == "pneumonia").sum() == 30
    assert (sub["label"] == "covid").sum() == 40  # over the quota: mixed sites are never thinned


def test_site_balanced_sampling_equalises_labels_and_sites_within_labels():
    df = _table()
    labels = df["label"].map({"covid": 0, "normal": 1, "pneumonia": 2}).to_numpy()
    rows = site_balanced_rows(np.arange(len(df)), labels, df["site"].to_numpy(), 60_000, np.random.default_rng(0))
    drawn = df.iloc[rows]
    share = drawn["label"].value_counts(normalize=True)
    assert np.allclose(share.to_numpy(), 1 / 3, atol=0.01)
    normal_sites = drawn[drawn["label"] == "normal"]["site"].value_counts(normalize=True)
    assert np.allclose(normal_sites.to_numpy(), 1 / 3, atol=0.01)  # cohen's 3 normals weigh as much as 200 adults


def test_selection_score():
    classes = ["covid", "normal"]
    y = np.array([0, 0, 1, 1, 0, 1])
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.5, 0.5], [0.2, 0.8], [0.7, 0.3], [0.1, 0.9]])
    sites = np.array(["a", "a", "a", "a", "b", "c"])
    cfg = TrainConfig(select_on="within_site_auc")
    score, within = selection_score(cfg, 0.99, y, probs, sites, classes)
    assert score == within == pytest.approx(0.75)  # site a: positives .9,.4 vs negatives .5,.2
    assert selection_score(TrainConfig(), 0.99, y, probs, sites, classes) == (0.99, pytest.approx(0.75))
    with pytest.raises(ConfigError, match="within_site_auc"):
        selection_score(cfg, 0.99, y, probs, np.array(["a", "b", "c", "d", "e", "f"]), classes)
    assert math.isnan(selection_score(TrainConfig(), 0.5, y, probs, np.array(list("abcdef")), classes)[1])


def test_config_checks():
    with pytest.raises(ConfigError, match="select_on"):
        TrainConfig(select_on="loss").validate()
    with pytest.raises(ConfigError, match="segmentation_model"):
        TrainConfig(preprocess=PreprocessConfig(roi="lungs-mask")).validate()
    with pytest.raises(ConfigError, match="adversarial_weight"):
        TrainConfig(adversarial_weight=-1).validate()
    with pytest.raises(ConfigError, match="within_site_rank_weight"):
        TrainConfig(within_site_rank_weight=-0.1).validate()
    with pytest.raises(ConfigError, match="within_site_rank_weight"):
        TrainConfig(within_site_rank_weight=0.5, mixup_alpha=0.2).validate()


def test_fit_with_within_site_ranking_loss_sees_pairs(tmp_path, monkeypatch):
    """A tiny run with the ranking loss: every epoch's batches hold same-site (covid, other) pairs of cohen. An
    epoch of the site-balanced sampler (with replacement) is never longer than the training split, as with plain
    shuffling, so variants compared at equal epochs get equal steps."""
    from covidscreen.workflows.fit import fit

    monkeypatch.setenv("COVIDSCREEN_CACHE", str(tmp_path / "cache"))
    cfg = TrainConfig(model="squeezenet1_1", pretrained=False, image_size=32, epochs=2, batch_size=16,
                      samples_per_epoch=100_000, max_per_class=60, keep_mixed_sites=True, site_balanced=True,
                      within_site_rank_weight=1.0, bootstrap=0, audit=False, seed=0, output=str(tmp_path / "run"),
                      device="cpu", eval_batch_size=64)
    run = fit(cfg, progress=False)
    history = pd.read_csv(run / "history.csv")
    assert (history["rank_pairs"] > 0).all()
    n_train = int((pd.read_csv(run / "split.csv")["split"] == "train").sum())
    assert (history["train_images"] == n_train).all()
    assert np.isfinite(history["train_loss"]).all()


@pytest.mark.slow
def test_fit_with_every_option_and_predict_reproduces_the_run(tmp_path, monkeypatch):
    """Train a tiny run with lung crop + CLAHE + site balance + adversary + within-site selection; then predict on
    its test images from the run folder alone and get the probabilities written at training time."""
    import torch

    from covidscreen.inference.predictor import Predictor
    from covidscreen.segmentation.checkpoint import save_segmenter
    from covidscreen.segmentation.model import LungSegNet
    from covidscreen.workflows.fit import fit

    monkeypatch.setenv("COVIDSCREEN_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    seg_dir = tmp_path / "seg"
    save_segmenter(seg_dir, LungSegNet("mobilenet_v2_035", pretrained=False, image_size=64), {})
    cfg = TrainConfig(model="squeezenet1_1", pretrained=False, image_size=48, epochs=1, batch_size=8,
                      samples_per_epoch=32, max_per_class=100, keep_mixed_sites=True,
                      preprocess=PreprocessConfig(roi="lungs-crop", segmentation_model=str(seg_dir),
                                                  intensity="clahe", border_crop=0.02), site_balanced=True,
                      adversarial_weight=0.1, select_on="within_site_auc", site_probe=True, seed=1,
                      output=str(tmp_path / "run"), device="cpu", eval_batch_size=32)
    run = fit(cfg, progress=False)
    metrics = json.loads((run / "metrics.json").read_text())
    meta = json.loads((run / "model.json").read_text())
    assert meta["preprocessing"]["roi"] == "lungs-crop" and meta["preprocessing"]["segmentation_model"] == "lung_seg"
    assert (run / "lung_seg" / "lung_seg.safetensors").is_file()
    assert "cohen" in metrics["test"]["within_site"]["sites"]
    assert "site_probe" in metrics and metrics["select_on"] == "within_site_auc"
    history = pd.read_csv(run / "history.csv")
    assert {"val_within_site_auc", "site_loss"} <= set(history.columns)
    preds = pd.read_csv(run / "predictions.csv")
    test = preds[preds["split"] == "test"].head(6)
    data = Path(meta["data_dir"])
    out = Predictor(run, device="cpu").predict_files([str(data / p) for p in test["image"]], progress=False)
    np.testing.assert_allclose(out["prob_covid"].to_numpy(), test["prob_covid"].to_numpy(), atol=1e-5)
    from covidscreen.workflows.evaluate import evaluate_run

    ev = json.loads((evaluate_run(run, device="cpu", progress=False) / "metrics.json").read_text())
    assert ev["test"]["within_site"]["sites"]["cohen"]["roc_auc"] == pytest.approx(
        metrics["test"]["within_site"]["sites"]["cohen"]["roc_auc"], abs=1e-6)
