"""`security/scan.py`: the scan cache keyed by the weights' sha256, the verdict of `covidscreen scan`, and the
start-up refusal of a model that its last scan flagged (service and DICOM node)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from safetensors.torch import load_file, save_file

from covidscreen.errors import CheckpointError, ConfigError
from covidscreen.inference.checkpoint import save_checkpoint
from covidscreen.models import create_model
from covidscreen.security import scan as scans
from covidscreen.security.integrity import SCAN_FILE, sha256_of
from tests.test_cli import assert_clean_error, run_cli_in_process


def _run(root, name="run"):
    """An untrained 64 px run with a split.csv of 12 validation images."""
    run = root / name
    save_checkpoint(run, create_model("squeezenet1_1", pretrained=False, num_classes=2),
                    {"classes": ["covid", "normal"], "image_size": 64, "positive_class": "covid", "threshold": 0.5,
                     "split_fingerprint": "abc", "seed": 0})
    rng = np.random.default_rng(0)
    rows = []
    for i in range(12):
        path = root / f"{name}_val{i}.png"
        Image.fromarray(rng.integers(0, 200, (80, 80), dtype=np.uint8)).save(path)
        rows.append({"image": path.name, "path": str(path), "label": ["covid", "normal"][i % 2], "split": "val",
                     "group": f"p{i}"})
    pd.DataFrame(rows).to_csv(run / "split.csv", index=False)
    return run


@pytest.fixture
def run_dir(tmp_path):
    return _run(tmp_path)


def _patches(success: dict[str, float]) -> dict:
    """A cached patch search's result (``scans.model_patch_results``) with these successes, every patch at (0, 0)."""
    return {"success": success, "position": {k: [0, 0] for k in success}, "side": 3}


def _flag(run_dir, sha: str | None = None) -> None:
    sha = sha or sha256_of(run_dir / "model.safetensors")
    (run_dir / SCAN_FILE).write_text(json.dumps({"model": {
        "flagged": True, "weights_sha256": sha, "date": "2026-12-06T10:00:00",
        "summary": "model scan: BACKDOOR SUSPECTED: a patch sends 100% of images to 'normal'"}}))


def test_cache_is_keyed_by_the_weights_and_computes_once(run_dir):
    calls = []

    def compute():
        calls.append(1)
        return {"covid": 0.25}

    assert scans.cached_result(run_dir, "k", compute) == ({"covid": 0.25}, False)
    assert scans.cached_result(run_dir, "k", compute) == ({"covid": 0.25}, True)  # a second scan reuses it
    assert len(calls) == 1
    assert scans.cached_result(run_dir, "other settings", compute)[1] is False
    # new weights in the same folder (and a sidecar rewritten to match): a new model, computed again
    weights = run_dir / "model.safetensors"
    state = load_file(weights)
    name = next(iter(state))
    state[name] = state[name] + 1
    save_file(state, weights)
    meta = json.loads((run_dir / "model.json").read_text())
    meta["weights_sha256"] = sha256_of(weights)
    (run_dir / "model.json").write_text(json.dumps(meta))
    assert scans.cached_result(run_dir, "k", compute)[1] is False
    assert len(calls) == 3
    assert (scans.scan_cache_dir() / f"{sha256_of(weights)}.json").is_file()  # outside the run folder


def test_scan_prints_a_plain_verdict_with_next_steps_and_reuses_the_references(run_dir, tmp_path):
    refs = [_run(tmp_path, "ref1"), _run(tmp_path, "ref2")]
    side, steps, seed = 3, 12, 0  # what `covidscreen scan` uses at 64 px
    for run, best in ((run_dir, {"covid": 1.0, "normal": 0.2}), (refs[0], {"covid": 0.3, "normal": 0.25}),
                      (refs[1], {"covid": 0.25, "normal": 0.3})):
        scans.cached_result(run, scans.patch_cache_key(side, steps, seed), lambda b=best: _patches(b))
        scans.cached_result(run, f"cleanse:24:150:{seed}", lambda: {"covid->normal": 30.0, "normal->covid": 35.0})
        scans.cached_result(run, f"mmbd:300:8:{seed}", lambda: {"covid": 30.0, "normal": 31.0})
    # in process: the subprocess runs of scan are in security/test_backdoor_experiment.py and test_cli_security.py
    proc = run_cli_in_process("scan", str(run_dir), "--reference", str(refs[0]), "--reference", str(refs[1]))
    assert proc.returncode == 0, proc.stderr
    assert "BACKDOOR SUSPECTED" in proc.stdout and "Do not use it on patients" in proc.stdout
    assert f"covidscreen sanitize {run_dir}" in proc.stdout and "--allow-flagged-model" in proc.stdout
    assert "[scan 1/3] model" in proc.stderr and "[scan 3/3]" in proc.stderr  # progress per model
    record = json.loads((run_dir / SCAN_FILE).read_text())["model"]
    assert record["flagged"] and record["weights_sha256"] == sha256_of(run_dir / "model.safetensors")

    clean = run_cli_in_process("scan", str(refs[0]), "--reference", str(refs[1]), "--reference", str(run_dir))
    assert clean.returncode == 0, clean.stderr
    assert "no sign of a backdoor" in clean.stdout and "evidence, not proof" in clean.stdout


