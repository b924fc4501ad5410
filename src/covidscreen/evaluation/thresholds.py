"""Operating points on the positive class's probability, chosen on validation data (never on test).

The named points are stored in the checkpoint sidecar (``operating_points``) and can be picked by
``covidscreen predict --operating-point NAME``:

- ``youden``: maximum Youden J (sensitivity + specificity - 1) on the pooled validation split;
- ``sensitivity_<t>``: the highest threshold that still reaches sensitivity ``t`` (screening: miss few cases);
- ``specificity_<t>``: the lowest threshold that still reaches specificity ``t`` (confirmation: few false alarms);
- rules that hold across sites (they need each validation image's site; a run without sites has none of them):

  - ``worst_site_specificity_<T>``: the lowest threshold at which **every** validation site with at least
    :data:`MIN_SITE_NEGATIVES` non-positive images reaches specificity ``T``. A site that could reach ``T`` only
    above the highest validation positive score (so no positive would be found) cannot reach it: the rule names
    it in a warning and in the point's note, and ignores it; with no site of enough images it falls back, with a
    warning, to ``specificity_<T>`` on the pooled images;
  - ``balanced_youden``: maximum Youden J where each site's non-positive images weigh the same in the specificity
    (sites with at least :data:`MIN_SITE_NEGATIVES` of them; positives pooled): a large, easy site no longer sets
    the threshold on its own;
  - ``worst_group``: the threshold that maximises the accuracy of the worst group (Sagawa et al. 2020, "Distributionally
    Robust Neural Networks", used here for selection only): groups are the non-positive images of each site with
    enough of them, and the positive images (all from one collection on the shared data, so they form one group).

- ``default``: the point :data:`DEFAULT_RULE` names (chosen by leave-one-site-out, docs/results.md).

The sensitivity and specificity *reached on validation* are recorded with each point, also per site
(:func:`site_figures`, Wilson intervals); on new data they will differ (the report shows test values with CIs).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import binomtest
from sklearn.metrics import roc_curve

from ..errors import ConfigError

MIN_SITE_NEGATIVES = 20  # a site needs this many non-positive validation images to take part in a site rule
WORST_SITE_TARGET = 0.90  # T of worst_site_specificity_<T> in every run
DEFAULT_RULE = "worst_site_specificity_0.9"  # what "default" stands for: chosen by leave-one-site-out (docs/results.md)
SITE_RULES = ("worst_site_specificity", "balanced_youden", "worst_group")


class ThresholdWarning(UserWarning):
    """A site rule could not do what it states and fell back (the point's ``note`` says how)."""


def youden_threshold(y_true: np.ndarray, score: np.ndarray) -> float:
    """Threshold maximising Youden's J = sensitivity + specificity - 1 (0.5 when undefined)."""
    y = np.asarray(y_true).astype(bool)
    if y.all() or (~y).all():
        return 0.5
    fpr, tpr, thr = roc_curve(y, score)
    j = tpr - fpr
    best = int(np.argmax(j))
    return float(min(thr[best], 1.0))


def _check_target(target: float, what: str) -> None:
    if not 0 < target < 1:
        raise ConfigError(f"target {what} {target!r} is invalid: expected a number strictly between 0 and 1")


def threshold_for_sensitivity(y_true: np.ndarray, score: np.ndarray, target: float) -> float:
    """Highest threshold whose sensitivity on these data is at least ``target``."""
    _check_target(target, "sensitivity")
    y = np.asarray(y_true).astype(bool)
    pos = np.sort(np.asarray(score, dtype=float)[y])[::-1]
    if len(pos) == 0:
        return 0.5
    k = int(np.ceil(target * len(pos) - 1e-9))  # need at least k positives at or above the threshold
    return float(pos[max(k, 1) - 1])


def threshold_for_specificity(y_true: np.ndarray, score: np.ndarray, target: float) -> float:
    """Lowest threshold whose specificity on these data is at least ``target``."""
    _check_target(target, "specificity")
    y = np.asarray(y_true).astype(bool)
    neg = np.sort(np.asarray(score, dtype=float)[~y])
    if len(neg) == 0:
        return 0.5
    k = int(np.ceil(target * len(neg) - 1e-9))  # at least k negatives strictly below the threshold
    if k >= len(neg):
        return float(np.nextafter(neg[-1], np.inf))
    return float(np.nextafter(neg[k - 1], np.inf)) if k > 0 else float(neg[0])


def point_name(kind: str, target: float) -> str:
    """``sensitivity_0.95`` style names (targets printed without trailing zeros)."""
    return f"{kind}_{target:g}"


@dataclass(frozen=True)
class PointChoice:
    """A threshold chosen by a rule, with a note when the rule could not do what it states (None: it could)."""

    threshold: float
    note: str | None = None


def _qualifying_sites(y: np.ndarray, sites: np.ndarray, min_negatives: int) -> list[str]:
    names, counts = np.unique(sites[~y], return_counts=True)
    return [str(n) for n, c in zip(names, counts, strict=True) if c >= min_negatives]


def _small_sites_text(y: np.ndarray, sites: np.ndarray, kept: list[str], min_negatives: int) -> str:
    small = sorted(set(map(str, sites[~y])) - set(kept))
    return f" (sites with fewer than {min_negatives} non-positive images: {', '.join(small)})" if small else ""


def _warn(note: str) -> str:
    warnings.warn(note, ThresholdWarning, stacklevel=3)
    return note


def worst_site_specificity_threshold(y_true: np.ndarray, score: np.ndarray, sites: Sequence | np.ndarray,
                                     target: float = WORST_SITE_TARGET,
                                     min_negatives: int = MIN_SITE_NEGATIVES) -> PointChoice:
    """Lowest threshold at which every site with ``min_negatives`` non-positive images reaches specificity ``target``.

    A site that would need a threshold above the highest positive score (no positive found any more) cannot reach
    ``target``; it is left out, with a :class:`ThresholdWarning` and a note. Without any qualifying site the rule
    falls back (warning, note) to :func:`threshold_for_specificity` on all images.
    """
    _check_target(target, "specificity")
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(score, dtype=float)
    site = np.asarray(sites).astype(str)
    kept = _qualifying_sites(y, site, min_negatives)
    if not kept:
        pooled = threshold_for_specificity(y, s, target)
        return PointChoice(pooled, _warn(
            f"worst_site_specificity_{target:g}: no validation site has {min_negatives} or more non-positive images"
            f"{_small_sites_text(y, site, kept, min_negatives)}; fell back to specificity {target:g} on all "
            f"validation images (threshold {pooled:.3f})"))
    top_positive = float(s[y].max()) if y.any() else math.inf
    needed = {name: threshold_for_specificity(y[site == name], s[site == name], target) for name in kept}
    unreachable = {name: t for name, t in needed.items() if t > top_positive}
    reachable = {name: t for name, t in needed.items() if name not in unreachable}
    if not reachable:
        pooled = threshold_for_specificity(y, s, target)
        return PointChoice(pooled, _warn(
            f"worst_site_specificity_{target:g}: no validation site reaches specificity {target:g} below the highest "
            f"positive score ({top_positive:.3f}); fell back to specificity {target:g} on all validation images "
            f"(threshold {pooled:.3f})"))
    threshold = max(reachable.values())
    notes = []
    if unreachable:
        notes.append(_warn(
            f"worst_site_specificity_{target:g}: site(s) {', '.join(sorted(unreachable))} cannot reach specificity "
            f"{target:g} without missing every validation positive (they would need a threshold above "
            f"{top_positive:.3f}); the threshold {threshold:.3f} holds for the other sites only"))
    return PointChoice(threshold, " ".join(notes) or None)


def _pooled_youden_fallback(rule: str, y: np.ndarray, s: np.ndarray, site: np.ndarray, kept: list,
                            min_negatives: int) -> PointChoice:
    """A site-weighted rule that has no qualifying site (or no positive) falls back to the pooled Youden threshold,
    with a warning and a note that say why."""
    pooled = youden_threshold(y, s)
    why = (f"no validation site has {min_negatives} or more non-positive images"
           f"{_small_sites_text(y, site, kept, min_negatives)}" if y.any() else "validation holds no positive")
    return PointChoice(pooled, _warn(f"{rule}: {why}; fell back to the pooled Youden threshold ({pooled:.3f})"))


def balanced_youden_threshold(y_true: np.ndarray, score: np.ndarray, sites: Sequence | np.ndarray,
                              min_negatives: int = MIN_SITE_NEGATIVES) -> PointChoice:
    """Maximum Youden J with each qualifying site's non-positive images weighted equally (positives pooled).

    The weighted ROC curve is scikit-learn's ``roc_curve`` with sample weights ``1 / n_site`` on the non-positive
    images of each site with ``min_negatives`` of them, 0 on those of smaller sites. Without a qualifying site it
    falls back (warning, note) to the pooled :func:`youden_threshold`.
    """
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(score, dtype=float)
    site = np.asarray(sites).astype(str)
    kept = _qualifying_sites(y, site, min_negatives)
    if not kept or not y.any():
        return _pooled_youden_fallback("balanced_youden", y, s, site, kept, min_negatives)
    weight = np.where(y, 1.0 / y.sum(), 0.0)
    for name in kept:
        neg = ~y & (site == name)
        weight[neg] = 1.0 / neg.sum()
    fpr, tpr, thr = roc_curve(y, s, sample_weight=weight)
    best = int(np.argmax(tpr - fpr))
    return PointChoice(float(min(thr[best], 1.0)))


def worst_group_threshold(y_true: np.ndarray, score: np.ndarray, sites: Sequence | np.ndarray,
                          min_negatives: int = MIN_SITE_NEGATIVES) -> PointChoice:
    """Threshold maximising the worst group's accuracy: min(sensitivity, specificity of each qualifying site).

    Ties go to the lowest such threshold (the most sensitive one). Without positives, or without a qualifying
    site, it falls back (warning, note) to the pooled :func:`youden_threshold`.
    """
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(score, dtype=float)
    site = np.asarray(sites).astype(str)
    kept = _qualifying_sites(y, site, min_negatives)
    if not kept or not y.any():
        return _pooled_youden_fallback("worst_group", y, s, site, kept, min_negatives)
    candidates = np.unique(np.append(s, np.nextafter(s.max(), np.inf)))
    pos = np.sort(s[y])
    worst = 1.0 - np.searchsorted(pos, candidates, side="left") / len(pos)  # sensitivity: score >= threshold
    for name in kept:
        neg = np.sort(s[~y & (site == name)])
        worst = np.minimum(worst, np.searchsorted(neg, candidates, side="left") / len(neg))  # specificity
    return PointChoice(float(min(candidates[int(np.argmax(worst))], 1.0)))


def site_points(y_true: np.ndarray, score: np.ndarray, sites: Sequence | np.ndarray,
                target: float = WORST_SITE_TARGET,
                min_negatives: int = MIN_SITE_NEGATIVES) -> dict[str, PointChoice]:
    """The points that hold across sites, by name."""
    return {
        point_name("worst_site_specificity", target): worst_site_specificity_threshold(y_true, score, sites, target,
                                                                                       min_negatives),
        "balanced_youden": balanced_youden_threshold(y_true, score, sites, min_negatives),
        "worst_group": worst_group_threshold(y_true, score, sites, min_negatives),
    }


def operating_points(y_true: np.ndarray, score: np.ndarray, target_sensitivity: float = 0.95,
                     target_specificity: float = 0.95, sites: Sequence | np.ndarray | None = None,
                     default: str = DEFAULT_RULE) -> dict[str, float]:
    """The named operating points stored in the checkpoint sidecar (``default`` is what predict uses).

    With ``sites`` (one per image) the site rules are added; their notes: :func:`choose_points`.
    """
    return choose_points(y_true, score, target_sensitivity, target_specificity, sites, default)[0]


def choose_points(y_true: np.ndarray, score: np.ndarray, target_sensitivity: float = 0.95,
                  target_specificity: float = 0.95, sites: Sequence | np.ndarray | None = None,
                  default: str = DEFAULT_RULE) -> tuple[dict[str, float], dict[str, str]]:
    """``(points, notes)``: the named thresholds, and for each point whose rule fell back, why.

    ``default`` names the point that ``default`` stands for; when that point is not available (no sites given),
    ``youden`` stands in.
    """
    pts = {
        "youden": youden_threshold(y_true, score),
        point_name("sensitivity", target_sensitivity): threshold_for_sensitivity(y_true, score, target_sensitivity),
        point_name("specificity", target_specificity): threshold_for_specificity(y_true, score, target_specificity),
    }
    notes: dict[str, str] = {}
    if sites is not None:
        for name, choice in site_points(y_true, score, sites).items():
            pts[name] = choice.threshold
            if choice.note:
                notes[name] = choice.note
    pts["default"] = pts[default_name(pts, default)]
    return pts, notes


def default_name(points: dict[str, Any], default: str = DEFAULT_RULE) -> str:
    """The point that ``default`` stands for among ``points``: ``default`` if there, else ``youden``."""
    return default if default in points else "youden"


def site_figures(y_true: np.ndarray, score: np.ndarray, sites: Sequence | np.ndarray, threshold: float,
                 level: float = 0.95) -> dict[str, dict[str, Any]]:
    """Per site: counts, specificity and sensitivity at ``threshold`` with Wilson intervals (scipy; None: no image).

    Returns:
        ``{site: {"n_negative", "n_positive", "specificity", "specificity_ci", "sensitivity", "sensitivity_ci"}}``,
        sites sorted by name; undefined figures are None (JSON-safe).
    """
    y = np.asarray(y_true).astype(bool)
    called = np.asarray(score, dtype=float) >= threshold
    site = np.asarray(sites).astype(str)
    out = {}
    for name in sorted(set(site)):
        m = site == name
        neg, pos = int((~y & m).sum()), int((y & m).sum())
        tn, tp = int((~y & m & ~called).sum()), int((y & m & called).sum())
        out[name] = {"n_negative": neg, "n_positive": pos,
                     "specificity": tn / neg if neg else None, "specificity_ci": wilson_interval(tn, neg, level),
                     "sensitivity": tp / pos if pos else None, "sensitivity_ci": wilson_interval(tp, pos, level)}
    return out


def wilson_interval(k: int, n: int, level: float = 0.95) -> list[float] | None:
    """Wilson interval of ``k`` successes in ``n`` (scipy's ``binomtest``); None when ``n`` is 0."""
    if n == 0:
        return None
    ci = binomtest(k, n).proportion_ci(confidence_level=level, method="wilson")
    return [float(ci.low), float(ci.high)]


def weakest_site(figures: dict[str, dict[str, Any]], min_negatives: int = MIN_SITE_NEGATIVES) -> str | None:
    """The site with the lowest specificity among those with ``min_negatives`` non-positive images (else among
    all sites with any); None when no site has a non-positive image."""
    rated = {k: f for k, f in figures.items() if f.get("specificity") is not None}
    big = {k: f for k, f in rated.items() if f["n_negative"] >= min_negatives} or rated
    return min(big, key=lambda k: (big[k]["specificity"], k)) if big else None


def describe_sites(y_true: np.ndarray, score: np.ndarray, sites: Sequence | np.ndarray, points: dict[str, float],
                   notes: dict[str, str] | None = None,
                   min_negatives: int = MIN_SITE_NEGATIVES) -> dict[str, dict[str, Any]]:
    """Each point's per-site validation figures, its weakest site, and its rule's note (None: no fallback)."""
    out = {}
    for name, t in points.items():
        figs = site_figures(y_true, score, sites, t)
        out[name] = {"sites": figs, "weakest_site": weakest_site(figs, min_negatives),
                     "min_site_negatives": min_negatives, "note": (notes or {}).get(name)}
    return out


def describe_points(y_true: np.ndarray, score: np.ndarray, points: dict[str, float]) -> dict[str, dict[str, float]]:
    """Sensitivity and specificity that each threshold reaches on the data it was chosen on."""
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(score, dtype=float)
    out = {}
    for name, t in points.items():
        pred = s >= t
        out[name] = {
            "threshold": float(t),
            "sensitivity": float((pred & y).sum() / y.sum()) if y.any() else float("nan"),
            "specificity": float((~pred & ~y).sum() / (~y).sum()) if (~y).any() else float("nan"),
        }
    return out
