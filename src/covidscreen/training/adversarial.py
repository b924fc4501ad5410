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

from ..runtime import autocast, to_input
from .loop import Batch, TrainStep


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

    def __enter__(self) -> FeatureTap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


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


def adversarial_step(model: nn.Module, adversary: SiteAdversary, loss_fn: nn.Module, tap: FeatureTap,
                     weight: float, progress_start: float, progress_end: float, device: torch.device,
                     amp: torch.dtype | None = None) -> TrainStep:
    """The step of a domain-adversarial epoch: classification loss + site loss through the GRL, whose strength
    follows :func:`grl_schedule` over the share of training done (``progress_start`` to ``progress_end`` over the
    epoch). The epoch needs the ``sites`` column; the step reports ``site_loss`` and ``site_accuracy``.

    The optimiser minimises the sum; the epoch reports the classification loss as its ``loss``."""

    def step(batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        p = progress_start + (progress_end - progress_start) * batch.index / max(1, batch.n_batches)
        adversary.grl.coeff = grl_schedule(p, weight)
        sites = batch.extras["sites"]
        with autocast(device, amp):
            cls_loss = loss_fn(model(batch.x), batch.y)
            site_logits = adversary(tap.features, batch.y)
            site_loss = F.cross_entropy(site_logits.float(), sites, weight=adversary.site_weights)
        return cls_loss + site_loss, {"loss": cls_loss.item(), "site_loss": site_loss.item(),
                                      "site_accuracy": float((site_logits.argmax(1) == sites).float().mean())}

    return step


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
