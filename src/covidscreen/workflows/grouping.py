"""The groups a default split keeps together: patients, joined by near-duplicate images (``data/duplicates.py``).

The search reads the plain decoded images at ``GROUPING_IMAGE_SIZE`` px (no lung crop or other preprocessing), so
runs that differ only in image size or preprocessing get the same groups, and with them the same split. For a run
at the default size without preprocessing these are the training cache's own images; the pairs are cached beside
them, so a rerun costs a file read.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pandas as pd

from ..data.cache import ImageCache
from ..data.duplicates import GROUPING_IMAGE_SIZE, NearDuplicatePairs, cached_near_duplicates
from ..data.splits import link_groups


def near_duplicates_among(paths: list[str], cache_dir: str | None = None, progress: bool = True,
                          ) -> tuple[ImageCache, NearDuplicatePairs]:
    """The plain image cache of ``paths`` and the near-duplicate pairs among them (row numbers of ``paths``)."""
    cache = ImageCache(list(paths), GROUPING_IMAGE_SIZE, cache_dir, progress=progress)
    return cache, cached_near_duplicates(cache)


def group_near_duplicates(table: pd.DataFrame, all_paths: list[str], cache_dir: str | None = None,
                          progress: bool = True, log: Callable[[str], None] = print) -> pd.DataFrame:
    """``table`` with ``patient``, ``group`` (patients linked by near-duplicates) and ``group_reason`` columns.

    Args:
        table: the rows to split (a ``group`` column holding each image's patient); their paths are among
            ``all_paths``.
        all_paths: every path of the run's image cache (those that failed to decode included), so that the cache
            key, and with it the cached pairs, are the training cache's where the sizes agree.
    """
    t0 = time.perf_counter()
    cache, pairs = near_duplicates_among(all_paths, cache_dir, progress)
    sub = pairs.subset(cache.rows(table["path"].tolist()))
    linked = link_groups(table, sub.i, sub.j)
    n_groups = int(linked.loc[linked["group_reason"] == "near-duplicate", "group"].nunique())
    n_patients = int(linked.loc[linked["group_reason"] == "near-duplicate", "patient"].nunique())
    how = ("read from the cache" if pairs.from_cache
           else f"searched in {pairs.seconds:.1f} s, {pairs.n_candidates:,} candidate pairs")
    log(f"near-duplicates: {len(sub)} pair(s) among {len(table)} images ({how}; {time.perf_counter() - t0:.1f} s "
        f"in all); {n_patients} patients joined into {n_groups} group(s) so that each group stays in one split")
    return linked


def held_out_near_copies(table: pd.DataFrame, held: pd.DataFrame, cache_dir: str | None = None,
                         progress: bool = True) -> np.ndarray:
    """Mask of ``table`` rows in one group (patients joined by near-duplicates) with an image of ``held`` (a held-out
    site): training on them would put near-copies of the external images into training."""
    both = pd.concat([table.assign(_held=False), held.assign(_held=True)], ignore_index=True)
    cache, pairs = near_duplicates_among(both["path"].tolist(), cache_dir, progress)
    ok = cache.ok
    rows = np.flatnonzero(ok)
    sub = pairs.subset(rows)
    linked = link_groups(both.iloc[rows].reset_index(drop=True), sub.i, sub.j)
    held_groups = set(linked.loc[linked["_held"].to_numpy(), "group"])
    in_held = np.zeros(len(both), dtype=bool)
    in_held[rows] = linked["group"].isin(held_groups).to_numpy() & ~linked["_held"].to_numpy()
    return in_held[: len(table)]


def images_with_copies_in(table: pd.DataFrame, of: str = "test", in_split: str = "train",
                          cache_dir: str | None = None, progress: bool = True) -> tuple[list[str], int]:
    """Images of split ``of`` that have a near-duplicate in split ``in_split`` (a run made before splits grouped
    near-duplicates, or a user-given split, may have them).

    Args:
        table: the run's ``split.csv`` rows with ``image``, ``split`` and ``path``.

    Returns:
        The sorted ``image`` names, and the number of such cross-split pairs.
    """
    cache, pairs = near_duplicates_among(table["path"].tolist(), cache_dir, progress)
    split = table["split"].to_numpy()
    a, b = split[pairs.i], split[pairs.j]
    cross = ((a == of) & (b == in_split)) | ((a == in_split) & (b == of))
    rows = np.concatenate([pairs.i[cross & (a == of)], pairs.j[cross & (b == of)]])
    return sorted(set(table["image"].to_numpy()[rows].tolist())), int(cross.sum())
