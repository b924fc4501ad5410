"""What training does after its checkpoint is written: the out-of-distribution model, audit, leave-one-site-out
evaluation, report, model card.

Kept out of ``training/trainer.py`` so that the trainer only calls :func:`finalize_run` once.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..config import TrainConfig
from ..reporting.model_card import write_model_card
from ..reporting.report import write_report
from .audit import audit_table
from .holdout import evaluate_holdout_site
from .ood import fit_after_training
from .skipped import record_skipped
from .timing import PhaseTimer

SHOWN = ("roc_auc", "sensitivity", "specificity", "multi-class accuracy", "macro_roc_auc")


def finalize_run(run_dir: str | Path, cfg: TrainConfig, data: Any, model: Any = None, device: Any = "cpu",
                 progress: bool = True, log: Any = print, timer: PhaseTimer | None = None) -> None:
    """Fit the out-of-distribution model, audit the run's data (and model), evaluate a held-out site, then rebuild
    ``report.html`` and write ``model_card.md``.

    Args:
        run_dir: the run folder (checkpoint, metrics and predictions already written).
        cfg: the training config (``audit``, ``holdout_site``, ``seed``).
        data: the trainer's prepared data (``table`` with splits, ``cache``, ``rows``, ``data_dir``).
        model: the trained model, for the feature probe of the audit.
        timer: where the seconds of the audit, held-out site and report phases are added.
    """
    run_dir = Path(run_dir)
    timer = timer or PhaseTimer()
    if getattr(cfg, "ood_detector", "none") != "none" and getattr(data, "cache", None) is not None:
        with timer.phase("ood"):
            fit_after_training(run_dir, data, cfg.ood_detector, cfg.ood_flag_rate, cfg.seed, str(device),
                               progress=progress, log=log, orientation=cfg.ood_orientation)
    with timer.phase("audit"):
        _audit(run_dir, cfg, data, model, device, log)
    if cfg.holdout_site:
        with timer.phase("held-out site"):
            _holdout(run_dir, cfg, progress, log)
    with timer.phase("report"):
        write_report(run_dir)
        write_model_card(run_dir)


def _audit(run_dir: Path, cfg: TrainConfig, data: Any, model: Any, device: Any, log: Any) -> None:
    if cfg.audit:
        audit = audit_table(data.table, data.cache.images, data.rows, run_dir, model=model, device=device,
                            seed=cfg.seed,
                            split_source=split_source(cfg),
                            data_dir=str(data.data_dir), run_dir=str(run_dir.resolve()))
        record_skipped(run_dir, data, {r["path"]: r["error"] for r in audit.get("left_out", [])}, "audit")
        for f in audit["findings"]:
            if f["severity"] == "high":
                log(f"audit: {f['text']}")
        log(f"audit: {len(audit['findings'])} finding(s) in {audit['seconds']} s (audit.json)")


def split_source(cfg: TrainConfig) -> str:
    """Where the run's split came from, in words, for the audit."""
    if cfg.split_file:
        return f"the split given by the user ({cfg.split_file}), used as given"
    seed = cfg.seed if cfg.split_seed is None else cfg.split_seed
    how = "near-duplicate images kept together" if cfg.group_near_duplicates else "near-duplicates not grouped"
    return f"this run's patient-grouped split (seed {seed}, {how})"


def _holdout(run_dir: Path, cfg: TrainConfig, progress: bool, log: Any) -> None:
    if cfg.holdout_site:
        block = evaluate_holdout_site(run_dir, cfg, progress=progress)
        for note in block.get("notes", []):
            log(f"holdout: {note}")
        for r in block.get("comparison", []):
            if r["metric"] in SHOWN and math.isfinite(r["external"]):
                log(f"holdout site {block['site']}: {r['metric']} internal {r['internal']:.3f} -> external "
                    f"{r['external']:.3f}")
