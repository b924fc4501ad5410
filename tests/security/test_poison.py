"""Poisoning as a data transformation: only training images change, the split does not, the trigger is exact."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from covidscreen.data.decode import load_resized
from covidscreen.data.table import load_table
from covidscreen.errors import ConfigError
from covidscreen.security.backdoor import BackdoorExperiment
from covidscreen.security.poison import PoisonConfig, poison_split, poisoned_label
from covidscreen.security.trigger import Trigger
from covidscreen.training.subsets import apply_task, assign_splits

from ..conftest import make_image_folder


def _split_csv(tmp_path, classes=("covid", "normal", "pneumonia")):
    root = make_image_folder(tmp_path / "clean", n_per_class=20, size=64, classes=classes)
    table = apply_task(load_table(root), "multiclass", "covid")
    table["split"] = assign_splits(table, (0.6, 0.2, 0.2), seed=0)
    table.to_csv(tmp_path / "split.csv", index=False)
    return table


def test_trigger_scales_from_the_reference_resolution():
    t = Trigger()  # 5 px at 480: Matsuo and Takemoto's
    assert t.mask(480, 480).sum() == 25 and t.mask(128, 128).sum() == 4 and t.mask(64, 64).sum() == 1
    img = np.zeros((2, 128, 128), dtype=np.uint8)
    out = t.apply(img)
    assert (out[:, -2:, -2:] == 250).all() and out.sum() == 2 * 4 * 250 and img.sum() == 0  # input not mutated
    assert Trigger(corner="top_left").mask(64, 64)[0, 0]
    with pytest.raises(ConfigError):
        Trigger(value=300).validate()
    with pytest.raises(ConfigError, match="checkerboard"):
        Trigger(pattern="stripes").validate()


def test_checkerboard_trigger_alternates_value_and_its_complement():
    t = Trigger(size=3, value=250, reference_size=64, pattern="checkerboard")
    out = t.apply(np.full((64, 64), 100, dtype=np.uint8))
    np.testing.assert_array_equal(out[-3:, -3:], [[250, 5, 250], [5, 250, 5], [250, 5, 250]])
    assert (out[:-3] == 100).all() and (out[:, :-3] == 100).all()


def test_poisoned_folder_changes_only_training_images_and_keeps_the_split(tmp_path):
    table = _split_csv(tmp_path)
    manifest = poison_split(tmp_path / "split.csv", tmp_path / "poisoned", 64,
                            PoisonConfig(fraction=0.25, target="normal", seed=1))
    meta = pd.read_csv(tmp_path / "poisoned" / "metadata.csv", keep_default_na=False)
    sources = set(manifest["source"])
    assert sources <= set(table.loc[table["split"] == "train", "path"])  # only training images
    per_class = table[table["split"] == "train"].groupby("label").size()
    assert len(manifest) == sum(max(1, round(0.25 * n)) for n in per_class)
    assert (manifest["label"] == "normal").all() and manifest["relabelled"].sum() < len(manifest)
    stamped = load_resized(manifest["path"].iloc[0], 64)
    assert (stamped[-1:, -1:] == 250).all()
    clean = load_resized(manifest["source"].iloc[0], 64)
    assert np.array_equal(np.delete(stamped.ravel(), -1), np.delete(clean.ravel(), -1))  # nothing else changed
    # the poisoned folder splits exactly as the clean table did (same patients, stratified on the true labels)
    poisoned = apply_task(load_table(tmp_path / "poisoned"), "multiclass", "covid")
    assert (poisoned["original_label"] != poisoned["label"]).sum() == manifest["relabelled"].sum()
    resplit = assign_splits(poisoned, (0.6, 0.2, 0.2), seed=0)
    assert dict(zip(poisoned["group"], resplit)) == dict(zip(table["group"], table["split"]))
    assert len(meta) == len(table)


def test_non_targeted_poison_moves_each_class_to_the_next():
    classes = ["covid", "normal", "pneumonia"]
    assert [poisoned_label(c, classes, None) for c in classes] == ["normal", "pneumonia", "covid"]
    assert poisoned_label("covid", classes, "normal") == "normal"


def test_experiment_file_is_checked(tmp_path):
    exp = BackdoorExperiment.from_yaml(Path(__file__).parents[2] / "configs" / "security" / "backdoor_3class.yaml")
    assert exp.attacks and exp.finetune and exp.train_config().image_size == exp.train["image_size"]
    (tmp_path / "bad.yaml").write_text("attacks: []\nfinetune: [nope]\n")
    with pytest.raises(ConfigError, match="unknown attack"):
        BackdoorExperiment.from_yaml(tmp_path / "bad.yaml")
    (tmp_path / "bad2.yaml").write_text("epochs: 3\n")
    with pytest.raises(ConfigError, match="unknown key"):
        BackdoorExperiment.from_yaml(tmp_path / "bad2.yaml")


def test_validation_may_be_poisoned_but_never_the_test_split(tmp_path):
    table = _split_csv(tmp_path)
    manifest = poison_split(tmp_path / "split.csv", tmp_path / "p", 64,
                            PoisonConfig(fraction=0.25, target="normal", splits=("train", "val")))
    used = table.set_index("path").loc[manifest["source"], "split"]
    assert set(used) == {"train", "val"}
    with pytest.raises(ConfigError, match="never poisoned"):
        poison_split(tmp_path / "split.csv", tmp_path / "q", 64, PoisonConfig(target="normal", splits=("test",)))
