"""Which training images an epoch sees, in which order: plain shuffling or class-balanced sampling."""

from __future__ import annotations

import numpy as np

from ..errors import DataError


def random_epoch(train_idx: np.ndarray, n: int | None, rng: np.random.Generator) -> np.ndarray:
    """A shuffled pass over ``train_idx``, cut to ``n`` entries when ``n`` is given (each image at most once)."""
    order = rng.permutation(train_idx)
    return order if n is None or n >= len(order) else order[:n]


def balanced_epoch(train_idx: np.ndarray, labels: np.ndarray, n: int | None, rng: np.random.Generator) -> np.ndarray:
    """``n`` (default ``len(train_idx)``) entries drawn with replacement so that every class present is equally likely.

    Each image of class ``c`` is drawn with probability ``1 / (C * n_c)``: rare classes are oversampled and common
    ones undersampled, so batches are balanced in expectation (an alternative to class-weighted losses).

    Args:
        train_idx: candidate row indices.
        labels: class index of each entry of ``train_idx``.
    """
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    per_class = dict(zip(classes.tolist(), counts.tolist(), strict=True))
    p = np.array([1.0 / (len(classes) * per_class[c]) for c in labels.tolist()])
    size = len(train_idx) if n is None else n
    return rng.choice(train_idx, size=size, replace=True, p=p / p.sum())


def epoch_rows(train_idx: np.ndarray, labels: np.ndarray, n: int | None, rng: np.random.Generator,
               sampler: str = "random") -> np.ndarray:
    """The rows of one epoch for ``sampler`` (``random`` or ``balanced``)."""
    if sampler == "balanced":
        return balanced_epoch(train_idx, labels, n, rng)
    return random_epoch(train_idx, n, rng)


def effective_batch_size(batch_size: int, epoch_length: int) -> int:
    """``batch_size``, or the whole epoch when it holds fewer images (at least 2).

    The training loop drops the last partial batch (BatchNorm dislikes tiny batches), so without this an epoch
    shorter than one batch (e.g. 5% of a small training set in a learning curve) would take no step at all and the
    run would silently report an untrained model.

    Raises:
        DataError: fewer than two images per epoch.
    """
    if epoch_length < 2:
        raise DataError(f"an epoch holds {epoch_length} training image(s); at least 2 are needed (use more data, a "
                        "larger train_fraction or samples_per_epoch)")
    return min(batch_size, epoch_length)
