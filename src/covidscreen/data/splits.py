"""Patient-grouped, label-stratified, seeded splits, and a fingerprint of each split.

No patient is ever in two splits: rows are grouped by the table's ``group`` column (the patient id, or the image
itself when the source gives none). Before a default split, :func:`link_groups` joins the patients whose images are
near-duplicates of each other (the audit's detector, :mod:`.duplicates`) into one group, transitively and across
sites, so that no near-copy of a training image is validated or tested on. Stratification works on groups: each
group is assigned the rarest label among its images, groups are shuffled within each stratum with the seed, and
then dealt out so that every split gets close to its share of *images* of that stratum.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ..errors import ConfigError, DataError

SPLITS = ("train", "val", "test")
GROUP_REASONS = ("patient", "near-duplicate")  # why images share a group: one patient; near-copies linked patients


def link_groups(table: pd.DataFrame, pairs_i: np.ndarray, pairs_j: np.ndarray) -> pd.DataFrame:
    """Join patients whose images are near-duplicates into one group (union-find over images: an edge for every
    near-duplicate pair and between images of one patient, so a~b~c is one group even where a and c differ).

    Args:
        table: rows with a ``group`` column holding each image's patient (the image itself when it has none).
        pairs_i, pairs_j: row positions of near-duplicate pairs.

    Returns:
        A copy with ``patient`` (the former ``group``), ``group`` (a group that joins several patients is named
        ``near-duplicates:<its first patient>``; others keep the patient's name) and ``group_reason`` (``patient`` or
        ``near-duplicate``).
    """
    out = table.copy()
    patient = out["patient"].astype(str) if "patient" in out else out["group"].astype(str)
    n = len(out)
    codes, names = pd.factorize(patient, sort=True)
    first_of = np.full(len(names), -1, dtype=np.int64)
    first_of[codes[::-1]] = np.arange(n)[::-1]  # first row of each patient
    rows_i = np.concatenate([np.arange(n), np.asarray(pairs_i, dtype=np.int64)])
    rows_j = np.concatenate([first_of[codes], np.asarray(pairs_j, dtype=np.int64)])
    graph = coo_matrix((np.ones(len(rows_i), dtype=np.int8), (rows_i, rows_j)), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    frame = pd.DataFrame({"component": component, "patient": patient.to_numpy()})
    first_patient = frame.groupby("component")["patient"].min()
    n_patients = frame.groupby("component")["patient"].nunique()
    linked = n_patients.to_numpy()[component] > 1
    out["patient"] = patient.to_numpy()
    out["group"] = np.where(linked, "near-duplicates:" + first_patient.to_numpy()[component].astype(object),
                            patient.to_numpy())
    out["group_reason"] = np.where(linked, GROUP_REASONS[1], GROUP_REASONS[0])
    return out


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


SPLIT_FILE_VALUES = (*SPLITS, "unused")


def read_split_file(path: str | Path, table: pd.DataFrame) -> tuple[pd.Series, dict[str, int]]:
    """A split given by the user: a CSV with columns ``image`` (as in the data table) and ``split``.

    Images of the table the file does not list are ``unused``; the split is taken as given (no grouping), and the
    run's audit reports any patient or near-duplicate it puts into two splits.

    Returns:
        The split of every row of ``table``, and counts of what did not match (``not_listed``: images of the table
        missing from the file; ``not_in_data``: rows of the file naming no image of the table).

    Raises:
        DataError: the file cannot be read, lacks a column, or holds another split name or an image twice.
    """
    file = Path(path).expanduser()
    expected = f"a CSV with columns image,split (split one of {', '.join(SPLIT_FILE_VALUES)})"
    try:
        given = pd.read_csv(file, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"split_file {file}: cannot be read ({exc.__class__.__name__}); expected {expected}") from None
    missing = [c for c in ("image", "split") if c not in given.columns]
    if missing:
        raise DataError(f"split_file {file}: missing column(s) {', '.join(missing)} (found: "
                        f"{', '.join(given.columns) or 'none'}); expected {expected}")
    given["split"] = given["split"].str.strip()
    bad = sorted(set(given["split"]) - set(SPLIT_FILE_VALUES))
    if bad:
        raise DataError(f"split_file {file}: unknown split name(s) {', '.join(map(repr, bad))}; expected {expected}")
    twice = given["image"][given["image"].duplicated()]
    if len(twice):
        n_twice = int((given["image"] == twice.iloc[0]).sum())
        raise DataError(f"split_file {file}: image {twice.iloc[0]!r} is listed {n_twice} times; list each image once")
    split_of = dict(zip(given["image"], given["split"], strict=True))
    split = table["image"].map(split_of)
    counts = {"not_listed": int(split.isna().sum()), "not_in_data": int((~given["image"].isin(table["image"])).sum())}
    return split.fillna("unused").rename("split"), counts
