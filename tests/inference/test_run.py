"""The typed run: sidecars of every format version load, with their figures; bad folders are refused clearly."""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from covidscreen.errors import CheckpointError, DataError
from covidscreen.inference.checkpoint import FORMAT_VERSION, SIDECAR_FILE, save_checkpoint
from covidscreen.inference.predictor import Predictor
from covidscreen.inference.run import load_run
from covidscreen.models import create_model
from covidscreen.runtime import sha256_file

DATA = Path(__file__).parent / "data"


def _weights(run_dir: Path, classes: int = 3) -> dict:
    """A real (untrained) efficientnet_lite0 checkpoint in ``run_dir``; returns what the writer recorded."""
    torch.manual_seed(0)
    model = create_model("efficientnet_lite0", pretrained=False, num_classes=classes)
    save_checkpoint(run_dir, model, {"classes": ["covid", "normal", "pneumonia"][:classes], "image_size": 64,
                                     "positive_class": "covid", "operating_points": {"youden": 0.3, "default": 0.3}})
    return json.loads((run_dir / SIDECAR_FILE).read_text())


def test_a_version_1_run_folder_written_by_an_earlier_covidscreen_loads(tmp_path):
    """model_v1.json is the sidecar a covidscreen of format 1 wrote (before modality and the points' figures were
    stored in it); its figures come from the run's metrics.json."""
    _weights(tmp_path)
    old = json.loads((DATA / "model_v1.json").read_text())
    old["weights_sha256"] = sha256_file(tmp_path / "model.safetensors")  # the old record, pointing at these weights
    (tmp_path / SIDECAR_FILE).write_text(json.dumps(old))
    shutil.copy(DATA / "metrics_v1.json", tmp_path / "metrics.json")
    run = load_run(tmp_path)
    assert run.format_version == 1 and run.kind == "model" and run.modality == "cxr"
    assert run.classes == ("covid", "normal", "pneumonia") and run.positive_class == "covid"
    assert run.image_size == 96 and run.preprocess.is_identity and run.temperature == 1.0
    assert run.default_point == "youden" and run.threshold() == pytest.approx(0.18163973093032837)
    spec = run.point("specificity_0.95")
    assert spec.threshold == pytest.approx(0.28245157003402716) and spec.specificity == 1.0 and spec.sensitivity == 0.5
    assert run.thresholds == old["operating_points"]
    assert run.model_id.endswith("@" + old["weights_sha256"][:12])
    probs = Predictor(run, device="cpu").predict_arrays(np.zeros((2, 96, 96), np.uint8))
    assert probs.shape == (2, 3) and np.allclose(probs.sum(1), 1)


def test_a_current_sidecar_carries_modality_and_figures(tmp_path):
    meta = _weights(tmp_path)
    assert meta["format_version"] == FORMAT_VERSION == 2
    meta.update({"modality": "ct", "operating_point_figures": {"youden": {"sensitivity": 0.9, "specificity": 0.8}}})
    (tmp_path / SIDECAR_FILE).write_text(json.dumps(meta))
    run = load_run(tmp_path)
    assert run.modality == "ct" and run.point("youden").sensitivity == 0.9 and run.point("youden").specificity == 0.8
    assert math.isnan(run.point("default").sensitivity)  # no figures stored for that name


