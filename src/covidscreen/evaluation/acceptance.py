"""Acceptance-test statistics of a site commissioning: exact binomial intervals, the verdict, the sample needed.

- Intervals: Clopper-Pearson ("exact", scipy.stats.binomtest), two-sided at the stated confidence: conservative at
  the small n of a local sample, where Wald intervals undercover.
- Verdict per targeted figure: ``go`` when the interval's lower bound meets the target, ``no-go`` when even its upper
  bound misses it (the sample shows the target is not met), ``insufficient-data`` when the interval straddles the
  target (or there is nothing to estimate from). Overall: ``no-go`` if any figure is no-go, else
  ``insufficient-data`` if any is undecided, else ``go``.
- Planned specificity: the local threshold is placed, on the half of the sample that chooses it, at the
  specificity whose exact lower bound would meet the target with half as many images as the other half holds
  (:func:`planned_rate`): placing it at the target itself would make the estimate on the other half hover around
  the target, and its lower bound fall below it about every other time, however good the model.
- Images needed: the smallest n at which an observed rate equal to the present estimate would give a lower bound at
  or above the target (None when the estimate itself is at or below the target: no sample size shows it).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import binomtest

GO, NO_GO, INSUFFICIENT = "go", "no-go", "insufficient-data"
VERDICTS = (GO, NO_GO, INSUFFICIENT)


def binomial_ci(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) interval of a proportion ``k / n``; ``(nan, nan)`` when ``n == 0``."""
    if n <= 0:
        return math.nan, math.nan
    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence, method="exact")
    return float(ci.low), float(ci.high)


def figure(k: int, n: int, confidence: float = 0.95) -> dict:
    """``{"estimate", "ci_low", "ci_high", "n"}`` of ``k`` successes in ``n``."""
    lo, hi = binomial_ci(k, n, confidence)
    return {"estimate": k / n if n else math.nan, "ci_low": lo, "ci_high": hi, "n": int(n)}


def figure_verdict(fig: dict | None, target: float) -> str:
    if fig is None or not fig["n"]:
        return INSUFFICIENT
    if fig["ci_low"] >= target:
        return GO
    if fig["ci_high"] < target:
        return NO_GO
    return INSUFFICIENT


def overall_verdict(verdicts: list[str]) -> str:
    if not verdicts:
        return INSUFFICIENT
    if NO_GO in verdicts:
        return NO_GO
    if INSUFFICIENT in verdicts:
        return INSUFFICIENT
    return GO


def images_needed(estimate: float, target: float, confidence: float = 0.95, max_n: int = 100_000) -> int | None:
    """Images of the class needed to show ``target`` at ``confidence`` if ``estimate`` held (None: unreachable)."""
    if not math.isfinite(estimate) or estimate <= target:
        return None

    def shows(n: int) -> bool:
        return binomial_ci(math.floor(estimate * n), n, confidence)[0] >= target

    lo, hi = 1, 1
    while not shows(hi):  # doubling, then bisection (the bound grows with n at a fixed rate, up to rounding)
        lo, hi = hi, hi * 2
        if hi > max_n:
            return None
    while lo < hi:
        mid = (lo + hi) // 2
        if shows(mid):
            hi = mid
        else:
            lo = mid + 1
    return hi


def planned_rate(target: float, n_estimate: int, confidence: float = 0.95) -> float:
    """The rate to place a threshold at so that the other half's estimate can show ``target`` (see the module
    docstring); at most 1."""
    n = max(1, n_estimate // 2)
    for k in range(n + 1):
        if binomial_ci(k, n, confidence)[0] >= target:
            return k / n
    return 1.0


def threshold_at_rate(negative_scores, rate: float) -> float:
    """The threshold (``score >= threshold`` is positive) leaving a share ``rate`` of ``negative_scores`` below it:
    midway between the order statistics around that share (above the largest for ``rate`` 1)."""

    s = np.sort(np.asarray(negative_scores, dtype=float))
    k = min(len(s), math.ceil(rate * len(s) - 1e-12))
    if k >= len(s):
        return float(np.nextafter(s[-1], np.inf))
    if k == 0:
        return float(s[0])
    return float((s[k - 1] + s[k]) / 2) if s[k] > s[k - 1] else float(s[k])
