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

from ..errors import CheckpointError
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


def align_to_run_split(data: Any, run_dir: Path, log: Callable[[str], None] = print) -> Any:
    """Give ``data`` the split the run was trained with (``split.csv``): images read now that the run did not use
    are dropped, and images of the run that are gone or unreadable now are left out and listed as skipped."""
    split_file = run_dir / "split.csv"
    if not split_file.is_file():
        raise CheckpointError(f"{run_dir} has no split.csv; its training never started: covidscreen train --resume "
                              f"{run_dir}")
    split = pd.read_csv(split_file, keep_default_na=False, dtype=str)
    split_of = dict(zip(split["image"], split["split"], strict=True))
    table = data.table[data.table["image"].isin(split_of)].reset_index(drop=True)
    table["split"] = table["image"].map(split_of)
    gone = split[~split["image"].isin(set(table["image"]))]
    if len(gone):
        errors = dict(zip(data.skipped["path"], data.skipped["error"], strict=True))
        paths = [str(data.data_dir / p) for p in gone["image"]]
        why = [errors.get(p, f"{p}: file vanished" if not Path(p).exists() else f"{p}: no longer in the data table")
               for p in paths]
        extra = pd.DataFrame({"path": paths, "error": why, "stage": "gone since the run started"})
        log(f"warning: {len(gone)} image(s) of the run's split are gone or unreadable now; they are left out "
            "(listed in skipped.csv)")
        data.skipped = pd.concat([data.skipped[~data.skipped["path"].isin(paths)], extra], ignore_index=True)
    data.table = table
    data.rows = data.cache.rows(table["path"].tolist())
    return data
