"""Local calibration: the fitted threshold reaches its target specificity on new data; the sidecar stores it."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from covidscreen.errors import ConfigError, DataError
from covidscreen.evaluation.calibration import apply_temperature, fit_specificity_threshold, fit_temperature
from covidscreen.workflows.calibrate import calibrate_run


def test_threshold_hits_target_specificity_on_fresh_synthetic_scores():
    rng = np.random.default_rng(0)
    neg = rng.beta(2, 5, 300)  # local normals
    pos = rng.beta(5, 2, 40)
    y = np.r_[np.zeros(300, bool), np.ones(40, bool)]
    rec = fit_specificity_threshold(y, np.r_[neg, pos], 0.9, n_boot=300, seed=1)
    assert 0.9 <= rec["apparent"]["specificity"] <= 0.9 + 2 / 300
    fresh_neg, fresh_pos = rng.beta(2, 5, 200_000), rng.beta(5, 2, 200_000)
    true_spec = float(np.mean(fresh_neg < rec["threshold"]))
    true_sens = float(np.mean(fresh_pos >= rec["threshold"]))
    assert abs(true_spec - 0.9) < 0.035
    e = rec["expected"]
    assert abs(e["specificity"] - true_spec) < 0.03
    assert e["specificity_ci"][0] <= true_spec <= e["specificity_ci"][1]
    assert e["sensitivity_ci"][0] <= true_sens <= e["sensitivity_ci"][1]


def test_few_normals_give_wider_intervals_and_too_few_are_refused():
    rng = np.random.default_rng(3)
    small = fit_specificity_threshold(np.zeros(30, bool), rng.normal(0, 1, 30), 0.9, n_boot=300)
    large = fit_specificity_threshold(np.zeros(600, bool), rng.normal(0, 1, 600), 0.9, n_boot=300)
    width = lambda r: r["expected"]["specificity_ci"][1] - r["expected"]["specificity_ci"][0]  # noqa: E731
    assert width(small) > 2 * width(large)
    assert np.isnan(small["expected"]["sensitivity"])  # no positives: no local sensitivity
    with pytest.raises(DataError, match="at least 10"):
        fit_specificity_threshold(np.zeros(5, bool), np.arange(5.0), 0.9)


def test_temperature_is_recovered():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (4000, 3))
    true_t = 2.5
    p_true = apply_temperature(np.exp(logits) / np.exp(logits).sum(1, keepdims=True), true_t)
    y = np.array([rng.choice(3, p=p) for p in p_true])
    overconfident = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert fit_temperature(overconfident, y) == pytest.approx(true_t, rel=0.1)
    np.testing.assert_allclose(apply_temperature(overconfident, 1.0), overconfident, atol=1e-9)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    # throw-away images: keep their cache out of the shared one
    monkeypatch.setenv("COVIDSCREEN_CACHE", str(tmp_path / "cache"))


def _tiny_run(tmp_path):
    from covidscreen.inference.checkpoint import save_checkpoint
    from covidscreen.models import create_model

    torch.manual_seed(0)
    model = create_model("squeezenet1_1", pretrained=False, num_classes=3)
    run = tmp_path / "run"
    save_checkpoint(run, model, {"classes": ["covid", "normal", "pneumonia"], "positive_class": "covid",
                                 "image_size": 32, "operating_points": {"default": 0.5}, "threshold": 0.5})
    return run


def _local_folder(tmp_path, n_normal=24, n_covid=6):
    rng = np.random.default_rng(0)
    root = tmp_path / "local"
    for label, n in (("normal", n_normal), ("covid", n_covid)):
        (root / label).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (40, 40)).astype(np.uint8)).save(root / label / f"{i}.png")
    return root


def test_calibrate_run_stores_a_named_operating_point(tmp_path):
    from covidscreen.inference.predictor import Predictor

    run = _tiny_run(tmp_path)
    rec = calibrate_run(run, _local_folder(tmp_path), target_specificity=0.75, name="site-a", device="cpu",
                        n_boot=100, progress=False)
    meta = json.loads((run / "model.json").read_text())
    assert meta["operating_points"]["site-a"] == rec["threshold"]
    assert meta["local_calibration"]["site-a"]["n_negative"] == 24
    assert rec["apparent"]["specificity"] >= 0.75
    assert Predictor(run, device="cpu", operating_point="site-a").threshold == rec["threshold"]
    assert (run / "calibration-site-a.json").is_file()
    rec_t = calibrate_run(run, _local_folder(tmp_path / "b"), target_specificity=0.75, name="t", temperature=True,
                          device="cpu", n_boot=50, progress=False)
    assert rec_t["temperature"] > 0 and Predictor(run, device="cpu", operating_point="t").temperature == \
        rec_t["temperature"]


def test_calibrate_run_rejects_bad_requests(tmp_path):
    run = _tiny_run(tmp_path)
    normals_only = _local_folder(tmp_path, n_covid=0)
    (normals_only / "covid").rmdir()
    with pytest.raises(DataError, match="temperature needs"):
        calibrate_run(run, normals_only, temperature=True, device="cpu", progress=False)
    with pytest.raises(ConfigError, match="target-specificity"):
        calibrate_run(run, normals_only, target_specificity=1.2, device="cpu", progress=False)
    with pytest.raises(ConfigError, match="name"):
        calibrate_run(run, normals_only, name="default", device="cpu", progress=False)


def test_calibrate_job_stores_the_point_and_says_how_to_use_it(tmp_path):
    from covidscreen.workflows.calibrate import calibrate_job, describe_calibration

    run = _tiny_run(tmp_path)
    outcome = calibrate_job(run, _local_folder(tmp_path), target_specificity=0.75, name="site-a", device="cpu")
    assert json.loads((run / "model.json").read_text())["operating_points"]["site-a"] == outcome.record["threshold"]
    lines = outcome.lines()
    assert lines == describe_calibration(outcome.record, "site-a")
    assert lines[0].startswith("operating point 'site-a': threshold ")
    assert lines[-1] == "use it: covidscreen predict RUN_DIR FILES --operating-point site-a"
    with pytest.raises(ConfigError, match="target-specificity"):
        calibrate_job(run, _local_folder(tmp_path / "b"), target_specificity=1.2, device="cpu")
