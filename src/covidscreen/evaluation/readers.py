"""Model vs human readers on the same images: each reader's sensitivity and specificity with Wilson intervals, and
an exact McNemar test of the model's decisions (at its operating point) against each reader's.

McNemar's test looks only at the discordant images: ``b`` where the model is right and the reader wrong, ``c`` the
other way round. Under the null hypothesis (equal accuracy) each discordant image is a fair coin, so the exact
two-sided p-value is that of a binomial test of ``b`` successes in ``b + c`` trials at 0.5 (scipy's ``binomtest``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.stats import binomtest, norm

TRUE_WORDS = {"1", "true", "yes", "positive", "pos"}
FALSE_WORDS = {"0", "false", "no", "negative", "neg"}


def wilson_interval(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion (NaN, NaN without trials)."""
    if n == 0:
        return math.nan, math.nan
    z = float(norm.ppf(0.5 + level / 2))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_exact(truth: np.ndarray, a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """Exact McNemar test of decisions ``a`` (model) vs ``b`` (reader) against ``truth`` (all boolean)."""
    ok_a, ok_b = np.asarray(a) == np.asarray(truth), np.asarray(b) == np.asarray(truth)
    only_a, only_b = int((ok_a & ~ok_b).sum()), int((~ok_a & ok_b).sum())
    n = only_a + only_b
    p = 1.0 if n == 0 else float(binomtest(only_a, n, 0.5, alternative="two-sided").pvalue)
    return {"model_right_reader_wrong": only_a, "model_wrong_reader_right": only_b, "discordant": n, "p_value": p}


def sens_spec(truth: np.ndarray, decision: np.ndarray) -> dict[str, Any]:
    """Sensitivity and specificity of boolean decisions with Wilson 95% intervals."""
    truth, decision = np.asarray(truth, bool), np.asarray(decision, bool)
    tp, pos = int((truth & decision).sum()), int(truth.sum())
    tn, neg = int((~truth & ~decision).sum()), int((~truth).sum())
    return {"sensitivity": tp / pos if pos else math.nan, "sensitivity_ci": wilson_interval(tp, pos),
            "specificity": tn / neg if neg else math.nan, "specificity_ci": wilson_interval(tn, neg),
            "tp": tp, "positives": pos, "tn": tn, "negatives": neg}


def parse_decisions(values: list[Any], positive_class: str) -> np.ndarray:
    """A reader's column as booleans (positive or not): 1/0, true/false, yes/no, positive/negative, or class names
    (the positive class is positive, any other label negative).

    Raises:
        ValueError: an empty or unreadable cell, naming it.
    """
    out = []
    for i, v in enumerate(values):
        s = str(v).strip().lower()
        if s in TRUE_WORDS or s == positive_class.lower():
            out.append(True)
        elif s in FALSE_WORDS or (s and s not in ("nan", "none")):
            out.append(False)
        else:
            raise ValueError(f"row {i + 1}: empty decision {v!r}")
    return np.array(out, dtype=bool)


def compare_readers(truth: np.ndarray, model_decision: np.ndarray, readers: dict[str, np.ndarray]) -> dict[str, Any]:
    """The model's and each reader's sensitivity/specificity, and McNemar model vs each reader."""
    return {"model": sens_spec(truth, model_decision),
            "readers": {name: {**sens_spec(truth, d), "mcnemar": mcnemar_exact(truth, model_decision, d)}
                        for name, d in readers.items()}}
