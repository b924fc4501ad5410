"""Domain-adversarial training (Ganin & Lempitsky 2015): make the features useless for telling the site apart.

A site classifier sits on the classifier's pooled features behind a gradient-reversal layer (GRL). The site head
learns to predict the site; the reversed gradient pushes the trunk to remove what the site head uses. The strength
ramps up as in the paper, ``lambda(p) = w * (2 / (1 + exp(-10 p)) - 1)`` with ``p`` the share of training done and
``w`` the ``adversarial_weight``.

On this data the label is confounded with the site (every COVID image comes from one collection), so a plain site
adversary would also fight the label. By default the adversary is *conditional* on the label (its input is the
features plus the one-hot label): it can only gain from site information *beyond* what the label explains, which is
exactly the shortcut to remove.

Whether it worked is measured by :func:`covidscreen.audit.shortcut.site_probe`: how well a linear model still
predicts the site from the features within each label.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..data.augment import AugmentConfig, augment_batch
from .finetune import freeze_batchnorm
from .loop import optimizer_step
from .runtime import autocast, to_input


class _ReverseGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, coeff: float) -> torch.Tensor:  # noqa: D102
        ctx.coeff = coeff
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: D102
        return -ctx.coeff * grad, None


def grad_reverse(x: torch.Tensor, coeff: float = 1.0) -> torch.Tensor:
    """Identity in the forward pass; multiplies the gradient by ``-coeff`` in the backward pass."""
    return _ReverseGrad.apply(x, coeff)


class GradientReversal(nn.Module):
    """:func:`grad_reverse` as a module with a settable ``coeff``."""

    def __init__(self, coeff: float = 1.0) -> None:
        super().__init__()
        self.coeff = coeff

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return grad_reverse(x, self.coeff)


def grl_schedule(progress: float, weight: float) -> float:
    """Ganin & Lempitsky's ramp: 0 at the start, ``weight`` at the end of training."""
    return weight * (2.0 / (1.0 + math.exp(-10.0 * min(max(progress, 0.0), 1.0))) - 1.0)


class FeatureTap:
    """Captures the input of a model's classification head (the pooled features) on every forward pass."""

    def __init__(self, model: nn.Module) -> None:
        head = model.backbone.get_submodule(model.spec.head)
        self.features: torch.Tensor | None = None
        self._handle = head.register_forward_pre_hook(self._hook)

    def _hook(self, module: nn.Module, args: tuple) -> None:
        x = args[0]
        self.features = F.adaptive_avg_pool2d(x, 1).flatten(1) if x.ndim == 4 else x.flatten(1)

    def remove(self) -> None:
        self._handle.remove()


class SiteAdversary(nn.Module):
    """Site classifier behind a gradient-reversal layer, optionally conditioned on the class label.

    Args:
        in_features: size of the pooled features.
        num_sites: number of training sites.
        num_classes: number of classes (used when ``conditional``).
        conditional: give the head the one-hot label too (see the module doc).
        site_weights: class weights of the site loss (inverse site frequency keeps small sites heard).
    """

    def __init__(self, in_features: int, num_sites: int, num_classes: int, conditional: bool = True,
                 hidden: int = 256, site_weights: torch.Tensor | None = None) -> None:
        super().__init__()
        self.conditional = conditional
        self.num_classes = num_classes
        self.grl = GradientReversal(0.0)
        self.head = nn.Sequential(nn.Linear(in_features + (num_classes if conditional else 0), hidden), nn.ReLU(),
                                  nn.Dropout(0.2), nn.Linear(hidden, num_sites))
        self.register_buffer("site_weights", site_weights if site_weights is not None else torch.ones(num_sites))

    def forward(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        z = self.grl(features.float())
        if self.conditional:
            z = torch.cat([z, F.one_hot(labels, self.num_classes).float()], dim=1)
        return self.head(z)

    def loss(self, features: torch.Tensor, sites: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self(features, labels), sites, weight=self.site_weights.to(features.device))


def feature_size(model: nn.Module, image_size: int, device: torch.device) -> int:
    """Width of the pooled features that feed the model's head."""
    tap = FeatureTap(model)
    try:
        was = model.training
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 1, image_size, image_size, device=device))
        model.train(was)
        return int(tap.features.shape[1])
    finally:
        tap.remove()


def train_one_epoch_adversarial(
    model: nn.Module,
    adversary: SiteAdversary,
    images: np.ndarray,
    rows: np.ndarray,
    labels: np.ndarray,
    sites: np.ndarray,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    device: torch.device,
    batch_size: int,
    generator: torch.Generator,
    weight: float,
    progress_start: float,
    progress_end: float,
    augment: AugmentConfig | None = None,
    amp: torch.dtype | None = None,
    scaler: torch.amp.GradScaler | None = None,
    desc: str = "train",
    progress: bool = True,
) -> dict[str, float]:
    """One epoch of classification loss + site loss through the GRL (same batching as ``loop.train_one_epoch``).

    Args:
        sites: site index per entry of ``rows``.
        weight: the ``adversarial_weight``.
        progress_start, progress_end: share of all training done at this epoch's start and end (for the ramp).

    Returns:
        Mean classification loss, mean site loss and site accuracy of the adversary over the epoch.
    """
    model.train()
    adversary.train()
    freeze_batchnorm(model)
    tap = FeatureTap(model)
    n_batches = len(rows) // batch_size
    totals = {"loss": 0.0, "site_loss": 0.0, "site_accuracy": 0.0}
    try:
        bar = tqdm(range(n_batches), desc=desc, unit="batch", disable=not progress, leave=False)
        for b in bar:
            sl = slice(b * batch_size, (b + 1) * batch_size)
            x = to_input(torch.from_numpy(np.ascontiguousarray(images[rows[sl]])), device)
            y = torch.from_numpy(np.asarray(labels[sl], dtype=np.int64)).to(device)
            s = torch.from_numpy(np.asarray(sites[sl], dtype=np.int64)).to(device)
            if augment is not None:
                x = augment_batch(x, augment, generator)
            p = progress_start + (progress_end - progress_start) * b / max(1, n_batches)
            adversary.grl.coeff = grl_schedule(p, weight)
            with autocast(device, amp):
                cls_loss = loss_fn(model(x), y)
                site_logits = adversary(tap.features, y)
                site_loss = F.cross_entropy(site_logits.float(), s, weight=adversary.site_weights)
                loss = cls_loss + site_loss
            optimizer_step(loss, optimizer, scheduler, scaler, b)
            totals["loss"] += cls_loss.item()
            totals["site_loss"] += site_loss.item()
            totals["site_accuracy"] += float((site_logits.argmax(1) == s).float().mean())
            bar.set_postfix(loss=f"{totals['loss'] / (b + 1):.4f}", site=f"{totals['site_loss'] / (b + 1):.3f}")
    finally:
        tap.remove()
    return {k: v / max(n_batches, 1) for k, v in totals.items()}


@torch.inference_mode()
def extract_features(model: nn.Module, images: np.ndarray, rows: np.ndarray, device: torch.device,
                     batch_size: int = 64, amp: torch.dtype | None = None) -> np.ndarray:
    """Pooled features (the head's input) of ``images[rows]``."""
    model.eval()
    tap = FeatureTap(model)
    out = []
    try:
        for start in range(0, len(rows), batch_size):
            x = to_input(torch.from_numpy(np.ascontiguousarray(images[rows[start:start + batch_size]])), device)
            with autocast(device, amp):
                model(x)
            out.append(tap.features.float().cpu().numpy())
    finally:
        tap.remove()
    return np.concatenate(out) if out else np.zeros((0, 0))
