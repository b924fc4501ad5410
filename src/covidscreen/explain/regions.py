"""The shortcut indicator: how much of a heatmap lies outside the chest.

Burnt-in text, side markers ("L", "R"), scanner labels and collimation edges sit in the border band and the corners
of a chest radiograph; the lungs sit in the middle. A model that recognises the source by its labels instead of the
disease puts its heatmap mass out there. The score is the share of (non-negative) heatmap mass outside the central
chest region. By default that region is a box that leaves a band of ``margin`` times each side; a chest or lung mask
(e.g. from a segmentation model) can replace the box.

A uniform map scores :func:`border_area` (the band's share of the image, 0.4375 for the default margin): values well
above that mean the map concentrates on borders and corners, values near 0 mean it stays inside the chest.

Explanations score maps in the original image's geometry. For a run that crops its inputs (border crop, lung crop)
the map is 0 outside what the model saw, and the fair chance level is a map spread evenly over that box
(``inputs.chance_level``); when the crop removed the whole band, the border fraction is 0 by construction.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from ..errors import CovidscreenError

#: Width of the border band as a fraction of each side (1/8: 28 px at 224 px, about one cell of a 7x7 CAM).
DEFAULT_MARGIN = 0.125


def central_region(shape: tuple[int, int], margin: float = DEFAULT_MARGIN) -> np.ndarray:
    """Boolean ``shape`` mask, True inside the central box that leaves a band of ``margin`` x side on each edge."""
    if not 0 <= margin < 0.5:
        raise CovidscreenError(f"border margin {margin} is invalid: expected a fraction in [0, 0.5)")
    h, w = int(shape[0]), int(shape[1])
    mask = np.zeros((h, w), dtype=bool)
    dy, dx = int(round(margin * h)), int(round(margin * w))
    mask[dy:h - dy, dx:w - dx] = True
    return mask


def _region(shape: tuple[int, int], mask: np.ndarray | None, margin: float) -> np.ndarray:
    if mask is None:
        return central_region(shape, margin)
    m = np.asarray(mask)
    if m.ndim != 2:
        raise CovidscreenError(f"chest mask must be a 2-D array, got shape {m.shape}")
    m = m > 0 if m.dtype != bool else m
    if m.shape != tuple(shape):
        # nearest neighbour keeps the mask binary; the mask may come at any resolution of the same image
        img = Image.fromarray(m.astype(np.uint8) * 255).resize((shape[1], shape[0]), Image.Resampling.NEAREST)
        m = np.asarray(img) > 127
    if not m.any():
        raise CovidscreenError("chest mask is empty: it must be True where the chest (or lungs) is")
    return m


def border_fraction(heatmap: np.ndarray, mask: np.ndarray | None = None, margin: float = DEFAULT_MARGIN) -> float:
    """Share of the heatmap's mass outside the chest region: 0 = all inside, 1 = all on borders/corners.

    Args:
        heatmap: 2-D map (negative values count as 0).
        mask: optional chest or lung mask (True inside, any resolution) that replaces the central box.
        margin: band width as a fraction of each side, used when ``mask`` is None.

    Returns:
        The fraction, or NaN for an empty (all-zero) map.
    """
    heat = np.clip(np.asarray(heatmap, dtype=np.float64), 0, None)
    if heat.ndim != 2:
        raise CovidscreenError(f"heatmap must be a 2-D array, got shape {heat.shape}")
    total = heat.sum()
    if not np.isfinite(total) or total <= 0:
        return float("nan")
    inside = heat[_region(heat.shape, mask, margin)].sum()
    return float(np.clip(1.0 - inside / total, 0.0, 1.0))


def border_area(shape: tuple[int, int], mask: np.ndarray | None = None, margin: float = DEFAULT_MARGIN) -> float:
    """Share of the image outside the chest region: the border fraction of a uniform map (the chance level)."""
    return float(1.0 - _region(tuple(shape), mask, margin).mean())
