"""INT8 export: the accuracy gate decides which ONNX file serves, the sidecar records it, the model verifies it."""

import json

import numpy as np
import pytest

from covidscreen.config import resolve_train_config
from covidscreen.errors import CheckpointError
from covidscreen.inference.onnx import OnnxModel
from covidscreen.inference.predictor import Predictor
from covidscreen.workflows.fit import fit
from covidscreen.workflows.quantize import (
    DEFAULT_VARIANTS,
    INT8_FILE,
    SENSITIVE_KINDS,
    Int8Variant,
    QdqQuantiser,
    _session,
    calibration_set,
    export_int8,
    fp32_nodes,
    front_region,
    onnx_probabilities,
    sensitive_nodes,
    split_images,
)
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
    assert list(phases) == ["cache", "epochs", "evaluation", "ood", "audit", "report"]
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
    # the first variant already keeps the validation decisions within the (here loose) guard: no other is tried
    assert [v["variant"] for v in info["int8"]["variants"]] == [DEFAULT_VARIANTS[0].name] == [checks["variant"]]
    assert sum(checks["calibration_sites"].values()) == 8
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


def test_int8_tries_variants_in_order_and_keeps_the_one_that_changed_fewest_validation_decisions(run):
    variants = (Int8Variant("minmax"), Int8Variant("percentile", ("stem", "head")))
    result = export_int8(run, calibration_images=8, max_changed=-1.0, variants=variants)  # none passes: all tried
    info = json.loads((run / "model.json").read_text())["onnx"]["int8"]
    tried = info["variants"]
    assert [v["variant"] for v in tried] == ["minmax", "percentile, stem+head in fp32"]
    assert tried[0]["fp32_nodes"] == [] and len(tried[1]["fp32_nodes"]) >= 3  # stem, last conv, classifier
    best = min(tried, key=lambda v: v["val_decisions_changed"])  # first on ties
    assert result.checks["variant"] == best["variant"] and not result.accepted
    assert "FP32 keeps serving" in result.message and best["variant"] in result.message
    assert not list(run.glob("*.tmp.onnx")) and not list(run.glob(".int8-*"))  # no candidate left behind


def test_int8_climbs_the_ladder_calibrating_once_and_skipping_repeated_float32_sets(run, monkeypatch):
    import onnx

    import covidscreen.workflows.quantize as quantize

    quantisers = []

    class Recording(QdqQuantiser):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            quantisers.append(self)

    monkeypatch.setattr(quantize, "QdqQuantiser", Recording)
    # efficientnet_lite0 has no squeeze-excitation: the second rung keeps the same nodes as the first, not rerun
    ladder = (Int8Variant(keep_fp32=("stem", "head")), Int8Variant(keep_fp32=SENSITIVE_KINDS),
              Int8Variant(keep_fp32=SENSITIVE_KINDS, front=2))
    lines = []
    result = export_int8(run, calibration_images=8, max_changed=-1.0, variants=ladder, log=lines.append)
    tried = json.loads((run / "model.json").read_text())["onnx"]["int8"]["variants"]
    assert [t["variant"] for t in tried] == [ladder[0].name, ladder[2].name]  # no rung passes: all tried
    assert len(lines) == 1 + len(ladder) and "skipped" in lines[2] and ladder[0].name in lines[2]
    assert len(quantisers) == 1 and quantisers[0].calibration_passes == 1  # the ranges are reused by every rung
    best = min(tried, key=lambda t: t["val_decisions_changed"])
    assert result.checks["variant"] == best["variant"] and result.checks["fp32_nodes"] == len(best["fp32_nodes"])
    assert not list(run.glob(".int8-*"))
    # the default ladder on this network: every node INT8 first, then ever larger float32 parts (SE adds none)
    model = onnx.load(str(run / "model.onnx"))
    sizes = [len(fp32_nodes(model, v)) for v in DEFAULT_VARIANTS]
    assert sizes[0] == 0 and sizes[3] == sizes[2] and sizes[:3] + sizes[4:] == sorted(set(sizes))


def test_calibration_draws_every_site_alike(run, tmp_path):
    import shutil

    import pandas as pd

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    table = pd.read_csv(copy / "split.csv").sort_values("label", kind="stable").head(24)
    labels = table["label"].tolist()
    # 'big' holds both classes, 'small' only normal images (the last four rows)
    table = table.assign(split="train", site=["big"] * 20 + ["small"] * 4)
    table.to_csv(copy / "split.csv", index=False)
    images, sites = calibration_set(copy, 6, seed=0)
    groups = {("big", lab) for lab in labels[:20]} | {("small", lab) for lab in labels[20:]}
    assert len(groups) == 3  # (big, covid), (big, normal), (small, normal): 2 images each
    assert images.shape[0] == 6 and sites == {"big": 4, "small": 2}
    images, sites = calibration_set(copy, 100, seed=0)  # all of them when asked for more
    assert sites == {"big": 20, "small": 4}


def test_sensitive_nodes_find_stem_head_and_squeeze_excitation(tmp_path):
    import warnings

    import onnx
    import torch
    from torch import nn

    class SE(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.reduce, self.expand = nn.Conv2d(c, 2, 1), nn.Conv2d(2, c, 1)

        def forward(self, x):
            return x * torch.sigmoid(self.expand(torch.relu(self.reduce(x.mean((2, 3), keepdim=True)))))

    net = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), SE(8), nn.Conv2d(8, 16, 1),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 3)).eval()
    path = tmp_path / "se.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notes (as inference/onnx.py)
        torch.onnx.export(net, (torch.rand(1, 1, 16, 16),), str(path), opset_version=17, dynamo=False)
    model = onnx.load(str(path))
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    gemm = [n.name for n in model.graph.node if n.op_type in ("Gemm", "MatMul")]
    assert sensitive_nodes(model, ("stem",)) == [convs[0]]
    assert sensitive_nodes(model, ("head",)) == [convs[-1], *gemm]
    assert sensitive_nodes(model, ("se",)) == [convs[3], convs[2]]  # expand, reduce (walked back from the gate)
    assert convs[1] not in sensitive_nodes(model)  # an ordinary convolution stays INT8
    # the float32 region grown from the input: every node up to the stem (and the ReLU after it), then further
    names = [n.name for n in model.graph.node]
    relu = next(n.name for n in model.graph.node if n.op_type == "Relu")
    assert front_region(model, 0) == names[:names.index(convs[0]) + 1] + [relu]
    assert front_region(model, 1) == names[:names.index(convs[1]) + 1]  # the SE pooling follows, not an activation
    assert set(front_region(model, 2)) > set(front_region(model, 1))
    assert front_region(model, 99) == names[:names.index(gemm[0]) + 1]  # at most the whole network
    both = fp32_nodes(model, Int8Variant(keep_fp32=("head",), front=1))
    assert both == [convs[-1], *gemm, *front_region(model, 1)] and len(set(both)) == len(both)


def test_export_job_reports_the_onnx_file_before_the_int8_step(run, monkeypatch):
    from covidscreen.errors import CovidscreenError
    from covidscreen.workflows import quantize
    from covidscreen.workflows.quantize import export_job

    assert list(export_job(run)) == [f"wrote {run / 'model.onnx'}"]

    def failing(*args, **kwargs):
        raise CovidscreenError("int8 failed")

    monkeypatch.setattr(quantize, "export_int8", failing)
    lines = export_job(run, int8=True, calibration_images=4)
    assert next(lines) == f"wrote {run / 'model.onnx'}"  # shown even though the INT8 step then fails
    with pytest.raises(CovidscreenError, match="int8 failed"):
        next(lines)
