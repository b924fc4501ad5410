import json

import numpy as np
import pandas as pd
import pytest

from covidscreen.config import resolve_train_config
from covidscreen.inference.predictor import Predictor
from covidscreen.workflows.fit import fit
from tests.conftest import make_image_folder


@pytest.mark.parametrize("head", ["logistic", "gradient-boosting"])
def test_frozen_head_run_is_an_ordinary_run_the_predictor_reproduces(tmp_path, head):
    root = make_image_folder(tmp_path / "d", n_per_class=10, size=40)
    cfg = resolve_train_config(None, data=str(root), output=str(tmp_path / "r"), model="mobilenet_v2_035",
                               pretrained=False, image_size=32, head=head, split=[0.5, 0.25, 0.25], bootstrap=0,
                               audit=False)
    run = fit(cfg, progress=False)
    meta = json.loads((run / "model.json").read_text())
    assert meta["frozen_head"]["kind"] == head
    assert not list(run.glob("*.pkl")) and not list(run.glob("*.joblib"))
    preds = pd.read_csv(run / "predictions.csv")
    test = preds[preds["split"] == "test"]
    out = Predictor(run, device="cpu").predict_files([str(root / p) for p in test["image"]], progress=False)
    # the Predictor rebuilds the head from model.json + model.safetensors and gives the run's own probabilities
    np.testing.assert_allclose(out["prob_covid"].to_numpy(), test["prob_covid"].to_numpy(), atol=1e-5)
    if head == "logistic":  # brightness separates the classes: even random-trunk features carry it
        assert json.loads((run / "metrics.json").read_text())["val"]["covid_vs_rest"]["roc_auc"] >= 0.75
