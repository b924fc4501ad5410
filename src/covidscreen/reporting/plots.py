"""Matplotlib figures of the report, returned as PNG bytes (headless backend)."""

from __future__ import annotations

import io
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image  # noqa: E402
from sklearn.metrics import precision_recall_curve, roc_curve  # noqa: E402

from ..explain.figures import figure_png  # noqa: E402


def _png(fig) -> bytes:
    return figure_png(fig, dpi=110)


def _title(ax, title: str) -> None:
    """The title at the top of the axes, where matplotlib's automatic placement puts it when no tick labels or
    offset text sit above the axes (true of these plots: ticks below, values in 0-1 or categories); fixing it skips
    that search, which measures every tick label again on each draw."""
    ax.set_title(title, y=1)


def roc_plot(y: np.ndarray, score: np.ndarray, title: str, points: dict[str, float] | None = None) -> bytes:
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    fpr, tpr, thr = roc_curve(y, score)
    ax.plot(fpr, tpr, lw=2, label="ROC")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1)
    for name, t, sens, spec, _prec in _point_markers(y, score, points):
        ax.plot(1 - spec, sens, "o", ms=7, label=f"{name} (t={t:.3f})")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.02))
    _title(ax, title)
    ax.legend(loc="lower right", fontsize=7)
    return _png(fig)


def _point_markers(y: np.ndarray, score: np.ndarray,
                   points: dict[str, float] | None) -> list[tuple[str, float, float, float, float]]:
    """(name, threshold, sensitivity, specificity, precision) of each named operating point on these data."""
    out = []
    y = np.asarray(y, dtype=bool)
    for name, t in (points or {}).items():
        if name == "default":
            continue
        pred = score >= t
        sens = (pred & y).sum() / max(y.sum(), 1)
        spec = (~pred & ~y).sum() / max((~y).sum(), 1)
        prec = (pred & y).sum() / pred.sum() if pred.any() else np.nan
        out.append((name, float(t), float(sens), float(spec), float(prec)))
    return out


def pr_plot(y: np.ndarray, score: np.ndarray, title: str, points: dict[str, float] | None = None) -> bytes:
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    y = np.asarray(y, dtype=bool)
    prec, rec, _ = precision_recall_curve(y, score)
    ax.plot(rec, prec, lw=2)
    ax.axhline(y.mean(), ls="--", c="grey", lw=1, label=f"prevalence {y.mean():.3f}")
    for name, t, sens, _spec, pr in _point_markers(y, score, points):
        ax.plot(sens, pr, "o", ms=7, label=f"{name} (t={t:.3f})")
    ax.set(xlabel="recall (sensitivity)", ylabel="precision (PPV)", xlim=(0, 1), ylim=(0, 1.02))
    _title(ax, title)
    ax.legend(loc="lower left", fontsize=7)
    return _png(fig)


def reliability_plot(curve: dict, title: str, curve_after: dict | None = None) -> bytes:
    """Reliability diagram: observed rate against mean predicted probability per bin, with bin counts."""
    fig, (ax, axh) = plt.subplots(2, 1, figsize=(4.6, 5.2), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="perfect calibration")
    ax.plot(curve["mean_predicted"], curve["observed_rate"], "o-", lw=2, label="model")
    if curve_after:
        ax.plot(curve_after["mean_predicted"], curve_after["observed_rate"], "s--", lw=1.5,
                label="after temperature scaling")
    ax.set(ylabel="observed rate", xlim=(0, 1), ylim=(-0.02, 1.02))
    _title(ax, title)
    ax.legend(loc="upper left", fontsize=7)
    centres = (np.asarray(curve["bin_lower"]) + np.asarray(curve["bin_upper"])) / 2
    width = np.asarray(curve["bin_upper"]) - np.asarray(curve["bin_lower"])
    axh.bar(centres, curve["count"], width=width * 0.9, color="#8aa9c9")
    axh.set(xlabel="predicted probability", ylabel="images")
    axh.set_yscale("log")
    return _png(fig)


