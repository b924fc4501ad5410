"""Fitting a run's OOD model from its images: features through the run's Predictor, the detector fitted on the
training split, the threshold set on the validation split at a stated flag rate."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import CheckpointError
from ..inference.predictor import Predictor
from .detectors import Detector, fit_detector
from .model import OODModel, threshold_for
from .orientation import TURNED_PER_VIEW, VIEWS, OrientationCheck, fit_orientation, turned


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


def _norm(scores: np.ndarray) -> tuple[float, float]:
    """Centre (median) and spread (95th percentile minus median) of validation scores, for standardising."""
    finite = np.asarray(scores, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        raise CheckpointError("no finite validation score to standardise the out-of-distribution scores on")
    centre = float(np.median(finite))
    spread = float(np.quantile(finite, 0.95)) - centre
    return centre, spread if spread > 1e-12 else max(float(finite.std()), 1.0)


def fit_on_features(detector: str, train_features: np.ndarray, train_labels: np.ndarray, val_features: np.ndarray,
                    val_logits: np.ndarray, flag_rate: float, head: tuple[np.ndarray, np.ndarray] | None = None,
                    ensemble: bool = False, seed: int = 0, orientation: OrientationCheck | None = None) -> OODModel:
    """Fit ``detector`` on training features and set its threshold on validation features (with ``orientation``,
    on the combined score: :class:`~covidscreen.ood.model.OODModel`)."""
    det: Detector = fit_detector(detector, train_features, train_labels, head=head, ensemble=ensemble, seed=seed)
    model = OODModel(det, np.inf, flag_rate, n_fit=len(train_features))
    if orientation is not None:
        model.orientation = orientation
        model.norms = np.array([*_norm(det.score(val_features, val_logits)), *_norm(orientation.score(val_features))])
    model.val_scores = model.score(val_features, val_logits)
    model.threshold = threshold_for(model.val_scores, flag_rate)
    return model


def turned_features(predictor: Predictor, train_images: np.ndarray, train_features: np.ndarray, seed: int = 0,
                    per_view: int = TURNED_PER_VIEW, progress: bool = True) -> list[np.ndarray]:
    """Features of the training images in every view of :data:`~covidscreen.ood.orientation.VIEWS`: upright (the
    given ``train_features``), and for each turned view a sample of ``per_view`` images (one sample per view, drawn
    with ``seed``)."""
    rng = np.random.default_rng(seed)
    out = [np.asarray(train_features)]
    for view in range(1, len(VIEWS)):
        idx = np.sort(rng.choice(len(train_images), min(per_view, len(train_images)), replace=False))
        feats, _ = predictor.features(turned(np.asarray(train_images[idx]), view), progress=progress,
                                      desc=f"OOD features (train, {VIEWS[view]})")
        out.append(feats)
    return out


def fit_ood(predictor: Predictor, train_images: np.ndarray, train_labels: np.ndarray, val_images: np.ndarray,
            detector: str, flag_rate: float = 0.05, seed: int = 0, progress: bool = True,
            orientation: bool = True) -> OODModel:
    """Fit the OOD model of ``predictor``'s run on prepared images (``(N, S, S)`` uint8, as the Predictor reads);
    ``orientation``: with the orientation check (:mod:`covidscreen.ood.orientation`)."""
    train_f, _ = predictor.features(train_images, progress=progress, desc="OOD features (train)")
    val_f, val_logits = predictor.features(val_images, progress=progress, desc="OOD features (val)")
    check = None
    if orientation:
        check = fit_orientation(turned_features(predictor, train_images, train_f, seed, progress=progress), seed)
    return fit_on_features(detector, train_f, train_labels, val_f, val_logits, flag_rate, head=linear_head(predictor),
                           ensemble=predictor.run.kind == "ensemble", seed=seed, orientation=check)
