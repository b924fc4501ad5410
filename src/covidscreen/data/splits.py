"""Patient-grouped, label-stratified, seeded splits, and a fingerprint of each split.

No patient is ever in two splits: rows are grouped by the table's ``group`` column (the patient id, or the image
itself when the source gives none). Stratification works on groups: each group is assigned the rarest label among
its images, groups are shuffled within each stratum with the seed, and then dealt out so that every split gets close
to its share of *images* of that stratum.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from ..errors import ConfigError

SPLITS = ("train", "val", "test")


def _group_strata(df: pd.DataFrame, label_col: str) -> pd.DataFrame:
    counts = df[label_col].value_counts()
    rarity = df[label_col].map(counts)
    groups = (
        df.assign(_rarity=rarity)
        .sort_values(["_rarity", label_col])
        .groupby("group", sort=True)
        .agg(stratum=(label_col, "first"), n=("image", "size"))
    )
    return groups


def patient_grouped_split(
    df: pd.DataFrame,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    label_col: str = "label",
) -> pd.Series:
    """Assign every row to ``train``, ``val`` or ``test``.

    Args:
        df: table with ``group``, ``image`` and ``label_col`` columns.
        fractions: share of images for train, val, test (must sum to 1; a share may be 0).
        seed: shuffling seed; the same seed and table give the same split.

    Returns:
        A Series aligned with ``df`` holding the split name of each row.
    """
    fr = np.asarray(fractions, dtype=float)
    if fr.shape != (3,) or (fr < 0).any() or abs(fr.sum() - 1) > 1e-6:
        raise ConfigError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
    rng = np.random.default_rng(seed)
    groups = _group_strata(df, label_col)
    assignment: dict[str, str] = {}
    bounds = np.cumsum(fr)
    for _, g in groups.groupby("stratum", sort=True):
        names = g.index.to_numpy()
        sizes = g["n"].to_numpy()
        order = rng.permutation(len(names))
        total = sizes.sum()
        cum = 0
        for i in order:
            mid = (cum + sizes[i] / 2) / total  # where this group's images sit in the stratum
            assignment[names[i]] = SPLITS[int(np.searchsorted(bounds, mid, side="right").clip(0, 2))]
            cum += sizes[i]
    return df["group"].map(assignment).rename("split")


def patient_grouped_kfold(df: pd.DataFrame, k: int, seed: int = 0, label_col: str = "label") -> pd.Series:
    """Assign every row a fold in ``0..k-1``; folds are patient-disjoint and label-stratified.

    Groups of each stratum are shuffled and dealt, largest first, to the fold with the fewest images of that stratum.
    """
    if k < 2:
        raise ConfigError(f"folds must be at least 2, got {k}")
    rng = np.random.default_rng(seed)
    groups = _group_strata(df, label_col)
    if len(groups) < k:
        raise ConfigError(f"folds={k} is more than the {len(groups)} patients in the data")
    fold_of: dict[str, int] = {}
    for _, g in groups.groupby("stratum", sort=True):
        g = g.iloc[rng.permutation(len(g))]
        g = g.sort_values("n", ascending=False, kind="stable")
        load = np.zeros(k)
        for name, n in zip(g.index, g["n"]):
            # ties broken at random so that fold 0 is not always the fullest
            candidates = np.flatnonzero(load == load.min())
            f = int(rng.choice(candidates))
            fold_of[name] = f
            load[f] += n
    return df["group"].map(fold_of).rename("fold")


def split_fingerprint(df: pd.DataFrame, split: pd.Series) -> str:
    """sha256 of the sorted ``image<TAB>split`` lines: equal fingerprints mean identical splits."""
    lines = sorted(f"{img}\t{s}" for img, s in zip(df["image"], split))
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()
