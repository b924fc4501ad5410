import json

import numpy as np
import pandas as pd
import pytest

from covidscreen.ct.aggregate import AGGREGATION_FILE, aggregate, fit_aggregation, load_or_fit_aggregation, rule_k
from covidscreen.errors import CheckpointError, DataError


def test_rules_on_hand_computed_values():
    p = np.array([0.1, 0.9, 0.3, 0.7, 0.5])
    assert aggregate(p, "max") == (0.9, pytest.approx([1]))
    prob, idx = aggregate(p, "top3")
    assert prob == pytest.approx((0.9 + 0.7 + 0.5) / 3) and list(idx) == [1, 3, 4]
    assert aggregate(p, "mean")[0] == pytest.approx(0.5)
    assert aggregate(np.array([0.2, 0.4]), "top5")[0] == pytest.approx(0.3)  # fewer slices than k: all of them
    assert rule_k("top2", 10) == 2
    with pytest.raises(DataError, match="not known"):
        aggregate(p, "median")
    with pytest.raises(DataError, match="at least one"):
        aggregate(np.array([]), "max")


def _preds(val_patients, test_patients=()):
    rows = []
    for split, patients in (("val", val_patients), ("test", test_patients)):
        for g, (label, probs) in enumerate(patients):
            rows += [{"split": split, "group": f"{split}{g}", "label": label, "prob_covid": p} for p in probs]
    return pd.DataFrame(rows)


def test_rule_is_chosen_on_validation_patients():
    # one spurious high slice per negative patient: max ranks them above positives, the mean of the top 2 does not
    val = [("covid", [0.6, 0.6, 0.6, 0.1]), ("covid", [0.7, 0.5, 0.55, 0.2]),
           ("non_covid", [0.95, 0.1, 0.1, 0.1]), ("non_covid", [0.9, 0.2, 0.1, 0.0])]
    fitted = fit_aggregation(_preds(val, val), "covid")
    assert fitted["rules"]["max"]["val_auc"] == 0.0
    assert all(fitted["rules"][r]["val_auc"] == 1.0 for r in ("top2", "top3", "mean"))
    assert fitted["rule"] == "top2"  # ties go to the earlier (closer to max) rule
    assert fitted["rules"]["top2"]["test_auc"] == 1.0 and fitted["rules"]["top2"]["val_patients"] == 4
    assert 0.55 < fitted["threshold"] <= 0.6  # Youden on the validation patients' top-2 scores
    # the other way round: max wins when positives have one clear slice and negatives none
    val2 = [("covid", [0.9, 0.1, 0.1, 0.1]), ("covid", [0.8, 0.1, 0.0, 0.1]),
            ("non_covid", [0.4, 0.4, 0.4, 0.4]), ("non_covid", [0.3, 0.35, 0.3, 0.3])]
    assert fit_aggregation(_preds(val2), "covid")["rule"] == "max"


def test_fit_needs_both_classes_and_one_label_per_patient():
    with pytest.raises(DataError, match="both classes"):
        fit_aggregation(_preds([("covid", [0.5])]), "covid")
    bad = _preds([("covid", [0.5]), ("non_covid", [0.2])])
    bad.loc[1, "group"] = "val0"
    with pytest.raises(DataError, match="several labels"):
        fit_aggregation(bad, "covid")


def test_load_or_fit_writes_once(tmp_path):
    with pytest.raises(CheckpointError, match="predictions.csv"):
        load_or_fit_aggregation(tmp_path, "covid")
    _preds([("covid", [0.9]), ("non_covid", [0.1])]).to_csv(tmp_path / "predictions.csv", index=False)
    first = load_or_fit_aggregation(tmp_path, "covid")
    assert json.loads((tmp_path / AGGREGATION_FILE).read_text()) == first
    (tmp_path / AGGREGATION_FILE).write_text(json.dumps({**first, "rule": "mean"}))
    assert load_or_fit_aggregation(tmp_path, "covid")["rule"] == "mean"  # a stored choice is kept
