"""Matplotlib figures of the report, returned as PNG bytes (headless backend)."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import precision_recall_curve, roc_curve  # noqa: E402


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def roc_plot(y: np.ndarray, score: np.ndarray, title: str, points: dict[str, float] | None = None) -> bytes:
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    fpr, tpr, thr = roc_curve(y, score)
    ax.plot(fpr, tpr, lw=2, label="ROC")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1)
    for name, t in (points or {}).items():
        if name == "default":
            continue
        pred = score >= t
        sens = (pred & y).sum() / max(y.sum(), 1)
        spec = (~pred & ~y).sum() / max((~y).sum(), 1)
        ax.plot(1 - spec, sens, "o", ms=7, label=f"{name} (t={t:.3f})")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=title, xlim=(0, 1), ylim=(0, 1.02))
    ax.legend(loc="lower right", fontsize=7)
    return _png(fig)


def pr_plot(y: np.ndarray, score: np.ndarray, title: str) -> bytes:
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    prec, rec, _ = precision_recall_curve(y, score)
    ax.plot(rec, prec, lw=2)
    ax.axhline(y.mean(), ls="--", c="grey", lw=1, label=f"prevalence {y.mean():.3f}")
    ax.set(xlabel="recall (sensitivity)", ylabel="precision (PPV)", title=title, xlim=(0, 1), ylim=(0, 1.02))
    ax.legend(loc="lower left", fontsize=7)
    return _png(fig)


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
    ax.set(xlabel="predicted", ylabel="true", title=title)
    return _png(fig)


def history_plot(history: list[dict] | object) -> bytes:
    import pandas as pd

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
