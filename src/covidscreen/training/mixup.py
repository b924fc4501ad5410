"""Mixup (Zhang et al. 2018) and CutMix (Yun et al. 2019) of training batches, with soft labels.

Mixup blends two images and their labels with a weight ``lam ~ Beta(alpha, alpha)``; CutMix pastes a box of one
image into another and mixes the labels by the box's share of the area. Zhao et al. 2021 report that mixup helps
chest X-ray transfer learning. The mixed targets are probability vectors (each row sums to one), which both losses of
:mod:`covidscreen.training.losses` accept. Randomness comes from a seeded NumPy generator so a seeded run repeats.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


class BatchMixer:
    """Mix each training batch with a shuffled copy of itself.

    Args:
        num_classes: number of classes (for the one-hot targets).
        mixup_alpha: Beta parameter of mixup; 0 turns mixup off.
        cutmix_alpha: Beta parameter of CutMix; 0 turns CutMix off. With both on, each batch uses one of them
            (chosen with probability 1/2), as timm's ``Mixup`` does.
        seed: seed of the mixer's own generator.
    """

    def __init__(self, num_classes: int, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0, seed: int = 0) -> None:
        self.num_classes = num_classes
        self.mixup_alpha = float(mixup_alpha)
        self.cutmix_alpha = float(cutmix_alpha)
        self.rng = np.random.default_rng(seed)

    @property
    def active(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return mixed images (a new tensor; ``x`` is not modified) and soft targets ``(B, C)``.

        Args:
            x: images ``(B, C, H, W)``.
            y: class indices ``(B,)``.
        """
        target = F.one_hot(y, self.num_classes).float()
        if not self.active or len(x) < 2:
            return x, target
        use_cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha <= 0 or self.rng.random() < 0.5)
        alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        lam = float(self.rng.beta(alpha, alpha))
        perm = torch.from_numpy(self.rng.permutation(len(x))).to(x.device)
        if use_cutmix:
            x, lam = cutmix_images(x, x[perm], lam, self.rng)
        else:
            x = lam * x + (1 - lam) * x[perm]
        return x, lam * target + (1 - lam) * target[perm]


def cutmix_images(x: torch.Tensor, other: torch.Tensor, lam: float,
                  rng: np.random.Generator) -> tuple[torch.Tensor, float]:
    """Paste a random box of ``other`` covering about ``1 - lam`` of the area into a copy of ``x``.

    Returns:
        The mixed images and the exact share of the area that still comes from ``x`` (the label weight), which
        differs from ``lam`` when the box is clipped at the border.
    """
    h, w = x.shape[-2:]
    cut = np.sqrt(1.0 - lam)
    bh, bw = int(round(h * cut)), int(round(w * cut))
    cy, cx = int(rng.integers(h)), int(rng.integers(w))
    y0, y1 = np.clip([cy - bh // 2, cy + bh - bh // 2], 0, h)
    x0, x1 = np.clip([cx - bw // 2, cx + bw - bw // 2], 0, w)
    out = x.clone()
    out[..., y0:y1, x0:x1] = other[..., y0:y1, x0:x1]
    return out, 1.0 - float((y1 - y0) * (x1 - x0)) / (h * w)
