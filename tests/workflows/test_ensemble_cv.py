"""Cross-validating an ensemble on a tiny synthetic data folder: the same patient-grouped folds for every member, the
ensemble refit per fold from the members' fold runs, one table with CIs; clear errors for members that cannot be
ensembled."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from covidscreen.cli import app
from covidscreen.errors import ConfigError
from covidscreen.inference.run import load_run
from covidscreen.workflows.ensemble_cv import members_from_specs
from tests.conftest import make_image_folder

TINY = ("pretrained: false\nimage_size: 32\nepochs: 1\nbatch_size: 8\nsamples_per_epoch: null\nbootstrap: 50\n"
        "audit: false\n")


@pytest.fixture(scope="module")
def ensemble_cv(tmp_path_factory):
    root = tmp_path_factory.mktemp("ecv")
    data = make_image_folder(root / "data", n_per_class=12, size=40)
    (root / "squeeze.yaml").write_text(TINY + "model: squeezenet1_1\n")
    (root / "mobile.yaml").write_text(TINY + "model: mobilenet_v2_035\nimage_size: 40\n")  # another input size
    out = root / "out"
    res = CliRunner().invoke(app, ["ensemble-cv", str(root / "squeeze.yaml"), str(root / "mobile.yaml"), "--folds",
                                   "3", "-o", str(out), "--data", str(data), "--device", "cpu"])
    return root, data, out, res


def test_one_table_with_cis_for_each_member_and_the_ensemble(ensemble_cv):
    _, data, out, res = ensemble_cv
    assert res.exit_code == 0, res.output
    table = pd.read_csv(out / "ensemble_cv.csv")
    assert table["name"].tolist() == ["squeeze", "mobile", "ensemble"]
    for _, r in table.iterrows():
        assert r["roc_auc_low"] <= r["roc_auc"] <= r["roc_auc_high"]
        assert r["sensitivity_low"] <= r["sensitivity"] <= r["sensitivity_high"]
    assert "| ensemble |" in res.output and "95% CI" in res.output and str(out / "ensemble_cv.md") in res.output
    # every patient tested exactly once by the fold ensembles, which were refit per fold from that fold's members
    preds = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    meta = pd.read_csv(data / "metadata.csv")
    test = preds[preds["split"] == "test"]
    assert sorted(test["image"]) == sorted(meta["image"]) and set(test["fold"]) == {0, 1, 2}
    for i in range(3):
        ens = load_run(out / "folds" / f"fold-{i}")
        members = [m.path for m in ens.ensemble_members]
        assert members == [(out / "members" / n / f"fold-{i}").resolve() for n in ("squeeze", "mobile")]
        assert ens.common_split and ens.input_sizes == (32, 40)
        fold = pd.read_csv(out / "folds" / f"fold-{i}" / "predictions.csv", keep_default_na=False)
        own = [pd.read_csv(out / "members" / n / f"fold-{i}" / "predictions.csv") for n in ("squeeze", "mobile")]
        assert np.allclose(fold["prob_covid"], (own[0]["prob_covid"] + own[1]["prob_covid"]) / 2)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["ensemble_cv"]["members"] == ["squeeze", "mobile"] and "ci" in metrics["covid_vs_rest"]


def test_rerunning_resumes_without_training_again(ensemble_cv):
    root, data, out, _ = ensemble_cv
    before = {p: p.stat().st_mtime_ns for p in (out / "members").rglob("model.safetensors")}
    res = CliRunner().invoke(app, ["ensemble-cv", str(root / "squeeze.yaml"), str(root / "mobile.yaml"), "--folds",
                                   "3", "-o", str(out), "--data", str(data), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert {p: p.stat().st_mtime_ns for p in (out / "members").rglob("model.safetensors")} == before


def test_members_that_cannot_share_folds_are_refused(tmp_path):
    (tmp_path / "a.yaml").write_text(TINY + "seed: 1\n")
    (tmp_path / "b.yaml").write_text(TINY + "seed: 2\n")
    with pytest.raises(ConfigError, match="at least two members"):
        members_from_specs([str(tmp_path / "a.yaml")])
    with pytest.raises(ConfigError, match="neither a YAML config file nor a model"):
        members_from_specs([str(tmp_path / "a.yaml"), "not_a_model"])
    from covidscreen.workflows.ensemble_cv import ensemble_cross_validate

    members = members_from_specs([str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml")])
    with pytest.raises(ConfigError, match="differ in 'seed'"):
        ensemble_cross_validate(members, 3, tmp_path / "out")
    same = members_from_specs(["squeezenet1_1", "mobilenet_v2_035"], tmp_path / "a.yaml")
    assert [m.name for m in same] == ["squeezenet1_1", "mobilenet_v2_035"] and same[1].cfg.seed == 1


def test_the_job_resumes_and_prints_the_table_it_wrote(ensemble_cv):
    from covidscreen.workflows.ensemble_cv import ensemble_cv_job

    root, data, out, _ = ensemble_cv
    outcome = ensemble_cv_job([str(root / "squeeze.yaml"), str(root / "mobile.yaml")], 3, out, data=str(data),
                              device="cpu", progress=False)
    assert outcome.output == out
    assert outcome.lines() == [*(out / "ensemble_cv.md").read_text().splitlines(), f"table: {out / 'ensemble_cv.md'}"]


def test_the_job_refuses_bad_members_and_folds_before_training(tmp_path):
    from covidscreen.workflows.ensemble_cv import ensemble_cv_job

    (tmp_path / "a.yaml").write_text(TINY)
    with pytest.raises(ConfigError, match="at least two members"):
        ensemble_cv_job([str(tmp_path / "a.yaml")], 3, tmp_path / "out")
    with pytest.raises(ConfigError, match="--folds 1: cross-validation needs at least 2 folds"):
        ensemble_cv_job(["squeezenet1_1", "mobilenet_v2_035"], 1, tmp_path / "out", tmp_path / "a.yaml")
    assert not (tmp_path / "out").exists()
