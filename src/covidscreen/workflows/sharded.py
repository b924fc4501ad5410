"""Prediction on many files split across the ranks of ``torchrun``: each rank predicts every ``world_size``-th file,
rank 0 merges the parts back into the order of a single-process run."""

from __future__ import annotations

from pathlib import Path

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
