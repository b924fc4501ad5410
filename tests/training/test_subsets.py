"""Which images a run uses: binary task, k folds, nested training subsets, site/label filters."""

import numpy as np
import pandas as pd
import pytest

from covidscreen.data.locate import resolve_data_dir
from covidscreen.data.splits import patient_grouped_kfold
from covidscreen.data.table import load_table
from covidscreen.errors import DataError
from covidscreen.training.subsets import (
    apply_task,
    assign_splits,
    filter_rows,
    fold_split,
    training_patient_subset,
)


def _table(n_patients: int = 120, seed: int = 0) -> pd.DataFrame:
    """Synthetic table: patients with 1-4 images each, three labels (covid rare), two sites."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        label = rng.choice(["covid", "normal", "pneumonia"], p=[0.2, 0.4, 0.4])
        for i in range(int(rng.integers(1, 5))):
            rows.append({"image": f"p{p}_{i}.png", "label": label, "group": f"pat{p}",
                         "site": "a" if p % 3 else "b"})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def cxr() -> pd.DataFrame:
    return load_table(resolve_data_dir(None))


def test_binary_task_relabels_but_keeps_the_multiclass_split():
    t = _table()
    multi = apply_task(t, "multiclass", "covid")
    binary = apply_task(t, "binary", "covid")
    assert set(binary["label"]) == {"covid", "non_covid"}
    assert (binary["label"] == "covid").sum() == (t["label"] == "covid").sum()
    assert (binary["original_label"] == t["label"]).all()
    assert (assign_splits(multi, (0.6, 0.2, 0.2), 3) == assign_splits(binary, (0.6, 0.2, 0.2), 3)).all()
    with pytest.raises(DataError, match="positive_class"):
        apply_task(t[t["label"] != "covid"], "binary", "covid")
    # evaluation on data without positives is allowed
    assert set(apply_task(t[t["label"] != "covid"], "binary", "covid", require_positive=False)["label"]) == {
        "non_covid"}


@pytest.mark.parametrize("k", [3, 5, 10])
def test_k_folds_are_patient_disjoint_and_test_every_patient_once(k, cxr):
    folds = patient_grouped_kfold(cxr, k, seed=0)
    assert folds.notna().all() and set(folds) == set(range(k))
    assert (cxr.assign(f=folds).groupby("group")["f"].nunique() == 1).all()  # a patient sits in one fold only
    tested = pd.concat([cxr["group"][fold_split(folds, k, i) == "test"] for i in range(k)])
    assert set(tested) == set(cxr["group"]) and len(tested) == len(cxr)  # every image tested exactly once
    for i in range(k):
        split = fold_split(folds, k, i)
        groups = {s: set(cxr["group"][split == s]) for s in ("train", "val", "test")}
        assert not (groups["train"] & groups["val"] or groups["train"] & groups["test"]
                    or groups["val"] & groups["test"])
        assert (split == "val").any() and (split == "train").any()
    # stratified: every fold holds about 1/k of each label
    share = pd.crosstab(folds, cxr["label"], normalize="columns")
    assert np.allclose(share.to_numpy(), 1 / k, atol=0.05)


def test_assign_splits_uses_the_fold():
    t = apply_task(_table(), "multiclass", "covid")
    s0 = assign_splits(t, (0.7, 0.15, 0.15), 0, folds=4, fold=0)
    s1 = assign_splits(t, (0.7, 0.15, 0.15), 0, folds=4, fold=1)
    assert set(t["group"][s0 == "val"]) == set(t["group"][s1 == "test"])  # fold 1 validates fold 0's model


def test_training_subsets_are_nested_stratified_and_leave_val_and_test_alone():
    t = apply_task(_table(300), "multiclass", "covid")
    split = assign_splits(t, (0.7, 0.15, 0.15), 0)
    kept = {}
    for f in (0.05, 0.1, 0.25, 0.5, 1.0):
        s = training_patient_subset(t, split, f, seed=0)
        assert (s[split != "train"] == split[split != "train"]).all()
        assert set(s[split == "train"]) <= {"train", "unused"}
        kept[f] = set(t["group"][s == "train"])
        n_train_patients = t["group"][split == "train"].nunique()
        assert len(kept[f]) == pytest.approx(f * n_train_patients, abs=3)
        assert set(t["label"][s == "train"]) == {"covid", "normal", "pneumonia"}  # every label keeps patients
        assert (t.assign(s=s).groupby("group")["s"].nunique() == 1).all()  # whole patients
    assert kept[0.05] <= kept[0.1] <= kept[0.25] <= kept[0.5] <= kept[1.0]


def test_filter_rows_by_site_and_label():
    t = apply_task(_table(), "binary", "covid")
    m = filter_rows(t, ["a"], ["normal", "pneumonia"])  # labels refer to the original labels
    assert set(t["site"][m]) == {"a"} and set(t["original_label"][m]) == {"normal", "pneumonia"}
    assert filter_rows(t, None, None).all()
    with pytest.raises(DataError, match="'sites': nowhere not in the data"):
        filter_rows(t, ["nowhere"], None)
