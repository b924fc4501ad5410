"""Robustness under acquisition changes (``covidscreen evaluate RUN --robustness``): the images an evaluation just
scored, re-scored under each perturbation of :mod:`covidscreen.data.perturb` at increasing strength.

The perturbation acts on the model's input (after the run's preprocessing and resizing), so a translation of k
pixels is k pixels of what the model sees. For each change and strength: the positive-vs-rest ROC AUC (macro
one-vs-rest without a positive class), the accuracy, and the share of decisions (at the run's operating point) that
differ from the unperturbed ones. Written as ``robustness.csv`` and ``robustness.png`` in the evaluation folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.cache import ImageCache
from ..data.perturb import PERTURBATIONS, perturb_batch, strengths_for
from ..errors import DataError
from ..evaluation.metrics import headline_auc, predict_labels
from ..inference.predictor import Predictor
from ..reporting.evaluation_extras import robustness_plot


def robustness_table(predictor: Predictor, images: np.ndarray, y: np.ndarray, perturbations: list[str] | None = None,
                     batch_size: int = 64, seed: int = 0) -> pd.DataFrame:
    """One row per (perturbation, strength): ``auc``, ``accuracy``, ``decision_change`` (share), ``n``."""
    classes = predictor.classes
    pos = predictor.run.positive_class if predictor.run.positive_class in classes else None

    def score(batch: np.ndarray) -> np.ndarray:
        return np.concatenate([predictor.predict_arrays(batch[i:i + batch_size])
                               for i in range(0, len(batch), batch_size)])

    base = predict_labels(score(images), predictor.positive_index, predictor.threshold)
    rows = []
    for name in perturbations or list(PERTURBATIONS):
        for s in strengths_for(name, images.shape[-1]):
            probs = score(perturb_batch(images, name, s, seed))
            labels = predict_labels(probs, predictor.positive_index, predictor.threshold)
            rows.append({"perturbation": name, "strength": s, "auc": headline_auc(y, probs, classes, pos),
                         "accuracy": float(np.mean(labels == y)), "decision_change": float(np.mean(labels != base)),
                         "n": int(len(y))})
    return pd.DataFrame(rows)


def evaluate_robustness(run_dir: str | Path, evaluation_dir: str | Path, device: str = "auto",
                        perturbations: list[str] | None = None, progress: bool = True) -> pd.DataFrame:
    """Re-score the images of an evaluation folder (``predictions.csv`` + ``metrics.json`` written by evaluate)
    under every perturbation; writes ``robustness.csv`` and ``robustness.png`` there."""
    out = Path(evaluation_dir)
    preds = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    metrics = json.loads((out / "metrics.json").read_text())
    predictor = Predictor(run_dir, device=device)
    root = Path(metrics.get("data") or ".")
    paths = [str(root / p) for p in preds["image"]]
    cache = ImageCache(paths, predictor.size, progress=progress, preprocess=predictor.preprocess,
                       segmenter=predictor.segmenter)
    keep = cache.ok
    if not keep.any():
        raise DataError(f"none of the {len(paths)} evaluated images could be read again from {root}")
    images = cache.images[cache.rows([p for p, k in zip(paths, keep) if k])]
    y = preds.loc[keep, "label"].map({c: i for i, c in enumerate(predictor.classes)}).to_numpy()
    table = robustness_table(predictor, images, y, perturbations, seed=int(predictor.run.seed or 0))
    table.to_csv(out / "robustness.csv", index=False)
    (out / "robustness.png").write_bytes(robustness_plot(table))
    return table
