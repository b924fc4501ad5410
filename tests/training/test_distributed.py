"""Sharding an epoch across ranks, and the ranks of a real gloo process group agreeing (2 CPU processes)."""

import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from covidscreen.errors import ConfigError
from covidscreen.training.distributed import World, check_replicas, shard_epoch, state_digest, sync_buffers


def test_shards_partition_every_global_batch():
    order = np.random.default_rng(0).permutation(50)
    shards = [shard_epoch(order, 8, r, 2) for r in range(2)]
    assert [len(s) for s in shards] == [24, 24]  # 6 global batches of 8; the last 2 images dropped, as in one process
    seen = np.concatenate(shards)
    assert sorted(seen.tolist()) == sorted(order[:48].tolist())  # each image of the epoch exactly once
    for b in range(6):  # each step: the two halves of the single-process batch b
        assert sorted(np.r_[shards[0][4 * b:4 * b + 4], shards[1][4 * b:4 * b + 4]]) == sorted(order[8 * b:8 * b + 8])


def test_shards_keep_class_balanced_draws():
    """A balanced epoch draws with replacement: the ranks together keep every draw, repeats included."""
    order = np.array([3, 3, 1, 7, 7, 7, 2, 0, 5, 5, 9, 4])
    seen = np.concatenate([shard_epoch(order, 4, r, 4) for r in range(4)])
    assert np.array_equal(np.sort(seen), np.sort(order))


def test_batch_must_split_evenly():
    with pytest.raises(ConfigError, match="multiple of the number of processes"):
        World(rank=0, world_size=3).rank_batch_size(8)
    assert World().shard(np.arange(5), 2).tolist() == [0, 1, 2, 3, 4]  # single process: the epoch untouched


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        world = World(rank, world_size, rank, "gloo")
        order = np.random.default_rng(0).permutation(40)  # the same seed on every rank: the same epoch
        mine = world.shard(order, 8)
        out[f"rows{rank}"] = world.gather(mine.tolist())
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
        model(torch.zeros(2, 1, 8, 8))
        ddp = world.wrap(model, torch.device("cpu"))
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(rank))  # each rank its own images
        for _ in range(2):
            opt.zero_grad()
            ddp(x).pow(2).mean().backward()
            opt.step()
        out[f"before_sync{rank}"] = state_digest(model)
        sync_buffers(model, world)
        out[f"digests{rank}"] = check_replicas(model, world)
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_see_the_epoch_once_and_stay_identical():
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(2, _free_port(), out), nprocs=2, join=True)
        out = dict(out)
    rows = out["rows0"]
    assert rows == out["rows1"]
    assert sorted(rows[0] + rows[1]) == sorted(np.random.default_rng(0).permutation(40).tolist())
    assert out["digests0"] == out["digests1"] and out["digests0"][0] == out["digests0"][1]
    # without the buffer sync the BatchNorm statistics of each rank's last forward would differ
    assert out["before_sync0"] != out["before_sync1"]
