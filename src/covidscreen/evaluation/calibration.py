"""Calibration: do predicted probabilities match observed frequencies?

- ``reliability_curve`` and ``expected_calibration_error`` (ECE): equal-width bins of the predicted probability;
  ECE is the image-weighted mean gap between the mean prediction and the observed rate in each bin.
- ``brier_score``: mean squared error of the probabilities (binary, or summed over classes for multi-class).
- ``fit_temperature`` / ``apply_temperature``: temperature scaling (Guo et al. 2017) fitted on validation data.
- ``fit_specificity_threshold``: a local operating point at a target specificity with out-of-bag expected rates
  (used by ``covidscreen calibrate``, ``workflows/calibrate.py``).
  It divides the logits by one number ``T``; it never changes which class has the highest probability, only how
  confident the probabilities are. Probabilities suffice: ``softmax(log p / T) == softmax(z / T)`` because softmax
  ignores a constant added to every logit.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import minimize_scalar

from ..config import DEFAULT_N_BOOT
from ..errors import ConfigError, DataError
from .thresholds import threshold_for_specificity

_EPS = 1e-12


def _check_binary(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y, dtype=float).ravel()
    p = np.asarray(p, dtype=float).ravel()
    if len(y) != len(p):
        raise ConfigError(f"labels ({len(y)}) and probabilities ({len(p)}) differ in length")
    if len(p) and (np.nanmin(p) < 0 or np.nanmax(p) > 1):
        raise ConfigError("probabilities must lie in [0, 1]")
    return y, p


def reliability_curve(y_true: np.ndarray, prob: np.ndarray, n_bins: int = 10) -> dict[str, list]:
    """Per equal-width bin: mean predicted probability, observed rate of positives, and the image count.

    Empty bins are left out. The last bin includes 1.0.
    """
    y, p = _check_binary(y_true, prob)
    if n_bins < 1:
        raise ConfigError(f"n_bins must be at least 1, got {n_bins}")
    edges = np.linspace(0, 1, n_bins + 1)
    idx = np.clip(np.digitize(p, edges[1:-1], right=False), 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    sum_p = np.bincount(idx, weights=p, minlength=n_bins)
    sum_y = np.bincount(idx, weights=y, minlength=n_bins)
    keep = count > 0
    return {
        "bin_lower": edges[:-1][keep].tolist(),
        "bin_upper": edges[1:][keep].tolist(),
        "mean_predicted": (sum_p[keep] / count[keep]).tolist(),
        "observed_rate": (sum_y[keep] / count[keep]).tolist(),
        "count": count[keep].astype(int).tolist(),
    }


def expected_calibration_error(y_true: np.ndarray, prob: np.ndarray, n_bins: int = 10) -> float:
    """ECE with equal-width bins (NaN for no data)."""
    c = reliability_curve(y_true, prob, n_bins)
    n = sum(c["count"])
    if n == 0:
        return math.nan
    gaps = np.abs(np.asarray(c["mean_predicted"]) - np.asarray(c["observed_rate"]))
    return float(np.sum(gaps * np.asarray(c["count"])) / n)


def brier_score(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Brier score: binary when ``probs`` is 1-D (``y_true`` 0/1), else multi-class (``y_true`` class indices),
    summed over classes and averaged over images (0 is perfect; 2 is the worst multi-class value)."""
    probs = np.asarray(probs, dtype=float)
    if probs.ndim == 1:
        y, p = _check_binary(y_true, probs)
        return float(np.mean((p - y) ** 2)) if len(y) else math.nan
    y = np.asarray(y_true, dtype=int)
    onehot = np.eye(probs.shape[1])[y]
    return float(np.mean(np.sum((probs - onehot) ** 2, axis=1))) if len(y) else math.nan


def top_label_ece(y_true: np.ndarray, probs: np.ndarray, n_bins: int = 10) -> float:
    """Multi-class ECE of the confidence (the highest probability) against being right."""
    probs = np.asarray(probs, dtype=float)
    y = np.asarray(y_true, dtype=int)
    return expected_calibration_error(probs.argmax(1) == y, probs.max(1), n_bins)


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities after dividing the logits by ``temperature`` (``1`` leaves them unchanged)."""
    if not temperature > 0:
        raise ConfigError(f"temperature must be positive, got {temperature}")
    logp = np.log(np.clip(np.asarray(probs, dtype=float), _EPS, 1.0)) / temperature
    logp -= logp.max(axis=1, keepdims=True)
    e = np.exp(logp)
    return e / e.sum(axis=1, keepdims=True)


def _nll(probs: np.ndarray, y: np.ndarray, temperature: float) -> float:
    p = apply_temperature(probs, temperature)
    return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], _EPS, 1.0))))


def fit_temperature(probs: np.ndarray, y_true: np.ndarray, bounds: tuple[float, float] = (0.05, 20.0),
                    xatol: float = 1e-4) -> float:
    """Temperature minimising the negative log-likelihood of ``y_true`` (class indices) under ``probs``.

    The NLL is convex in ``1/T``; a bounded scalar search on ``log T`` finds it.

    Raises:
        ConfigError: no images, or fewer than two classes present (nothing to calibrate against).
    """
    probs = np.asarray(probs, dtype=float)
    y = np.asarray(y_true, dtype=int)
    if len(y) == 0 or len(np.unique(y)) < 2:
        raise ConfigError("temperature scaling needs validation images of at least two classes")
    res = minimize_scalar(lambda lt: _nll(probs, y, math.exp(lt)), bounds=tuple(math.log(b) for b in bounds),
                          method="bounded", options={"xatol": xatol})
    return float(math.exp(res.x))


def calibration_summary(y: np.ndarray, probs: np.ndarray, positive_index: int | None, n_bins: int = 10) -> dict:
    """ECE and Brier scores (positive class and multi-class) and the positive class's reliability curve."""
    y = np.asarray(y, dtype=int)
    probs = np.asarray(probs, dtype=float)
    out = {"n_bins": n_bins, "brier_multiclass": brier_score(y, probs),
           "ece_top_label": top_label_ece(y, probs, n_bins),
           "nll": float(-np.mean(np.log(np.clip(probs[np.arange(len(y)), y], _EPS, 1)))) if len(y) else math.nan}
    if positive_index is not None:
        yp, pp = y == positive_index, probs[:, positive_index]
        out.update({"ece_positive": expected_calibration_error(yp, pp, n_bins), "brier_positive": brier_score(yp, pp),
                    "reliability_positive": reliability_curve(yp, pp, n_bins)})
    return out


MIN_NEGATIVES = 10  # a local operating point needs at least this many non-positive images


def _rate(hits: int, n: int) -> float:
    return hits / n if n else math.nan


def fit_specificity_threshold(y_pos: np.ndarray, score: np.ndarray, target_specificity: float,
                              n_boot: int = DEFAULT_N_BOOT, level: float = 0.95, seed: int = 0) -> dict:
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
