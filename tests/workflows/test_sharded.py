"""Merging the ranks' shares of a sharded ``predict`` or ``evaluate`` back into one process's order."""

import numpy as np
import pandas as pd

from covidscreen.training.distributed import World
from covidscreen.workflows.sharded import merge_scored, merge_shards, score_paths_sharded


def _score(paths: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """A fake scorer: a file named ``bad*`` is unreadable; the others score their number."""
    ok = np.array([not p.startswith("bad") for p in paths])
    probs = np.array([[float(p[1:]), 1.0 - float(p[1:])] for p in paths if not p.startswith("bad")],
                     dtype=np.float32).reshape(-1, 2)
    return ok, probs


def test_merge_scored_equals_one_process():
    paths = ["f0.1", "bad1", "f0.3", "f0.4", "bad4", "bad5", "f0.7"]
    one = _score(paths)
    for world_size in (1, 2, 3, 5, 9):  # uneven shares, ranks with nothing readable, ranks with no path
        parts = [_score(paths[r::world_size]) if paths[r::world_size] else (np.zeros(0, dtype=bool), None)
                 for r in range(world_size)]
        ok, probs = merge_scored(parts, len(paths))
        np.testing.assert_array_equal(ok, one[0])
        np.testing.assert_array_equal(probs, one[1])
        assert probs.dtype == np.float32


def test_single_process_scores_everything_itself():
    ok, probs = score_paths_sharded(_score, ["f0.5", "bad"], World())
    assert ok.tolist() == [True, False] and probs.shape == (1, 2)


def test_merge_shards_restores_file_order():
    files = [f"f{i}" for i in range(7)]
    parts = [pd.DataFrame({"path": files[r::3]}) for r in range(3)]
    assert merge_shards(parts)["path"].tolist() == files
