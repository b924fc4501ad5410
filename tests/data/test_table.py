import pandas as pd
import pytest

from covidscreen.data.locate import resolve_data_dir
from covidscreen.data.table import load_table
from covidscreen.errors import DataError
from tests.conftest import make_image_folder


def test_metadata_table_has_groups_and_counts_missing(tmp_path):
    root = make_image_folder(tmp_path / "d")
    df = pd.read_csv(root / "metadata.csv")
    df.loc[len(df)] = {"image": "images/nothere.png", "label": "covid", "patient_id": "", "site": "", "view": ""}
    df.loc[len(df)] = {"image": "images/covid_0.png", "label": "covid", "patient_id": "", "site": "", "view": ""}
    df.to_csv(root / "metadata.csv", index=False)
    t = load_table(root)
    assert t.attrs["missing"] == 1
    assert len(t) == 13
    assert t["group"].iloc[-1] == "image:images/covid_0.png"  # no patient id: its own group
    assert (t["site"].iloc[-1]) == "unknown"


def test_missing_required_column(tmp_path):
    root = make_image_folder(tmp_path / "d")
    pd.read_csv(root / "metadata.csv").drop(columns=["label"]).to_csv(root / "metadata.csv", index=False)
    with pytest.raises(DataError, match="missing column.*label"):
        load_table(root)


def test_folder_tree_layout(tmp_path):
    src = make_image_folder(tmp_path / "src")
    for f in (src / "images").iterdir():
        label = f.name.split("_")[0]
        (tmp_path / "tree" / label).mkdir(parents=True, exist_ok=True)
        f.rename(tmp_path / "tree" / label / f.name)
    t = load_table(tmp_path / "tree")
    assert sorted(t["label"].unique()) == ["covid", "normal"] and len(t) == 12


def test_missing_folder_and_foreign_labels(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_table(tmp_path / "nope")
    root = make_image_folder(tmp_path / "d")
    with pytest.raises(DataError, match="not classes of this model"):
        load_table(root, classes=["covid", "pneumonia"])


def test_locate_prefers_explicit_then_env(tmp_path, monkeypatch, shared_data):
    root = make_image_folder(tmp_path / "d")
    assert resolve_data_dir(root) == root
    monkeypatch.setenv("COVIDSCREEN_DATA", str(shared_data))
    assert resolve_data_dir(None) == shared_data / "cxr"
    monkeypatch.setenv("COVIDSCREEN_DATA", str(tmp_path / "missing"))
    with pytest.raises(DataError, match="COVIDSCREEN_DATA"):
        resolve_data_dir(None)
    monkeypatch.delenv("COVIDSCREEN_DATA")
    assert resolve_data_dir(None).name == "cxr"  # ../shared/data next to the checkout
