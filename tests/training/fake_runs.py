"""Run and cross-validation folders written by tests (no training): the files the comparison table and the
cross-validation summary read, with predictions drawn at random.

Sites: ``cohen`` holds COVID and non-COVID images (the mixed site), ``kermany`` non-COVID only; two images per
patient, so patient grouping matters.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

CLASSES = ["covid", "normal", "pneumonia"]


def fake_predictions(n: int = 120, seed: int = 0) -> pd.DataFrame:
    """``n`` images without a split: ``image``, ``label``, ``site``, ``view``, ``group`` and ``prob_<class>``."""
    rng = np.random.default_rng(seed)
    covid = rng.random(n) < 0.4
    labels = np.where(covid, "covid", np.where(rng.random(n) < 0.5, "normal", "pneumonia"))
    site = np.where(covid | (rng.random(n) < 0.35), "cohen", "kermany")
    # separable within cohen only in part; kermany is easy (a site shortcut the pooled AUC rewards)
    p = np.clip(0.3 * covid + 0.25 * (site == "cohen") + 0.5 * rng.random(n), 0.001, 0.999)
    return pd.DataFrame({"image": [f"img{i}.jpg" for i in range(n)], "label": labels, "site": site, "view": "PA",
                         "group": [f"p{seed}-{i // 2}" for i in range(n)], "prob_covid": p,
                         "prob_normal": (1 - p) * 0.6, "prob_pneumonia": (1 - p) * 0.4})


def write_run(run_dir: str | Path, preds: pd.DataFrame, threshold: float = 0.5, within_site: dict | None = None,
              site_probe: tuple[float, float] | None = None, roi_fallback: int | None = None,
              best_epoch: int | None = 2, val_within: list[float] | None = None, n_train: int = 100) -> Path:
    """A finished run folder: ``predictions.csv`` (with ``split``), ``metrics.json``, ``model.json``, ``history.csv``.

    Args:
        within_site: the ``test.within_site`` block to store (None: the run has none, as older runs).
        site_probe: ``(mean balanced accuracy, mean chance)`` stored as ``site_probe``.
        roi_fallback: stored as ``preprocessing_stats.roi_fallback`` (None: no ``preprocessing_stats``).
        val_within: the ``val_within_site_auc`` column of ``history.csv``, one value per epoch (None: no column).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    preds.to_csv(run_dir / "predictions.csv", index=False)
    test = preds[preds["split"] == "test"]
    metrics: dict = {"classes": CLASSES, "positive_class": "covid", "threshold": threshold,
                     "split_counts": {"train": n_train}, "n_test": len(test),
                     "test": {"accuracy": float(np.mean(test[[f"prob_{c}" for c in CLASSES]].to_numpy().argmax(1)
                                                        == test["label"].map(CLASSES.index).to_numpy()))}}
    if within_site is not None:
        metrics["test"]["within_site"] = within_site
    if site_probe is not None:
        metrics["site_probe"] = {"mean_balanced_accuracy": site_probe[0], "mean_chance": site_probe[1]}
    if roi_fallback is not None:
        metrics["preprocessing_stats"] = {"roi_fallback": roi_fallback}
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    (run_dir / "model.json").write_text(json.dumps({"classes": CLASSES, "positive_class": "covid", "image_size": 64,
                                                    "architecture": "fake", "seed": 0, "best_epoch": best_epoch}))
    epochs = len(val_within) if val_within else 3
    history = pd.DataFrame({"epoch": range(1, epochs + 1), "seconds": [20.0] * epochs})
    if val_within:
        history["val_within_site_auc"] = val_within
    history.to_csv(run_dir / "history.csv", index=False)
    return run_dir


def split_in_two(preds: pd.DataFrame) -> pd.DataFrame:
    """First half of the patients validation, second half test."""
    first = preds["group"].isin(preds["group"].unique()[: preds["group"].nunique() // 2])
    return preds.assign(split=np.where(first, "val", "test"))


def write_folds(cv_dir: str | Path, k: int = 3, n: int = 150, seed: int = 0) -> pd.DataFrame:
    """``fold-0`` ... ``fold-<k-1>`` as cross-validation writes them before pooling: fold ``i`` tests on patient fold
    ``i`` and validates on fold ``i + 1``; fold ``i`` has site probe ``0.6 + 0.1 i``, ``roi_fallback`` ``i`` and
    best epoch ``i + 1``. Returns every image with its patient fold (``fold``)."""
    base = fake_predictions(n, seed)
    codes = pd.factorize(base["group"])[0]
    base["fold"] = codes % k
    for i in range(k):
        test = base[base["fold"] == i].assign(split="test")
        val = base[base["fold"] == (i + 1) % k].assign(split="val")
        preds = pd.concat([val, test], ignore_index=True).drop(columns="fold")
        write_run(Path(cv_dir) / f"fold-{i}", preds, threshold=0.5, site_probe=(0.6 + 0.1 * i, 0.3), roi_fallback=i,
                  best_epoch=i + 1, val_within=[0.5, 0.6, 0.7])
    return base
