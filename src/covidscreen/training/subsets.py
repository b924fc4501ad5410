"""Which images a run uses and for what: the task's labels, the split (one split or k folds), the share of training
patients (learning curves) and site/label filters (sequential fine-tuning on a sub-task).

Every choice here is made so that runs that differ in one option still share their validation and test images:

- ``task: binary`` relabels rows but splits on the *original* labels, so binary and 3-class runs see the same split;
- ``train_fraction`` keeps a nested, label-stratified share of the training *patients* (5% is inside 10%, ...), and
  marks the rest ``unused``; validation and test are untouched;
- ``sites`` / ``labels`` filters apply *after* the split of the whole table, so a model fine-tuned first on a
  sub-task (e.g. pneumonia vs normal on one site) never trains on images that a later run with the same data, seed
  and split fractions tests on.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..data.splits import patient_grouped_kfold, patient_grouped_split
from ..errors import DataError

ORIGINAL_LABEL = "original_label"


def binary_negative_name(positive_class: str) -> str:
    return f"non_{positive_class}"


def apply_task(table: pd.DataFrame, task: str, positive_class: str, require_positive: bool = True) -> pd.DataFrame:
    """Return a copy with ``original_label`` kept and ``label`` mapped for ``task``.

    ``multiclass`` keeps every label; ``binary`` maps every label other than ``positive_class`` to
    ``non_<positive_class>``.

    Raises:
        DataError: ``binary`` without any image of ``positive_class`` (when ``require_positive``, as for training).
    """
    table = table.copy()
    if ORIGINAL_LABEL not in table:
        table[ORIGINAL_LABEL] = table["label"]
    if task == "binary":
        if require_positive and not (table[ORIGINAL_LABEL] == positive_class).any():
            raise DataError(f"task binary: no image is labelled '{positive_class}' (positive_class); labels found: "
                            f"{', '.join(sorted(table[ORIGINAL_LABEL].unique()))}")
        table["label"] = np.where(table[ORIGINAL_LABEL] == positive_class, positive_class,
                                  binary_negative_name(positive_class))
    return table


def fold_split(folds: pd.Series, k: int, fold: int) -> pd.Series:
    """Split names for one fold of k-fold cross-validation: test = ``fold``, val = the next fold, train = the rest."""
    val_fold = (fold + 1) % k
    split = np.where(folds == fold, "test", np.where(folds == val_fold, "val", "train"))
    return pd.Series(split, index=folds.index, name="split")


def assign_splits(table: pd.DataFrame, fractions: tuple[float, float, float], seed: int, folds: int | None = None,
                  fold: int | None = None) -> pd.Series:
    """Patient-grouped split of ``table`` stratified on its original labels: by fractions, or fold ``fold`` of
    ``folds``."""
    label_col = ORIGINAL_LABEL if ORIGINAL_LABEL in table else "label"
    if folds is not None:
        return fold_split(patient_grouped_kfold(table, folds, seed=seed, label_col=label_col), folds, fold or 0)
    return patient_grouped_split(table, fractions, seed=seed, label_col=label_col)


def training_patient_subset(table: pd.DataFrame, split: pd.Series, fraction: float, seed: int) -> pd.Series:
    """Keep ``fraction`` of the training patients of each label stratum (at least one); the rest become ``unused``.

    Subsets are nested: for a fixed seed, the patients kept at 5% are among those kept at 10%, and so on, so a
    learning curve measures more data, not other data.
    """
    if fraction >= 1:
        return split
    label_col = ORIGINAL_LABEL if ORIGINAL_LABEL in table else "label"
    train = table[split.to_numpy() == "train"]
    # each patient's stratum is its rarest label, as in the split itself
    rarity = train[label_col].map(train[label_col].value_counts())
    strata = train.assign(_r=rarity).sort_values(["_r", label_col]).groupby("group", sort=True)[label_col].first()
    rng = np.random.default_rng(seed + 7919)  # its own stream: the same for every fraction
    keep: set[str] = set()
    for _, names in strata.groupby(strata, sort=True):
        order = names.index.to_numpy()[rng.permutation(len(names))]
        keep.update(order[: max(1, int(round(fraction * len(order))))])
    out = split.copy()
    out[(split == "train") & ~table["group"].isin(keep)] = "unused"
    return out


def filter_rows(table: pd.DataFrame, sites: list[str] | None, labels: list[str] | None) -> np.ndarray:
    """Mask of rows whose site is in ``sites`` and whose original label is in ``labels`` (None = all).

    Raises:
        DataError: a listed site or label does not occur in the data (the message lists those that do).
    """
    mask = np.ones(len(table), dtype=bool)
    label_col = ORIGINAL_LABEL if ORIGINAL_LABEL in table else "label"
    for key, col, wanted in (("sites", "site", sites), ("labels", label_col, labels)):
        if wanted is None:
            continue
        present = set(table[col])
        unknown = sorted(set(wanted) - present)
        if unknown:
            raise DataError(f"config key '{key}': {', '.join(unknown)} not in the data; present: "
                            f"{', '.join(sorted(present))}")
        mask &= table[col].isin(wanted).to_numpy()
    return mask


def subsample_per_class(table: pd.DataFrame, max_per_class: int, seed: int) -> pd.DataFrame:
    """At most ``max_per_class`` rows of each label, drawn with the seed (whole patients are not guaranteed)."""
    parts = [g.sample(n=min(len(g), max_per_class), random_state=seed) for _, g in table.groupby("label", sort=True)]
    return pd.concat(parts).sort_index().reset_index(drop=True)
