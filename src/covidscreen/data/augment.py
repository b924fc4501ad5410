"""X-ray-safe augmentation of whole batches (small affine, brightness/contrast; never vertical flips).

Works on float batches ``(B, 1, H, W)`` in [0, 1] on any device; randomness comes from an explicit
``torch.Generator`` so that seeded runs repeat.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class AugmentConfig:
    """Ranges of the random transforms (0 turns one off)."""

    rotate_deg: float = 10.0
    scale: float = 0.1
    translate: float = 0.06
    brightness: float = 0.1
    contrast: float = 0.15
    hflip: bool = False  # left/right matters in chest X-rays (heart side); off unless asked for


def augment_batch(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Return an augmented copy of ``x`` (the input is not modified)."""
    b = x.shape[0]

    def uniform(r: float) -> torch.Tensor:
        return (torch.rand(b, generator=generator) * 2 - 1) * r

    angle = uniform(math.radians(cfg.rotate_deg))
    scale = 1 + uniform(cfg.scale)
    tx, ty = uniform(cfg.translate) * 2, uniform(cfg.translate) * 2
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    flip = torch.ones(b)
    if cfg.hflip:
        flip = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.stack([torch.stack([cos * flip, -sin, tx], 1), torch.stack([sin * flip, cos, ty], 1)], 1)
    theta = theta.to(device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # border padding: no black wedges whose presence would mark augmented images
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    c = (1 + uniform(cfg.contrast)).to(x.device, x.dtype).view(b, 1, 1, 1)
    br = uniform(cfg.brightness).to(x.device, x.dtype).view(b, 1, 1, 1)
    mean = out.mean(dim=(2, 3), keepdim=True)
    return ((out - mean) * c + mean + br).clamp_(0, 1)
