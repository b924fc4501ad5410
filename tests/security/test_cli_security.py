"""`covidscreen verify`, `scan` and `predict --strip/--expect-sha256`: thin commands with clean errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from covidscreen.cli import app
from covidscreen.inference.checkpoint import save_checkpoint
from covidscreen.models import create_model
from covidscreen.security.fuzz import png_bomb
from covidscreen.security.integrity import sha256_of
from tests.test_cli import assert_clean_error, run_cli, run_cli_in_process

runner = CliRunner()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """An (untrained) run with a split.csv whose validation images STRIP can calibrate on."""
    root = tmp_path_factory.mktemp("secrun")
    torch_model = create_model("squeezenet1_1", pretrained=False, num_classes=2)
    run = root / "run"
    save_checkpoint(run, torch_model, {"classes": ["covid", "normal"], "image_size": 64, "positive_class": "covid",
                                       "threshold": 0.5, "split_fingerprint": "abc", "seed": 0})
    rng = np.random.default_rng(0)
    rows = []
    for i in range(12):
        path = root / f"val{i}.png"
        Image.fromarray(rng.integers(0, 200, (80, 80), dtype=np.uint8)).save(path)
        rows.append({"image": path.name, "path": str(path), "label": ["covid", "normal"][i % 2], "split": "val",
                     "group": f"p{i}"})
    pd.DataFrame(rows).to_csv(run / "split.csv", index=False)
    return run


def test_verify_prints_provenance_and_refuses_a_wrong_pin(run_dir):
    good = sha256_of(run_dir / "model.safetensors")
    ok = run_cli("verify", str(run_dir), "--expect-sha256", good)
    assert ok.returncode == 0, ok.stderr
    assert good in ok.stdout and "split fingerprint: abc" in ok.stdout and "integrity checks passed" in ok.stdout
    # the refusals in process (the subprocess runs of verify and predict: above, and test_cli.py)
    assert_clean_error(run_cli_in_process("verify", str(run_dir), "--expect-sha256", "0" * 64),
                       "integrity check failed")
    assert_clean_error(run_cli_in_process("predict", str(run_dir), str(run_dir / "split.csv"), "--expect-sha256",
                                          "1" * 64), "expect-sha256 expects")


def test_predict_strip_flags_and_hostile_files_get_an_error_row(run_dir, tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_bomb(20_000, 20_000))
    good = tmp_path / "good.png"
    Image.fromarray(np.full((70, 70), 90, dtype=np.uint8)).save(good)
    out = tmp_path / "preds.csv"
    result = runner.invoke(app, ["predict", str(run_dir), str(bomb), str(good), "--strip", "-o", str(out)])
    assert result.exit_code == 0, result.output
    preds = pd.read_csv(out, keep_default_na=False).set_index("path")
    assert "too large" in preds.loc[str(bomb), "error"]
    assert preds.loc[str(good), "error"] == "" and str(preds.loc[str(good), "strip_flag"]) in ("True", "False")
    assert float(preds.loc[str(good), "strip_entropy"]) >= 0


def test_scan_inputs_is_recorded_for_verify(run_dir, tmp_path):
    img = tmp_path / "x.png"
    Image.fromarray(np.full((70, 70), 30, dtype=np.uint8)).save(img)
    result = runner.invoke(app, ["scan", str(run_dir), "--inputs", str(img), "--frr", "0.1"])
    assert result.exit_code == 0, result.output
    assert "STRIP: " in result.output
    scans = json.loads((run_dir / "security_scan.json").read_text())
    assert scans["inputs"]["files"] == 1 and scans["inputs"]["frr"] == 0.1
    verified = runner.invoke(app, ["verify", str(run_dir)])
    assert "scan inputs:" in verified.output


def test_model_scan_needs_references(run_dir):
    # in process: scan's subprocess run is in security/test_backdoor_experiment.py
    assert_clean_error(run_cli_in_process("scan", str(run_dir)), "at least 2 reference runs")


def test_model_scan_takes_the_patch_side(run_dir, tmp_path, monkeypatch):
    # in process (scan's subprocess run: security/test_backdoor_experiment.py); the reversed triggers and MM-BD are
    # stubbed (minutes of CPU), the patch search runs at the side given, on the model and its references alike
    from covidscreen.security import scan as scan_module

    monkeypatch.setattr(scan_module, "model_mask_sizes", lambda *a, **k: {"0->1": 10.0, "1->0": 12.0})
    monkeypatch.setattr(scan_module, "model_max_margins", lambda *a, **k: {"covid": 5.0, "normal": 4.0})
    sides = []
    real = scan_module.model_patch_success
    monkeypatch.setattr(scan_module, "model_patch_success",
                        lambda run, side=None, **k: sides.append(side) or real(run, side=side, **k))
    model, refs = tmp_path / "model", []  # copies: the module's run folder keeps no model scan record
    shutil.copytree(run_dir, model)
    for name in ("ref_a", "ref_b"):
        shutil.copytree(run_dir, tmp_path / name)
        refs += ["--reference", str(tmp_path / name)]
    proc = run_cli_in_process("scan", str(model), *refs, "--patch-side", "16")
    assert proc.returncode == 0, proc.stderr
    assert sides == [16, 16, 16] and "a patch sends" in proc.stdout
    recorded = json.loads((model / "security_scan.json").read_text())["model"]
    assert recorded["patch_side"] == 16 and set(recorded["patch_success"]) == {"covid", "normal"}
    assert_clean_error(run_cli_in_process("scan", str(model), *refs, "--patch-side", "65"),
                       "--patch-side 65 is invalid: expected 1 to the model's input side \\(64 px\\)")
    assert_clean_error(run_cli_in_process("scan", str(model), "--inputs", str(model / "split.csv"),
                                          "--patch-side", "3"), "does not apply to STRIP")