def test_a_flagged_model_is_refused_unless_overridden(run_dir):
    assert scans.refuse_flagged_model(run_dir) is None  # never scanned: nothing to refuse
    _flag(run_dir)
    with pytest.raises(CheckpointError, match="--allow-flagged-model") as info:
        scans.refuse_flagged_model(run_dir)
    assert "covidscreen sanitize" in str(info.value) and "BACKDOOR SUSPECTED" in str(info.value)
    assert "--allow-flagged-model was given" in scans.refuse_flagged_model(run_dir, allow=True)
    _flag(run_dir, sha="0" * 64)  # a scan of other weights says nothing about these
    assert scans.refuse_flagged_model(run_dir) is None


def test_service_and_dicom_node_refuse_a_flagged_model_at_start(run_dir, tmp_path):
    from covidscreen.dicomnet import DicomNode, NodeConfig
    from covidscreen.serving.config import ServeConfig
    from covidscreen.serving.service import Screening

    _flag(run_dir)
    # in process (serve and dicom-node have their subprocess tests: cli/test_serve.py, dicomnet/test_cli.py)
    assert_clean_error(run_cli_in_process("serve", str(run_dir), "--port", "8799"),
                       "last backdoor scan .* --allow-flagged-model")
    assert_clean_error(run_cli_in_process("dicom-node", str(run_dir), "--port", "11199"), "--allow-flagged-model")
    with pytest.raises(CheckpointError, match="allow-flagged-model"):
        Screening(ServeConfig(run_dir=run_dir, db=f"sqlite:///{tmp_path / 'a.sqlite'}"))
    screening = Screening(ServeConfig(run_dir=run_dir, db=f"sqlite:///{tmp_path / 'a.sqlite'}",
                                      allow_flagged_model=True))
    assert "started anyway" in screening.scan_warning
    with pytest.raises(CheckpointError, match="allow-flagged-model"):
        DicomNode(NodeConfig(run_dir, port=0, workdir=tmp_path / "node"))
    node = DicomNode(NodeConfig(run_dir, port=0, workdir=tmp_path / "node2", allow_flagged_model=True))
    assert node.scorer is not None


def test_scan_job_strip_prints_the_table_unless_written(run_dir, tmp_path):
    img = tmp_path / "x.png"
    Image.fromarray(np.full((70, 70), 30, dtype=np.uint8)).save(img)
    shown = scans.scan_job(run_dir, [str(img)], frr=0.1)
    assert shown.kind == "strip" and shown.output is None and len(shown.table) == 1
    lines = shown.text().splitlines()
    assert lines[0] == "path,strip_entropy,strip_flag,error" and lines[1].startswith(str(img))
    assert lines[2].startswith("STRIP: ") and lines[2].endswith("of 1 input(s) flagged as carrying a trigger (at "
                                                               "10.0% FRR)")
    written = scans.scan_job(run_dir, [str(img)], data=tmp_path, frr=0.1, output=tmp_path / "o" / "strip.csv")
    assert written.kind == "strip" and written.text() == written.summary  # --inputs wins over --data
    assert pd.read_csv(tmp_path / "o" / "strip.csv")["path"].tolist() == [str(img)]


def test_scan_job_training_set_scan_writes_its_table(run_dir, tmp_path):
    from tests.conftest import make_image_folder

    data = make_image_folder(tmp_path / "data", n_per_class=6, size=64)
    # the model scan's patch search, as cached by an earlier scan (its cost is the model scan's, tested there)
    scans.cached_result(run_dir, scans.patch_cache_key(3), lambda: {
        "success": {"covid": 0.9, "normal": 0.2}, "position": {"covid": [0, 0], "normal": [30, 30]}, "side": 3})
    outcome = scans.scan_job(run_dir, data=data, expected_fraction=0.2, output=tmp_path / "data.csv")
    table = pd.read_csv(tmp_path / "data.csv")
    assert outcome.kind == "data" and len(table) == 12 and outcome.text() == outcome.summary
    first, *most_likely = outcome.summary.splitlines()
    assert first == (f"training-set scan: {int(table['transplant_flag'].sum())} of 12 flagged by the trigger "
                     f"transplant, {int(table['spectral_flag'].sum())} by spectral signatures, "
                     f"{int(table['spectre_flag'].sum())} by SPECTRE, {int(table['cluster_flag'].sum())} by activation "
                     "clustering; most likely poisoned first:") and most_likely == table["path"].head(10).tolist()
    assert table["transplant_score"].between(0, 1 / 0.2).all()  # relative to the patch's success
    record = json.loads((run_dir / SCAN_FILE).read_text())["data"]
    assert record["patch_position"] == {"covid": [0, 0], "normal": [30, 30]} and record["patch_side"] == 3
    assert record["transplant_flagged"] == int(table["transplant_flag"].sum())
    # the transplant takes the patch side (it runs the patch search); the model scan's budget does not apply
    assert_clean_error(run_cli_in_process("scan", str(run_dir), "--data", str(data), "--steps", "3"),
                       "--steps sets the model scan \\(--reference\\); it does not apply to the training-set scan")


