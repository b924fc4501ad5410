"""Continuing a run folder: ``covidscreen train --resume RUN_DIR`` (training from its last complete epoch, then
everything after) and ``covidscreen finish RUN_DIR`` (only what follows training: evaluation, audit, explanations,
report, model card), for a run whose training ended but whose end was cut short (a crash, a full disk, data that
vanished under it).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import yaml

from ..config import TrainConfig, resolve_train_config
from ..errors import CheckpointError
from ..inference.checkpoint import WEIGHTS_FILE
from ..inference.run import load_run
from ..runtime import resolve_device, resolve_precision, seed_everything
from ..training.checkpointing import load_state, read_state_record
from .finalize import finalize_run
from .fit import fit
from .resume import RESUME_DIR, after_training, discard_training_state, resume_command
from .skipped import align_to_run_split
from .train import build_model, finish_run, log, prepare_data, write_split


def run_config(run_dir: str | Path, device: str | None = None) -> TrainConfig:
    """The config a run folder was started with (its ``config.yaml``), writing into the same folder."""
    run_dir = Path(run_dir)
    path = run_dir / "config.yaml"
    if not run_dir.is_dir():
        raise CheckpointError(f"run folder {run_dir} does not exist; give the folder a `covidscreen train` wrote")
    if not path.is_file():
        raise CheckpointError(f"{run_dir} has no config.yaml: not a run folder written by covidscreen train; start a "
                              "new run with covidscreen train --output DIR")
    cfg = resolve_train_config(path, output=str(run_dir), device=device)
    stored = yaml.safe_load(path.read_text()) or {}
    if isinstance(stored, dict) and "precision" not in stored and resolve_device(cfg.device).type != "cuda":
        cfg.precision = "fp32"  # a run from before the setting trained in float32 on a CPU: continue it so
    return cfg


def resume_training(run_dir: str | Path, device: str | None = None, progress: bool = True) -> Path:
    """Continue the run of ``run_dir`` from its last complete epoch (from the start if none ended) with the config
    it was started with, then evaluate, audit and report it as an uninterrupted run would."""
    return fit(run_config(run_dir, device), progress=progress)


def finish(run_dir: str | Path, device: str | None = None, progress: bool = True) -> Path:
    """Redo what follows training for ``run_dir``: predictions, operating points and metrics, checkpoint, audit,
    held-out site, explanations, report and model card; the weights are the run's selected epoch (from its epoch
    checkpoint when training ended there, else from ``model.safetensors``).

    Raises:
        CheckpointError: training has not ended (the message gives the command that continues it) or the folder
            holds no trained weights.
    """
    run_dir = Path(run_dir)
    t0 = time.time()
    cfg = run_config(run_dir, device)
    record = read_state_record(run_dir / RESUME_DIR)
    if record is not None and not record["complete"]:
        raise CheckpointError(f"the training of {run_dir} stopped after epoch {record['epoch']} of {cfg.epochs}; "
                              f"continue it with: {resume_command(run_dir)}")
    if record is None and not (run_dir / WEIGHTS_FILE).is_file():
        raise CheckpointError(f"{run_dir} holds no trained weights (no {RESUME_DIR}/ checkpoint, no {WEIGHTS_FILE}); "
                              f"train it with: {resume_command(run_dir)}")
    seed_everything(cfg.seed)
    dev = resolve_device(cfg.device)
    precision = resolve_precision(dev, cfg.precision, cfg.amp)
    amp = precision.dtype
    data = align_to_run_split(prepare_data(cfg, progress=progress), run_dir, log)
    write_split(run_dir, data, cfg)
    model, init_from = build_model(cfg, data, dev, amp)
    if record is not None:  # training ended in its epoch checkpoint: the selected epoch's weights are there
        tree, _ = load_state(run_dir / RESUME_DIR)
        data.fingerprint = record["split_fingerprint"]  # the split trained on, whatever is left of it now
        p = tree["progress"]
        model.load_state_dict(p["best_state"])
        best_epoch, history = p["best_epoch"], p["history"]
    else:
        run = load_run(run_dir)
        model.backbone.load_state_dict(run.load_state())
        best_epoch = run.best_epoch or 0
        data.fingerprint = run.split_fingerprint or data.fingerprint
        init_from = run.init_from if run.init_from is not None else init_from
        # how it was trained, not how it would be here
        precision = run.training_precision_record or precision
        hist = run_dir / "history.csv"
        history = pd.read_csv(hist).to_dict("records") if hist.is_file() else []
    log(f"finish: {run_dir} (epoch {best_epoch} selected); evaluating, auditing and reporting")
    with after_training(run_dir):
        finish_run(run_dir, model, data, cfg, dev, amp, best_epoch, history, progress, init_from,
                   precision=precision)
        finalize_run(run_dir, cfg, data, model, dev, progress, log)
    discard_training_state(run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    log(f"done in {(time.time() - t0) / 60:.1f} min: {run_dir} ({metrics.get('n_test', '?')} test images)")
    return run_dir
