"""The generalisation options of a training run, kept out of ``trainer.py`` (which calls these hooks).

- subsampling that keeps every image of the sites holding both classes (``keep_mixed_sites``), so the one honest
  within-site comparison (cohen) is not thinned out by ``max_per_class``;
- the preprocessing of a run (``roi``, ``intensity``, ``border_crop``) and its lung segmenter;
- site-balanced sampling (``site_balanced``);
- the selection metric (``select_on: within_site_auc``);
- domain-adversarial training (``adversarial_weight``, see ``adversarial.py``);
- what a run writes about all this: within-site metrics in ``metrics.json``, the site probe, the ``preprocessing``
  block of the sidecar and a copy of the segmenter inside the run folder (so the run folder alone can predict).
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..audit.shortcut import site_probe
from ..config import PreprocessConfig, TrainConfig
from ..errors import ConfigError
from ..evaluation.within_site import format_within_site, mixed_sites, within_site_auc, within_site_metrics
from ..segmentation import load_segmenter_for
from ..segmentation.checkpoint import bind_segmenter, resolve_segmenter_files
from ..training.adversarial import SiteAdversary, extract_features, feature_size
from ..training.losses import inverse_frequency_weights

RUN_SEGMENTER_DIR = "lung_seg"  # the run folder's copy of the segmentation checkpoint


def subsample_keep_mixed_sites(table: pd.DataFrame, max_per_class: int, positive_class: str,
                               seed: int) -> pd.DataFrame:
    """At most ``max_per_class`` images per label, but every image of sites holding both classes is kept.

    The mixed-site images count towards each label's quota; the rest of a quota is drawn from the other sites.
    """
    keep = table["site"].isin(mixed_sites(table, positive_class))
    parts = [table[keep]]
    for label, g in table[~keep].groupby("label", sort=True):
        room = max(0, max_per_class - int((table[keep]["label"] == label).sum()))
        parts.append(g.sample(n=min(len(g), room), random_state=seed))
    return pd.concat(parts).sort_index().reset_index(drop=True)


def run_preprocess(cfg: TrainConfig) -> PreprocessConfig:
    """The preprocessing of a training config, with its segmenter's sha256 (checked to exist)."""
    pp = cfg.preprocess.validate()
    if pp.needs_segmentation:
        pp = bind_segmenter(pp, Path(pp.segmentation_model).expanduser().resolve())
    return pp


def load_run_segmenter(pp: PreprocessConfig, device: torch.device | str = "cpu") -> Any:
    return load_segmenter_for(pp, device=str(device))


def site_balanced_rows(train_idx: np.ndarray, labels: np.ndarray, sites: np.ndarray, n: int | None,
                       rng: np.random.Generator) -> np.ndarray:
    """Training rows drawn with replacement so that labels are equally likely and, within each label, its sites are.

    This removes the label-site association from what the model sees in an epoch as far as the data allows: a
    normal image is as likely to come from cohen as from any other site that has normals.
    """
    lab, site = labels[train_idx], np.asarray(sites)[train_idx].astype(str)
    cell = pd.DataFrame({"l": lab, "s": site})
    n_cell = cell.groupby(["l", "s"])["l"].transform("size").to_numpy(dtype=float)
    sites_per_label = cell.groupby("l")["s"].transform("nunique").to_numpy(dtype=float)
    n_labels = len(np.unique(lab))
    w = 1.0 / (n_labels * sites_per_label * n_cell)
    return rng.choice(train_idx, size=n or len(train_idx), replace=True, p=w / w.sum())


def selection_score(cfg: TrainConfig, pooled_auc: float, y_val: np.ndarray, probs_val: np.ndarray,
                    sites_val: np.ndarray, classes: list[str]) -> tuple[float, float]:
    """``(score used to select the epoch, within-site validation AUC)``.

    Raises:
        ConfigError: ``select_on: within_site_auc`` but no validation site holds both classes.
    """
    pos = cfg.positive_class
    if pos not in classes:
        return pooled_auc, math.nan
    within = within_site_auc(np.asarray(y_val) == classes.index(pos), probs_val[:, classes.index(pos)], sites_val)
    if cfg.select_on == "within_site_auc":
        if math.isnan(within):
            raise ConfigError("select_on: within_site_auc, but no site of the validation split holds both "
                              f"'{pos}' and other images; use select_on: auc")
        return within, within
    return pooled_auc, within


def build_adversary(cfg: TrainConfig, model: torch.nn.Module, table: pd.DataFrame, train_idx: np.ndarray,
                    n_classes: int, device: torch.device) -> tuple[Any, np.ndarray, list[str]] | None:
    """The site adversary (or None when ``adversarial_weight`` is 0), the site index of every row, the site names."""
    if cfg.adversarial_weight <= 0:
        return None

    site_names = sorted(table["site"].iloc[train_idx].astype(str).unique())
    if len(site_names) < 2:
        raise ConfigError("adversarial_weight > 0 needs at least two sites in the training split")
    site_idx = table["site"].astype(str).map({s: i for i, s in enumerate(site_names)}).fillna(-1).astype(int)
    site_idx = site_idx.to_numpy()
    weights = inverse_frequency_weights(site_idx[train_idx], len(site_names))
    adversary = SiteAdversary(feature_size(model, cfg.image_size, device), len(site_names), n_classes,
                              conditional=cfg.adversarial_conditional, site_weights=weights).to(device)
    return adversary, site_idx, site_names


def within_site_block(preds: pd.DataFrame, split: str, classes: list[str], positive_class: str | None,
                      threshold: float | None, seed: int) -> dict | None:
    """Within-site metrics of one split of ``predictions.csv`` (None when no site of it holds both classes)."""
    if not positive_class or positive_class not in classes:
        return None
    sub = preds[preds["split"] == split]
    if not mixed_sites(sub, positive_class):
        return None
    return within_site_metrics(sub, classes, positive_class, threshold, seed=seed)


def add_within_site(metrics: dict, preds: pd.DataFrame, classes: list[str], positive_class: str | None,
                    threshold: float | None, seed: int, log: Any = print) -> None:
    """Put ``within_site`` next to the pooled metrics of every split in ``metrics`` and log the test figures."""
    for split in ("val", "test"):
        block = within_site_block(preds, split, classes, positive_class, threshold, seed)
        if block and split in metrics:
            metrics[split]["within_site"] = block
            if split == "test":
                for line in format_within_site(block):
                    log(f"test {line}")


def attach_preprocessing(run_dir: Path, pp: PreprocessConfig, sidecar: dict) -> None:
    """Record the preprocessing in the sidecar; copy the segmenter into the run folder (path stored relative)."""
    if pp.is_identity:
        return
    block = pp.to_dict()
    if pp.needs_segmentation:
        dest = run_dir / RUN_SEGMENTER_DIR
        dest.mkdir(exist_ok=True)
        for f in resolve_segmenter_files(pp.segmentation_model):
            shutil.copy2(f, dest / f.name)
        block["segmentation_model"] = RUN_SEGMENTER_DIR
        block["segmentation_source"] = pp.segmentation_model
    sidecar["preprocessing"] = block


def probe_sites(model: torch.nn.Module, images: np.ndarray, rows: np.ndarray, table: pd.DataFrame,
                device: torch.device, batch_size: int, amp: Any, seed: int) -> dict:
    """The site probe on the given rows (see :func:`covidscreen.audit.shortcut.site_probe`)."""
    feats = extract_features(model, images, rows, device, batch_size, amp)
    return site_probe(feats, table["site"].to_numpy(), table["label"].to_numpy(), table["group"].to_numpy(),
                      seed=seed)
