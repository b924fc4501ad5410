"""Local calibration: fit a run's operating threshold (and optionally a temperature) on a small labelled sample
from the user's own hospital, and store it as a named operating point in the sidecar.

A model's validation threshold was chosen on other hospitals' images; at a new site the score distribution of
normal images shifts, so the specificity the run promises does not hold (Risman et al. 2021 recommend local
calibration before any use). A few dozen local normals are enough to place the threshold at a target specificity.

What is reported, and how honestly:

- ``apparent``: sensitivity/specificity on the calibration sample itself at the fitted threshold (optimistic: the
  threshold was fitted on these images).
- ``expected``: an out-of-bag bootstrap of the whole procedure: resample the local sample, refit the threshold,
  measure it on the images left out of that resample. Its mean and percentile interval estimate the specificity
  (and sensitivity) that the fitted threshold will have on *new* local images.
- Without local positives, sensitivity at the new threshold is estimated on the run's own validation split
  (other hospitals' images), and labelled so.
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.cache import ImageCache
from ..data.table import load_table
from ..errors import DataError
from ..evaluation.thresholds import threshold_for_specificity
from .checkpoint import read_sidecar, write_sidecar

MIN_NEGATIVES = 10


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log(probs) / T)``: temperature scaling of the logits, from probabilities."""
    z = np.log(np.clip(np.asarray(probs, dtype=float), 1e-12, 1.0)) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_temperature(probs: np.ndarray, y: np.ndarray) -> float:
    """Temperature minimising the negative log-likelihood of the true classes (searched on log T in [-3, 3])."""
    from scipy.optimize import minimize_scalar

    y = np.asarray(y, dtype=int)

    def nll(log_t: float) -> float:
        p = apply_temperature(probs, math.exp(log_t))
        return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-12, 1.0))))

    return float(math.exp(minimize_scalar(nll, bounds=(-3.0, 3.0), method="bounded").x))


def _rate(hits: int, n: int) -> float:
    return hits / n if n else math.nan


