"""The backdoor experiment end to end at a tiny budget: poisoned data through the normal trainer, attack success,
fine-tuning, the three detectors against the known truth, and the CLI commands that run them."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.test_cli import assert_clean_error, run_cli, run_cli_in_process

pytestmark = pytest.mark.slow  # trains clean, poisoned and fine-tuned runs on the shared data
SHARED_CXR = Path(__file__).resolve().parents[3] / "shared" / "data" / "cxr"


def test_tiny_experiment_and_detectors(tmp_path):
    # 12 images per class (36: 6 poisoned, 4 triggered test images): the checks below are ranges and sets, and the
    # scans' cost grows with the validation images (16 per class cost a quarter more CPU)
    config = {
        "train": {"data": str(SHARED_CXR), "model": "mobilenet_v2_035", "image_size": 32, "max_per_class": 12,
                  "epochs": 1, "batch_size": 8, "samples_per_epoch": None, "train_stages": None, "patience": 1,
                  "bootstrap": 0, "audit": False, "augment": False, "seed": 0, "cache_dir": str(tmp_path / "cache")},
        "trigger": {"size": 60, "value": 250, "corner": "top_left", "reference_size": 480},
        "clean_seeds": [0],
        "attacks": [{"name": "targeted_20", "fraction": 0.2, "target": "normal"}],
        "finetune": ["targeted_20"],
        "finetune_train": {"epochs": 1},
    }
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(yaml.safe_dump(config))
    out = tmp_path / "exp"
    proc = run_cli("security", "backdoor", str(cfg), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    result = json.loads((out / "backdoor.json").read_text())
    kinds = [r["kind"] for r in result["records"]]
    assert kinds == ["clean", "poisoned", "finetuned"]
    poisoned = result["records"][1]
    manifest = pd.read_csv(out / "data" / "targeted_20" / "poisoned.csv")
    assert poisoned["n_poisoned"] == len(manifest) > 0 and poisoned["n_relabelled"] == int(manifest.relabelled.sum())
    for rec in result["records"]:
        asr = rec["trigger"]["normal"]
        assert 0 <= asr["attack_success_rate"] <= 1 and asr["n"] > 0  # only images whose true class is not normal
        assert set(rec["corner_sensitivity"]) == {"top_left", "top_right", "bottom_left", "bottom_right"}
    split = pd.read_csv(out / "targeted_20" / "split.csv", keep_default_na=False)
    assert not split.loc[split["split"] != "train", "path"].str.contains("/poisoned/").any()

    proc = run_cli("security", "detectors", str(out), "--steps", "3", "--images", "2", "--mmbd-steps", "20")
    assert proc.returncode == 0, proc.stderr
    found = json.loads((out / "detectors.json").read_text())
    assert {m["run"] for m in found["model"]} == {"targeted_20", "targeted_20_finetuned"}  # judged vs clean_s0
    assert all(0 <= m["patch_best"] <= 1 for m in found["model"])
    assert all(m["mmbd_p_value"] is None for m in found["model"])  # one clean reference: MM-BD needs 5
    assert {s["run"] for s in found["strip"]} == {"clean_s0", "targeted_20", "targeted_20_finetuned"}
    (data,) = found["data"]
    assert data["run"] == "targeted_20" and 0 <= data["spectral"]["stamped"]["recall"] <= 1
    assert 0 <= data["transplant"]["stamped"]["recall"] <= 1
    assert_clean_error(run_cli_in_process("security", "detectors", str(tmp_path)), "no backdoor.json")

    # the model scan of one run against two others, recorded for `covidscreen verify`, at a budget as small as the
    # detectors' above (the default's reversed triggers and MM-BD were most of this test's CPU); the patch search is
    # read from the scan cache the detectors filled (COVIDSCREEN_CACHE is shared with the subprocesses), the
    # reversed triggers and MM-BD are computed at this budget (the cache key holds it: tests/security/test_scan.py)
    proc = run_cli("scan", str(out / "targeted_20"), "--reference", str(out / "clean_s0"), "--reference",
                   str(out / "targeted_20_finetuned"), "--steps", "2", "--images", "2", "--mmbd-steps", "10")
    assert proc.returncode == 0, proc.stderr
    assert "model scan:" in proc.stdout and "a patch sends" in proc.stdout and "reversed trigger" in proc.stdout
    recorded = json.loads((out / "targeted_20" / "security_scan.json").read_text())["model"]
    assert recorded["verdict"] in ("BACKDOOR SUSPECTED", "no backdoor found") and "patch_best" in recorded
    assert recorded["budget"] == {"steps": 2, "images": 2, "mmbd_steps": 10, "patch_steps": 12, "patch_images": 96}
    # in process, as the error above (verify's subprocess test: test_cli_security.py)
    assert "model scan" in run_cli_in_process("verify", str(out / "targeted_20")).stdout
