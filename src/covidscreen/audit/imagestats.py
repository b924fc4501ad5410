"""One pass over the decoded images (the memory-mapped cache) computing what every audit needs.

- a 64x64 area-averaged thumbnail per image (near-duplicate verification, perceptual hashes, the shortcut probe);
- a 32-bin intensity histogram (exposure and processing differ by source);
- the mean absolute difference between neighbouring pixels (sharpness: up-sampled low-resolution sources are
  smoother than down-sampled high-resolution ones).

Reading 10,000 cached 224 px images takes a few seconds; nothing is decoded again.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..data.duplicates import THUMB, pooled, thumbnail_batch  # noqa: F401  (pooled: re-exported)

HIST_BINS = 32


@dataclass
class ImageStats:
    """Per-image summaries, row ``i`` for ``images[rows[i]]``."""

    thumbs: np.ndarray  # (N, 64, 64) float32, area-averaged
    hist: np.ndarray  # (N, 32) float32, fraction of pixels per intensity bin
    edge: np.ndarray  # (N, 2) float32, mean |vertical| and |horizontal| neighbour difference


def image_stats(images: np.ndarray, rows: np.ndarray | None = None, batch: int = 256) -> ImageStats:
    """Summaries of ``images[rows]`` (``(N, H, W)`` uint8, e.g. ``ImageCache.images``)."""
    rows = np.arange(len(images)) if rows is None else np.asarray(rows, dtype=np.int64)
    n = len(rows)
    thumbs = np.empty((n, THUMB, THUMB), dtype=np.float32)
    hist = np.empty((n, HIST_BINS), dtype=np.float32)
    edge = np.empty((n, 2), dtype=np.float32)
    shift = int(np.log2(256 // HIST_BINS))
    with torch.inference_mode():
        for start in range(0, n, batch):
            idx = rows[start:start + batch]
            x = np.ascontiguousarray(images[idx])
            b, sl = len(idx), slice(start, start + len(idx))
            thumbs[sl] = thumbnail_batch(x)  # the split's near-duplicate search computes the same thumbnails
            # one bincount for the whole batch: bin of each pixel, offset by its image's row
            codes = (x.reshape(b, -1) >> shift).astype(np.int32) + (np.arange(b, dtype=np.int32) * HIST_BINS)[:, None]
            hist[sl] = np.bincount(codes.ravel(), minlength=b * HIST_BINS).reshape(b, HIST_BINS) / codes.shape[1]
            xi = x.astype(np.int16)
            edge[sl, 0] = np.abs(np.diff(xi, axis=1)).mean((1, 2))
            edge[sl, 1] = np.abs(np.diff(xi, axis=2)).mean((1, 2))
    return ImageStats(thumbs, hist, edge)

