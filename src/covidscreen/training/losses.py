"""Losses for imbalanced screening data."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def inverse_frequency_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """Class weights ``N / (K * n_c)`` over the K classes present: every class contributes equally to the loss and
    the mean weight per image is 1.

    A class absent from ``labels`` gets weight 0 (it cannot be learned from these data anyway).
    """
    counts = np.bincount(np.asarray(labels, dtype=int), minlength=num_classes).astype(float)
    present = max(int((counts > 0).sum()), 1)
    weights = np.where(counts > 0, counts.sum() / (present * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


def build_loss(class_weights: torch.Tensor | None) -> nn.Module:
    """Cross-entropy, weighted when ``class_weights`` is given; accepts hard labels or soft targets."""
    return nn.CrossEntropyLoss(weight=class_weights)
