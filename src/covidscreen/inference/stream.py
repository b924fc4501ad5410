"""Batch scoring of an archive into a CSV file: rows written as they come, resumable.

For tens of thousands of files: the Predictor yields rows a chunk at a time (bounded memory); each is appended to
the CSV and flushed, so that an interrupted run keeps everything scored so far, and ``resume=True`` skips the files
already in the file (a row cut short by the interruption is dropped and scored again).
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError
from .predictor import Predictor, expand_inputs


@dataclass
class StreamSummary:
    written: int
    skipped: int
    unreadable: int
    output: Path


def _drop_partial_last_line(path: Path) -> None:
    with open(path, "rb+") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        if size == 0:
            return
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return
        # scan back to the last complete line (a kill mid-write leaves at most one partial row)
        pos = size - 1
        while pos > 0:
            step = min(65536, pos)
            fh.seek(pos - step)
            block = fh.read(step)
            nl = block.rfind(b"\n")
            if nl >= 0:
                fh.truncate(pos - step + nl + 1)
                return
            pos -= step
        fh.truncate(0)


def done_paths(output: Path, columns: list[str]) -> set[str]:
    """Paths already scored in an existing output (its header must match this run's columns)."""
    _drop_partial_last_line(output)
    with open(output, newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            return set()
        if header != columns:
            raise DataError(f"{output} has columns {', '.join(header)}; this run writes {', '.join(columns)}. "
                            "Resume into the file of the same run, or give another --output")
        return {row[0] for row in reader if len(row) == len(columns)}


def predict_to_csv(predictor: Predictor, inputs: list[str | Path], output: str | Path, resume: bool = False,
                   batch_size: int = 32, progress: bool = True) -> StreamSummary:
    """Score files and folders into ``output`` (CSV), one row per file, appended as they come.

    Args:
        resume: keep an existing ``output`` and skip the files it already holds; otherwise it is replaced.

    Raises:
        DataError: missing inputs, or an existing output from another run (with ``resume``).
    """
    output = Path(output)
    files = expand_inputs(inputs)
    columns = predictor.columns
    skip = done_paths(output, columns) if resume and output.is_file() else set()
    todo = [f for f in files if str(f) not in skip]
    output.parent.mkdir(parents=True, exist_ok=True)
    new_file = not (resume and output.is_file() and output.stat().st_size > 0)
    written = unreadable = 0
    with open(output, "w" if new_file else "a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        if new_file:
            writer.writeheader()
        for row in predictor.iter_predictions(todo, batch_size=batch_size, progress=progress):
            # an unreadable file's probabilities are empty cells, as pandas writes NaN
            writer.writerow({k: "" if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()})
            written += 1
            unreadable += bool(row["error"])
            if written % batch_size == 0:
                fh.flush()
        fh.flush()
        os.fsync(fh.fileno())
    return StreamSummary(written=written, skipped=len(files) - len(todo), unreadable=unreadable, output=output)
