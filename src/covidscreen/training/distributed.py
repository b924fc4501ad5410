"""Data-parallel training on torch.distributed (launched by ``torchrun``): the process group, the sampler that shards
an epoch across ranks, the DistributedDataParallel wrapper, and the checks that keep ranks in step.

Outside ``torchrun`` (no ``WORLD_SIZE`` in the environment, or a world of one) every function here is the identity
of a single-process run, so the training code calls them unconditionally.

Seed scheme: every rank seeds with the run's ``seed``, so the split, the initial weights and each epoch's order of
images (including class-balanced draws) are the same on every rank; each rank then trains on its own share of every
global batch (:func:`shard_epoch`). Only the augmentation draws differ per rank (:meth:`World.augmentation_seed`):
identical draws would give the images of one global batch correlated augmentations.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ..errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place among the ranks of a run (rank 0 of 1 outside torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only rank that logs and writes the run folder."""
        return self.rank == 0

    def local_device(self, device: torch.device) -> torch.device:
        """``device`` for this rank: with several ranks on CUDA, the GPU of this rank's ``LOCAL_RANK``."""
        if self.distributed and device.type == "cuda":
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        return device

    def augmentation_seed(self, seed: int) -> int:
        """The seed of this rank's augmentation and mixing draws (``seed`` itself on rank 0 and single-process)."""
        return seed + 1_000_003 * self.rank

    def rank_batch_size(self, batch_size: int) -> int:
        """Each rank's share of a global batch of ``batch_size`` images.

        Raises:
            ConfigError: ``batch_size`` is not a multiple of the number of ranks.
        """
        if batch_size % self.world_size:
            raise ConfigError(f"batch_size {batch_size} must be a multiple of the number of processes "
                              f"({self.world_size}): each rank trains on an equal share of every batch")
        return batch_size // self.world_size

    def shard(self, order: np.ndarray, batch_size: int) -> np.ndarray:
        """This rank's rows of an epoch: :func:`shard_epoch` (the identity outside torchrun)."""
        return shard_epoch(order, batch_size, self.rank, self.world_size) if self.distributed else order

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """``model`` in DistributedDataParallel (gradients averaged across ranks), or ``model`` itself.

        Wrap again whenever the set of trainable parameters changes (a head warm-up unfreezing the trunk): DDP
        reduces the gradients of the parameters that required them when it was built.
        """
        if not self.distributed:
            return model
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids, output_device=device if ids else None)

    def from_main(self, compute: Callable[[], T]) -> T:
        """``compute()`` on rank 0, its result handed to every rank (e.g. the validation score that selects the
        epoch and stops early: every rank must take the same decision, or the next collective hangs)."""
        if not self.distributed:
            return compute()
        box = [compute() if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: T) -> list[T]:
        """Every rank's ``value``, in rank order, on every rank."""
        if not self.distributed:
            return [value]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, value)
        return out

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    @contextmanager
    def main_first(self) -> Iterator[None]:
        """The first rank of each machine (``LOCAL_RANK`` 0) runs the block first (e.g. builds the decode cache in
        its machine's cache folder), the other ranks after it (and read what it wrote)."""
        if self.distributed and self.local_rank != 0:
            dist.barrier()
        yield
        if self.distributed and self.local_rank == 0:
            dist.barrier()

    def run_dir(self, run_dir: Path) -> Path:
        """The folder this rank writes into: the run folder on rank 0, a scratch folder on the others (their
        per-epoch files are copies of rank 0's and must not race with it on a shared file system)."""
        return run_dir if self.is_main else Path(tempfile.mkdtemp(prefix=f"covidscreen-rank{self.rank}-"))


def start(backend: str | None = None) -> World:
    """Join the process group that ``torchrun`` describes in the environment (``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``), once; silence the standard output of ranks other than 0.

    Args:
        backend: ``nccl`` or ``gloo``; default: ``nccl`` when CUDA is available, else ``gloo``.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return World()
    if not dist.is_available():
        raise ConfigError("this PyTorch build has no torch.distributed; run without torchrun")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        dist.init_process_group(backend)
    world = World(rank, dist.get_world_size(), local_rank, dist.get_backend())
    if not world.is_main:  # rank-0-only logging; errors (stderr) stay visible on every rank
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of this worker process
    return world


def stop(world: World) -> None:
    """Leave the process group. No barrier: rank 0 may still evaluate and write the run for a long time after the
    others are done, longer than a collective waits; callers stop after their last collective."""
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def shard_epoch(order: np.ndarray, batch_size: int, rank: int, world_size: int) -> np.ndarray:
    """The rows of ``order`` that ``rank`` trains on: its equal share of every global batch.

    ``order`` is the epoch of a single-process run (shuffled, or drawn class-balanced with replacement: the same on
    every rank, from the same seed), cut into global batches of ``batch_size`` as the single-process loop cuts it,
    the last partial batch dropped as that loop drops it. Rank ``r`` takes images ``r*b .. (r+1)*b - 1`` of each
    global batch (``b = batch_size / world_size``): together the ranks see each image of the epoch exactly as
    often as the single-process run, each step averages the gradients of the same global batch, and every rank
    runs the same number of steps (a rank with one step more would wait forever in DistributedDataParallel).
    """
    if batch_size % world_size:
        raise ConfigError(f"batch_size {batch_size} must be a multiple of the number of processes ({world_size})")
    n_batches = len(order) // batch_size
    per_rank = batch_size // world_size
    batches = np.asarray(order[: n_batches * batch_size]).reshape(n_batches, world_size, per_rank)
    return batches[:, rank].reshape(-1)


def state_digest(model: nn.Module) -> str:
    """sha256 of a model's parameters and buffers (names, dtypes, shapes and bytes, in ``state_dict`` order)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def check_replicas(model: nn.Module, world: World) -> list[str]:
    """Each rank's :func:`state_digest` of ``model``, in rank order; raises if the ranks' weights differ (a rank
    that drifted would make the checkpoint of rank 0 stand for a model the others did not train); ``[]`` in a
    single process, where there is nothing to compare."""
    if not world.distributed:
        return []
    digests = world.gather(state_digest(model))
    if len(set(digests)) > 1:
        raise RuntimeError(f"the ranks' weights differ after training: {digests}")
    return digests


def adapt(opt: Any, world: World, cfg: Any) -> Any:
    """The optimisation state of a single-process run, made per-rank: each rank's share of the batch and its own
    augmentation draws (the rest, the optimizer and its schedule, is per global step and stays as it is).

    Raises:
        ConfigError: an option that data-parallel training does not support, or a batch size that does not split.
    """
    if not world.distributed:
        return opt
    if cfg.adversarial_weight > 0:
        raise ConfigError("adversarial_weight > 0 is not supported with torchrun (the site adversary is not wrapped "
                          "in DistributedDataParallel); train it in one process")
    opt.batch_size = world.rank_batch_size(opt.batch_size)
    opt.generator = torch.Generator().manual_seed(world.augmentation_seed(cfg.seed))
    return opt


def sync_buffers(model: nn.Module, world: World) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics): DistributedDataParallel broadcasts them
    before each forward, but each rank's last forward updated its own from its own images."""
    if world.distributed:
        for buffer in model.buffers():
            dist.broadcast(buffer.data, src=0)
