"""Evaluate a trained run: on its own test split, or on another data folder (external validation)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.cache import ImageCache
from ..data.table import load_table
from ..errors import DataError
from ..inference.predictor import Predictor
from .metrics import classification_metrics
from .report import write_report
from .within_site import mixed_sites, within_site_metrics  # issue 6


def evaluate_run(run_dir: str | Path, data: str | Path | None = None, output: str | Path | None = None,
                 device: str = "auto", batch_size: int = 64, progress: bool = True) -> Path:
    """Compute metrics of a run on its test split (default) or on every image of another data folder.

    The operating threshold is the run's own (chosen on its validation split): external data never tunes it.

    Returns:
        The folder holding ``metrics.json``, ``predictions.csv`` and ``report.html`` of this evaluation.
    """
    run_dir = Path(run_dir)
    predictor = Predictor(run_dir, device=device)
    classes = predictor.classes
    if data is None:
        split_file = run_dir / "split.csv"
        if not split_file.is_file():
            raise DataError(f"{run_dir} has no split.csv; pass --data DIR to evaluate on another folder")
        table = pd.read_csv(split_file, keep_default_na=False)
        root = Path(predictor.meta["data_dir"])
        table = table[table["split"] == "test"].reset_index(drop=True)
        table["path"] = [str(root / p) for p in table["image"]]
        name = "test"
    else:
        table = load_table(data, classes=classes)
        table["split"] = "external"
        name = "external"
    if table.empty:
        raise DataError("nothing to evaluate: the chosen split holds no images")
    cache = ImageCache(table["path"].tolist(), predictor.size, progress=progress, preprocess=predictor.preprocess,
                       segmenter=predictor.segmenter)  # issue 6: the run's own preprocessing
    table = table[cache.ok].reset_index(drop=True)
    rows = cache.rows(table["path"].tolist())
    probs = np.concatenate([predictor.predict_arrays(cache.images[rows[i:i + batch_size]])
                            for i in range(0, len(rows), batch_size)])
    y = table["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    out = Path(output) if output else run_dir / f"eval-{name}"
    out.mkdir(parents=True, exist_ok=True)
    preds = table[[c for c in ["image", "label", "split", "site", "view", "group"] if c in table]].copy()
    for i, c in enumerate(classes):
        preds[f"prob_{c}"] = probs[:, i]
    preds["prediction"] = predictor.decide(probs)
    preds.to_csv(out / "predictions.csv", index=False)
    pos = predictor.meta.get("positive_class")
    m = classification_metrics(y, probs, classes, pos, predictor.threshold)
    metrics = {"classes": classes, "positive_class": pos, "operating_points": predictor.meta.get("operating_points"),
               "threshold_source": "the run's validation split", name: m, "n_test": m["n"],
               "skipped_files": int((~cache.ok).sum()), "data": str(data) if data else predictor.meta["data_dir"]}
    if "covid_vs_rest" in m:
        metrics["covid_vs_rest"] = m["covid_vs_rest"]
    # issue 6: within-site metrics for every site of these data that holds both classes
    if pos in classes and mixed_sites(preds, pos):
        m["within_site"] = within_site_metrics(preds, classes, pos, predictor.threshold)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    table.assign(split=name)[["image", "label", "site", "split"]].to_csv(out / "split.csv", index=False)
    write_report(out, split_name=name, title=f"covidscreen evaluation ({name}) of {run_dir.name}")
    return out
