import json

import numpy as np
import pandas as pd
import pytest

from covidscreen.ct.score import predict_series, score_series, series_table
from covidscreen.errors import ModalityError
from covidscreen.inference.modality import ModalityWarning
from covidscreen.inference.predictor import Predictor
from tests.ct.synthetic_ct import radiograph_dataset, write, write_series


def test_ct_run_records_its_modality(ct_run, cxr_run):
    assert json.loads((ct_run / "model.json").read_text())["modality"] == "ct"
    assert json.loads((cxr_run / "model.json").read_text())["modality"] == "cxr"


def test_series_scores_per_slice_and_per_series_naming_driving_slices(ct_run, tmp_path):
    folder, uid, in_order = write_series(tmp_path / "s", n=9, missing=(5,), opacity_slices=(2, 3),
                                         no_lung_slices=(0, 8))
    out = score_series(Predictor(ct_run, device="cpu"), folder)
    assert out["series"]["series_instance_uid"] == uid and out["series"]["n_slices"] == 8
    assert out["series"]["gaps"][0]["missing_slices"] == 1
    slices = out["slices"]
    assert [s["file"] for s in slices] == [str(p) for p in in_order]
    assert [s["used"] for s in slices] == [False] + [True] * 6 + [False]  # slices without lung do not count
    probs = np.array([s["prob_covid"] for s in slices])
    assert np.all((probs >= 0) & (probs <= 1))
    agg = json.loads((ct_run / "ct_aggregation.json").read_text())  # chosen on validation and stored
    assert out["rule"] == agg["rule"] and out["threshold"] == agg["threshold"]
    used = probs[[s["used"] for s in slices]]
    in_rule = [d for d in out["driving_slices"] if d["in_rule"]]
    assert out["prob_covid"] == pytest.approx(np.mean([d["prob_covid"] for d in in_rule]))
    assert min(d["prob_covid"] for d in in_rule) >= np.sort(used)[-len(in_rule)]
    assert len(out["driving_slices"]) >= 3 and all(d["used"] for d in out["driving_slices"])
    assert out["prediction"] == ("covid" if out["prob_covid"] >= out["threshold"] else "non_covid")
    row = series_table([out, {"source": "bad", "error": "boom"}])
    assert list(row["prediction"].fillna("")) == [out["prediction"], ""] and row["error"].iloc[1] == "boom"
    json.dumps(out)  # JSON-ready


def test_ct_series_sent_to_an_xray_model_is_refused(cxr_run, tmp_path):
    folder, _, files = write_series(tmp_path / "s", n=3)
    with pytest.raises(ModalityError, match="reads cxr, not CT series"):
        predict_series(cxr_run, [folder], device="cpu")
    with pytest.raises(ModalityError, match="DICOM Modality CT is a CT slice, but this model reads chest radiographs"):
        score_series(Predictor(cxr_run, device="cpu"), folder)
    # single CT slices through predict: a row with the error, no probabilities
    df = Predictor(cxr_run, device="cpu").predict_files(files[:2], progress=False)
    assert df["error"].str.contains("Modality CT").all() and df["prob_covid"].isna().all()


def test_xray_sent_to_a_ct_model_is_refused(ct_run, tmp_path):
    cr = write(radiograph_dataset(modality="CR"), tmp_path / "cr" / "chest_cr.dcm")
    dx = write(radiograph_dataset(modality="DX"), tmp_path / "dx" / "chest_dx.dcm")
    df = Predictor(ct_run, device="cpu").predict_files([cr, dx], progress=False)
    assert df["error"].str.contains("radiograph, but this model reads CT slices").all()
    assert df["prediction"].eq("").all()
    # a folder of radiograph DICOMs is not a CT series either
    results = predict_series(ct_run, [tmp_path / "cr"], device="cpu")
    assert "DICOM Modality CR, not a CT series" in results[0]["error"]


def test_png_to_a_ct_model_is_predicted_with_a_warning(ct_run, tmp_path):
    from PIL import Image

    png = tmp_path / "slice.png"
    Image.fromarray(np.full((40, 40), 90, np.uint8)).save(png)
    with pytest.warns(ModalityWarning, match="this model reads CT slices"):
        df = Predictor(ct_run, device="cpu").predict_files([png], progress=False)
    assert df["error"].iloc[0] == "" and df["prediction"].iloc[0] in ("covid", "non_covid")
    assert "cannot be checked" in df.attrs["warnings"][0]


def test_ct_dicom_slice_to_a_ct_model_is_predicted_without_warning(ct_run, tmp_path, recwarn):
    _, _, files = write_series(tmp_path / "s", n=2)
    df = Predictor(ct_run, device="cpu").predict_files(files, progress=False)
    assert (df["error"] == "").all() and df["prob_covid"].notna().all()
    assert df.attrs["warnings"] == [] and not [w for w in recwarn if w.category is ModalityWarning]


def test_old_runs_without_modality_read_radiographs(cxr_run, tmp_path):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(cxr_run, old)
    meta = json.loads((old / "model.json").read_text())
    del meta["modality"]
    (old / "model.json").write_text(json.dumps(meta))
    assert Predictor(old, device="cpu").modality == "cxr"
    _, _, files = write_series(tmp_path / "s", n=1)
    assert "Modality CT" in Predictor(old, device="cpu").predict_files(files, progress=False)["error"].iloc[0]


def test_predictions_are_the_same_as_predict_files(ct_run, tmp_path):
    folder, _, files = write_series(tmp_path / "s", n=4)
    out = score_series(Predictor(ct_run, device="cpu"), folder)
    df = Predictor(ct_run, device="cpu").predict_files(files, progress=False)
    np.testing.assert_allclose([s["prob_covid"] for s in out["slices"]], df["prob_covid"], atol=1e-6)
    assert isinstance(pd.DataFrame(out["slices"]), pd.DataFrame)
