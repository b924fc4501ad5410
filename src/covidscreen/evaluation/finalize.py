"""What training does after its checkpoint is written: audit, leave-one-site-out evaluation, report, model card.

Kept out of ``training/trainer.py`` so that the trainer only calls :func:`finalize_run` once.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .report import write_report

SHOWN = ("roc_auc", "sensitivity", "specificity", "multi-class accuracy", "macro_roc_auc")


def finalize_run(run_dir: str | Path, cfg: Any, data: Any, model: Any = None, device: Any = "cpu",
                 progress: bool = True, log: Any = print) -> None:
    """Audit the run's data (and model), evaluate a held-out site, then rebuild ``report.html`` and write
    ``model_card.md``.

    Args:
        run_dir: the run folder (checkpoint, metrics and predictions already written).
        cfg: the training config (``audit``, ``holdout_site``, ``seed`` are read when present).
        data: the trainer's prepared data (``table`` with splits, ``cache``, ``rows``, ``data_dir``).
        model: the trained model, for the feature probe of the audit.
    """
    from ..audit.run import audit_table
    from .holdout import evaluate_holdout_site
    from .model_card import write_model_card

    run_dir = Path(run_dir)
    if getattr(cfg, "audit", True):
        audit = audit_table(data.table, data.cache.images, data.rows, run_dir, model=model, device=device,
                            seed=int(getattr(cfg, "seed", 0)),
                            split_source=f"this run's patient-grouped split (seed {getattr(cfg, 'seed', 0)})",
                            data_dir=str(data.data_dir), run_dir=str(run_dir.resolve()))
        for f in audit["findings"]:
            if f["severity"] == "high":
                log(f"audit: {f['text']}")
        log(f"audit: {len(audit['findings'])} finding(s) in {audit['seconds']} s (audit.json)")
    if getattr(cfg, "holdout_site", None):
        block = evaluate_holdout_site(run_dir, cfg, progress=progress)
        for note in block.get("notes", []):
            log(f"holdout: {note}")
        for r in block.get("comparison", []):
            if r["metric"] in SHOWN and math.isfinite(r["external"]):
                log(f"holdout site {block['site']}: {r['metric']} internal {r['internal']:.3f} -> external "
                    f"{r['external']:.3f}")
    write_report(run_dir)
    write_model_card(run_dir)
