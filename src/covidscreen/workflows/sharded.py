"""Prediction on many files split across the ranks of ``torchrun``: each rank predicts every ``world_size``-th file,
rank 0 merges the parts back into the order of a single-process run (``predict`` and ``evaluate``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from ..inference.predictor import Predictor, expand_inputs
from ..training.distributed import World


def merge_shards(parts: list[pd.DataFrame]) -> pd.DataFrame:
    """Rows of rank ``r``'s part (its files ``r, r + W, r + 2W, ...``) put back at those positions."""
    world_size = len(parts)
    keyed = [part.assign(_order=[r + i * world_size for i in range(len(part))]) for r, part in enumerate(parts)]
    merged = pd.concat(keyed, ignore_index=True).sort_values("_order", kind="stable")
    return merged.drop(columns="_order").reset_index(drop=True)


def predict_files_sharded(predictor: Predictor, inputs: list[str | Path], world: World, batch_size: int = 32,
                          progress: bool = True) -> pd.DataFrame | None:
    """:meth:`Predictor.predict_files` on this rank's share of ``inputs``; the merged table on rank 0 (in the order
    a single process gives), ``None`` on the other ranks. Outside torchrun: ``predict_files`` itself."""
    if not world.distributed:
        return predictor.predict_files(inputs, batch_size=batch_size, progress=progress)
    files = expand_inputs(inputs)  # every rank lists the same files in the same (sorted) order
    mine = files[world.rank::world.world_size]
    part = predictor.predict_files(mine, batch_size=batch_size, progress=progress and world.is_main)
    parts = world.gather(part)
    return merge_shards(parts) if world.is_main else None


def merge_scored(parts: list[tuple[np.ndarray, np.ndarray | None]], n: int) -> tuple[np.ndarray, np.ndarray]:
    """Rank ``r``'s ``(ok, probs)`` of paths ``r, r + W, ...`` (``probs``: rows of its readable paths only) put back
    into one ``(ok, probs)`` of all ``n`` paths, in the order of one process."""
    world_size = len(parts)
    width = max((p.shape[1] for _, p in parts if p is not None and p.ndim == 2), default=0)
    ok = np.zeros(n, dtype=bool)
    full = np.full((n, width), np.nan, dtype=np.float64)
    for r, (ok_r, probs_r) in enumerate(parts):
        ok_r = np.asarray(ok_r, dtype=bool)
        ok[r::world_size] = ok_r
        if probs_r is not None and len(probs_r):
            full[np.arange(r, n, world_size)[ok_r]] = probs_r
    dtype = next((p.dtype for _, p in parts if p is not None and len(p)), np.float32)
    return ok, full[ok].astype(dtype)


def score_paths_sharded(score: Callable[[list[str]], tuple[np.ndarray, np.ndarray]], paths: list[str],
                        world: World) -> tuple[np.ndarray, np.ndarray] | None:
    """``score(paths)`` computed on ``world_size`` shares of ``paths`` (rank ``r`` scores paths ``r, r + W, ...``).

    ``score`` returns ``(ok, probs)``: ``ok`` a bool per path (False where the file could not be read) and ``probs``
    one row per readable path, in order. On rank 0 the merged ``(ok, probs)`` of all ``paths``, in the order of
    ``score(paths)`` in one process; ``None`` on the other ranks. Outside torchrun: ``score(paths)`` itself.
    """
    if not world.distributed:
        return score(paths)
    mine = paths[world.rank::world.world_size]
    part = score(mine) if mine else (np.zeros(0, dtype=bool), None)  # fewer paths than ranks
    parts = world.gather(part)
    return merge_scored(parts, len(paths)) if world.is_main else None
