"""Site commissioning end to end on a trained run: the record, the page, the bad samples a user will try, and the
go path (stored point, model card, verify, --require-commissioning)."""

import json
import shutil

import pandas as pd
import pytest

from covidscreen.config import TrainConfig
from covidscreen.errors import ConfigError, DataError
from covidscreen.evaluation import acceptance
from covidscreen.inference.run import load_run
from covidscreen.reporting.model_card import model_card
from covidscreen.security.integrity import format_provenance, provenance
from covidscreen.workflows import commission as cm
from tests.explain_fixtures import write_synthetic_folder
from tests.test_cli import assert_clean_error, run_cli, run_cli_in_process

KEYS = {"verdict", "reason", "n_images", "n_skipped", "ood_flag_rate", "operating_point", "specificity",
        "sensitivity", "auc", "images_needed"}


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    return write_synthetic_folder(tmp_path_factory.mktemp("site") / "local", per_class=30, seed=7)


def only(folder, out, label):
    shutil.copytree(folder, out)
    meta = pd.read_csv(out / "metadata.csv")
    meta[meta["label"] == label].to_csv(out / "metadata.csv", index=False)
    return out


def test_both_classes(tiny_run, local, tmp_path):
    rec = cm.commission(tiny_run, local, tmp_path / "c", progress=False, n_boot=200)
    assert KEYS <= set(rec) and rec["verdict"] in acceptance.VERDICTS
    assert rec["n_images"] == 60 and rec["n_skipped"] == 0 and rec["n_positive"] == 30
    for key in ("specificity", "sensitivity", "auc"):
        f = rec[key]
        assert set(f) == {"estimate", "ci_low", "ci_high", "n"} and f["ci_low"] <= f["estimate"] <= f["ci_high"]
    # figures are estimated on the half the threshold was not chosen on
    scores = pd.read_csv(tmp_path / "c" / "commission_scores.csv")
    est = scores[scores["part"] == "estimate"]
    assert rec["specificity"]["n"] == (~est["positive"]).sum() and rec["sensitivity"]["n"] == est["positive"].sum()
    assert 0 <= rec["ood_flag_rate"] <= 1 and rec["ood_detector"] == TrainConfig().ood_detector
    page = (tmp_path / "c" / "commission.html").read_text()
    assert page.index(rec["verdict"].upper()) < page.index("Figures") and "data:image/png;base64" in page
    saved = json.loads((tmp_path / "c" / "commission.json").read_text())
    assert saved["verdict"] == rec["verdict"] and saved["reason"] == rec["reason"]


def test_normals_only_estimates_specificity(tiny_run, local, tmp_path):
    rec = cm.commission(tiny_run, only(local, tmp_path / "n", "normal"), tmp_path / "c", progress=False)
    assert rec["sensitivity"] is None and rec["auc"] is None and rec["specificity"]["n"] > 0
    assert rec["images_needed"]["positive"] is None


def test_bad_samples(tiny_run, local, tmp_path):
    rec = cm.commission(tiny_run, only(local, tmp_path / "p", "covid"), tmp_path / "c1", progress=False)
    assert rec["verdict"] == "insufficient-data" and "no non-covid image" in rec["reason"]
    bad = tmp_path / "bad" / "normal"
    bad.mkdir(parents=True)
    for i in range(5):
        (bad / f"x{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    rec = cm.commission(tiny_run, bad.parent, tmp_path / "c2", progress=False)
    assert rec["verdict"] == "insufficient-data" and rec["n_skipped"] == 5 and rec["n_images"] == 0
    assert "could be read" in rec["reason"] and (tmp_path / "c2" / "commission.html").is_file()
    one = tmp_path / "one"
    shutil.copytree(local, one)
    meta = pd.read_csv(one / "metadata.csv")
    meta["patient_id"] = "p1"
    meta[meta["label"] == "normal"].to_csv(one / "metadata.csv", index=False)
    rec = cm.commission(tiny_run, one, tmp_path / "c3", progress=False)
    assert rec["verdict"] == "insufficient-data" and "single patient" in rec["reason"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no labelled images"):
        cm.commission(tiny_run, tmp_path / "empty", tmp_path / "c4", progress=False)
    with pytest.raises(ConfigError, match="target-specificity"):
        cm.commission(tiny_run, local, tmp_path / "c5", target_specificity=1.2, progress=False)
    assert_clean_error(run_cli("commission", str(tiny_run), "--data", str(tmp_path / "empty"), "--output",
                               str(tmp_path / "c6")), "holds no labelled images")


def test_go_stores_the_point_and_serving_requires_it(tiny_run, local, tmp_path, monkeypatch):
    run_dir = shutil.copytree(tiny_run, tmp_path / "run")
    with pytest.raises(ConfigError, match="no 'go' commissioning record named 'ward7'"):
        cm.require_commissioning(run_dir, "ward7")
    monkeypatch.setattr(cm.acceptance, "figure_verdict", lambda fig, target: acceptance.GO)
    rec = cm.commission(run_dir, local, tmp_path / "c", name="ward7", progress=False, n_boot=100)
    assert rec["verdict"] == "go"
    run = load_run(run_dir)
    assert run.threshold("ward7") == pytest.approx(rec["operating_point"])
    com = run.commissioning["ward7"]
    assert com.verdict == "go" and com.data_fingerprint == rec["data_fingerprint"] and len(com.data_fingerprint) == 64
    assert "ward7" in cm.require_commissioning(run_dir, "ward7")
    assert "Site commissioning `ward7`: **go**" in model_card(run_dir)
    assert "commissioning 'ward7': go" in format_provenance(provenance(run_dir))
    # the CLI refuses to start without the record (before loading anything); in process, as serve and dicom-node have
    # their subprocess tests (cli/test_serve.py, dicomnet/test_cli.py)
    assert_clean_error(run_cli_in_process("serve", str(run_dir), "--require-commissioning", "ward8", "--port", "1"),
                       "no 'go' commissioning record named 'ward8'")
    assert_clean_error(run_cli_in_process("dicom-node", str(run_dir), "--require-commissioning", "ward8", "--port",
                                          "1"), "no 'go' commissioning record named 'ward8'")


def test_commission_job_prints_the_verdict_and_on_go_how_to_use_it(tmp_path):
    out, run = tmp_path / "c", tmp_path / "run"
    rec = {"verdict": acceptance.GO, "reason": "Specificity holds.", "n_images": 40, "n_skipped": 2}
    assert cm.CommissionOutcome(run, out, "ward8", rec).lines() == [
        "verdict: go - Specificity holds.", f"40 image(s) scored, 2 skipped; {out / 'commission.html'}",
        f"stored as operating point 'ward8': covidscreen predict {run} FILES --operating-point ward8"]
    no_go = cm.CommissionOutcome(run, out, "ward8", {**rec, "verdict": acceptance.NO_GO})
    assert len(no_go.lines()) == 2 and no_go.lines()[0].startswith("verdict: no-go - ")


def test_commission_job_runs_the_acceptance_test(tiny_run, local, tmp_path):
    outcome = cm.commission_job(tiny_run, only(local, tmp_path / "n", "normal"), tmp_path / "c", name="ward",
                                device="cpu")
    saved = json.loads((tmp_path / "c" / "commission.json").read_text())
    assert outcome.record["verdict"] == saved["verdict"] and outcome.output == tmp_path / "c"
    assert outcome.lines()[0] == f"verdict: {saved['verdict']} - {saved['reason']}"
    with pytest.raises(ConfigError, match="target-specificity"):
        cm.commission_job(tiny_run, local, tmp_path / "d", target_specificity=1.5)
