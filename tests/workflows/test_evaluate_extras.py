import json

import numpy as np
import pandas as pd
import pytest

from covidscreen.errors import DataError
from covidscreen.evaluation.readers import mcnemar_exact
from covidscreen.workflows.evaluate import evaluate_run
from covidscreen.workflows.evaluate_extras import add_extras


def test_robustness_and_readers_in_the_evaluation_folder_and_report(tiny_run, tmp_path):
    out = evaluate_run(tiny_run, output=tmp_path / "eval", device="cpu", progress=False, n_boot=0)
    preds = pd.read_csv(out / "predictions.csv")
    truth = (preds["label"] == "covid").to_numpy()
    rng = np.random.default_rng(0)
    flip = rng.random(len(preds)) < 0.3
    reader = np.where(truth ^ flip, "covid", "normal")  # a reader wrong on ~30% of the images
    pd.DataFrame({"image": preds["image"], "dr_a": reader, "dr_b": np.where(truth, 1, 0)}).to_csv(
        tmp_path / "readers.csv", index=False)

    lines = add_extras(tiny_run, out, robustness=True, readers=tmp_path / "readers.csv", device="cpu",
                       progress=False)
    assert any(line.startswith("reader dr_a") for line in lines)

    rob = pd.read_csv(out / "robustness.csv")
    assert set(rob["perturbation"]) == {"scale", "translation", "rotation", "crop", "brightness", "contrast", "jpeg",
                                        "noise"}
    at_zero = rob[rob["strength"] == 0]
    # strength 0 is the identity: no decision changes, the unperturbed AUC
    assert (at_zero["decision_change"] == 0).all()
    assert at_zero["auc"].nunique() == 1
    assert (out / "robustness.png").stat().st_size > 1000

    result = json.loads((out / "readers.json").read_text())
    model = (preds["prediction"] == "covid").to_numpy()
    expected = mcnemar_exact(truth, model, reader == "covid")
    assert result["readers"]["dr_a"]["mcnemar"] == expected
    assert result["readers"]["dr_b"]["sensitivity"] == 1.0 and result["readers"]["dr_b"]["specificity"] == 1.0
    html = (out / "report.html").read_text()
    assert "Robustness under acquisition changes" in html and "Comparison with human readers" in html


def test_readers_file_naming_unscored_images_is_a_clear_error(tiny_run, tmp_path):
    out = evaluate_run(tiny_run, output=tmp_path / "eval", device="cpu", progress=False, n_boot=0)
    pd.DataFrame({"image": ["nowhere.png"], "dr": [1]}).to_csv(tmp_path / "r.csv", index=False)
    with pytest.raises(DataError, match="not scored"):
        add_extras(tiny_run, out, readers=tmp_path / "r.csv", device="cpu", progress=False)
    pd.DataFrame({"image": ["x.png"]}).to_csv(tmp_path / "r2.csv", index=False)
    with pytest.raises(DataError, match="one column of decisions per reader"):
        add_extras(tiny_run, out, readers=tmp_path / "r2.csv", device="cpu", progress=False)