def test_the_training_set_scan_of_an_ensemble_names_its_members(run_dir, tmp_path):
    from covidscreen.inference.run import read_sidecar

    (tmp_path / "ens").mkdir()
    (tmp_path / "ens" / "ensemble.json").write_text(json.dumps({
        "format_version": 1, "architecture": "ensemble", "classes": ["covid", "normal"], "positive_class": "covid",
        "image_size": 64, "operating_points": {"default": 0.5},
        "members": [{"path": str(run_dir), "weights_sha256": read_sidecar(run_dir)["weights_sha256"]}] * 2}))
    from tests.conftest import make_image_folder

    data = make_image_folder(tmp_path / "data", n_per_class=6, size=64)
    assert_clean_error(run_cli_in_process("scan", str(tmp_path / "ens"), "--data", str(data)),
                       "is an ensemble: scan the training set with each member run on its own")


def test_scan_job_model_scan_needs_two_references(run_dir):
    from covidscreen.errors import DataError

    with pytest.raises(DataError, match="at least 2 reference runs"):
        scans.scan_job(run_dir, references=[run_dir])


def test_scan_budget_is_in_the_cache_key_recorded_and_checked(run_dir, tmp_path):
    refs = [_run(tmp_path, "ref1"), _run(tmp_path, "ref2")]
    small = {"--steps": "3", "--images": "2", "--mmbd-steps": "20"}
    # cached results of the same weights at two budgets: at the small one the model's smallest reversed trigger is
    # tiny (flagged), at the default it is as large as the references' (not flagged)
    for run in (run_dir, *refs):
        mine = run == run_dir
        scans.cached_result(run, scans.patch_cache_key(3), lambda: _patches({"covid": 0.3, "normal": 0.25}))
        scans.cached_result(run, "cleanse:2:3:0", lambda m=mine: {"covid->normal": 5.0 if m else 30.0,
                                                                  "normal->covid": 35.0})
        scans.cached_result(run, "cleanse:24:150:0", lambda: {"covid->normal": 30.0, "normal->covid": 35.0})
        scans.cached_result(run, "mmbd:20:8:0", lambda: {"covid": 30.0, "normal": 31.0})
        scans.cached_result(run, "mmbd:300:8:0", lambda: {"covid": 30.0, "normal": 31.0})
    args = ("scan", str(run_dir), "--reference", str(refs[0]), "--reference", str(refs[1]))
    # in process: the subprocess run of scan with these options is in security/test_backdoor_experiment.py
    proc = run_cli_in_process(*args, *(x for kv in small.items() for x in kv))
    assert proc.returncode == 0, proc.stderr
    assert "BACKDOOR SUSPECTED" in proc.stdout
    assert ("(budget: reversed triggers 3 steps on 2 images per class, MM-BD 20 steps, patch search 12 steps at every "
            "position, measured on 96 images; the default: reversed triggers 150 steps on 24 images per class, MM-BD "
            "300 steps") in proc.stdout
    record = json.loads((run_dir / SCAN_FILE).read_text())["model"]
    assert record["flagged"]
    assert record["budget"] == {"steps": 3, "images": 2, "mmbd_steps": 20, "patch_steps": 12, "patch_images": 96}
    assert "(budget: reversed triggers 3 steps" in record["summary"]
    # the default budget is not served the small budget's results
    proc = run_cli_in_process(*args)
    assert proc.returncode == 0, proc.stderr
    assert "no backdoor found" in proc.stdout and "(budget:" not in proc.stdout
    record = json.loads((run_dir / SCAN_FILE).read_text())["model"]
    assert record["budget"] == {"steps": 150, "images": 24, "mmbd_steps": 300, "patch_steps": 12, "patch_images": 96}
    assert not record["flagged"]

    for option, value, least in (("--steps", "0", 1), ("--images", "1", 2), ("--mmbd-steps", "-5", 1)):
        assert_clean_error(run_cli_in_process(*args, option, value),
                           f"{option} {value} is invalid: expected a whole number >= {least}")
    assert_clean_error(run_cli_in_process("scan", str(run_dir), "--inputs", str(run_dir / "split.csv"), "--steps",
                                          "3", "--mmbd-steps", "20"),
                       "--steps and --mmbd-steps set the model scan \\(--reference\\); they do not apply to STRIP")
    with pytest.raises(ConfigError, match="--images 1.5 is invalid"):  # the job checks what the Python API gets
        scans.scan_job(run_dir, references=refs, images=1.5)
