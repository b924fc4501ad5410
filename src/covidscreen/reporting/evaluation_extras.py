"""Figures and report sections of the optional evaluations: robustness under acquisition changes
(``robustness.csv``) and the comparison with human readers (``readers.json``). Each section appears in an
evaluation folder's ``report.html`` when its file is there."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_curve

from .html import esc, fmt, fmt_ci, img, table
from .plots import _png, plt


def robustness_plot(df: pd.DataFrame) -> bytes:
    """AUC (left) and share of changed decisions (right) against the strength of each perturbation."""
    names = list(dict.fromkeys(df["perturbation"]))
    fig, axes = plt.subplots(2, len(names), figsize=(2.2 * len(names), 4.4), squeeze=False)
    for j, name in enumerate(names):
        d = df[df["perturbation"] == name]
        axes[0, j].plot(d["strength"], d["auc"], "o-")
        axes[0, j].set(title=name, ylim=(0, 1.02))
        axes[1, j].plot(d["strength"], d["decision_change"], "o-", c="tab:red")
        axes[1, j].set(xlabel="strength", ylim=(0, 1.02))
    axes[0, 0].set_ylabel("ROC AUC")
    axes[1, 0].set_ylabel("decisions changed")
    fig.tight_layout()
    return _png(fig)


def readers_plot(truth: np.ndarray, score: np.ndarray, result: dict[str, Any], title: str) -> bytes:
    """The model's ROC curve with its operating point, and each reader as a point with Wilson 95% intervals."""
    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    fpr, tpr, _ = roc_curve(truth, score)
    ax.plot(fpr, tpr, lw=2, label="model ROC")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1)
    m = result["model"]
    ax.plot(1 - m["specificity"], m["sensitivity"], "s", c="k", ms=7, label="model operating point")
    for name, r in result["readers"].items():
        x, y = 1 - r["specificity"], r["sensitivity"]
        xerr = [[x - (1 - r["specificity_ci"][1])], [(1 - r["specificity_ci"][0]) - x]]
        yerr = [[y - r["sensitivity_ci"][0]], [r["sensitivity_ci"][1] - y]]
        ax.errorbar([x], [y], xerr=xerr, yerr=yerr, fmt="o", capsize=3, label=name)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=title, xlim=(0, 1), ylim=(0, 1.02))
    ax.legend(loc="lower right", fontsize=7)
    return _png(fig)


def robustness_section(folder: Path) -> list[str]:
    path = folder / "robustness.csv"
    if not path.is_file():
        return []
    df = pd.read_csv(path)
    png = folder / "robustness.png"
    rows = [{"perturbation": esc(r.perturbation), "strength": fmt(float(r.strength), 3), "ROC AUC": fmt(r.auc),
             "accuracy": fmt(r.accuracy), "decisions changed": fmt(r.decision_change)} for r in df.itertuples()]
    return ["<h2>Robustness under acquisition changes</h2>",
            "<p>The same images re-scored after controlled changes of the model input (strength 0: unchanged). "
            "Decisions changed: share of images whose decision at the operating point differs from the unperturbed "
            "one. No confidence intervals: read small differences as noise.</p>",
            img(png.read_bytes(), "robustness") if png.is_file() else "", table(rows)]


def readers_section(folder: Path) -> list[str]:
    path = folder / "readers.json"
    if not path.is_file():
        return []
    data = json.loads(path.read_text())
    m = data["model"]
    rows = [{"": "model (operating point)", "sensitivity": fmt_ci(m["sensitivity"], m["sensitivity_ci"]),
             "specificity": fmt_ci(m["specificity"], m["specificity_ci"]), "McNemar p (vs model)": "",
             "discordant (model right / reader right)": ""}]
    for name, r in data["readers"].items():
        mc = r["mcnemar"]
        rows.append({"": esc(name), "sensitivity": fmt_ci(r["sensitivity"], r["sensitivity_ci"]),
                     "specificity": fmt_ci(r["specificity"], r["specificity_ci"]),
                     "McNemar p (vs model)": fmt(mc["p_value"]),
                     "discordant (model right / reader right)":
                         f"{mc['model_right_reader_wrong']} / {mc['model_wrong_reader_right']}"})
    png = folder / "readers.png"
    return ["<h2>Comparison with human readers</h2>",
            f"<p>{data['n']} images read by the model and by {len(data['readers'])} reader(s), "
            f"{esc(data['positive_class'])} vs rest; 95% Wilson intervals; exact McNemar test of the decisions at the "
            f"model's operating point '{esc(data['operating_point'])}'.</p>",
            img(png.read_bytes(), "readers") if png.is_file() else "", table(rows)]


def extra_sections(folder: str | Path) -> list[str]:
    """Every optional evaluation section whose file is in ``folder``."""
    folder = Path(folder)
    return robustness_section(folder) + readers_section(folder)
