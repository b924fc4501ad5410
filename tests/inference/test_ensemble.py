"""Ensembles average member probabilities and are loaded and used like one model."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from covidscreen.errors import CheckpointError, ModelError
from covidscreen.inference.checkpoint import save_checkpoint
from covidscreen.inference.ensemble import EnsembleModel, write_manifest
from covidscreen.inference.predictor import Predictor
from covidscreen.inference.run import load_checkpoint, load_run, read_sidecar
from covidscreen.workflows.ensemble import build_ensemble

CLASSES = ["covid", "normal", "pneumonia"]


def _member(tmp_path, name, seed, fingerprint="fp", classes=CLASSES, size=32, with_predictions=True,
            preprocessing=None):
    from covidscreen.models import create_model

    torch.manual_seed(seed)
    model = create_model("mobilenet_v2_035", pretrained=False, num_classes=len(classes))
    with torch.no_grad():
        model.backbone.classifier[1].weight.normal_(0, 1.0)  # members that disagree visibly
    run = tmp_path / name
    save_checkpoint(run, model, {"classes": classes, "positive_class": "covid", "image_size": size,
                                 "operating_points": {"default": 0.2 + 0.1 * seed}, "threshold": 0.2 + 0.1 * seed,
                                 "data_dir": str(tmp_path), "split_fingerprint": fingerprint, "seed": seed,
                                 **({"preprocessing": preprocessing} if preprocessing else {})})
    if with_predictions:
        rng = np.random.default_rng(seed)
        n = 40
        probs = rng.dirichlet(np.ones(len(classes)), n)
        preds = pd.DataFrame({"image": [f"i{i}.png" for i in range(n)],
                              "label": [classes[i % len(classes)] for i in range(n)],
                              "split": ["val"] * 20 + ["test"] * 20, "site": "s", "view": "PA",
                              "group": [f"p{i}" for i in range(n)]})
        for i, c in enumerate(classes):
            preds[f"prob_{c}"] = probs[:, i]
        preds.to_csv(run / "predictions.csv", index=False)
        preds[["image", "label", "split", "site", "view", "group"]].to_csv(run / "split.csv", index=False)
    return run, model


def test_ensemble_model_averages_member_softmax():
    torch.manual_seed(0)
    members = [torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)) for _ in range(3)]
    ens = EnsembleModel(members)
    x = torch.randn(5, 1, 2, 2)
    expected = torch.stack([torch.softmax(m(x), 1) for m in members]).mean(0)
    assert torch.allclose(torch.softmax(ens(x), 1), expected, atol=1e-6)
    assert torch.allclose(ens(x).exp().sum(1), torch.ones(5), atol=1e-6)
    with pytest.raises(ModelError, match="Grad-CAM"):
        _ = ens.gradcam_layer


def test_ensemble_folder_loads_like_one_model(tmp_path):
    (a, ma), (b, mb) = _member(tmp_path, "a", 0), _member(tmp_path, "b", 1)
    ens_dir = build_ensemble([a, b], tmp_path / "ens")
    model, run = load_checkpoint(ens_dir)
    assert isinstance(model, EnsembleModel) and run.architecture == "ensemble" and run.kind == "ensemble"
    assert read_sidecar(ens_dir)["classes"] == CLASSES
    images = np.random.default_rng(0).integers(0, 255, (4, 32, 32), dtype=np.uint8)
    pred = Predictor(ens_dir, device="cpu")
    got = pred.predict_arrays(images)
    x = torch.from_numpy(images).float().div(255).unsqueeze(1)
    with torch.no_grad():
        want = (torch.softmax(ma.eval()(x), 1) + torch.softmax(mb.eval()(x), 1)) / 2
    assert np.allclose(got, want.numpy(), atol=1e-5)
    assert pred.threshold == run.threshold()


def test_ensemble_threshold_and_metrics_come_from_averaged_validation(tmp_path):
    (a, _), (b, _) = _member(tmp_path, "a", 0), _member(tmp_path, "b", 1)
    ens_dir = build_ensemble([a, b], tmp_path / "ens")
    pa, pb = pd.read_csv(a / "predictions.csv"), pd.read_csv(b / "predictions.csv")
    pe = pd.read_csv(ens_dir / "predictions.csv")
    assert np.allclose(pe["prob_covid"], (pa["prob_covid"] + pb["prob_covid"]) / 2)
    metrics = json.loads((ens_dir / "metrics.json").read_text())
    from covidscreen.evaluation.thresholds import choose_points

    val = pe[pe["split"] == "val"]
    points, _ = choose_points(val["label"] == "covid", val["prob_covid"], sites=val["site"] if "site" in val else None)
    assert metrics["threshold"] == pytest.approx(points["default"])
    assert metrics["n_test"] == 20 and "covid_vs_rest" in metrics
    assert (ens_dir / "split.csv").is_file() and (ens_dir / "report.html").is_file()
    manifest = json.loads((ens_dir / "ensemble.json").read_text())
    assert manifest["common_split"] and manifest["threshold"] == metrics["threshold"]


def test_members_with_different_splits_get_the_mean_threshold_and_no_internal_test(tmp_path):
    (a, _), (b, _) = _member(tmp_path, "a", 0, "fp0"), _member(tmp_path, "b", 1, "fp1")
    ens_dir = build_ensemble([a, b], tmp_path / "ens")
    meta = read_sidecar(ens_dir)
    assert not meta["common_split"] and meta["threshold"] == pytest.approx(0.25)
    assert "members' own validation thresholds" in meta["threshold_source"]
    assert not (ens_dir / "metrics.json").exists() and not (ens_dir / "split.csv").exists()


def test_bad_members_are_refused(tmp_path):
    a, _ = _member(tmp_path, "a", 0)
    b, _ = _member(tmp_path, "b", 1, classes=["covid", "non_covid"])
    c, _ = _member(tmp_path, "c", 2, preprocessing={"intensity": "histeq", "border_crop": 0.05})
    with pytest.raises(CheckpointError, match="classes"):
        build_ensemble([a, b], tmp_path / "e1")
    with pytest.raises(CheckpointError, match="preprocessing"):
        build_ensemble([a, c], tmp_path / "e2")
    with pytest.raises(CheckpointError, match="at least two"):
        build_ensemble([a], tmp_path / "e3")
    with pytest.raises(CheckpointError, match="twice"):
        build_ensemble([a, a], tmp_path / "e4")


def test_retrained_member_is_detected(tmp_path):
    (a, _), (b, _) = _member(tmp_path, "a", 0), _member(tmp_path, "b", 1)
    ens_dir = tmp_path / "ens"
    write_manifest(ens_dir, [load_run(a), load_run(b)], {"default": 0.5}, "test")
    _member(tmp_path, "b", 5)  # b is overwritten by another model
    with pytest.raises(CheckpointError, match="other weights"):
        load_checkpoint(ens_dir)


def test_members_at_different_input_sizes_each_read_their_own(tmp_path):
    """Lite0 at 224 px with Lite2 at 260 px: the ensemble prepares images at the largest size and resizes them for
    the smaller member; the stored predictions are the members' own."""
    (a, ma), (b, mb) = _member(tmp_path, "a", 0, size=32), _member(tmp_path, "b", 1, size=48)
    ens_dir = build_ensemble([a, b], tmp_path / "ens")
    manifest = json.loads((ens_dir / "ensemble.json").read_text())
    assert manifest["image_size"] == 48 and [m["image_size"] for m in manifest["members"]] == [32, 48]
    pa, pb = pd.read_csv(a / "predictions.csv"), pd.read_csv(b / "predictions.csv")
    pe = pd.read_csv(ens_dir / "predictions.csv")
    assert np.allclose(pe["prob_covid"], (pa["prob_covid"] + pb["prob_covid"]) / 2)
    pred = Predictor(ens_dir, device="cpu")
    assert pred.size == 48
    images = np.random.default_rng(0).integers(0, 255, (3, 48, 48), dtype=np.uint8)
    got = pred.predict_arrays(images)
    x = torch.from_numpy(images).float().div(255).unsqueeze(1)
    x32 = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
    with torch.no_grad():
        want = (torch.softmax(ma.eval()(x32), 1) + torch.softmax(mb.eval()(x), 1)) / 2
    assert np.allclose(got, want.numpy(), atol=1e-5)


