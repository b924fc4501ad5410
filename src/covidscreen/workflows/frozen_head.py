"""Training a frozen-feature head (``head: logistic | gradient-boosting``): the trunk stays as initialised (ImageNet
weights, or an earlier run's with ``init_from``), its features of the training split fit a scikit-learn classifier,
which replaces the registry head; the run is then finished like any other (operating points on validation, test
metrics, checkpoint, report), and is usable by predict, evaluate and ensembles."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ..config import TrainConfig
from ..evaluation.metrics import headline_auc
from ..models.heads import replace_head
from ..training.frozen_head import fit_head, head_features
from ..training.loop import predict_probs


def fit_frozen_head(cfg: TrainConfig, data: Any, model: torch.nn.Module, device: torch.device, progress: bool,
                    log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Fit ``cfg.head`` on the training split's features and put it into ``model``; returns a one-row history
    (validation AUC and accuracy of the fitted head)."""
    table = data.table
    y_all = table["y"].to_numpy()
    train = np.flatnonzero((table["split"] == "train").to_numpy())
    x = head_features(model, data.cache.images, data.rows[train], device, cfg.eval_batch_size, progress)
    log(f"frozen features: {x.shape[0]} training images x {x.shape[1]} features; fitting a {cfg.head} head")
    head = fit_head(cfg.head, x, y_all[train], len(data.classes), balanced=cfg.class_weights, seed=cfg.seed)
    replace_head(model.backbone, model.spec.head, head.to(device))
    is_val = (table["split"] == "val").to_numpy()
    probs = predict_probs(model, data.cache.images, data.rows[is_val], device, cfg.eval_batch_size, None,
                          desc="validate", progress=progress)
    y_val = y_all[is_val]
    auc = headline_auc(y_val, probs, data.classes, cfg.positive_class)
    acc = float(np.mean(probs.argmax(1) == y_val)) if len(y_val) else float("nan")
    log(f"{cfg.head} head: val AUC {auc:.4f} | val acc {acc:.4f}")
    return [{"epoch": 1, "train_loss": float("nan"), "val_loss": float("nan"), "val_auc": auc, "val_accuracy": acc,
             "lr": 0.0, "seconds": 0.0, "train_images": int(len(train)), "val_within_site_auc": float("nan")}]
