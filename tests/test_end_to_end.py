"""End to end on the real shared data: train one epoch on a small slice, evaluate, predict PNG/JPEG/DICOM."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from covidscreen.config import resolve_train_config
from covidscreen.inference.predictor import Predictor
from covidscreen.inference.run import load_checkpoint
from covidscreen.runtime import amp_dtype
from covidscreen.workflows.evaluate import evaluate_run
from covidscreen.workflows.fit import fit
from tests.test_cli import assert_clean_error, run_cli, run_cli_in_process

pytestmark = pytest.mark.slow  # trains on the shared data, then predicts with it


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, shared_data):
    out = tmp_path_factory.mktemp("run")
    cfg = resolve_train_config(None, data=str(shared_data / "cxr"), output=str(out), max_per_class=40, epochs=1,
                               image_size=96, batch_size=16, samples_per_epoch=None)
    return fit(cfg, progress=False)


def test_run_folder_is_complete_and_reproducible(small_run, shared_data):
    for name in ("model.safetensors", "model.json", "config.yaml", "split.csv", "history.csv", "predictions.csv",
                 "metrics.json", "report.html"):
        assert (small_run / name).is_file(), name
    meta = json.loads((small_run / "model.json").read_text())
    assert meta["classes"] == ["covid", "normal", "pneumonia"]
    assert meta["architecture"] == "efficientnet_lite0" and meta["image_size"] == 96
    assert len(meta["split_fingerprint"]) == 64 and meta["seed"] == 0
    assert meta["config"]["max_per_class"] == 40 and "torch" in meta["versions"]
    assert 0 <= meta["threshold"] <= 1 and "sensitivity_0.95" in meta["operating_points"]
    metrics = json.loads((small_run / "metrics.json").read_text())
    assert metrics["classes"] == meta["classes"]
    assert metrics["n_test"] == (pd.read_csv(small_run / "split.csv")["split"] == "test").sum() > 0
    for key in ("roc_auc", "sensitivity", "specificity"):
        assert 0 <= metrics["covid_vs_rest"][key] <= 1
    split = pd.read_csv(small_run / "split.csv", keep_default_na=False)
    assert (split.groupby("group")["split"].nunique() == 1).all()
    report = (small_run / "report.html").read_text()
    assert "data:image/png;base64" in report and "Read this first" in report  # covid comes from one site
    state = load_file(str(small_run / "model.safetensors"))
    assert all(np.isfinite(v.float().numpy()).all() for v in state.values())


def test_evaluate_reproduces_test_metrics(small_run):
    out = evaluate_run(small_run, progress=False)
    a = json.loads((small_run / "metrics.json").read_text())["covid_vs_rest"]
    b = json.loads((out / "metrics.json").read_text())["covid_vs_rest"]
    assert b["roc_auc"] == pytest.approx(a["roc_auc"], abs=1e-6)
    assert b["sensitivity"] == pytest.approx(a["sensitivity"])


def test_predict_dicom_png_jpeg_and_bad_file(small_run, shared_data, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    out = tmp_path / "preds.csv"
    # the CPU, like the API call below, so that the comparison holds on a GPU machine too
    proc = run_cli("predict", str(small_run), str(shared_data / "dicom"), str(shared_data / "samples"), str(bad),
                   "--output", str(out), "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    df = pd.read_csv(out, keep_default_na=False)
    assert list(df.columns) == ["path", "prob_covid", "prob_normal", "prob_pneumonia", "prediction", "ood_score",
                                "in_distribution", "error"]
    assert (df.loc[df["error"] == "", "ood_score"] != "").all()  # training fitted the OOD model
    assert len(df) == 5
    ok = df[df["error"] == ""]
    assert len(ok) == 4 and set(ok["prediction"]) <= {"covid", "normal", "pneumonia"}
    probs = ok[["prob_covid", "prob_normal", "prob_pneumonia"]].astype(float).to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
    assert "broken.jpg" in df[df["error"] != ""]["path"].iloc[0]
    # the API gives the same numbers as the CLI, and repeated calls are deterministic
    pred = Predictor(small_run, device="cpu")
    again = pred.predict_files([shared_data / "dicom"], progress=False)
    np.testing.assert_allclose(again["prob_covid"].to_numpy(), df["prob_covid"].iloc[:2].astype(float), atol=1e-5)


def test_predict_mixed_precision_is_opt_in(small_run, shared_data, tmp_path):
    """Prediction is exact float32 unless ``--mixed-precision`` asks for autocast: bfloat16 on a CPU with AMX
    (``runtime.amp_dtype``), a no-op on other CPUs. On an H100, bfloat16 changed 3 of 204 decisions against the CPU;
    exact float32 changed none."""
    out = tmp_path / "preds.csv"
    # in process: predict's subprocess run is test_predict_dicom_png_jpeg_and_bad_file
    proc = run_cli_in_process("predict", str(small_run), str(shared_data / "dicom"), "--output", str(out),
                              "--mixed-precision")
    assert proc.returncode == 0, proc.stderr
    cli = pd.read_csv(out)
    pred = Predictor(small_run, device="cpu")
    mixed = Predictor(small_run, device="cpu", mixed_precision=True)
    autocast = amp_dtype(torch.device("cpu"))  # bfloat16 on a CPU with AMX, None (float32) elsewhere
    assert pred.amp is None and mixed.amp is autocast
    api = pred.predict_files([shared_data / "dicom"], progress=False)
    # the command gives what the API gives with the same setting; float32 within bfloat16's rounding of it
    np.testing.assert_allclose(cli["prob_covid"], mixed.predict_files([shared_data / "dicom"], progress=False)
                               ["prob_covid"], atol=1e-6)
    np.testing.assert_allclose(cli["prob_covid"], api["prob_covid"], atol=1e-5 if autocast is None else 0.02)


def test_tampered_weights_are_refused(small_run, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(small_run, copy)
    with open(copy / "model.safetensors", "r+b") as fh:
        fh.seek(-4, 2)
        fh.write(b"\x00\x01\x02\x03")
    assert_clean_error(run_cli_in_process("predict", str(copy), str(tmp_path)), "sha256")
    model, run = load_checkpoint(small_run)
    assert model.training is False and run.classes[0] == "covid"


def test_onnx_export_matches_torch(small_run, shared_data, tmp_path):
    import shutil

    from covidscreen.inference.onnx import export_onnx

    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    assert_clean_error(run_cli_in_process("predict", str(run), str(shared_data / "samples"), "--backend", "onnx"),
                       "export")
    export_onnx(run)
    meta = json.loads((run / "model.json").read_text())
    assert meta["onnx"]["max_abs_deviation"] < 1e-3
    torch_preds = Predictor(run, device="cpu").predict_files([shared_data / "samples"], progress=False)
    onnx_preds = Predictor(run, backend="onnx").predict_files([shared_data / "samples"], progress=False)
    np.testing.assert_allclose(onnx_preds["prob_covid"], torch_preds["prob_covid"], atol=1e-4)
    assert (onnx_preds["prediction"] == torch_preds["prediction"]).all()
