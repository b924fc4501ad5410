"""The orientation check: is this chest X-ray upright? A self-supervised rotation classifier on the run's features.

A feature-space detector fitted on chest X-rays accepts many chest X-rays that are turned 90 degrees or upside down:
to features trained on chest X-rays they are still chest X-rays (docs/safety.md measured ViM flagging 77% and 85% of
them). Rotation prediction is the published remedy (Golan and El-Yaniv 2018; Hendrycks et al. 2019, "Using
self-supervised learning can improve model robustness and uncertainty"): learn to tell an image's orientation from
the images themselves, and call an image unfamiliar when it does not look upright. No maintained package fits a
rotation head on a frozen feature extractor (pytorch-ood's detectors are post-hoc scores of a trained model and have
no rotation method), so the head here is scikit-learn's multinomial logistic regression on the head-input features
the run's Predictor already computes: no extra forward pass at prediction time.

Fitting uses training images only: each is shown upright and, for a sample, turned 90 degrees either way, rotated
180 degrees and flipped upside down (:data:`VIEWS`). The score of an image is the margin of the best non-upright view
over the upright one (higher = less upright). :class:`~covidscreen.ood.model.OODModel` combines it with the
detector's score (each standardised on the validation split) into the one ``ood_score`` of a result.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import DataError

#: the views the check tells apart; index 0 is the only one an input should have
VIEWS = ("upright", "rotated 90 clockwise", "rotated 90 anticlockwise", "rotated 180", "flipped upside down")
#: training images shown in each turned view (drawn with the run's seed): 4 x 400 extra forward passes at fit time
TURNED_PER_VIEW = 400
MIN_IMAGES = 10


def turned(images: np.ndarray, view: int) -> np.ndarray:
    """``images`` (``(N, H, W)`` or ``(N, H, W, C)``, square) in view ``view`` of :data:`VIEWS`."""
    if view == 0:
        return images
    if view in (1, 2):
        return np.ascontiguousarray(np.rot90(images, -1 if view == 1 else 1, axes=(1, 2)))
    if view == 3:
        return np.ascontiguousarray(np.rot90(images, 2, axes=(1, 2)))
    if view == 4:
        return np.ascontiguousarray(images[:, ::-1])
    raise ValueError(f"view {view} is not one of 0..{len(VIEWS) - 1}")


@dataclass
class OrientationCheck:
    """A fitted multinomial logistic regression over :data:`VIEWS` on standardised features."""

    mean: np.ndarray  # (D,)
    scale: np.ndarray  # (D,)
    coef: np.ndarray  # (len(VIEWS), D)
    intercept: np.ndarray  # (len(VIEWS),)
    n_fit: int = 0  # training images shown in each turned view

    def logits(self, features: np.ndarray) -> np.ndarray:
        z = (np.asarray(features, dtype=np.float64) - self.mean) / self.scale
        return z @ self.coef.T + self.intercept

    def score(self, features: np.ndarray) -> np.ndarray:
        """Per row: how much more the best turned view is believed than upright (log-odds; higher = less upright)."""
        lg = self.logits(features)
        return lg[:, 1:].max(axis=1) - lg[:, 0]

    def views(self, features: np.ndarray) -> np.ndarray:
        """The most likely view's index per row."""
        return self.logits(features).argmax(axis=1)

    @property
    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(np.ascontiguousarray(getattr(self, k), dtype=np.float64))
                for k in ("mean", "scale", "coef", "intercept")}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], n_fit: int = 0) -> OrientationCheck:
        missing = [k for k in ("mean", "scale", "coef", "intercept") if k not in tensors]
        if missing:
            raise DataError(f"the stored orientation check lacks {', '.join(missing)}; refit it with covidscreen ood "
                            "fit RUN_DIR")
        arrays = {k: tensors[k].double().numpy() for k in ("mean", "scale", "coef", "intercept")}
        if arrays["coef"].shape != (len(VIEWS), arrays["mean"].shape[0]):
            raise DataError(f"the stored orientation check has coefficients of shape {arrays['coef'].shape}; "
                            f"expected ({len(VIEWS)}, {arrays['mean'].shape[0]}); refit it with covidscreen ood fit")
        return cls(**arrays, n_fit=n_fit)


def fit_orientation(features_by_view: list[np.ndarray], seed: int = 0) -> OrientationCheck:
    """Fit the check on features of training images in each view (``features_by_view[v]``: rows in view ``v``).

    Raises:
        DataError: fewer than :data:`MIN_IMAGES` images in a view.
    """
    # heavy: scikit-learn's linear models load only where a check is fitted
    from sklearn.linear_model import LogisticRegression

    if len(features_by_view) != len(VIEWS):
        raise ValueError(f"features of {len(VIEWS)} views expected, got {len(features_by_view)}")
    small = [VIEWS[v] for v, f in enumerate(features_by_view) if len(f) < MIN_IMAGES]
    if small:
        raise DataError(f"the orientation check needs at least {MIN_IMAGES} training images in each view; too few: "
                        f"{', '.join(small)}")
    x = np.concatenate([np.asarray(f, dtype=np.float64) for f in features_by_view])
    y = np.concatenate([np.full(len(f), v) for v, f in enumerate(features_by_view)])
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-8] = 1.0
    # balanced: the upright view has every training image, each turned view a sample of them
    clf = LogisticRegression(C=0.1, max_iter=2000, class_weight="balanced", random_state=seed)
    clf.fit((x - mean) / scale, y)
    return OrientationCheck(mean, scale, clf.coef_.astype(np.float64), clf.intercept_.astype(np.float64),
                            n_fit=min(len(f) for f in features_by_view[1:]))
