"""Train the lung segmenter on the images that have a ``lung_mask`` in ``metadata.csv``, report held-out Dice.

The masked images are split by patient (train / val / test): the best epoch is chosen on validation Dice, and the
reported Dice is on test patients, computed in each image's own geometry (the predicted probability map is resized
back to the original mask's size before thresholding), so the figure is what the preprocessing will actually get.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from ..config import SegmentConfig
from ..data.decode import read_image, resize_square
from ..data.locate import resolve_data_dir
from ..data.splits import patient_grouped_split, split_fingerprint
from ..data.table import load_table
from ..errors import ConfigError, DataError
from ..runtime import atomic_write_csv, atomic_write_text, resolve_device, seed_everything
from ..segmentation.checkpoint import save_segmenter
from ..segmentation.model import ENCODER_LAYOUTS, LungSegNet
from ..segmentation.predict import clean_mask, network_input, predict_lung_probs
from ..training.loop import cosine_with_warmup


def masked_table(data_dir: str | Path | None = None) -> pd.DataFrame:
    """Rows of a data folder whose ``lung_mask`` file exists, with ``mask_path`` (absolute).

    Raises:
        DataError: the folder lists no existing lung mask.
    """
    root = resolve_data_dir(data_dir)
    table = load_table(root)
    table = table[table["lung_mask"].astype(str).str.strip() != ""].copy()
    table["mask_path"] = [str((Path(root) / m).resolve()) for m in table["lung_mask"]]
    table = table[table["mask_path"].map(lambda p: Path(p).is_file())].reset_index(drop=True)
    if table.empty:
        raise DataError(f"{root}: no image has an existing lung_mask file; the lung_mask column of metadata.csv must "
                        "name a binary mask image of the same size as the image")
    return table


def read_mask(path: str | Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """A binary mask file as a boolean array (checked against the image's shape when given)."""
    with Image.open(path) as im:
        mask = np.asarray(im.convert("L")) > 127 if im.mode != "1" else np.asarray(im, dtype=bool)
    if shape is not None and mask.shape != tuple(shape):
        raise DataError(f"{path}: mask of shape {mask.shape} does not match its image {tuple(shape)}")
    return mask


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice coefficient 2|A&B| / (|A|+|B|) of two boolean masks (1 when both are empty)."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    den = pred.sum() + truth.sum()
    return 1.0 if den == 0 else float(2 * np.logical_and(pred, truth).sum() / den)


def _resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    return resize_square(mask.astype(np.uint8) * 255, size).astype(np.float32) / 255.0


def joint_augment(x: torch.Tensor, m: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random small affine for image and mask; brightness/contrast for the image only."""
    b = x.shape[0]

    def uniform(r: float) -> torch.Tensor:
        return (torch.rand(b, generator=generator) * 2 - 1) * r

    angle, scale = uniform(math.radians(10)), 1 + uniform(0.12)
    tx, ty = uniform(0.06) * 2, uniform(0.06) * 2
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    m = F.grid_sample(m, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    c = (1 + uniform(0.2)).view(b, 1, 1, 1).to(x)
    br = uniform(0.1).view(b, 1, 1, 1).to(x)
    mean = x.mean(dim=(2, 3), keepdim=True)
    return ((x - mean) * c + mean + br).clamp(0, 1), m


def seg_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy plus soft Dice loss (the Dice term keeps the lung borders sharp)."""
    bce = F.binary_cross_entropy_with_logits(logits, target)
    p = torch.sigmoid(logits)
    inter = (p * target).sum(dim=(1, 2, 3))
    soft = 1 - (2 * inter + 1) / (p.sum(dim=(1, 2, 3)) + target.sum(dim=(1, 2, 3)) + 1)
    return bce + soft.mean()


def evaluate_dice(model: LungSegNet, images: list[np.ndarray], masks: list[np.ndarray]) -> dict[str, float]:
    """Dice of the cleaned predicted masks in each image's own geometry: mean, median, min, and raw (uncleaned) mean."""
    probs = predict_lung_probs(model, images)
    raw = [dice(p >= 0.5, m) for p, m in zip(probs, masks, strict=True)]
    clean = [dice(clean_mask(p >= 0.5), m) for p, m in zip(probs, masks, strict=True)]
    return {"dice_mean": float(np.mean(clean)), "dice_median": float(np.median(clean)),
            "dice_min": float(np.min(clean)), "dice_raw_mean": float(np.mean(raw)), "n_images": len(images)}


def train_segmenter(cfg: SegmentConfig, progress: bool = True) -> Path:
    """Train, select on validation Dice, report test Dice, write the checkpoint and a summary into ``cfg.output``.

    Returns:
        The output folder (``lung_seg.safetensors``, ``lung_seg.json``, ``split.csv``, ``history.csv``,
        ``metrics.json``).
    """
    cfg = cfg.validate()
    if cfg.encoder not in ENCODER_LAYOUTS:
        raise ConfigError(f"encoder {cfg.encoder!r} is not available; use one of {', '.join(ENCODER_LAYOUTS)}")
    t0 = time.time()
    generator = seed_everything(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    device = resolve_device(cfg.device)
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)

    table = masked_table(cfg.data)
    if cfg.max_images and len(table) > cfg.max_images:
        table = table.sample(n=cfg.max_images, random_state=cfg.seed).reset_index(drop=True)
    table["split"] = patient_grouped_split(table, cfg.split, seed=cfg.seed)
    atomic_write_csv(out / "split.csv", table[["image", "lung_mask", "group", "site", "view", "split"]])
    full_images, full_masks = [], []
    for path, mpath in tqdm(list(zip(table["path"], table["mask_path"], strict=True)), desc="reading images+masks",
                            disable=not progress):
        img = read_image(path)
        full_images.append(img)
        full_masks.append(read_mask(mpath, img.shape))
    split = table["split"].to_numpy()
    idx = {s: np.flatnonzero(split == s) for s in ("train", "val", "test")}
    for s, rows in idx.items():
        if len(rows) == 0:
            raise DataError(f"the {s} split of the masked images is empty ({len(table)} images); use more images")
    print(f"lung masks: {len(table)} images of {table['group'].nunique()} patients; train/val/test images "
          f"{len(idx['train'])}/{len(idx['val'])}/{len(idx['test'])} (patient-grouped, seed {cfg.seed})", flush=True)

    x_train = network_input([full_images[i] for i in idx["train"]], cfg.image_size, cfg.equalize).to(device)
    m_train = torch.from_numpy(np.stack([_resize_mask(full_masks[i], cfg.image_size) for i in idx["train"]]))[:, None]
    m_train = m_train.to(device)

    model = LungSegNet(cfg.encoder, pretrained=cfg.pretrained, image_size=cfg.image_size, equalize=cfg.equalize)
    model = model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, len(idx["train"]) // cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup(total, max(1, total // 20)))
    val_images = [full_images[i] for i in idx["val"]]
    val_masks = [full_masks[i] for i in idx["val"]]
    best, best_state, best_epoch, history = -1.0, None, 0, []
    for epoch in range(1, cfg.epochs + 1):
        te = time.time()
        model.train()
        order = rng.permutation(len(idx["train"]))
        losses = []
        for b in tqdm(range(steps_per_epoch), desc=f"epoch {epoch}/{cfg.epochs}", leave=False, disable=not progress):
            sel = torch.from_numpy(order[b * cfg.batch_size:(b + 1) * cfg.batch_size]).to(device)
            x, m = joint_augment(x_train[sel], m_train[sel], generator)
            loss = seg_loss(model(x), m)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
        val = evaluate_dice(model, val_images, val_masks)
        history.append({"epoch": epoch, "train_loss": float(np.mean(losses)), "val_dice": val["dice_mean"],
                        "seconds": time.time() - te})
        improved = val["dice_mean"] > best
        if improved:
            best, best_state, best_epoch = val["dice_mean"], copy.deepcopy(model.state_dict()), epoch
        print(f"epoch {epoch}/{cfg.epochs}: loss {np.mean(losses):.4f} | val Dice {val['dice_mean']:.4f}"
              f"{' *best*' if improved else ''} | {time.time() - te:.0f}s", flush=True)
        atomic_write_csv(out / "history.csv", pd.DataFrame(history))
        if cfg.max_minutes is not None and (time.time() - t0) / 60 > cfg.max_minutes and epoch < cfg.epochs:
            print(f"stopping after epoch {epoch}: the time budget of {cfg.max_minutes} min is spent", flush=True)
            break
    model.load_state_dict(best_state)
    model.eval()
    metrics = {
        "val": evaluate_dice(model, val_images, val_masks),
        "test": evaluate_dice(model, [full_images[i] for i in idx["test"]], [full_masks[i] for i in idx["test"]]),
        "best_epoch": best_epoch, "epochs_run": len(history),
        "patients": {s: int(table.loc[split == s, "group"].nunique()) for s in idx},
        "images": {s: int(len(r)) for s, r in idx.items()},
        "dice_definition": "mean over test images of Dice(cleaned prediction, mask) at the image's own size",
        "minutes": (time.time() - t0) / 60,
    }
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    config = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()}
    save_segmenter(out, model, {
        "config": config, "threshold": 0.5, "data_dir": str(resolve_data_dir(cfg.data)),
        "split_fingerprint": split_fingerprint(table, table["split"]),
        "held_out_dice": metrics["test"]["dice_mean"], "val_dice": metrics["val"]["dice_mean"],
        "best_epoch": best_epoch,
    })
    t = metrics["test"]
    print(f"test Dice on {metrics['patients']['test']} held-out patients ({t['n_images']} images): mean "
          f"{t['dice_mean']:.4f}, median {t['dice_median']:.4f}, min {t['dice_min']:.4f} | {out}", flush=True)
    return out
