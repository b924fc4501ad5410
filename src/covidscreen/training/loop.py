"""The plain loop functions: one training epoch, and batched prediction. Nothing here builds data or models."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..data.augment import AugmentConfig, augment_batch
from .finetune import freeze_batchnorm
from .runtime import autocast, prediction_precision, to_input


def cosine_with_warmup(total_steps: int, warmup_steps: int, floor: float = 0.01) -> Callable[[int], float]:
    """LR multiplier: linear warm-up to 1, then cosine decay to ``floor``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer,
                   scheduler: torch.optim.lr_scheduler.LRScheduler | None, scaler: torch.amp.GradScaler | None,
                   batch: int) -> None:
    """Backward pass and one optimizer (and scheduler) step, with the fp16 grad scaler when there is one."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    if scheduler is not None:
        scheduler.step()
    if not torch.isfinite(loss):
        raise FloatingPointError(f"training loss became {loss.item()} at batch {batch}; lower the learning rate")


def train_one_epoch(
    model: nn.Module,
    images: np.ndarray,
    rows: np.ndarray,
    labels: np.ndarray,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    device: torch.device,
    batch_size: int,
    generator: torch.Generator,
    augment: AugmentConfig | None = None,
    amp: torch.dtype | None = None,
    scaler: torch.amp.GradScaler | None = None,
    desc: str = "train",
    progress: bool = True,
    mixer: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
    groups: np.ndarray | None = None,
) -> float:
    """Train on ``images[rows]`` (in the given order) once; returns the mean training loss.

    Args:
        images: ``(N, H, W)`` uint8 array (e.g. the memory-mapped cache).
        rows: row indices of this epoch's images, already shuffled/sampled by the caller.
        labels: class index per entry of ``rows``.
        mixer: optional ``(x, y) -> (x, soft_targets)`` applied after augmentation (mixup/CutMix, ``mixup.py``).
        groups: optional integer per entry of ``rows`` passed to ``loss_fn(logits, y, groups)`` as a third argument
            (the within-site ranking loss's site groups, ``site_contrast.py``).
    """
    model.train()
    freeze_batchnorm(model)
    total, seen = 0.0, 0
    n_batches = len(rows) // batch_size  # drop the last partial batch: BatchNorm dislikes tiny batches
    bar = tqdm(range(n_batches), desc=desc, unit="batch", disable=not progress, leave=False)
    for b in bar:
        idx = rows[b * batch_size:(b + 1) * batch_size]
        x = to_input(torch.from_numpy(np.ascontiguousarray(images[idx])), device)
        y = torch.from_numpy(np.asarray(labels[b * batch_size:(b + 1) * batch_size], dtype=np.int64)).to(device)
        if augment is not None:
            x = augment_batch(x, augment, generator)
        if mixer is not None:
            x, y = mixer(x, y)
        with autocast(device, amp):
            if groups is None:
                loss = loss_fn(model(x), y)
            else:
                g = torch.from_numpy(np.asarray(groups[b * batch_size:(b + 1) * batch_size], dtype=np.int64))
                loss = loss_fn(model(x), y, g.to(device))
        optimizer_step(loss, optimizer, scheduler, scaler, b)
        total += loss.item() * len(idx)
        seen += len(idx)
        bar.set_postfix(loss=f"{total / seen:.4f}", img_s=f"{bar.format_dict['rate'] * batch_size:.1f}"
                        if bar.format_dict.get("rate") else "")
    return total / max(seen, 1)


@torch.inference_mode()
def predict_probs(
    model: nn.Module,
    images: np.ndarray,
    rows: np.ndarray,
    device: torch.device,
    batch_size: int = 64,
    amp: torch.dtype | None = None,
    desc: str = "predict",
    progress: bool = True,
) -> np.ndarray:
    """Class probabilities ``(len(rows), C)`` of ``images[rows]`` (float64, rows sum to 1); without ``amp``, in
    exact float32 on a GPU too (no TF32), as :class:`~covidscreen.inference.predictor.Predictor` predicts."""
    model.eval()
    out = []
    for start in tqdm(range(0, len(rows), batch_size), desc=desc, unit="batch", disable=not progress, leave=False):
        idx = rows[start:start + batch_size]
        x = to_input(torch.from_numpy(np.ascontiguousarray(images[idx])), device)
        with prediction_precision(device, amp):
            logits = model(x)
        out.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
    if not out:
        return np.zeros((0, getattr(model, "num_classes", 0)))
    return np.concatenate(out).astype(np.float64)