def test_files_are_decoded_once_and_each_member_reads_its_own_single_resize(tmp_path, monkeypatch):
    """Predicting files (and evaluating a folder) with an ensemble of 32 and 48 px members: each file is decoded
    once, resized once to each size, and the ensemble's probabilities are the mean of each member's own Predictor's
    on that file (no image resized twice)."""
    from PIL import Image

    import covidscreen.data.preprocess as preprocess

    (a, _), (b, _) = _member(tmp_path, "a", 0, size=32), _member(tmp_path, "b", 1, size=48)
    ens_dir = build_ensemble([a, b], tmp_path / "ens")
    rng = np.random.default_rng(3)
    files = []
    for i in range(3):
        files.append(tmp_path / f"x{i}.png")
        Image.fromarray(rng.integers(0, 255, (90, 70), dtype=np.uint8)).save(files[-1])
    decodes = []
    real_read = preprocess.read_image
    monkeypatch.setattr(preprocess, "read_image", lambda path, **kw: decodes.append(path) or real_read(path, **kw))
    pred = Predictor(ens_dir, device="cpu")
    assert pred.sizes == (32, 48)
    got = pred.predict_files(files, progress=False)
    assert sorted(map(str, decodes)) == sorted(map(str, files))  # one decode per file
    own = [Predictor(m, device="cpu").predict_files(files, progress=False) for m in (a, b)]
    for c in CLASSES:
        assert np.allclose(got[f"prob_{c}"], (own[0][f"prob_{c}"] + own[1][f"prob_{c}"]) / 2, atol=1e-6)


def test_manifest_carries_the_members_preprocessing(tmp_path):
    """An ensemble of histogram-equalised runs prepares images as its members did (it once read them plain)."""
    prep = {"intensity": "histeq", "border_crop": 0.05}
    (a, _), (b, _) = _member(tmp_path, "a", 0, preprocessing=prep), _member(tmp_path, "b", 1, preprocessing=prep)
    ens_dir = build_ensemble([a, b], tmp_path / "ens")
    run = load_checkpoint(ens_dir)[1]
    assert run.preprocess.intensity == "histeq" and run.preprocess.border_crop == 0.05


def test_the_ensemble_command_prints_validation_first_and_test_only_when_asked(tmp_path):
    from typer.testing import CliRunner

    from covidscreen.cli import app

    (a, _), (b, _) = _member(tmp_path, "a", 0), _member(tmp_path, "b", 1)
    runner = CliRunner()
    res = runner.invoke(app, ["ensemble", str(a), str(b), "-o", str(tmp_path / "ens")])
    assert res.exit_code == 0, res.output
    val_auc = json.loads((tmp_path / "ens" / "metrics.json").read_text())["val"]["covid_vs_rest"]["roc_auc"]
    lines = res.output.splitlines()
    assert f"validation split: ROC AUC {val_auc:.4f}" in lines[0] and "test split" in lines[1]
    res = runner.invoke(app, ["ensemble", str(a), str(b), "-o", str(tmp_path / "ens2"), "--no-show-test"])
    assert res.exit_code == 0, res.output
    assert "validation split" in res.output and "test split:" not in res.output and "report.html" in res.output