def fit_specificity_threshold(y_pos: np.ndarray, score: np.ndarray, target_specificity: float,
                              n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> dict:
    """Threshold reaching ``target_specificity`` on the sample, with apparent and out-of-bag expected rates.

    Args:
        y_pos: True for positive images (may be all False: a sample of normals only).
        score: the positive class's score.
        target_specificity: wanted share of negatives below the threshold.

    Returns:
        ``threshold``, ``apparent`` and ``expected`` blocks (``specificity``, ``sensitivity`` with ``*_ci``), sizes.
    """
    y = np.asarray(y_pos, dtype=bool)
    s = np.asarray(score, dtype=float)
    if (~y).sum() < MIN_NEGATIVES:
        raise DataError(f"local calibration needs at least {MIN_NEGATIVES} images of non-positive classes, got "
                        f"{int((~y).sum())}")
    thr = threshold_for_specificity(y, s, target_specificity)
    pred = s >= thr
    apparent = {"specificity": _rate(int((~pred & ~y).sum()), int((~y).sum())),
                "sensitivity": _rate(int((pred & y).sum()), int(y.sum()))}
    rng = np.random.default_rng(seed)
    pos_idx, neg_idx = np.flatnonzero(y), np.flatnonzero(~y)
    specs, senss = [], []
    for _ in range(n_boot):
        bn = neg_idx[rng.integers(0, len(neg_idx), len(neg_idx))]
        bp = pos_idx[rng.integers(0, len(pos_idx), len(pos_idx))] if len(pos_idx) else pos_idx
        t = threshold_for_specificity(y[np.r_[bp, bn]], s[np.r_[bp, bn]], target_specificity)
        oob_n = np.setdiff1d(neg_idx, bn)
        oob_p = np.setdiff1d(pos_idx, bp)
        if len(oob_n):
            specs.append(float(np.mean(s[oob_n] < t)))
        if len(oob_p):
            senss.append(float(np.mean(s[oob_p] >= t)))
    alpha = (1 - level) / 2

    def summary(v: list[float]) -> tuple[float, list[float]]:
        if not v:
            return math.nan, [math.nan, math.nan]
        return float(np.mean(v)), [float(np.quantile(v, alpha)), float(np.quantile(v, 1 - alpha))]

    spec_mean, spec_ci = summary(specs)
    sens_mean, sens_ci = summary(senss)
    return {"threshold": float(thr), "target_specificity": float(target_specificity),
            "n_negative": int((~y).sum()), "n_positive": int(y.sum()),
            "apparent": apparent,
            "expected": {"specificity": spec_mean, "specificity_ci": spec_ci,
                         "sensitivity": sens_mean, "sensitivity_ci": sens_ci,
                         "method": f"out-of-bag bootstrap of the threshold fit ({n_boot} resamples, {level:.0%})"}}


def _validation_sensitivity(run_dir: Path, classes: list[str], pos: str, threshold: float, temperature: float,
                            n_boot: int, level: float, seed: int) -> dict | None:
    """Sensitivity at ``threshold`` on the run's validation positives (when the local sample has none)."""
    f = run_dir / "predictions.csv"
    if not f.is_file():
        return None
    preds = pd.read_csv(f)
    val = preds[(preds["split"] == "val") & (preds["label"] == pos)]
    if val.empty:
        return None
    probs = apply_temperature(val[[f"prob_{c}" for c in classes]].to_numpy(), temperature)
    hit = probs[:, classes.index(pos)] >= threshold
    rng = np.random.default_rng(seed)
    boots = [float(hit[rng.integers(0, len(hit), len(hit))].mean()) for _ in range(n_boot)]
    alpha = (1 - level) / 2
    return {"sensitivity": float(hit.mean()), "sensitivity_ci": [float(np.quantile(boots, alpha)),
                                                                  float(np.quantile(boots, 1 - alpha))],
            "n_positive": int(len(hit)), "source": "the run's validation split (other hospitals), not local images"}


def calibrate_run(run_dir: str | Path, data: str | Path, target_specificity: float = 0.9, name: str = "local",
                  temperature: bool = False, device: str = "auto", n_boot: int = 1000, level: float = 0.95,
                  seed: int = 0, progress: bool = True) -> dict:
    """Fit a local operating point for a run and store it in the run's sidecar.

    Args:
        run_dir: a run folder written by ``covidscreen train``.
        data: a labelled local sample (``metadata.csv`` or ``<label>/`` folders; labels must be the run's classes;
            normals alone are enough).
        target_specificity: wanted specificity of the positive-vs-rest decision at the local site.
        name: the operating point's name (``covidscreen predict --operating-point NAME``).
        temperature: also fit a temperature on the local sample (needs positive and negative images).

    Returns:
        The calibration record (also written to ``calibration-<name>.json`` and ``local_calibration[name]`` in the
        sidecar).

    Raises:
        DataError: too few negatives, labels that are not the run's classes, or temperature without positives.
    """
    from ..errors import ConfigError
    from .predictor import Predictor

    if not 0.5 <= target_specificity < 1:
        raise ConfigError(f"--target-specificity {target_specificity} is invalid: expected a value in [0.5, 1)")
    if not name or not name.replace("_", "").replace("-", "").replace(".", "").isalnum() or name == "default":
        raise ConfigError(f"operating point name {name!r} is invalid: use letters, digits, '-', '_' or '.', "
                          "not 'default'")
    run_dir = Path(run_dir)
    predictor = Predictor(run_dir, device=device)
    classes, pos = predictor.classes, predictor.meta.get("positive_class")
    if pos not in classes:
        raise DataError(f"{run_dir} has no positive class; local calibration fits the {pos}-vs-rest threshold")
    table = load_table(data, classes=classes)
    cache = ImageCache(table["path"].tolist(), predictor.size, progress=progress, preprocess=predictor.preprocess,
                       segmenter=predictor.segmenter)
    table = table[cache.ok].reset_index(drop=True)
    rows = cache.rows(table["path"].tolist())
    probs = np.concatenate([predictor.predict_arrays(cache.images[rows[i:i + 64]]) for i in range(0, len(rows), 64)])
    y_idx = table["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    y = y_idx == classes.index(pos)
    t = 1.0
    if temperature:
        if y.all() or (~y).all():
            raise DataError("fitting a temperature needs local images of the positive class and of other classes; "
                            "drop --temperature to fit the threshold on normals alone")
        t = fit_temperature(probs, y_idx)
        probs = apply_temperature(probs, t)
    record = fit_specificity_threshold(y, probs[:, classes.index(pos)], target_specificity, n_boot, level, seed)
    record.update({"temperature": t, "data": str(Path(data).resolve()), "n_images": int(len(table)),
                   "unreadable": int((~cache.ok).sum()), "labels": table["label"].value_counts().to_dict(),
                   "created": datetime.now().isoformat(timespec="seconds"), "positive_class": pos})
    if not y.any():
        record["expected"]["sensitivity_from_validation"] = _validation_sensitivity(
            run_dir, classes, pos, record["threshold"], t, n_boot, level, seed)
    meta = read_sidecar(run_dir)
    meta.setdefault("operating_points", {})[name] = record["threshold"]
    meta.setdefault("local_calibration", {})[name] = record
    write_sidecar(run_dir, meta)
    (run_dir / f"calibration-{name}.json").write_text(json.dumps(record, indent=2))
    return record


def describe_calibration(record: dict, name: str) -> list[str]:
    """Lines for the CLI."""
    e, a = record["expected"], record["apparent"]
    lines = [f"operating point '{name}': threshold {record['threshold']:.4f} on p({record['positive_class']})"
             + (f" after temperature {record['temperature']:.3f}" if record["temperature"] != 1.0 else "")
             + f", fitted on {record['n_negative']} negative and {record['n_positive']} positive local images",
             f"target specificity {record['target_specificity']:.3f}; on the calibration images: specificity "
             f"{a['specificity']:.3f}" + (f", sensitivity {a['sensitivity']:.3f}" if record["n_positive"] else ""),
             f"expected on new local images: specificity {e['specificity']:.3f} "
             f"[{e['specificity_ci'][0]:.3f}, {e['specificity_ci'][1]:.3f}]"]
    if record["n_positive"]:
        lines.append(f"expected sensitivity {e['sensitivity']:.3f} [{e['sensitivity_ci'][0]:.3f}, "
                     f"{e['sensitivity_ci'][1]:.3f}]")
    elif e.get("sensitivity_from_validation"):
        v = e["sensitivity_from_validation"]
        lines.append(f"no local positives: sensitivity at this threshold on {v['source']}: {v['sensitivity']:.3f} "
                     f"[{v['sensitivity_ci'][0]:.3f}, {v['sensitivity_ci'][1]:.3f}] ({v['n_positive']} images)")
    else:
        lines.append("no local positives and no validation predictions: sensitivity unknown")
    lines.append(f"use it: covidscreen predict RUN_DIR FILES --operating-point {name}")
    return lines
