import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from covidscreen.data.splits import (
    link_groups,
    patient_grouped_kfold,
    patient_grouped_split,
    read_split_file,
    split_fingerprint,
)
from covidscreen.errors import ConfigError, DataError


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


# --- groups joined by near-duplicates ---------------------------------------------------------------------------

def _linked_table(patients: list[str], labels: list[str] | None = None) -> pd.DataFrame:
    return pd.DataFrame({"image": [f"img{i}.png" for i in range(len(patients))],
                         "group": [p or f"image:img{i}.png" for i, p in enumerate(patients)],
                         "label": labels or ["normal"] * len(patients)})


def test_link_groups_joins_patients_and_near_duplicates_transitively():
    # p1 has images 0 and 1; image 1 is a copy of image 2 (patient p2); image 2 ~ image 4 (no patient id); 3 alone
    t = _linked_table(["p1", "p1", "p2", "p3", ""])
    out = link_groups(t, np.array([1, 2]), np.array([2, 4]))
    assert out["patient"].tolist() == ["p1", "p1", "p2", "p3", "image:img4.png"]
    assert out["group"].nunique() == 2
    assert len(set(out["group"].iloc[[0, 1, 2, 4]])) == 1 and out["group"].iloc[0] == "near-duplicates:image:img4.png"
    assert out["group"].iloc[3] == "p3"
    assert out["group_reason"].tolist() == ["near-duplicate"] * 3 + ["patient", "near-duplicate"]
    # pairs within one patient join nothing new: the group keeps the patient's name
    same = link_groups(t, np.array([0]), np.array([1]))
    assert same["group"].tolist() == t["group"].tolist() and set(same["group_reason"]) == {"patient"}


def test_a_chain_of_near_duplicates_lands_in_one_split():
    # images without patient ids, each its own patient; a~b~c is a chain although a and c are not paired
    t = _linked_table([""] * 60, ["covid" if i % 3 == 0 else "normal" for i in range(60)])
    out = link_groups(t, np.array([0, 1]), np.array([1, 2]))
    for seed in range(20):
        split = patient_grouped_split(out, (0.34, 0.33, 0.33), seed=seed)
        assert split.iloc[0] == split.iloc[1] == split.iloc[2]
    folds = patient_grouped_kfold(out, 5, seed=0)
    assert folds.iloc[0] == folds.iloc[1] == folds.iloc[2]


def test_link_groups_on_empty_and_single_image_tables():
    empty = link_groups(_linked_table([]), np.zeros(0, int), np.zeros(0, int))
    assert empty.empty and {"patient", "group", "group_reason"} <= set(empty.columns)
    one = link_groups(_linked_table([""]), np.zeros(0, int), np.zeros(0, int))
    assert one["group"].tolist() == ["image:img0.png"] and one["group_reason"].tolist() == ["patient"]


@settings(max_examples=40, deadline=None)
@given(rows=rows, pairs=st.lists(st.tuples(st.integers(0, 299), st.integers(0, 299)), max_size=40),
       seed=st.integers(0, 1000))
def test_no_near_duplicate_pair_crosses_splits(rows, pairs, seed):
    df = _table([g for g, _ in rows], [lab for _, lab in rows])
    pairs = [(a, b) for a, b in pairs if a < len(df) and b < len(df)]
    i = np.array([a for a, _ in pairs], dtype=int)
    j = np.array([b for _, b in pairs], dtype=int)
    split = patient_grouped_split(link_groups(df, i, j), (0.6, 0.2, 0.2), seed=seed)
    assert all(split.iloc[a] == split.iloc[b] for a, b in pairs)
    assert (df.assign(s=split).groupby("group")["s"].nunique() == 1).all()  # patients still together


def test_read_split_file(tmp_path):
    t = _linked_table(["p1", "p1", "p2", "p3"])
    f = tmp_path / "split.csv"
    pd.DataFrame({"image": ["img0.png", "img1.png", "img2.png", "gone.png"],
                  "split": ["train", "test", " val", "test"]}).to_csv(f, index=False)
    split, counts = read_split_file(f, t)
    assert split.tolist() == ["train", "test", "val", "unused"]  # respected as given, even across a patient
    assert counts == {"not_listed": 1, "not_in_data": 1}
    for content, match in (("image,fold\na,1\n", "missing column"), ("image,split\nimg0.png,training\n",
                                                                      "unknown split name"),
                           ("image,split\nimg0.png,train\nimg0.png,test\n", "listed 2 times")):
        f.write_text(content)
        with pytest.raises(DataError, match=match):
            read_split_file(f, t)
    with pytest.raises(DataError, match="cannot be read"):
        read_split_file(tmp_path / "missing.csv", t)
