"""Losses for imbalanced screening data: (weighted) cross-entropy and focal loss.

Both accept hard labels ``(B,)`` or soft targets ``(B, C)`` (mixup/CutMix), and both reduce the same way as
``torch.nn.CrossEntropyLoss``: with hard labels and class weights, the weighted mean ``sum(w_y * l) / sum(w_y)``;
with soft targets, the plain mean over the batch. So focal loss with ``gamma = 0`` is exactly cross-entropy.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import TrainConfig


def inverse_frequency_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """Class weights ``N / (K * n_c)`` over the K classes present: every class contributes equally to the loss and
    the mean weight per image is 1.

    A class absent from ``labels`` gets weight 0 (it cannot be learned from these data anyway).
    """
    counts = np.bincount(np.asarray(labels, dtype=int), minlength=num_classes).astype(float)
    present = max(int((counts > 0).sum()), 1)
    weights = np.where(counts > 0, counts.sum() / (present * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


def positive_alpha_weights(num_classes: int, positive_index: int, alpha: float) -> torch.Tensor:
    """Lin et al.'s alpha-balancing for one screened class: ``alpha`` for it, ``1 - alpha`` for every other class."""
    w = torch.full((num_classes,), 1.0 - alpha)
    w[positive_index] = alpha
    return w


class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017): cross-entropy scaled by ``(1 - p_t)^gamma`` so that well-classified (easy)
    images contribute little and training concentrates on hard ones.

    Args:
        gamma: focusing parameter; 0 gives cross-entropy.
        weight: optional per-class weights (``alpha_c``), as in ``CrossEntropyLoss``.
    """

    def __init__(self, gamma: float = 2.0, weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.gamma = float(gamma)
        self.register_buffer("weight", weight if weight is None else weight.float(), persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits.float(), dim=1)
        soft = target.is_floating_point()
        t = target.float() if soft else F.one_hot(target, logits.shape[1]).float()
        # (1 - p_c)^gamma per class; for hard labels only the true class's term survives, which is Lin et al.'s p_t
        focus = (1 - log_p.exp()).clamp_min(0).pow(self.gamma) if self.gamma else torch.ones_like(log_p)
        w = self.weight if self.weight is not None else torch.ones(logits.shape[1], device=logits.device)
        per_image = -(t * w * focus * log_p).sum(1)
        if soft:
            return per_image.mean()
        return per_image.sum() / w[target].sum().clamp_min(1e-12)


def build_loss(class_weights: torch.Tensor | None, loss: str = "cross_entropy", focal_gamma: float = 2.0) -> nn.Module:
    """The training criterion: cross-entropy or focal loss, weighted per class when ``class_weights`` is given.

    Both accept hard labels or soft targets.
    """
    if loss == "focal":
        return FocalLoss(focal_gamma, class_weights)
    return nn.CrossEntropyLoss(weight=class_weights)


def criterion(cfg: TrainConfig, classes: list[str], train_labels: np.ndarray) -> nn.Module:
    """The loss of a training config: ``loss`` with class weights from ``class_weights`` (inverse frequency in the
    training labels) or ``focal_alpha`` (Lin et al.'s alpha for ``positive_class``), or none."""
    weights = inverse_frequency_weights(train_labels, len(classes)) if cfg.class_weights else None
    if cfg.focal_alpha is not None and cfg.positive_class in classes:
        weights = positive_alpha_weights(len(classes), classes.index(cfg.positive_class), cfg.focal_alpha)
    return build_loss(weights, cfg.loss, cfg.focal_gamma)
