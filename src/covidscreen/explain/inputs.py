"""What a run's model sees: the run's own preprocessing (``data/preprocess.py``), and its lung mask when it has one.

Heatmaps are shown and scored in the original image's geometry. Preprocessing that keeps the geometry (intensity
normalisation, masking outside the lungs) is applied before the model exactly as in training and predict;
preprocessing that crops (``lungs-crop``, ``border_crop``) cannot yet be mapped back and is refused with a clear
error instead of explaining an input the model never saw.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..data.preprocess import PreprocessConfig, load_preprocessed, load_segmenter_for
from .cam import ExplainError


def run_input_loader(meta: dict[str, Any], run_dir: str | Path) -> tuple[Callable[[str | Path], np.ndarray],
                                                                         Callable[[np.ndarray], np.ndarray] | None]:
    """``(load(path) -> (S, S) uint8 model input, lung_mask_fn or None)`` for a run.

    Raises:
        ExplainError: the run crops its inputs, so heatmaps would not line up with the original image.
    """
    pp = PreprocessConfig.from_dict(meta.get("preprocessing"))
    if pp.roi in ("lungs-crop", "lungs-crop-mask") or pp.border_crop > 0:
        raise ExplainError(f"this run crops its inputs (roi={pp.roi}, border_crop={pp.border_crop}); heatmaps of "
                           "cropped inputs cannot be mapped back to the original image yet. Explain a run trained "
                           "with roi none/lungs-mask and no border_crop")
    size = int(meta["image_size"])
    segmenter = load_segmenter_for(pp, base_dir=run_dir)

    def load(path: str | Path) -> np.ndarray:
        return load_preprocessed(path, size, pp, segmenter)

    mask_fn = (lambda image: segmenter([image])[0]) if segmenter is not None else None
    return load, mask_fn
