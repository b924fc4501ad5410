"""The epoch checkpoint: every state a training step reads survives a save and a load exactly; a damaged or full
disk leaves the previous checkpoint; Ctrl-C waits for a checkpoint being written, a second one does not."""

from __future__ import annotations

import errno
import os
import random
import signal

import numpy as np
import pytest
import torch

import covidscreen.runtime as runtime
from covidscreen.errors import CheckpointError, DiskFullError
from covidscreen.training.checkpointing import (
    InterruptGuard,
    LoopProgress,
    TrainingObjects,
    capture,
    load_state,
    restore,
    save_state,
)


def _objects(seed: int) -> TrainingObjects:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Dropout(0.5),
                                torch.nn.Linear(8, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1 / (1 + step))
    gen = torch.Generator().manual_seed(seed)
    return TrainingObjects(model, opt, sched, None, gen, {"epoch_order": np.random.default_rng(seed)})


def _steps(o: TrainingObjects, n: int) -> list[float]:
    """Training steps drawing from every generator, like an epoch does."""
    losses = []
    for _ in range(n):
        order = o.rngs["epoch_order"].permutation(16)
        x = torch.rand(16, 4, generator=o.generator)[order] + random.random() + float(np.random.rand())
        loss = o.model(x).pow(2).mean()  # dropout draws from torch's global generator
        o.optimizer.zero_grad()
        loss.backward()
        o.optimizer.step()
        o.scheduler.step()
        losses.append(loss.item())
    return losses


def test_a_restored_run_continues_bit_for_bit(tmp_path):
    a = _objects(0)
    _steps(a, 3)
    best = {k: v.clone() for k, v in a.model.state_dict().items()}
    history = [{"epoch": 1, "val_auc": float("nan"), "lr": 0.1}]
    save_state(tmp_path, capture(a, LoopProgress(1, -np.inf, best, 1, 0, history)), {"note": "x"})
    expected = _steps(a, 3)

    b = _objects(1)  # another init and other generator states: all overwritten
    tree, record = load_state(tmp_path)
    progress = restore(tree, b)
    assert record["note"] == "x" and record["epoch"] == 1
    assert progress.best_score == -np.inf and progress.best_epoch == 1 and np.isnan(progress.history[0]["val_auc"])
    assert all(torch.equal(best[k], progress.best_state[k]) for k in best)
    assert _steps(b, 3) == expected  # exact equality, not approximate


def test_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    o = _objects(0)
    save_state(tmp_path, capture(o, LoopProgress(epoch=1)), {})

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runtime.os, "fsync", no_space)
    with pytest.raises(DiskFullError, match=r"epoch-002\.safetensors \(needs about [0-9.]+ MB"):
        save_state(tmp_path, capture(o, LoopProgress(epoch=2)), {})
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-001.safetensors", "state.json"]  # no temp files
    assert load_state(tmp_path)[1]["epoch"] == 1


def test_damaged_checkpoints_are_clear_errors(tmp_path):
    o = _objects(0)
    save_state(tmp_path, capture(o, LoopProgress(epoch=1)), {})
    (tmp_path / "epoch-001.safetensors").write_bytes(b"\0" * 64)
    with pytest.raises(CheckpointError, match="does not match the sha256.*delete"):
        load_state(tmp_path)
    (tmp_path / "state.json").write_text('{"epoch": ')
    with pytest.raises(CheckpointError, match="state.json is damaged.*delete"):
        load_state(tmp_path)
    assert load_state(tmp_path / "none") is None


@pytest.fixture
def default_sigint():
    """Python's own SIGINT handler for the test, whatever the launcher left (nohup and ``&`` ignore SIGINT)."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def test_ctrl_c_waits_for_the_checkpoint_being_written_and_a_second_one_does_not(default_sigint):
    with InterruptGuard() as guard:
        assert InterruptGuard.current() is guard
        with pytest.raises(KeyboardInterrupt):
            with guard.saving():
                os.kill(os.getpid(), signal.SIGINT)
                finished = True  # the write went on after the first Ctrl-C
        assert finished
    with InterruptGuard() as guard:
        with pytest.raises(KeyboardInterrupt):
            with guard.saving():
                os.kill(os.getpid(), signal.SIGINT)
                os.kill(os.getpid(), signal.SIGINT)
                pytest.fail("a second Ctrl-C must stop at once")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_process_that_ignores_ctrl_c_keeps_ignoring_it():
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with InterruptGuard() as guard, guard.saving():
            os.kill(os.getpid(), signal.SIGINT)  # ignored: no KeyboardInterrupt, now or at the end of the write
        assert guard.count == 0
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)
