"""How the model-level searches run the model: frozen, with its BatchNorm folded, in passes of bounded size.

The model-level searches (the patch search, MM-BD, I-BAU's universal perturbation) optimise many candidate inputs
together, with gradients: every activation of every image in a forward pass is kept for the backward pass, so their
memory grows with the images of one pass times their pixels. The patch search once pushed up to 4,096 stamped images
in one pass: 10.8-11.4 GB resident on the 64 px demonstration models (MobileNetV2 x0.35, 2.9 MB per image), and 3,528
images at 224 px on the default EfficientNet-Lite0 (80 MB per image with gradients) would have needed about 280 GB.
Passes of at most :data:`CHUNK_IMAGES` images and :data:`CHUNK_PIXELS` input pixels bound that to about 0.75 GB at
64 px (256 images) and 1.6 GB at 224 px (20 images), and are also faster on a CPU than one large pass (the
activations of a smaller pass stay in cache, and the allocator does not fault in gigabytes every step):
docs/security.md, "Patch search".

The searches optimise inputs, never the model: within :func:`frozen_model` it is in eval mode, its parameters are
frozen, and each Convolution + BatchNorm pair is folded into one convolution (``training/folding.py``: an eval-mode
BatchNorm is an affine map). On the demonstration's MobileNetV2 and the default EfficientNet-Lite0 the BatchNorm's
forward and backward passes were a third of a search's time; folded, the model computes the same function to float
rounding.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ..training.folding import folded_frozen_batchnorm

CHUNK_IMAGES = 256  # most images in one pass: the fastest on this CPU at 32 and 64 px (docs/security.md)
CHUNK_PIXELS = 2**20  # most input pixels in one pass: 256 images at 64 px, 20 at 224 px


def images_per_pass(height: int, width: int, max_images: int = CHUNK_IMAGES, max_pixels: int = CHUNK_PIXELS) -> int:
    """Images of ``height`` x ``width`` pixels that one pass holds: at most ``max_images`` and ``max_pixels`` input
    pixels, at least one."""
    return max(1, min(max_images, max_pixels // max(1, height * width)))


@contextmanager
def frozen_model(model: nn.Module, example: torch.Tensor) -> Iterator[nn.Module]:
    """Within: ``model`` in eval mode with every parameter frozen and its Convolution + BatchNorm pairs folded
    (:func:`~covidscreen.training.folding.folded_frozen_batchnorm`, the fold checked on ``example``, a few real
    inputs); afterwards its modules, its mode and its parameters' ``requires_grad`` are as they were."""
    was_training = model.training
    grads = [p.requires_grad for p in model.parameters()]
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        with folded_frozen_batchnorm(model, example):
            yield model
    finally:
        for p, g in zip(model.parameters(), grads, strict=True):
            p.requires_grad_(g)
        model.train(was_training)
