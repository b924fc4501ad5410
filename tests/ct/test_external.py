"""External validation of a CT run (``covidscreen evaluate RUN --data OTHER_CT_DIR``) and the CLI for series."""

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from covidscreen.cli import app
from covidscreen.errors import ModalityError
from covidscreen.workflows.evaluate import evaluate_run
from tests.conftest import make_image_folder
from tests.ct.conftest import make_ct_folder
from tests.ct.synthetic_ct import write_series


def test_ct_run_is_validated_on_other_ct_data(ct_run, tmp_path):
    other = make_ct_folder(tmp_path / "other", n_per_class=6)
    out = evaluate_run(ct_run, data=other, output=tmp_path / "eval", device="cpu", progress=False, n_boot=20)
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["covid_vs_rest"]["roc_auc"] <= 1 and metrics["covid_vs_rest"]["n"] == 12
    preds = pd.read_csv(out / "predictions.csv")
    assert len(preds) == 12 and preds["prob_covid"].notna().all()


def test_ct_run_refuses_an_xray_folder(ct_run, tmp_path):
    xray = make_image_folder(tmp_path / "xray", n_per_class=4, size=40, classes=("covid", "non_covid"))
    meta = pd.read_csv(xray / "metadata.csv")
    meta["modality"] = "cxr"
    meta.to_csv(xray / "metadata.csv", index=False)
    with pytest.raises(ModalityError, match="holds cxr images .* reads ct"):
        evaluate_run(ct_run, data=xray, output=tmp_path / "eval", device="cpu", progress=False)


def test_predict_series_cli(ct_run, cxr_run, tmp_path):
    folder, uid, _ = write_series(tmp_path / "s", n=5, missing=(2,))
    runner = CliRunner()
    res = runner.invoke(app, ["predict-series", str(ct_run), str(folder), "-o", str(tmp_path / "out.csv"),
                              "--device", "cpu"])
    assert res.exit_code == 0, res.output
    row = pd.read_csv(tmp_path / "out.csv", keep_default_na=False).iloc[0]
    assert row["series_instance_uid"] == uid and row["n_slices"] == 4 and row["gaps"] == 1 and row["error"] == ""
    res = runner.invoke(app, ["predict-series", str(ct_run), str(folder), "--window", "abc"])
    assert res.exit_code != 0 and "LEVEL,WIDTH" in str(res.exception or res.output)
    res = runner.invoke(app, ["predict-series", str(cxr_run), str(folder), "--device", "cpu"])
    assert res.exit_code != 0 and "not CT series" in str(res.exception or res.output)
