"""Images that could not be used, and where: ``skipped.csv`` of a run folder.

A file is listed once, with the error and the step that met it: ``decode`` (unreadable when the data were first
read: left out of the whole run), ``evaluation`` (a validation or test image that vanished or changed after it was
cached: left out of operating points and metrics), ``training data changed`` (a training image that vanished or
changed after it was cached: training used the copy read at the start), ``audit`` (could not be hashed: left out of
the audit). The report lists them; the run goes on.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from ..runtime import atomic_write_csv

SKIPPED_FILE = "skipped.csv"


def record_skipped(run_dir: str | Path, data: Any, errors: dict[str, str], stage: str) -> None:
    """Add ``errors`` (``{path: message}``) met at ``stage`` to ``data.skipped`` and rewrite ``skipped.csv``."""
    if not errors:
        return
    skipped = data.skipped.copy()
    if "stage" not in skipped:
        skipped["stage"] = "decode"
    new = pd.DataFrame({"path": list(errors), "error": list(errors.values()), "stage": stage})
    data.skipped = pd.concat([skipped, new], ignore_index=True).drop_duplicates("path", keep="first")
    atomic_write_csv(Path(run_dir) / SKIPPED_FILE, data.skipped)


def leave_out_changed_files(run_dir: str | Path, data: Any, log: Callable[[str], None] = print) -> None:
    """Validation and test images that vanished or changed since they were cached leave ``data`` (so they are
    neither evaluated nor audited); training images that did are only reported (training used the copy read at the
    start). Both are listed in ``skipped.csv``."""
    table = data.table
    changed = data.cache.changed(table["path"].tolist())
    if not changed:
        return
    is_eval = table["split"].isin(["val", "test"]).to_numpy()
    hit = table["path"].isin(changed).to_numpy()
    evaluated = {p: changed[p] for p in table["path"][hit & is_eval]}
    trained = {p: changed[p] for p in table["path"][hit & ~is_eval]}
    record_skipped(run_dir, data, evaluated, "evaluation")
    record_skipped(run_dir, data, trained, "training data changed")
    if evaluated:
        data.table = table[~(hit & is_eval)].reset_index(drop=True)
        data.rows = data.cache.rows(data.table["path"].tolist())
        log(f"warning: {len(evaluated)} validation/test image(s) vanished or changed during the run and are left out "
            f"of evaluation (listed in {Path(run_dir) / SKIPPED_FILE}), e.g. {next(iter(evaluated.values()))}")
    if trained:
        log(f"warning: {len(trained)} training image(s) vanished or changed during the run; training used the copy "
            f"read at the start (listed in {Path(run_dir) / SKIPPED_FILE})")
