"""How many images one pass of a search pushes through the model at once.

The model-level searches (the patch search, MM-BD, I-BAU's universal perturbation) optimise many candidate inputs
together, with gradients: every activation of every image in a forward pass is kept for the backward pass, so their
memory grows with the images of one pass times their pixels. The patch search once pushed up to 4,096 stamped images
in one pass: 10.8-11.4 GB resident on the 64 px demonstration models (MobileNetV2 x0.35, 2.9 MB per image), and 3,528
images at 224 px on the default EfficientNet-Lite0 (80 MB per image with gradients) would have needed about 280 GB.
Passes of at most :data:`CHUNK_IMAGES` images and :data:`CHUNK_PIXELS` input pixels bound that to about 0.75 GB at
64 px (256 images) and 1.6 GB at 224 px (20 images), and are also faster on a CPU than one large pass (the
activations of a smaller pass stay in cache, and the allocator does not fault in gigabytes every step):
docs/security.md, "Patch search".
"""

from __future__ import annotations

CHUNK_IMAGES = 256  # most images in one pass: the fastest on this CPU at 32 and 64 px (docs/security.md)
CHUNK_PIXELS = 2**20  # most input pixels in one pass: 256 images at 64 px, 20 at 224 px


def images_per_pass(height: int, width: int, max_images: int = CHUNK_IMAGES, max_pixels: int = CHUNK_PIXELS) -> int:
    """Images of ``height`` x ``width`` pixels that one pass holds: at most ``max_images`` and ``max_pixels`` input
    pixels, at least one."""
    return max(1, min(max_images, max_pixels // max(1, height * width)))