def thumbnail(image: np.ndarray, heatmap: np.ndarray | None = None, side: int = 160, alpha: float = 0.4) -> bytes:
    """PNG thumbnail of a greyscale ``uint8`` image; a heatmap (same shape, values 0..1) is blended in when given."""

    rgb = np.repeat(np.asarray(image, dtype=np.float32)[..., None] / 255.0, 3, axis=2)
    if heatmap is not None:
        heat = matplotlib.colormaps["jet"](np.clip(np.asarray(heatmap, dtype=np.float32), 0, 1))[..., :3]
        rgb = (1 - alpha) * rgb + alpha * heat
    im = Image.fromarray(np.round(rgb * 255).astype(np.uint8))
    im.thumbnail((side, side))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def confusion_plot(cm: list[list[int]], classes: list[str], title: str) -> bytes:
    cm = np.asarray(cm)
    fig, ax = plt.subplots(figsize=(1.4 + 1.1 * len(classes), 1.2 + 1.0 * len(classes)))
    ax.imshow(cm, cmap="Blues")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                    color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=30)
    ax.set_yticks(range(len(classes)), classes)
    ax.set(xlabel="predicted", ylabel="true")
    _title(ax, title)
    return _png(fig)


def history_plot(history: list[dict] | object) -> bytes:
    h = pd.DataFrame(history)
    fig, ax = plt.subplots(1, 2, figsize=(8, 3.2))
    ax[0].plot(h["epoch"], h["train_loss"], "o-", label="train")
    ax[0].plot(h["epoch"], h["val_loss"], "o-", label="validation")
    ax[0].set(xlabel="epoch", ylabel="loss", title="loss")
    ax[0].legend()
    ax[1].plot(h["epoch"], h["val_auc"], "o-", label="val AUC")
    ax[1].plot(h["epoch"], h["val_accuracy"], "o-", label="val accuracy")
    ax[1].set(xlabel="epoch", title="validation")
    ax[1].legend()
    return _png(fig)


def score_histogram(samples: dict[str, np.ndarray], threshold: float | None, title: str,
                    xlabel: str = "out-of-distribution score (higher: less like the training images)") -> bytes:
    """Overlaid density histograms of scores (e.g. a local sample vs the validation split), with the threshold."""
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    finite = {k: np.asarray(v, float)[np.isfinite(np.asarray(v, float))] for k, v in samples.items()}
    values = np.concatenate([v for v in finite.values() if len(v)] or [np.zeros(1)])
    bins = np.histogram_bin_edges(np.clip(values, *np.quantile(values, [0.0, 0.995])), 30)
    for name, v in finite.items():
        if len(v):
            ax.hist(np.clip(v, bins[0], bins[-1]), bins=bins, density=True, alpha=0.5, label=f"{name} (n={len(v)})")
    if threshold is not None and math.isfinite(threshold):
        ax.axvline(threshold, color="k", ls="--", lw=1, label=f"flag threshold {threshold:.3g}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _png(fig)


def statistic_plot(x: np.ndarray, stat: np.ndarray, alarms: np.ndarray, critical: float | None, title: str,
                   ylabel: str) -> bytes:
    """A drift statistic per window over time, alarms marked, with the critical value."""
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.plot(x, stat, marker="o", ms=3, lw=1)
    alarms = np.asarray(alarms, bool)
    if alarms.any():
        ax.plot(np.asarray(x)[alarms], np.asarray(stat)[alarms], "rv", ms=7, label="alarm")
    if critical is not None and math.isfinite(critical):
        ax.axhline(critical, color="r", ls="--", lw=1, label="critical value")
    ax.set_xlabel("window end (prediction number)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if alarms.any() or critical is not None:
        ax.legend(fontsize=8)
    return _png(fig)
