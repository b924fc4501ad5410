import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from covidscreen.data.splits import patient_grouped_kfold, patient_grouped_split, split_fingerprint
from covidscreen.errors import ConfigError


def _table(groups: list[int], labels: list[int]) -> pd.DataFrame:
    return pd.DataFrame({
        "image": [f"img{i}.png" for i in range(len(groups))],
        "group": [f"p{g}" for g in groups],
        "label": [["covid", "normal", "pneumonia"][lab] for lab in labels],
    })


rows = st.lists(st.tuples(st.integers(0, 40), st.integers(0, 2)), min_size=1, max_size=300)


@settings(max_examples=60, deadline=None)
@given(rows=rows, seed=st.integers(0, 10_000))
def test_no_patient_crosses_splits_and_every_row_used_once(rows, seed):
    df = _table([g for g, _ in rows], [lab for _, lab in rows])
    split = patient_grouped_split(df, (0.6, 0.2, 0.2), seed=seed)
    assert len(split) == len(df) and split.notna().all()
    assert set(split) <= {"train", "val", "test"}
    assert (df.assign(s=split).groupby("group")["s"].nunique() == 1).all()


@settings(max_examples=40, deadline=None)
@given(rows=rows, k=st.integers(2, 6), seed=st.integers(0, 1000))
def test_kfold_patient_disjoint_and_covering(rows, k, seed):
    df = _table([g for g, _ in rows], [lab for _, lab in rows])
    if df["group"].nunique() < k:
        with pytest.raises(ConfigError):
            patient_grouped_kfold(df, k, seed)
        return
    fold = patient_grouped_kfold(df, k, seed)
    assert fold.notna().all() and set(fold) <= set(range(k))
    assert (df.assign(f=fold).groupby("group")["f"].nunique() == 1).all()


def test_split_is_stratified_seeded_and_fingerprinted():
    rng = np.random.default_rng(1)
    groups = rng.integers(0, 600, 3000)
    labels = (groups % 10 == 0).astype(int) + (groups % 3 == 0)  # label is a property of the patient
    df = _table(list(groups), list(labels))
    a = patient_grouped_split(df, (0.7, 0.15, 0.15), seed=3)
    b = patient_grouped_split(df, (0.7, 0.15, 0.15), seed=3)
    c = patient_grouped_split(df, (0.7, 0.15, 0.15), seed=4)
    assert a.equals(b) and not a.equals(c)
    assert split_fingerprint(df, a) == split_fingerprint(df, b) != split_fingerprint(df, c)
    shares = pd.crosstab(df["label"], a, normalize="index")
    assert ((shares["train"] - 0.7).abs() < 0.08).all()
    assert ((shares["test"] - 0.15).abs() < 0.08).all()


def test_bad_fractions_and_folds():
    df = _table([0, 1], [0, 1])
    with pytest.raises(ConfigError):
        patient_grouped_split(df, (0.5, 0.5, 0.5))
    with pytest.raises(ConfigError, match="folds must be at least 2"):
        patient_grouped_kfold(df, 1)


def test_shared_cxr_split_has_no_patient_leak(shared_data):
    from covidscreen.data.table import load_table

    t = load_table(shared_data / "cxr")
    s = patient_grouped_split(t, seed=0)
    assert (t.assign(s=s).groupby("group")["s"].nunique() == 1).all()
    assert set(s) == {"train", "val", "test"}
    covid = t["label"] == "covid"
    assert 0.6 < (s[covid] == "train").mean() < 0.8
