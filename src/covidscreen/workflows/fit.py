"""``fit``: from a :class:`~covidscreen.config.TrainConfig` to a finished run folder, or to k of them pooled.

One entry point for the CLI, experiments and tests: a config with ``folds`` (and no ``fold``) is cross-validated
(``crossval.py``), every other config is one run (``train.py``).
"""

from __future__ import annotations

from pathlib import Path

from ..config import TrainConfig
from .crossval import cross_validate
from .train import fit_single


def fit(cfg: TrainConfig, progress: bool = True) -> Path:
    """Train (and evaluate, audit, report) one run, or every fold of a k-fold cross-validation.

    Returns:
        The run folder (for cross-validation: the folder holding the folds and the pooled results).
    """
    if cfg.folds is not None and cfg.fold is None:
        return cross_validate(cfg, progress=progress)
    return fit_single(cfg, progress=progress)
