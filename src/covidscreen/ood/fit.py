"""Fitting a run's OOD model from its images: features through the run's Predictor, the detector fitted on the
training split, the threshold set on the validation split at a stated flag rate."""

from __future__ import annotations

import numpy as np
import torch

from ..inference.predictor import Predictor
from .detectors import Detector, fit_detector
from .model import OODModel, threshold_for


def linear_head(predictor: Predictor) -> tuple[np.ndarray, np.ndarray] | None:
    """``(weight, bias)`` of the model's head when it is one linear layer (None: an ensemble, another head)."""
    model = predictor.model
    spec = getattr(model, "spec", None)
    if spec is None:
        return None
    head = model.backbone.get_submodule(spec.head)
    if not isinstance(head, torch.nn.Linear) or head.bias is None:
        return None
    return head.weight.detach().float().cpu().numpy(), head.bias.detach().float().cpu().numpy()


def fit_on_features(detector: str, train_features: np.ndarray, train_labels: np.ndarray, val_features: np.ndarray,
                    val_logits: np.ndarray, flag_rate: float, head: tuple[np.ndarray, np.ndarray] | None = None,
                    ensemble: bool = False, seed: int = 0) -> OODModel:
    """Fit ``detector`` on training features and set its threshold on validation features."""
    det: Detector = fit_detector(detector, train_features, train_labels, head=head, ensemble=ensemble, seed=seed)
    val_scores = det.score(val_features, val_logits)
    return OODModel(det, threshold_for(val_scores, flag_rate), flag_rate, val_scores, n_fit=len(train_features))


def fit_ood(predictor: Predictor, train_images: np.ndarray, train_labels: np.ndarray, val_images: np.ndarray,
            detector: str, flag_rate: float = 0.05, seed: int = 0, progress: bool = True) -> OODModel:
    """Fit the OOD model of ``predictor``'s run on prepared images (``(N, S, S)`` uint8, as the Predictor reads)."""
    train_f, _ = predictor.features(train_images, progress=progress, desc="OOD features (train)")
    val_f, val_logits = predictor.features(val_images, progress=progress, desc="OOD features (val)")
    return fit_on_features(detector, train_f, train_labels, val_f, val_logits, flag_rate, head=linear_head(predictor),
                           ensemble=predictor.run.kind == "ensemble", seed=seed)
