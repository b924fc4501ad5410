"""Near-duplicate groups in real runs: the default split keeps copies together (audit: 0 cross-split pairs), a
user-given split is respected and then audited, ``evaluate`` of a leaky run gives metrics without the copies, and a
held-out site's near-copies are kept out of training."""

import json

import pandas as pd
from typer.testing import CliRunner

from covidscreen.cli import app
from covidscreen.config import resolve_train_config
from covidscreen.data.table import load_table
from covidscreen.workflows.evaluate import evaluate_run
from covidscreen.workflows.fit import fit
from covidscreen.workflows.grouping import group_near_duplicates, held_out_near_copies
from tests.synthetic import make_dataset

COPY, ORIGINAL = "beta/dup_resized.jpg", "beta/img000.png"  # planted: a resized copy under another patient id


def _cfg(root, out, **kw):
    base = dict(data=str(root), output=str(out), model="mobilenet_v2_035", pretrained=False, image_size=32,
                epochs=1, batch_size=8, samples_per_epoch=None, train_stages=None, bootstrap=20)
    base.update(kw)
    return resolve_train_config(None, **base)


def test_default_split_groups_copies_user_split_is_respected_and_evaluate_reports_the_copies(tmp_path,
                                                                                              monkeypatch):
    monkeypatch.setenv("COVIDSCREEN_CACHE", str(tmp_path / "cache"))
    root = make_dataset(tmp_path / "data", per_site=24)
    run = fit(_cfg(root, tmp_path / "default"), progress=False)
    split = pd.read_csv(run / "split.csv", keep_default_na=False).set_index("image")
    assert split.loc[COPY, "split"] == split.loc[ORIGINAL, "split"]
    assert split.loc[COPY, "group"] == split.loc[ORIGINAL, "group"]
    assert split.loc[COPY, "group_reason"] == "near-duplicate" and split.loc[COPY, "patient"] == "beta:copy"
    assert split.loc["alpha/img005.png", "group_reason"] == "patient"
    audit = json.loads((run / "audit.json").read_text())
    assert audit["leakage"]["near_duplicates"]["n_pairs"] == 2
    assert audit["leakage"]["near_duplicates"]["n_cross_split"] == 0
    assert audit["leakage"]["n_patients_in_several_splits"] == 0
    assert not any(f["text"].startswith("Leakage") for f in audit["findings"])
    # the two copies are filed under other patients: said plainly, as information, since the split grouped them
    assert audit["leakage"]["near_duplicates"]["n_within_split_other_patient_grouped"] == 2
    assert any(f["severity"] == "info" and "joined their patients into one group" in f["text"]
               for f in audit["findings"])
    assert "near-duplicate images kept together" in audit["split_source"]

    # a user's split that puts the copy into test and its original into training: used as given, then audited
    given = split["split"].copy()
    given[split["patient"] == "beta:0"] = "train"
    given[COPY] = "test"
    given.rename("split").reset_index().to_csv(tmp_path / "mine.csv", index=False)
    mine = fit(_cfg(root, tmp_path / "mine", split_file=str(tmp_path / "mine.csv")), progress=False)
    used = pd.read_csv(mine / "split.csv", keep_default_na=False).set_index("image")["split"]
    assert used.sort_index().equals(given.sort_index())
    audit = json.loads((mine / "audit.json").read_text())
    assert audit["leakage"]["near_duplicates"]["n_cross_split"] >= 1
    assert any(f["text"].startswith("Leakage") for f in audit["findings"] if f["severity"] == "high")
    assert "given by the user" in audit["split_source"]
    assert "Leakage" in (mine / "report.html").read_text()

    # evaluate on the leaky run: the test image with a copy in training is counted, metrics also without it
    out = evaluate_run(mine, progress=False, n_boot=20)
    nc = json.loads((out / "metrics.json").read_text())["near_copies"]
    assert nc["images"] == [COPY] and nc["n_with_copy"] == 1 and nc["n_pairs"] == 1
    assert nc["without"]["n"] == nc["n_test"] - 1
    assert any(r["metric"] == "multi-class accuracy" for r in nc["comparison"])
    assert "Test images with a near-copy in training" in (out / "report.html").read_text()
    res = CliRunner().invoke(app, ["evaluate", str(mine), "-o", str(tmp_path / "ev")])
    assert res.exit_code == 0, res.output
    assert f"1 of {nc['n_test']} test images have a near-copy in the training split" in res.output
    assert "without those with a near-copy" in res.output


def test_held_out_site_near_copies_are_found_across_sites(tmp_path, monkeypatch):
    monkeypatch.setenv("COVIDSCREEN_CACHE", str(tmp_path / "cache"))
    root = make_dataset(tmp_path / "data", per_site=12, plant=False)
    meta = pd.read_csv(root / "metadata.csv", keep_default_na=False)
    (root / "beta" / "from_alpha.png").write_bytes((root / "alpha" / "img005.png").read_bytes())
    extra = {**meta.iloc[0].to_dict(), "image": "beta/from_alpha.png", "patient_id": "", "site": "beta",
             "label": "normal"}
    pd.concat([meta, pd.DataFrame([extra])]).to_csv(root / "metadata.csv", index=False)
    table = load_table(root)
    held, rest = table[table["site"] == "beta"], table[table["site"] != "beta"].reset_index(drop=True)
    mask = held_out_near_copies(rest, held, progress=False)
    # the copy's original and the other image of its patient (alpha:2) must not train a model tested on beta
    assert sorted(rest.loc[mask, "image"]) == ["alpha/img004.png", "alpha/img005.png"]
    linked = group_near_duplicates(table, table["path"].tolist(), progress=False, log=lambda _: None)
    assert linked.set_index("image").loc["beta/from_alpha.png", "group_reason"] == "near-duplicate"
