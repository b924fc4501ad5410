"""Resuming runs. Is a run folder already finished with this config? (lets cross-validation and experiment grids
resume after an interruption without redoing finished runs, and without silently reusing a run made with other
settings). And the epoch loop's checkpoints (:class:`EpochCheckpoints`): a run interrupted mid-training (killed,
Ctrl-C, a full disk, a torchrun elastic restart) continues from its last complete epoch with the same result."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..config import TrainConfig, to_dict
from ..errors import CheckpointError, ConfigError, CovidscreenError, DiskFullError, Interrupted
from ..inference.run import is_run_folder
from ..runtime import atomic_write_text
from ..training import testhook
from ..training.checkpointing import (
    STATE_FILE,
    InterruptGuard,
    LoopProgress,
    TrainingObjects,
    capture,
    load_state,
    read_state_record,
    restore,
    save_state,
)
from .skipped import align_to_run_split

# keys that change where or how fast a run is computed, not what it computes
IGNORED_KEYS = ("output", "device", "cache_dir", "eval_batch_size")


def config_differences(stored: dict, cfg: TrainConfig) -> list[str]:
    """``key: stored -> wanted`` for every key (outside :data:`IGNORED_KEYS`) whose value differs."""
    wanted = to_dict(cfg)
    diffs = []
    for key, value in wanted.items():
        if key in IGNORED_KEYS:
            continue
        old = stored.get(key, value)  # keys added after the run was made count as their default
        if isinstance(old, tuple):
            old = list(old)
        if isinstance(old, dict) and isinstance(value, dict):  # nested config (preprocess): the same, key by key
            old = {**value, **old}
        if old != value:
            diffs.append(f"{key}: {old!r} -> {value!r}")
    return diffs


def is_finished(run_dir: str | Path, cfg: TrainConfig) -> bool:
    """True when ``run_dir`` holds a complete run (metrics, checkpoint or ensemble manifest, config) of ``cfg``.

    Raises:
        ConfigError: the folder holds a complete run of another config (the message names the differing keys).
    """
    run_dir = Path(run_dir)
    # an epoch checkpoint is removed only once report and model card are written
    done = (run_dir / "metrics.json").is_file() and (run_dir / "config.yaml").is_file() and is_run_folder(
        run_dir) and not (run_dir / RESUME_DIR).exists()
    if not done:
        return False
    stored = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    diffs = config_differences(stored, cfg)
    if diffs:
        raise ConfigError(f"{run_dir} holds a finished run of another config ({'; '.join(diffs[:3])}); delete the "
                          "folder or choose another output")
    return True


# --- continuing a run mid-training --------------------------------------------------------------------------------

RESUME_DIR = "resume"  # the epoch checkpoint of a run folder (training/checkpointing.py); removed once the run is done


def resume_command(run_dir: str | Path) -> str:
    return f"covidscreen train --resume {run_dir}"


class EpochCheckpoints:
    """The epoch loop's side of :mod:`covidscreen.training.checkpointing`: resume from ``RUN_DIR/resume`` when it
    holds a checkpoint of this config and split, and save one after each epoch.

    Args:
        setup: the run's ``TrainingSetup`` (optimizer, scheduler, generators, site adversary).
        rng: the generator that draws each epoch's images.
    """

    def __init__(self, run_dir: Path, cfg: TrainConfig, data: Any, setup: Any, rng: np.random.Generator,
                 log: Any = print) -> None:
        self.folder = Path(run_dir) / RESUME_DIR
        self.cfg, self.log = cfg, log
        self.meta = {"config": to_dict(cfg), "split_fingerprint": data.fingerprint}
        opt = setup.opt
        rngs = {"epoch_order": rng}
        mixer_rng = getattr(opt.mixer, "rng", None)
        if mixer_rng is not None:
            rngs["mixer"] = mixer_rng
        self.objects = TrainingObjects(opt.model, opt.optimizer, opt.scheduler, opt.scaler, opt.generator, rngs,
                                       {"adversary": setup.adversary[0]} if setup.adversary is not None else {})
        self.progress = LoopProgress()

    def resume(self) -> tuple[float, dict | None, int, int, list[dict]]:
        """Restore the last complete epoch, if there is one: ``(best_score, best_state, best_epoch, stale,
        history)`` to continue the loop with (a fresh start's values otherwise)."""
        loaded = load_state(self.folder)
        if loaded is None:
            atomic_write_text(self.folder.parent / "config.yaml", yaml.safe_dump(self.meta["config"], sort_keys=False))
        else:
            tree, record = loaded
            diffs = config_differences(record.get("config", {}), self.cfg)
            if diffs:
                raise ConfigError(f"{self.folder.parent} holds an interrupted run of another config "
                                  f"({'; '.join(diffs[:3])}); resume it with `{resume_command(self.folder.parent)}`, "
                                  "or train into another --output")
            if record.get("split_fingerprint") != self.meta["split_fingerprint"]:
                raise CheckpointError(
                    f"the data of {self.folder.parent} changed since its training started (the split differs from "
                    f"the one in its checkpoint {self.folder / STATE_FILE}); it cannot continue on other data: train "
                    "into another --output")
            self.progress = restore(tree, self.objects)
            p = self.progress
            what = "training had ended; finishing the run" if p.complete else f"continuing with epoch {p.epoch + 1}"
            self.log(f"resume: epoch {p.epoch} of {self.cfg.epochs} restored from {self.folder}; {what}")
        p = self.progress
        return p.best_score, p.best_state, p.best_epoch, p.stale, list(p.history)

    def epochs(self) -> range:
        """The epochs still to run (none when training had ended)."""
        return range(self.progress.epoch + 1, 0 if self.progress.complete else self.cfg.epochs + 1)

    def save(self, epoch: int, best_score: float, best_state: dict | None, best_epoch: int, stale: int,
             history: list[dict], stop: bool = False) -> None:
        """Checkpoint the end of ``epoch`` (``stop``: training ends here early)."""
        self.progress = LoopProgress(epoch, best_score, best_state, best_epoch, stale, list(history),
                                     stop or epoch >= self.cfg.epochs)
        try:
            with InterruptGuard.current().saving():
                save_state(self.folder, capture(self.objects, self.progress), self.meta)
        except DiskFullError as exc:
            kept = f"the checkpoint of epoch {epoch - 1} is kept" if epoch > 1 else "no epoch is saved yet"
            raise DiskFullError(f"{exc}; {kept}. Then continue with: {resume_command(self.folder.parent)}") from None
        testhook.pause_after_epoch(epoch)  # inert unless a fault-injection test holds the run here


@contextmanager
def training_interrupts(run_dir: str | Path) -> Iterator[InterruptGuard]:
    """Within: Ctrl-C stops training at once (after a checkpoint being written is complete; a second Ctrl-C stops
    even that) and raises :class:`~covidscreen.errors.Interrupted`, whose message says which epoch is saved and
    the command that continues the run."""
    with InterruptGuard() as guard:
        try:
            yield guard
        except KeyboardInterrupt:
            record = None
            try:
                record = read_state_record(Path(run_dir) / RESUME_DIR)
            except CheckpointError:
                pass
            saved = (f"epoch {record['epoch']} is saved in {Path(run_dir) / RESUME_DIR}" if record
                     else "no epoch had ended yet, nothing to keep")
            raise Interrupted(f"training interrupted; {saved}. Continue with: {resume_command(run_dir)}") from None


@contextmanager
def after_training(run_dir: str | Path) -> Iterator[None]:
    """Within (what follows training): an error caused by the environment (a full disk, files that vanished, an
    unreadable file) or Ctrl-C ends with the command that redoes only this part, instead of a traceback."""
    way_out = f"once fixed, redo only what follows training with: covidscreen finish {run_dir}"
    try:
        yield
    except CovidscreenError as exc:
        raise type(exc)(f"{exc}; {way_out}") from None
    except OSError as exc:
        raise CheckpointError(f"{exc.filename or run_dir}: {exc.strerror or exc} while finishing the run (training "
                              f"ended and is saved); {way_out}") from None
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted after training ended (it is saved); {way_out}") from None


def continue_on_run_split(run_dir: str | Path, data: Any, log: Any = print) -> Any:
    """When ``run_dir`` holds an epoch checkpoint made on other data (images vanished, became unreadable or were
    added since the run started), continue on the run's own split (``split.csv``) without the images that are gone:
    a new split would put training images into the test set."""
    record = read_state_record(Path(run_dir) / RESUME_DIR)
    if record is None or record.get("split_fingerprint") == data.fingerprint:
        return data
    log(f"warning: the data of {run_dir} changed since its training started; continuing on the run's own split")
    data = align_to_run_split(data, Path(run_dir), log)
    data.fingerprint = record["split_fingerprint"]  # the split trained on, less the images that are gone
    return data


def discard_training_state(run_dir: str | Path) -> None:
    """Remove the epoch checkpoint of a finished run (the run's model.safetensors holds the selected weights)."""
    shutil.rmtree(Path(run_dir) / RESUME_DIR, ignore_errors=True)
