"""The leakage audit finds the planted problems and nothing else."""

from covidscreen.audit.imagestats import image_stats
from covidscreen.audit.leakage import exact_duplicates, leakage_audit, pair_kind, patients_in_several_splits


def test_patient_in_two_splits_is_found(planted):
    _, table, _ = planted
    multi = patients_in_several_splits(table)
    assert [m["patient"] for m in multi] == ["beta:3"]
    assert multi[0]["splits"] == ["test", "train"]


def test_exact_duplicates_by_file_hash(planted):
    _, table, _ = planted
    dup = exact_duplicates(table)
    assert len(dup) == 1
    assert sorted(dup[0]["images"]) == ["gamma/dup_bytes.png", "gamma/img001.png"]
    assert dup[0]["cross_split"] and dup[0]["cross_patient"]


def test_near_duplicates_find_the_reencoded_copy_and_nothing_else(planted):
    _, table, cache = planted
    stats = image_stats(cache.images, cache.rows(table["path"].tolist()))
    block, pairs = leakage_audit(table, stats.thumbs)
    found = {frozenset((a, b)) for a, b in zip(pairs["image_a"], pairs["image_b"], strict=True)}
    assert found == {frozenset(("beta/img000.png", "beta/dup_resized.jpg")),
                     frozenset(("gamma/img001.png", "gamma/dup_bytes.png"))}
    assert set(pairs["kind"]) == {"cross-split"}
    assert pairs.loc[pairs["image_a"].str.startswith("gamma"), "identical_file"].item()
    near = block["near_duplicates"]
    assert near["n_cross_split"] == 2 and near["n_label_conflicts"] == 0
    assert block["n_patients_in_several_splits"] == 1 and block["n_exact_duplicate_sets_cross_split"] == 1


def test_pair_kinds():
    assert pair_kind("train", "test", False) == "cross-split"
    assert pair_kind("train", "train", True) == "same patient"
    assert pair_kind("val", "val", False) == "within split, different patients"
    assert pair_kind("unused", "test", False) == "unused"
