"""Screening a training set for poisoned images: spectral signatures and activation clustering.

Both look at the model's penultimate features (the input of its classification head) of the training images, one
label at a time, since a poisoned image carries the label it was given, not its true one:

- spectral signatures (Tran et al. 2018): the squared projection of each centred feature vector on the class's top
  singular vector; poisoned images, which share the trigger's feature, score highest. The ``1.5 * expected_fraction``
  highest of each class are flagged, as in the paper;
- activation clustering (Chen et al. 2019): the class's features reduced to 10 dimensions (ICA in the paper; PCA
  here, deterministic) and split in two by k-means; the smaller cluster is flagged when it holds less than 35% of
  the class (a class without poison splits into two halves of similar size);
- SPECTRE (Hayase et al. 2021): the class's features reduced to their top ``k`` principal directions, whitened by a
  *robust* covariance estimate (so that the poison, which skews the plain covariance, does not hide itself), and
  scored by quantum entropy (QUE) scoring, which weighs every direction where the whitened data spreads more than
  noise instead of the top one only. The robust estimate filters: it drops, round by round, the points farthest
  along the top principal direction of those kept (the filter of Diakonikolas et al. that SPECTRE's estimator
  refines), then estimates mean and covariance from the rest. scikit-learn's Minimum
  Covariance Determinant was tried first and failed on the tiny test model: a tight poisoned cluster has a small
  determinant, so MCD chose it as part of the "clean" core and scored the clean points as outliers (recall 0).
  Flags as spectral signatures do.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.linalg import expm
from torch import nn


@torch.inference_mode()
def penultimate_features(model: nn.Module, feature_layer: nn.Module, images: np.ndarray, batch_size: int = 64,
                         device: str | torch.device = "cpu") -> np.ndarray:
    """Inputs of ``feature_layer`` (flattened) for uint8 ``(N, H, W)`` images."""
    captured: list[torch.Tensor] = []
    hook = feature_layer.register_forward_pre_hook(lambda _m, args: captured.append(args[0].flatten(1).float().cpu()))
    try:
        model.eval()
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size])).to(device)
            model(x.unsqueeze(1).float().div(255.0))
    finally:
        hook.remove()
    return torch.cat(captured).numpy().astype(np.float64) if captured else np.zeros((0, 0))


def spectral_scores(features: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Outlier score of each sample within its label: squared projection on the top singular vector."""
    scores = np.zeros(len(features))
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        if len(idx) < 3:
            continue
        centred = features[idx] - features[idx].mean(0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        scores[idx] = (centred @ vt[0]) ** 2
    return scores


def robust_mean_cov(z: np.ndarray, trim: float, rounds: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of ``z`` by filtering (the robust estimation SPECTRE builds on, Diakonikolas et al.):
    each round drops the ``trim / rounds`` share of the points that lie farthest along the top principal direction
    of the points kept so far, where a poisoned cluster inflates the variance, then estimates from what is left."""
    keep = np.ones(len(z), dtype=bool)
    per_round = max(1, int(np.ceil(trim * len(z) / rounds)))
    for _ in range(rounds):
        kept = np.flatnonzero(keep)
        centred = z[kept] - z[kept].mean(0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        far = kept[np.argsort(-(centred @ vt[0]) ** 2, kind="stable")[:per_round]]
        keep[far] = False
    return z[keep].mean(0), np.cov(z[keep], rowvar=False) + 1e-6 * np.eye(z.shape[1])


def spectre_scores(features: np.ndarray, labels: np.ndarray, k: int = 32, alpha: float = 4.0,
                   trim: float = 0.15) -> np.ndarray:
    """SPECTRE's QUE outlier score of each sample within its label (module docstring); ``trim``: the share of
    points the robust estimate leaves out (1.5 x the expected poisoned share, as the flags)."""

    scores = np.zeros(len(features))
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        centred = features[idx] - features[idx].mean(0)
        _, sv, vt = np.linalg.svd(centred, full_matrices=False)
        rank = int((sv > 1e-6 * sv[0]).sum()) if len(sv) and sv[0] > 0 else 0
        dims = min(k, rank, (len(idx) - 1) // 3)  # directions the data spans (dead features carry nothing)
        if dims < 2:
            continue
        z = centred @ vt[:dims].T
        mean, cov = robust_mean_cov(z, trim)
        vals, vecs = np.linalg.eigh(cov)
        w = (z - mean) @ vecs @ np.diag(vals ** -0.5) @ vecs.T
        sigma = np.cov(w, rowvar=False)
        norm = np.linalg.norm(sigma, 2)
        q = expm(alpha * (sigma - np.eye(dims)) / max(norm - 1, 1e-6))
        scores[idx] = np.einsum("ij,jk,ik->i", w, q, w) / np.trace(q)
    return scores


def spectral_flags(scores: np.ndarray, labels: np.ndarray, expected_fraction: float) -> np.ndarray:
    """Flag the ``ceil(1.5 * expected_fraction * n)`` highest scores of each label."""
    flags = np.zeros(len(scores), dtype=bool)
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        k = min(len(idx), int(np.ceil(1.5 * expected_fraction * len(idx))))
        if k:
            flags[idx[np.argsort(-scores[idx], kind="stable")[:k]]] = True
    return flags


def activation_clusters(features: np.ndarray, labels: np.ndarray, max_share: float = 0.35, dims: int = 10,
                        seed: int = 0) -> np.ndarray:
    """Flag the smaller of two k-means clusters of each label when it holds less than ``max_share`` of it."""
    # scikit-learn (1.2 CPU s) loads for the training-set scan only, not at every service start (STRIP)
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    flags = np.zeros(len(features), dtype=bool)
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        if len(idx) < 10:
            continue
        x = features[idx]
        reduced = PCA(n_components=min(dims, x.shape[1], len(idx) - 1), random_state=seed).fit_transform(x)
        assign = KMeans(n_clusters=2, n_init=10, random_state=seed).fit_predict(reduced)
        small = int(np.argmin(np.bincount(assign, minlength=2)))
        if np.mean(assign == small) < max_share:
            flags[idx[assign == small]] = True
    return flags


def precision_recall(flags: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Precision and recall of ``flags`` against the known poisoned samples ``truth``."""
    tp = int((flags & truth).sum())
    clean = int((~truth).sum())
    return {"flagged": int(flags.sum()), "poisoned": int(truth.sum()), "true_positives": tp,
            "precision": tp / flags.sum() if flags.sum() else float("nan"),
            "recall": tp / truth.sum() if truth.sum() else float("nan"),
            "clean_flagged_share": int((flags & ~truth).sum()) / clean if clean else float("nan")}
