"""The one epoch loop (with a pluggable per-batch step) and batched prediction. Nothing here builds data or models."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..data.augment import AugmentConfig, augment_batch
from ..runtime import autocast, prediction_precision, to_input
from .finetune import freeze_batchnorm
from .folding import folded_frozen_batchnorm
from .precision import float32_slow_depthwise


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


@dataclass
class Batch:
    """One training batch as a :data:`TrainStep` sees it: model input (augmented and mixed), targets, and the
    per-image integer columns the epoch was given (``extras``: e.g. site groups, site indices)."""

    x: torch.Tensor
    y: torch.Tensor  # class indices, or soft targets after mixing
    extras: dict[str, torch.Tensor]
    index: int  # batch number within the epoch
    n_batches: int


#: ``step(batch) -> (loss, {statistic: value})``: what one batch computes; the loop does the rest (batching,
#: augmentation, mixing, the optimizer step, averages, the progress bar). The loss is what the optimizer minimises
#: and, unless the step reports its own ``loss`` statistic, what the epoch reports. MONAI's engines take their
#: iteration the same way.
TrainStep = Callable[[Batch], tuple[torch.Tensor, dict[str, float]]]


@dataclass
class Optimisation:
    """What every epoch of a run updates or draws from."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    device: torch.device
    batch_size: int
    generator: torch.Generator  # the run's own random draws (augmentation, mixing)
    augment: AugmentConfig | None = None
    amp: torch.dtype | None = None
    scaler: torch.amp.GradScaler | None = None
    mixer: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None
    fold_frozen_batchnorm: bool = True  # frozen stages' BatchNorm folded into their convolutions (folding.py)


def classification_step(model: nn.Module, loss_fn: nn.Module, device: torch.device,
                        amp: torch.dtype | None = None) -> TrainStep:
    """The plain step: ``loss_fn(model(x), y)``, or ``loss_fn(model(x), y, groups)`` when the epoch has ``groups``
    (the within-site ranking loss, ``site_contrast.py``)."""

    def step(batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        with autocast(device, amp):
            if "groups" in batch.extras:
                return loss_fn(model(batch.x), batch.y, batch.extras["groups"]), {}
            return loss_fn(model(batch.x), batch.y), {}

    return step


def train_one_epoch(opt: Optimisation, images: np.ndarray, rows: np.ndarray, labels: np.ndarray, step: TrainStep,
                    extras: dict[str, np.ndarray] | None = None, desc: str = "train",
                    progress: bool = True) -> dict[str, float]:
    """Train on ``images[rows]`` (in the given order) once.

    Args:
        images: ``(N, H, W)`` uint8 array (e.g. the memory-mapped cache).
        rows: row indices of this epoch's images, already shuffled/sampled by the caller.
        labels: class index per entry of ``rows``.
        step: what each batch computes (:func:`classification_step`, or the adversarial step of
            ``adversarial.py``).
        extras: integer columns per entry of ``rows`` handed to ``step`` batch by batch.

    Returns:
        The epoch's mean ``loss`` and the mean of every statistic the step reported.
    """
    model = opt.model
    model.train()
    freeze_batchnorm(model)
    extras = extras or {}
    totals: dict[str, float] = {"loss": 0.0}
    seen = 0
    n_batches = len(rows) // opt.batch_size  # drop the last partial batch: BatchNorm dislikes tiny batches
    bar = tqdm(range(n_batches), desc=desc, unit="batch", disable=not progress, leave=False)
    # frozen stages' BatchNorm folded into their convolutions for this epoch, checked on two of its images
    example = (to_input(torch.from_numpy(np.ascontiguousarray(images[rows[:2]])), opt.device)
               if n_batches and opt.fold_frozen_batchnorm else None)
    # and, under a CPU's bfloat16 autocast, the depthwise convolutions it trains slowly in float32 (precision.py)
    with folded_frozen_batchnorm(model, example), float32_slow_depthwise(model, opt.device, opt.amp):
        for b in bar:
            sl = slice(b * opt.batch_size, (b + 1) * opt.batch_size)
            idx = rows[sl]
            x = to_input(torch.from_numpy(np.ascontiguousarray(images[idx])), opt.device)
            y = torch.from_numpy(np.asarray(labels[sl], dtype=np.int64)).to(opt.device)
            cols = {k: torch.from_numpy(np.asarray(v[sl], dtype=np.int64)).to(opt.device) for k, v in extras.items()}
            if opt.augment is not None:
                x = augment_batch(x, opt.augment, opt.generator)
            if opt.mixer is not None:
                x, y = opt.mixer(x, y)
            loss, stats = step(Batch(x, y, cols, b, n_batches))
            optimizer_step(loss, opt.optimizer, opt.scheduler, opt.scaler, b)
            seen += len(idx)
            for key, value in {"loss": loss.item(), **stats}.items():
                totals[key] = totals.get(key, 0.0) + value * len(idx)
            bar.set_postfix(loss=f"{totals['loss'] / seen:.4f}",
                            img_s=f"{bar.format_dict['rate'] * opt.batch_size:.1f}" if bar.format_dict.get("rate")
                            else "")
    return {k: v / max(seen, 1) for k, v in totals.items()}


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
