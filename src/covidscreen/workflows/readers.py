"""Model vs human readers (``covidscreen evaluate RUN --readers readers.csv``) on the images an evaluation scored.

``readers.csv`` has a column ``image`` (as in the evaluation's ``predictions.csv``: the path relative to the data
folder, or just the file name when that is unique) and one column per reader with that reader's decision (1/0,
yes/no, positive/negative, or a class name). Writes ``readers.json`` and ``readers.png`` into the evaluation folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import DataError
from ..evaluation.readers import compare_readers, parse_decisions
from ..reporting.evaluation_extras import readers_plot


def _match(readers: pd.DataFrame, preds: pd.DataFrame, source: Path) -> pd.Series:
    """Row of ``preds`` for each reader row, by relative path, else by unique file name."""
    by_path = {p: i for i, p in enumerate(preds["image"])}
    names = preds["image"].map(lambda p: Path(p).name)
    by_name = {n: i for i, n in enumerate(names) if (names == n).sum() == 1}
    rows, missing = [], []
    for img in readers["image"].astype(str):
        i = by_path.get(img, by_name.get(Path(img).name))
        rows.append(i)
        if i is None:
            missing.append(img)
    if missing:
        raise DataError(f"{source}: {len(missing)} image(s) were not scored by this evaluation, e.g. {missing[0]!r}; "
                        "the 'image' column must name evaluated images (as in predictions.csv)")
    return pd.Series(rows, index=readers.index)


def compare_with_readers(evaluation_dir: str | Path, readers_csv: str | Path) -> dict[str, Any]:
    """Compare the model's decisions in an evaluation folder with each reader's; returns what ``readers.json``
    holds."""
    out, source = Path(evaluation_dir), Path(readers_csv)
    if not source.is_file():
        raise DataError(f"readers file {source} does not exist")
    try:
        readers = pd.read_csv(source, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"{source} is not a readable CSV file: {exc}") from None
    reader_cols = [c for c in readers.columns if c != "image"]
    if "image" not in readers.columns or not reader_cols:
        raise DataError(f"{source} needs a column 'image' and one column of decisions per reader; it has "
                        f"{', '.join(readers.columns) or 'no columns'}")
    metrics = json.loads((out / "metrics.json").read_text())
    pos = metrics.get("positive_class")
    if not pos:
        raise DataError("reader comparison needs a run with a positive class (positive-vs-rest decisions)")
    preds = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    rows = _match(readers, preds, source).to_numpy()
    sub = preds.iloc[rows].reset_index(drop=True)
    truth = (sub["label"] == pos).to_numpy()
    model = (sub["prediction"] == pos).to_numpy()
    decisions = {}
    for col in reader_cols:
        try:
            decisions[col] = parse_decisions(readers[col].tolist(), pos)
        except ValueError as exc:
            raise DataError(f"{source}, reader '{col}': {exc}; accepted: 1/0, yes/no, true/false, "
                            f"positive/negative or a class name") from None
    result = compare_readers(truth, model, decisions)
    result.update({"n": int(len(sub)), "positive_class": pos, "operating_point": "default",
                   "readers_file": str(source)})
    (out / "readers.json").write_text(json.dumps(result, indent=2))
    score = pd.to_numeric(sub[f"prob_{pos}"], errors="coerce").to_numpy(dtype=float)
    if truth.any() and (~truth).any():
        (out / "readers.png").write_bytes(readers_plot(truth, np.nan_to_num(score), result,
                                                       f"{pos} vs rest: model and readers"))
    return result
