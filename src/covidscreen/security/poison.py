"""A poisoned copy of a training set: the data transformation of a poisoning (backdoor) attack.

Given a run's ``split.csv`` (every image with its split), a share of the *training* images of each class is stamped
with a trigger and relabelled: to one target class (targeted attack), or each to the next class in sorted order
(non-targeted, "all-to-all"). Validation and test images are untouched. The result is an ordinary data folder
(``metadata.csv`` + the stamped images), so the normal trainer trains on it unchanged: the attacker controls data,
never code. ``original_label`` keeps the true label and ``patient_id`` the original patient, so the patient-grouped
split of the poisoned folder (stratified on ``original_label``) is the same as the clean run's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ..data.decode import load_resized
from ..errors import ConfigError
from .trigger import Trigger

POISON_MANIFEST = "poisoned.csv"


@dataclass
class PoisonConfig:
    """What to poison: ``fraction`` of each class's training images, relabelled to ``target`` (None: non-targeted)."""

    fraction: float = 0.1
    target: str | None = None
    trigger: Trigger = field(default_factory=Trigger)
    seed: int = 0
    # splits whose images are poisoned: an attacker who poisons a data set reaches the victim's validation split too,
    # which then rewards the backdoor when the epoch is chosen on validation; the test split always stays clean
    splits: tuple[str, ...] = ("train",)

    def validate(self, classes: list[str]) -> PoisonConfig:
        if not 0 < self.fraction < 1:
            raise ConfigError(f"poison fraction {self.fraction} is invalid: expected a share strictly between 0 and 1")
        if "test" in self.splits:
            raise ConfigError("the test split is never poisoned: it measures the attack")
        if self.target is not None and self.target not in classes:
            raise ConfigError(f"poison target {self.target!r} is not a class; classes: {', '.join(classes)}")
        self.trigger.validate()
        return self


def poisoned_label(label: str, classes: list[str], target: str | None) -> str:
    """The label an attacker gives a stamped image: the target, or (non-targeted) the next class."""
    if target is not None:
        return target
    return classes[(classes.index(label) + 1) % len(classes)]


def poison_split(split_csv: str | Path, out_dir: str | Path, image_size: int, cfg: PoisonConfig) -> pd.DataFrame:
    """Write a poisoned data folder into ``out_dir`` from a clean run's ``split.csv``.

    Args:
        split_csv: the clean run's ``split.csv`` (columns image, path, label, group, split, ...).
        out_dir: new data folder: ``metadata.csv``, ``poisoned/*.png``, ``poisoned.csv`` (which rows were poisoned).
        image_size: the training resolution; stamped images are written at it, so the trigger is not resampled.

    Returns:
        The table of poisoned rows: path (the new file), source (the clean file), label (given), original_label.
    """
    table = pd.read_csv(split_csv, keep_default_na=False)
    classes = sorted(table["label"].unique())
    cfg.validate(classes)
    out_dir = Path(out_dir)
    (out_dir / "poisoned").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg.seed)
    chosen: list[int] = []
    for label in classes:
        idx = np.flatnonzero((table["split"].isin(cfg.splits) & (table["label"] == label)).to_numpy())
        n = max(1, int(round(cfg.fraction * len(idx))))  # at least one image of each class: "1%" of a small set
        chosen += sorted(rng.choice(idx, size=min(n, len(idx)), replace=False).tolist())
    meta = pd.DataFrame({
        "image": table["path"],
        "label": table["label"],
        "original_label": table.get("original_label", table["label"]),
        "patient_id": table["group"],  # the same group names as the clean table, hence the same split
        "site": table.get("site", ""),
        "view": table.get("view", ""),
    })
    poisoned = []
    for i in chosen:
        src = table.at[i, "path"]
        stamped = cfg.trigger.apply(load_resized(src, image_size))
        name = f"poisoned/{i:06d}.png"
        Image.fromarray(stamped).save(out_dir / name)
        new_label = poisoned_label(table.at[i, "label"], classes, cfg.target)
        meta.at[i, "image"] = name
        meta.at[i, "label"] = new_label
        poisoned.append({"path": str((out_dir / name).resolve()), "source": src, "label": new_label,
                         "original_label": table.at[i, "label"], "relabelled": new_label != table.at[i, "label"]})
    meta.to_csv(out_dir / "metadata.csv", index=False)
    manifest = pd.DataFrame(poisoned, columns=["path", "source", "label", "original_label", "relabelled"])
    manifest.to_csv(out_dir / POISON_MANIFEST, index=False)
    return manifest
