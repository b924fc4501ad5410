"""Frozen-feature heads: the trunk's pooled features (the input of the registry head) and a scikit-learn classifier
fitted on them, converted into a tensor-only head (:mod:`covidscreen.models.heads`) that replaces the registry head.

The conversion is exact: the tests compare the converted head with scikit-learn's ``predict_proba``.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.utils.class_weight import compute_sample_weight
from torch import nn
from tqdm.auto import tqdm

from ..errors import ConfigError, DataError
from ..models.heads import LogisticHead, TreeEnsembleHead
from ..runtime import prediction_precision, to_input


def head_features(model: nn.Module, images: np.ndarray, rows: np.ndarray, device: torch.device,
                  batch_size: int = 64, progress: bool = False) -> np.ndarray:
    """The input of ``model``'s registry head for ``images[rows]``: ``(len(rows), D)`` float32 features.

    Raises:
        ConfigError: the architecture's head does not read a feature vector (e.g. SqueezeNet's convolution head).
    """
    head = model.backbone.get_submodule(model.spec.head)
    captured: list[torch.Tensor] = []
    handle = head.register_forward_pre_hook(lambda _m, args: captured.append(args[0].detach().float().cpu()))
    model.eval()
    try:
        with torch.no_grad():
            for start in tqdm(range(0, len(rows), batch_size), desc="features", disable=not progress, leave=False):
                x = to_input(torch.from_numpy(np.ascontiguousarray(images[rows[start:start + batch_size]])), device)
                with prediction_precision(device, None):
                    model(x)
    finally:
        handle.remove()
    if not captured:
        return np.zeros((0, 0), dtype=np.float32)
    if captured[0].ndim != 2:
        raise ConfigError(f"a frozen-feature head needs an architecture whose head reads a feature vector; "
                          f"{model.spec.name}'s head '{model.spec.head}' reads a {captured[0].ndim}-d map. Use e.g. "
                          "resnet18, resnet50, densenet121, mobilenet_v2_035, vgg16 or efficientnet_lite0")
    return torch.cat(captured).numpy()


def _check_classes(y: np.ndarray, num_classes: int) -> None:
    missing = sorted(set(range(num_classes)) - set(np.unique(y).tolist()))
    if missing:
        raise DataError(f"the training split holds no image of class index(es) {missing}: a frozen-feature head "
                        "needs every class in training (use more images per class)")


def fit_logistic(x: np.ndarray, y: np.ndarray, num_classes: int, balanced: bool = True, seed: int = 0,
                 c: float = 1.0) -> LogisticHead:
    """Multinomial logistic regression on standardised features, as a linear layer on the raw features."""
    _check_classes(y, num_classes)
    mean = x.mean(0, dtype=np.float64)
    scale = x.std(0, dtype=np.float64)
    scale[scale < 1e-12] = 1.0
    clf = LogisticRegression(C=c, max_iter=2000, class_weight="balanced" if balanced else None, random_state=seed)
    clf.fit((x - mean) / scale, y)
    coef, intercept = clf.coef_, clf.intercept_
    if num_classes == 2:  # one score s for class 1: logits (0, s)
        coef = np.vstack([np.zeros_like(coef), coef])
        intercept = np.concatenate([[0.0], intercept])
    weight = coef / scale  # w.(x - m)/s + b = (w/s).x + (b - (w/s).m)
    bias = intercept - weight @ mean
    head = LogisticHead(x.shape[1], num_classes)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(weight))
        head.bias.copy_(torch.from_numpy(bias))
    return head


def fit_gradient_boosting(x: np.ndarray, y: np.ndarray, num_classes: int, balanced: bool = True, seed: int = 0,
                          n_estimators: int = 100, max_depth: int = 3, learning_rate: float = 0.1
                          ) -> TreeEnsembleHead:
    """scikit-learn's gradient-boosted regression trees (log-loss), converted tree by tree from their public
    ``tree_`` arrays; ``max_features='sqrt'`` keeps the fit to seconds on a CPU for CNN-sized feature vectors."""
    _check_classes(y, num_classes)
    clf = GradientBoostingClassifier(n_estimators=n_estimators, max_depth=max_depth, learning_rate=learning_rate,
                                     max_features="sqrt", random_state=seed)
    clf.fit(x, y, sample_weight=compute_sample_weight("balanced", y) if balanced else None)
    estimators = [(k, est) for stage in clf.estimators_ for k, est in enumerate(stage)]
    trees = [(k, est.tree_) for k, est in estimators]
    n_nodes = max(t.node_count for _, t in trees)
    depth = max(t.max_depth for _, t in trees)
    head = TreeEnsembleHead(x.shape[1], num_classes, len(trees), n_nodes, max(depth, 1))
    feature = np.zeros((len(trees), n_nodes), dtype=np.int64)
    threshold = np.zeros((len(trees), n_nodes))
    left = np.tile(np.arange(n_nodes), (len(trees), 1))  # padding and leaves point at themselves
    right = left.copy()
    value = np.zeros((len(trees), n_nodes))
    for i, (_, t) in enumerate(trees):
        n = t.node_count
        split = t.children_left[:n] >= 0
        feature[i, :n] = np.where(split, t.feature[:n], 0)
        threshold[i, :n] = np.where(split, t.threshold[:n], 0.0)
        left[i, :n] = np.where(split, t.children_left[:n], np.arange(n))
        right[i, :n] = np.where(split, t.children_right[:n], np.arange(n))
        value[i, :n] = t.value[:n, 0, 0] * learning_rate
    # the initial raw score, read through the public decision_function: total minus the trees' sum
    raw = np.asarray(clf.decision_function(x[:1]), dtype=np.float64).reshape(1, -1)[0]
    tree_sum = np.zeros_like(raw)
    for k, est in estimators:
        tree_sum[k] += est.predict(x[:1])[0] * learning_rate
    with torch.no_grad():
        head.feature.copy_(torch.from_numpy(feature))
        head.threshold.copy_(torch.from_numpy(threshold))
        head.left.copy_(torch.from_numpy(left))
        head.right.copy_(torch.from_numpy(right))
        head.value.copy_(torch.from_numpy(value))
        head.tree_class.copy_(torch.tensor([k for k, _ in trees]))
        head.baseline.copy_(torch.from_numpy(raw - tree_sum))
    return head


def fit_head(kind: str, x: np.ndarray, y: np.ndarray, num_classes: int, balanced: bool = True, seed: int = 0
             ) -> nn.Module:
    """``logistic`` or ``gradient-boosting`` head fitted on features ``x`` with class indices ``y``."""
    if len(x) == 0:
        raise DataError("no training images to fit a frozen-feature head on")
    if kind == "logistic":
        return fit_logistic(x, y, num_classes, balanced, seed)
    if kind == "gradient-boosting":
        return fit_gradient_boosting(x, y, num_classes, balanced, seed)
    raise ConfigError(f"head {kind!r} is not a frozen-feature head; use logistic or gradient-boosting")