def test_unknown_points_and_bad_folders_are_refused_with_what_is_expected(tmp_path):
    meta = _weights(tmp_path)
    with pytest.raises(DataError, match="operating point 'nope' is not in this run; available: youden, default"):
        load_run(tmp_path).point("nope")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_run(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a covidscreen run folder"):
        load_run(tmp_path / "empty")
    (tmp_path / SIDECAR_FILE).write_text(json.dumps({**meta, "format_version": FORMAT_VERSION + 1}))
    with pytest.raises(CheckpointError, match="newer covidscreen"):
        load_run(tmp_path)
    (tmp_path / SIDECAR_FILE).write_text(json.dumps({**meta, "modality": "mri"}))
    with pytest.raises(CheckpointError, match="modality 'mri' is unknown"):
        load_run(tmp_path)
    (tmp_path / SIDECAR_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_run(tmp_path)


def test_tampered_weights_are_refused_before_loading(tmp_path):
    _weights(tmp_path)
    run = load_run(tmp_path)
    with open(tmp_path / "model.safetensors", "r+b") as fh:
        fh.seek(-4, 2)
        fh.write(b"\x00\x01\x02\x03")
    with pytest.raises(CheckpointError, match="changed or replaced"):
        run.load_model()


def test_update_record_is_the_one_writer_and_returns_the_run_as_recorded(tmp_path):
    from covidscreen.inference.run import update_record

    _weights(tmp_path)
    run = update_record(tmp_path, merge={"operating_points": {"local": 0.7},
                                         "local_calibration": {"local": {"expected": {"specificity": 0.9}}}})
    assert run.thresholds == {"youden": 0.3, "default": 0.3, "local": 0.7}  # added, the others kept
    assert run.point("local").specificity == 0.9 and "local" in run.local_calibration
    run = update_record(tmp_path, merge={"local_calibration": {"local": {"expected": {}}}})
    assert run.local_calibration["local"] == {"expected": {}}  # a record inside is replaced whole, not mixed
    run = update_record(tmp_path, replace={"onnx": {"file": "model.onnx", "sha256": "ab" * 32, "opset": 17}})
    assert run.onnx.serving_file == "model.onnx" and run.onnx.precision == "fp32" and run.onnx.opset == 17
    run = update_record(tmp_path, merge={"onnx": {"serving": {"file": "model.int8.onnx", "sha256": "cd" * 32,
                                                              "precision": "int8"}}})
    assert run.onnx.sha256 == "ab" * 32 and run.onnx.serving_file == "model.int8.onnx" and run.onnx.precision == "int8"
    assert load_run(tmp_path) == run  # what was returned is what a fresh read gives


def test_an_ensemble_manifest_of_one_size_types_its_members(tmp_path):
    """Manifests written before members could differ in size record one image_size for all."""
    for name in ("a", "b"):
        _weights(tmp_path / name)
    from covidscreen.inference.run import read_sidecar

    sha = read_sidecar(tmp_path / "a")["weights_sha256"]
    (tmp_path / "ens").mkdir()
    (tmp_path / "ens" / "ensemble.json").write_text(json.dumps({
        "format_version": 1, "architecture": "ensemble", "classes": ["covid", "normal", "pneumonia"],
        "positive_class": "covid", "image_size": 64, "operating_points": {"default": 0.4},
        "members": [{"path": "../a", "weights_sha256": sha}, {"path": "../b"}]}))
    run = load_run(tmp_path / "ens")
    assert run.kind == "ensemble" and [m.image_size for m in run.ensemble_members] == [64, 64]
    assert run.ensemble_members[0].path == (tmp_path / "a").resolve() and run.ensemble_members[1].weights_sha256 is None
    assert [m.path for m in run.member_runs()] == [(tmp_path / "a").resolve(), (tmp_path / "b").resolve()]
    assert run.load_model().sizes == [64, 64]
def test_per_site_figures_and_the_named_default_load_typed(tmp_path):
    meta = _weights(tmp_path)
    meta["operating_points"] = {"youden": 0.3, "worst_site_specificity_0.9": 0.7, "default": 0.7}
    meta["default_operating_point"] = "worst_site_specificity_0.9"
    meta["operating_point_sites"] = {"worst_site_specificity_0.9": {
        "sites": {"nih": {"n_negative": 40, "n_positive": 0, "specificity": 0.9, "specificity_ci": [0.77, 0.96],
                          "sensitivity": None, "sensitivity_ci": None},
                  "cohen": {"n_negative": 5, "n_positive": 30, "specificity": 0.4, "specificity_ci": [0.12, 0.77],
                            "sensitivity": 0.8, "sensitivity_ci": [0.63, 0.9]}},
        "weakest_site": "nih", "note": "site(s) x cannot reach specificity 0.9"}}
    (tmp_path / SIDECAR_FILE).write_text(json.dumps(meta))
    run = load_run(tmp_path)
    assert run.default_point == "worst_site_specificity_0.9" and run.threshold() == 0.7
    assert run.has_site_figures
    p = run.point("worst_site_specificity_0.9")
    assert p.weakest_site == "nih" and "cannot reach" in p.note
    nih = p.sites["nih"]
    assert (nih.n_negative, nih.specificity, nih.specificity_ci) == (40, 0.9, (0.77, 0.96))
    assert math.isnan(nih.sensitivity) and nih.sensitivity_ci is None
    assert p.sites["cohen"].sensitivity == 0.8
    assert run.point("youden").sites == {} and run.point("youden").weakest_site is None


def test_a_run_without_per_site_figures_loads_and_says_so(tmp_path):
    _weights(tmp_path)
    run = load_run(tmp_path)
    assert not run.has_site_figures and run.default_point == "youden"
    from covidscreen.inference.run import NO_SITE_FIGURES
    assert "no per-site validation figures" in NO_SITE_FIGURES
