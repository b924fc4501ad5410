"""Where a model can see a trigger at all: the mean input gradient per pixel, and its ratio in each corner.

A backdoor trigger can only be learned where the model's output depends on the pixels. Stride-2 convolutions on
even-sized inputs cover the image unevenly: in the 64 px MobileNetV2 of the demonstration the bottom-right 3 x 3
corner has an input gradient about 100x below the image mean (the top-left about 1.5x above it), and a trigger stamped
there was never learned (docs/security.md). A defender can read the same map the other way: a corner the model cannot
see cannot hide a trigger.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..runtime import to_input
from .trigger import CORNERS


def input_sensitivity(model: nn.Module, images: np.ndarray, device: str | torch.device = "cpu",
                      batch_size: int = 32) -> np.ndarray:
    """Mean over images and classes of ``|d logit / d pixel|`` (pixels in [0, 1], as the model reads them): an
    ``(H, W)`` map for uint8 ``(N, H, W)`` images."""
    model = model.eval()
    device = torch.device(device)
    total = np.zeros(images.shape[-2:], dtype=np.float64)
    for start in range(0, len(images), batch_size):
        x = to_input(torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size])), device)
        x.requires_grad_(True)
        logits = model(x)
        grads = [torch.autograd.grad(logits[:, c].sum(), x, retain_graph=True)[0].abs() for c in
                 range(logits.shape[1])]
        total += torch.stack(grads).sum(0)[:, 0].sum(0).double().cpu().numpy() / logits.shape[1]
    return total / len(images)


def corner_ratios(sensitivity: np.ndarray, side: int) -> dict[str, float]:
    """Mean sensitivity of each ``side`` x ``side`` corner divided by the mean of the whole map."""
    mean = float(sensitivity.mean()) or 1.0
    h, w = sensitivity.shape
    boxes = {"top_left": (slice(0, side), slice(0, side)), "top_right": (slice(0, side), slice(w - side, w)),
             "bottom_left": (slice(h - side, h), slice(0, side)),
             "bottom_right": (slice(h - side, h), slice(w - side, w))}
    assert set(boxes) == set(CORNERS)
    return {name: float(sensitivity[box].mean() / mean) for name, box in boxes.items()}
