"""Fitting a run's out-of-distribution model: after training (from the images training decoded) and by
``covidscreen ood fit RUN_DIR`` for existing runs and ensembles (from the run's ``split.csv``).

The detector is fitted on (at most :data:`MAX_FIT_IMAGES` of) the training split's images and its threshold set on
the validation split; the test split is never read. An ensemble uses its common split (members trained on one split);
an ensemble of members trained on different splits (the fold models of cross-validation) has no validation image
that none of its members trained on, and is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..config import OOD_DETECTORS, TrainConfig
from ..data.cache import ImageCache
from ..errors import DataError
from ..inference.predictor import Predictor
from ..inference.run import OODRecord, load_run
from ..ood.fit import fit_ood, linear_head
from ..ood.model import save_ood

MAX_FIT_IMAGES = 3000  # training images the detector is fitted on (drawn with the run's seed): ~2 CPU-minutes
MIN_VAL_IMAGES = 10


def _sample(idx: np.ndarray, n: int, seed: int) -> np.ndarray:
    if len(idx) <= n:
        return idx
    return np.sort(np.random.default_rng(seed).choice(idx, n, replace=False))


def fit_from_arrays(run_dir: str | Path, images: np.ndarray, splits: np.ndarray, labels: np.ndarray,
                    detector: str, flag_rate: float, seed: int = 0, device: Any = "auto", progress: bool = True,
                    log: Any = print, fallback: bool = True, orientation: bool = True) -> OODRecord | None:
    """Fit and store the OOD model of ``run_dir`` from prepared images with their split and class index.

    ``fallback``: fit mahalanobis where the (default) vim does not apply (an ensemble, a head that is not one linear
    layer); off when the user named the detector. ``orientation``: with the orientation check (upright or turned).
    Returns None (and logs why) when the split holds too few images to set a threshold."""
    splits = np.asarray(splits)
    train = _sample(np.flatnonzero(splits == "train"), MAX_FIT_IMAGES, seed)
    val = _sample(np.flatnonzero(splits == "val"), MAX_FIT_IMAGES, seed + 1)
    if len(train) < 10 or len(val) < MIN_VAL_IMAGES:
        log(f"ood: not fitted ({len(train)} training and {len(val)} validation images; at least 10 of each needed)")
        return None
    predictor = Predictor(run_dir, device=device)
    if detector == "vim" and fallback and (predictor.run.kind == "ensemble" or linear_head(predictor) is None):
        log("ood: vim needs one model with a linear head; this run has none, so mahalanobis is fitted instead")
        detector = "mahalanobis"
    model = fit_ood(predictor, np.asarray(images[train]), np.asarray(labels)[train], np.asarray(images[val]),
                    detector, flag_rate, seed=seed, progress=progress, orientation=orientation)
    rec = save_ood(run_dir, model)
    check = (f" with the orientation check ({rec.n_orientation_fit} of them in each turned view)"
             if rec.orientation else "")
    log(f"ood: {rec.detector} fitted on {rec.n_fit} training images{check}; threshold {rec.threshold:.4g} flags "
        f"{rec.val_flag_rate:.1%} of {rec.n_val} validation images (target {rec.flag_rate:.0%})")
    return rec


def fit_after_training(run_dir: str | Path, data: Any, detector: str, flag_rate: float, seed: int,
                       device: Any = "auto", progress: bool = True, log: Any = print, orientation: bool = True
                       ) -> OODRecord | None:
    """The OOD fit of a freshly trained run, on the images its training decoded (``data``: the trainer's)."""
    if detector == "none":
        return None
    table = data.table
    return fit_from_arrays(run_dir, _Rows(data.cache.images, data.rows), table["split"].to_numpy(),
                           table["y"].to_numpy(), detector, flag_rate, seed, device, progress, log,
                           orientation=orientation)


class _Rows:
    """``images[rows[i]]`` without copying the cache."""

    def __init__(self, images: np.ndarray, rows: np.ndarray) -> None:
        self.images, self.rows = images, np.asarray(rows)

    def __getitem__(self, idx: np.ndarray) -> np.ndarray:
        return np.asarray(self.images[self.rows[idx]])


def fit_run_ood(run_dir: str | Path, data: str | Path | None = None, detector: str | None = None,
                flag_rate: float = 0.05, device: Any = "auto", progress: bool = True, log: Any = print,
                orientation: bool | None = None) -> OODRecord:
    """``covidscreen ood fit``: fit (or refit) the OOD model of a run or ensemble folder from its split.

    Args:
        data: the data folder the split's ``image`` paths are relative to (default: the one the run records).
        detector: default: the run's configured ``ood_detector``, else the current default.
        orientation: with the orientation check (default: the run's ``ood_orientation``, else the current default).

    Raises:
        DataError: no split, a split of members that differ, or too few images.
        CheckpointError: not a run folder.
    """
    run = load_run(run_dir)
    run_dir = run.path
    fallback = detector is None
    detector = detector or str(run.config.get("ood_detector") or TrainConfig().ood_detector)
    if orientation is None:
        orientation = bool(run.config.get("ood_orientation", TrainConfig().ood_orientation))
    if detector not in OOD_DETECTORS or detector == "none":
        raise DataError(f"--detector {detector!r} is unknown; use one of "
                        f"{', '.join(d for d in OOD_DETECTORS if d != 'none')}")
    split_file = run_dir / "split.csv"
    if not split_file.is_file():
        if run.kind == "ensemble":
            raise DataError(f"{run_dir} is an ensemble of runs trained on different splits: no validation image is "
                            "unseen by all of its members, so no honest threshold can be set. Fit the OOD model of "
                            "an ensemble whose members share one split, or of each member run")
        raise DataError(f"{run_dir} has no split.csv: the training and validation images are unknown")
    table = pd.read_csv(split_file, keep_default_na=False)
    root = Path(data) if data is not None else Path(run.data_dir or "")
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist; pass --data DIR (the folder the run was trained on)")
    table = table[table["split"].isin(["train", "val"])].reset_index(drop=True)
    if table.empty:
        raise DataError(f"{split_file} lists no training or validation image")
    seed = int(run.seed or 0)
    keep = np.concatenate([_sample(np.flatnonzero(table["split"].to_numpy() == s), MAX_FIT_IMAGES, seed + i)
                           for i, s in enumerate(("train", "val"))])
    table = table.iloc[np.sort(keep)].reset_index(drop=True)
    missing = [p for p in table["image"].head(50) if not (root / p).is_file()]
    if len(missing) == min(50, len(table)):
        raise DataError(f"none of the split's images is in {root} (e.g. {missing[0]}); pass --data DIR, the folder "
                        "the run was trained on")
    predictor = Predictor(run, device=device)
    paths = [str(root / p) for p in table["image"]]
    cache = ImageCache(paths, predictor.size, progress=progress, preprocess=predictor.preprocess,
                       segmenter=predictor.segmenter)
    ok = cache.ok
    if (~ok).any():
        log(f"ood: {int((~ok).sum())} image(s) of the split could not be read and are left out")
    table = table[ok].reset_index(drop=True)
    rows = cache.rows([p for p, good in zip(paths, ok, strict=True) if good])
    classes = {c: i for i, c in enumerate(run.classes)}
    labels = table["label"].map(classes).fillna(-1).astype(int).to_numpy()
    return _fit_checked(run_dir, _Rows(cache.images, rows), table["split"].to_numpy(), labels, detector, flag_rate,
                        seed, device, progress, log, fallback, orientation)


def _fit_checked(run_dir: Path, images: _Rows, splits: np.ndarray, labels: np.ndarray, detector: str,
                 flag_rate: float, seed: int, device: Any, progress: bool, log: Any, fallback: bool,
                 orientation: bool) -> OODRecord:
    rec = fit_from_arrays(run_dir, images, splits, labels, detector, flag_rate, seed, device, progress, log,
                          fallback, orientation)
    if rec is None:
        raise DataError(f"{run_dir}: too few readable training or validation images to fit an out-of-distribution "
                        "model (at least 10 of each)")
    return rec


@dataclass(frozen=True)
class OODFitOutcome:
    """What ``covidscreen ood fit`` stored in the run folder ``run_dir``: the OOD model's record."""

    run_dir: Path
    record: OODRecord

    def summary(self) -> str:
        """The line the command prints: the file, the detector, its threshold and validation flag rate."""
        rec = self.record
        return (f"wrote {self.run_dir / rec.file} ({rec.detector}, threshold {rec.threshold:.4g}, flags "
                f"{rec.val_flag_rate:.1%} of {rec.n_val} validation images)")


def ood_fit_job(run_dir: str | Path, data: str | Path | None = None, detector: str | None = None,
                flag_rate: float = 0.05, device: Any = "auto", progress: bool = True, log: Any = print,
                orientation: bool | None = None) -> OODFitOutcome:
    """``covidscreen ood fit``: :func:`fit_run_ood` (its arguments and errors)."""
    return OODFitOutcome(Path(run_dir), fit_run_ood(run_dir, data=data, detector=detector, flag_rate=flag_rate,
                                                    device=device, progress=progress, log=log,
                                                    orientation=orientation))

