"""INT8 export: the accuracy gate decides which ONNX file serves, the sidecar records it, the model verifies it."""

import json

import numpy as np
import pytest

from covidscreen.config import resolve_train_config
from covidscreen.errors import CheckpointError
from covidscreen.inference.onnx import OnnxModel
from covidscreen.inference.predictor import Predictor
from covidscreen.workflows.fit import fit
from covidscreen.workflows.quantize import INT8_FILE, _session, export_int8, onnx_probabilities, split_images
from tests.conftest import make_image_folder


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("int8")
    root = make_image_folder(tmp / "d", n_per_class=16, size=40)
    # ImageNet weights learn the brightness signal in a few steps (as in test_train.py)
    cfg = resolve_train_config(None, data=str(root), output=str(tmp / "run"), model="efficientnet_lite0",
                               pretrained=True, image_size=48, epochs=2, batch_size=4, samples_per_epoch=None,
                               split=[0.5, 0.25, 0.25], train_stages=2, lr=3e-3, audit=False, bootstrap=0,
                               cache_dir=str(tmp / "cache"))
    return fit(cfg, progress=False)


def test_fit_writes_its_phase_timings_apart_from_the_metrics(run):
    phases = json.loads((run / "timings.json").read_text())["phases"]
    assert list(phases) == ["cache", "epochs", "evaluation", "audit", "report"]
    assert "timings" not in json.loads((run / "metrics.json").read_text())


def test_int8_serves_when_the_test_split_allows_and_is_verified(run):
    result = export_int8(run, calibration_images=8, max_auc_drop=1.0, max_changed=1.0)
    assert result.accepted and result.serving == INT8_FILE
    info = json.loads((run / "model.json").read_text())["onnx"]
    assert info["serving"]["file"] == INT8_FILE and info["serving"]["precision"] == "int8"
    model = OnnxModel(run)
    assert model.file == INT8_FILE and model.precision == "int8"
    # quantised accuracy on the test slice: the same images through FP32 and INT8
    test_x, test_y = split_images(run, "test", None)
    p32 = onnx_probabilities(_session(run / "model.onnx"), test_x)
    p8 = model.probabilities(test_x.astype(np.float32)[:, None] / 255.0)
    assert np.abs(p32 - p8).max() < 0.1
    assert np.mean(p32.argmax(1) == p8.argmax(1)) >= 0.9
    checks = result.checks
    assert checks["test_images"] == len(test_y) and checks["calibration_images"] == 8
    assert checks["roc_auc_drop"] == pytest.approx(checks["roc_auc_fp32"] - checks["roc_auc_int8"])
    # the Predictor's ONNX backend serves the INT8 file
    pred = Predictor(run, backend="onnx")
    assert pred.onnx.file == INT8_FILE
    # a changed INT8 file is refused
    with open(run / INT8_FILE, "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(CheckpointError, match="sha256"):
        OnnxModel(run)


def test_int8_rejected_keeps_fp32_and_says_why(run):
    result = export_int8(run, calibration_images=8, max_auc_drop=-1.0)  # no model can pass a negative drop
    assert not result.accepted and result.serving == "model.onnx"
    assert "FP32 keeps serving" in result.message and "ROC AUC" in result.message
    info = json.loads((run / "model.json").read_text())["onnx"]
    assert info["int8"]["accepted"] is False and info["serving"]["precision"] == "fp32"
    assert not (run / INT8_FILE).exists()
    assert OnnxModel(run).file == "model.onnx"


def test_fp32_export_matches_pytorch_on_test_images(run):
    test_x, _ = split_images(run, "test", None)
    torch_probs = Predictor(run, device="cpu").predict_arrays(test_x)
    onnx_probs = Predictor(run, backend="onnx").predict_arrays(test_x)  # FP32 serves after the rejection above
    np.testing.assert_allclose(onnx_probs, torch_probs, atol=1e-4)
