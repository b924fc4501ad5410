"""End to end on the shared data (tiny budgets): an experiment grid with an ensemble and a cross-validation, resumed;
the ensemble evaluated and used for prediction like one model; sequential fine-tuning with a binary task."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from covidscreen.config import TrainConfig
from covidscreen.inference.predictor import Predictor
from covidscreen.inference.run import read_sidecar
from covidscreen.workflows.evaluate import evaluate_run
from covidscreen.workflows.experiment import run_experiment
from covidscreen.workflows.fit import fit

pytestmark = pytest.mark.slow

# 32 px (the smallest size) and no audit: these tests check files, keys, resumption and agreement, nothing the input
# size or audit.json decides (the audit of a run on the shared data: test_end_to_end.py); 20% less CPU than at 64 px
# with the audit
TINY = {"max_per_class": 12, "image_size": 32, "epochs": 1, "batch_size": 8, "samples_per_epoch": 16,
        "train_stages": 0, "device": "cpu", "audit": False}
RUN_FILES = ("model.safetensors", "model.json", "config.yaml", "split.csv", "history.csv", "predictions.csv",
             "metrics.json", "report.html")
SAMPLES = Path(__file__).resolve().parents[3] / "shared" / "data" / "samples"


def test_experiment_with_ensemble_and_cross_validation_resumes(tmp_path):
    grid = tmp_path / "tiny.yaml"
    grid.write_text(yaml.safe_dump({
        "base": {**TINY, "split_seed": 0}, "grid": {"seed": [0, 1]}, "runs": [{"name": "cv", "folds": 3}],
        "ensembles": {"both": ["seed=0", "seed=1"]}, "bootstrap": 50}, sort_keys=False))
    out = run_experiment(grid, tmp_path / "exp", progress=False)
    table = pd.read_csv(out / "comparison.csv")
    assert sorted(table["name"]) == ["both", "cv", "seed=0", "seed=1"]
    assert table["val_auc"].is_monotonic_decreasing or table["val_auc"].isna().any()
    assert table.set_index("name").loc[["seed=0", "seed=1", "both", "cv"], "test_auc"].notna().all()
    assert (out / "comparison.html").is_file() and (out / "comparison.png").stat().st_size > 1000
    for name in ("seed=0", "seed=1"):
        assert all((out / "runs" / name / f).is_file() for f in RUN_FILES)

    # resume: nothing is retrained
    stamps = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("model.safetensors")}
    assert len(stamps) == 2 + 3
    run_experiment(grid, tmp_path / "exp", progress=False)
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("model.safetensors")} == stamps
    assert (pd.read_csv(out / "comparison.csv")["status"].str.startswith("finished earlier")).sum() == 3

    # the ensemble folder is evaluated like one run, and agrees with the averaged member predictions
    ens = out / "ensembles" / "both"
    built = json.loads((ens / "metrics.json").read_text())
    evaluated = json.loads((evaluate_run(ens, device="cpu", progress=False) / "metrics.json").read_text())
    assert evaluated["n_test"] == built["n_test"] > 0
    assert evaluated["covid_vs_rest"]["roc_auc"] == pytest.approx(built["covid_vs_rest"]["roc_auc"], abs=1e-3)
    assert evaluated["covid_vs_rest"]["threshold"] == built["threshold"]

    # cross-validation: every image tested once; the fold models form an ensemble usable for prediction
    cv = out / "runs" / "cv"
    preds = pd.read_csv(cv / "predictions.csv")
    test = preds[preds["split"] == "test"]
    assert test["image"].is_unique and len(test) == len(pd.read_csv(cv / "fold-0" / "split.csv"))
    assert sorted(test["fold"].unique()) == [0, 1, 2]
    metrics = json.loads((cv / "metrics.json").read_text())
    assert len(metrics["cross_validation"]["per_fold"]) == 3 and "covid_vs_rest" in metrics
    assert len(read_sidecar(cv)["members"]) == 3
    df = Predictor(cv, device="cpu").predict_files([SAMPLES], progress=False)
    assert len(df) == 2 and (df["error"] == "").all()
    assert np.allclose(df[["prob_covid", "prob_normal", "prob_pneumonia"]].sum(1), 1)


def test_sequential_finetuning_into_a_binary_task(tmp_path):
    small = {**TINY, "max_per_class": 40}
    stage1 = fit(TrainConfig(**small, sites=["kermany"], labels=["pneumonia", "normal"],
                             output=str(tmp_path / "stage1")), progress=False)
    meta1 = read_sidecar(stage1)
    assert meta1["classes"] == ["normal", "pneumonia"]
    assert set(pd.read_csv(stage1 / "split.csv")["site"]) == {"kermany"}
    stage2 = fit(TrainConfig(**small, task="binary", init_from=str(stage1), output=str(tmp_path / "stage2")),
                 progress=False)
    meta2 = read_sidecar(stage2)
    assert meta2["classes"] == ["covid", "non_covid"] and meta2["task"] == "binary"
    assert meta2["init_from"]["run_dir"] == str(stage1.resolve())
    assert meta2["init_from"]["weights_sha256"] == meta1["weights_sha256"]
    m = json.loads((stage2 / "metrics.json").read_text())
    assert m["classes"] == ["covid", "non_covid"] and "covid_vs_rest" in m and m["n_test"] > 0

    # a binary run scores other data with every other label counted as non_covid
    table = pd.read_csv(stage2 / "split.csv")
    ext = tmp_path / "external"
    for label in ("covid", "normal", "pneumonia"):
        (ext / label).mkdir(parents=True)
        for img in table.loc[table["original_label"] == label, "image"].head(3):
            (ext / label / Path(img).name).symlink_to(Path(meta2["data_dir"]) / img)
    out = evaluate_run(stage2, data=ext, output=tmp_path / "ext-eval", device="cpu", progress=False)
    ev = json.loads((out / "metrics.json").read_text())
    assert ev["n_test"] == 9 and ev["covid_vs_rest"]["n_positive"] == 3


def test_fit_with_every_training_option(tmp_path):
    # batch_size 32 > the ~12 training images: every epoch must still take a step (one batch of all of them)
    cfg = TrainConfig(**{**TINY, "train_stages": None, "epochs": 2, "batch_size": 32, "samples_per_epoch": None},
                      loss="focal", focal_gamma=2.0, focal_alpha=0.4,
                      class_weights=False, sampler="balanced", mixup_alpha=0.4, cutmix_alpha=1.0, lr_decay=0.5,
                      head_warmup_epochs=1, train_fraction=0.5, output=str(tmp_path / "run"))
    run = fit(cfg, progress=False)
    assert all((run / f).is_file() for f in RUN_FILES)
    split = pd.read_csv(run / "split.csv")
    assert (split["split"] == "unused").any()  # half of the training patients left out
    stored = yaml.safe_load((run / "config.yaml").read_text())
    assert (stored["loss"], stored["sampler"], stored["lr_decay"], stored["train_fraction"]) == (
        "focal", "balanced", 0.5, 0.5)
    hist = pd.read_csv(run / "history.csv")
    assert len(hist) == 2 and np.isfinite(hist["train_loss"]).all() and (hist["train_loss"] > 0).all()


def test_any_timm_model_by_name(tmp_path):
    # outside the registry: random initialisation, no stages, so full fine-tuning
    cfg = TrainConfig(**{**TINY, "train_stages": None}, model="mobilenetv3_small_050", pretrained=False,
                      output=str(tmp_path / "timm"))
    run = fit(cfg, progress=False)
    meta = read_sidecar(run)
    assert meta["architecture"] == "mobilenetv3_small_050" and all((run / f).is_file() for f in RUN_FILES)
    df = Predictor(run, device="cpu").predict_files([SAMPLES], progress=False)
    assert (df["error"] == "").all()
