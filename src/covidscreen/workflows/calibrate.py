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
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import DEFAULT_N_BOOT
from ..data.cache import ImageCache
from ..data.table import load_table
from ..errors import ConfigError, DataError
from ..evaluation.calibration import apply_temperature, fit_specificity_threshold, fit_temperature
from ..inference.predictor import Predictor
from ..inference.run import update_record
from ..runtime import atomic_write_text


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
                  temperature: bool = False, device: str = "auto", n_boot: int = DEFAULT_N_BOOT, level: float = 0.95,
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
    if not 0.5 <= target_specificity < 1:
        raise ConfigError(f"--target-specificity {target_specificity} is invalid: expected a value in [0.5, 1)")
    if not name or not name.replace("_", "").replace("-", "").replace(".", "").isalnum() or name == "default":
        raise ConfigError(f"operating point name {name!r} is invalid: use letters, digits, '-', '_' or '.', "
                          "not 'default'")
    run_dir = Path(run_dir)
    predictor = Predictor(run_dir, device=device)
    classes, pos = predictor.classes, predictor.run.positive_class
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
        t = fit_temperature(probs, y_idx, bounds=(math.exp(-3.0), math.exp(3.0)), xatol=1e-5)
        probs = apply_temperature(probs, t)
    record = fit_specificity_threshold(y, probs[:, classes.index(pos)], target_specificity, n_boot, level, seed)
    record.update({"temperature": t, "data": str(Path(data).resolve()), "n_images": int(len(table)),
                   "unreadable": int((~cache.ok).sum()), "labels": table["label"].value_counts().to_dict(),
                   "created": datetime.now().isoformat(timespec="seconds"), "positive_class": pos})
    if not y.any():
        record["expected"]["sensitivity_from_validation"] = _validation_sensitivity(
            run_dir, classes, pos, record["threshold"], t, n_boot, level, seed)
    update_record(run_dir, merge={"operating_points": {name: record["threshold"]}, "local_calibration": {name: record}})
    atomic_write_text(run_dir / f"calibration-{name}.json", json.dumps(record, indent=2))
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


@dataclass(frozen=True)
class CalibrateOutcome:
    """What ``covidscreen calibrate`` stored: the operating point's name and its record."""

    name: str
    record: dict

    def lines(self) -> list[str]:
        """What the command prints (:func:`describe_calibration`)."""
        return describe_calibration(self.record, self.name)


def calibrate_job(run_dir: str | Path, data: str | Path, target_specificity: float = 0.9, name: str = "local",
                  temperature: bool = False, device: str = "auto") -> CalibrateOutcome:
    """``covidscreen calibrate``: fit and store the local operating point (:func:`calibrate_run`)."""
    return CalibrateOutcome(name, calibrate_run(run_dir, data, target_specificity=target_specificity, name=name,
                                                temperature=temperature, device=device))

