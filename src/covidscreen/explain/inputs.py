"""What a run's model sees, and how its heatmaps go back into the original image.

The model is fed exactly what training and predict feed it: the run's own preprocessing (``data/preprocess.py``:
border crop, lung crop or mask, intensity), via :func:`~covidscreen.data.preprocess.load_preprocessed_with_geometry`,
which also says which box of the decoded image became the model's square input (an
:class:`~covidscreen.data.preprocess.InputGeometry`).

Heatmaps are computed on that ``(S, S)`` input and shown and scored in the original image's geometry:
:func:`map_to_image` resizes a map to its box and pastes it into a zero map of the image's size. Outside the box
the model saw nothing, so the map is 0 there. For a run that does not crop, the box is the whole image and this is
the plain resize of earlier versions.

Which geometry each number is in:

- heatmaps in figures, the border fraction and its chance level (:func:`chance_level`), lung-mask scores: the
  original image (after :func:`map_to_image`);
- the randomisation test and ROAD (``sanity.py``): the model input and its ``(S, S)`` map, because ROAD perturbs
  the input the model sees, and pasting maps into zeros would only add tied values that inflate rank correlations.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..config import PreprocessConfig
from ..data.preprocess import InputGeometry, load_preprocessed_with_geometry
from ..errors import CovidscreenError
from ..segmentation import load_segmenter_for
from .cam import ExplainError, resize_map
from .regions import DEFAULT_MARGIN, border_area, border_fraction

InputLoader = Callable[[str | Path], tuple[np.ndarray, InputGeometry]]


def run_input_loader(pp: PreprocessConfig, size: int, run_dir: str | Path
                     ) -> tuple[InputLoader, Callable[[np.ndarray], np.ndarray] | None]:
    """``(load(path) -> ((S, S) uint8 model input, its geometry), lung_mask_fn or None)`` for a run's preprocessing
    ``pp`` and input side ``size`` (:attr:`Run.preprocess <covidscreen.inference.run.Run.preprocess>`,
    ``Run.image_size``); a relative segmenter path is resolved in ``run_dir``.

    ``lung_mask_fn(image)`` segments any decoded image with the run's own lung segmenter (True inside the lungs).

    Raises:
        ExplainError: the run's preprocessing needs its lung segmenter and the copy in the run folder is missing or
            does not match the weights the run was trained with.
    """
    try:
        segmenter = load_segmenter_for(pp, base_dir=run_dir)
    except CovidscreenError as exc:
        raise ExplainError(f"this run's preprocessing (roi={pp.roi}) needs its lung segmenter, which cannot be "
                           f"loaded: {exc}. Without it the model's input cannot be reproduced") from None

    def load(path: str | Path) -> tuple[np.ndarray, InputGeometry]:
        return load_preprocessed_with_geometry(path, size, pp, segmenter)

    mask_fn = (lambda image: segmenter([image])[0]) if segmenter is not None else None
    return load, mask_fn


def map_to_image(input_map: np.ndarray, geometry: InputGeometry, shape: tuple[int, int]) -> np.ndarray:
    """A heatmap of the model input placed back into an image of ``shape`` (a decode of the same file).

    Args:
        input_map: ``(S, S)`` map of the model input, values in [0, 1].
        geometry: where the input came from (in the pixels of the decode that preprocessing used; scaled here).
        shape: ``(height, width)`` of the image the map is for.

    Returns:
        ``shape`` float32 map: the input map resized to the box, 0 outside it (the model saw nothing there).
    """
    view = geometry.scaled_to(int(shape[0]), int(shape[1]))
    if not view.crops:
        return resize_map(input_map, tuple(shape))
    out = np.zeros(tuple(shape), dtype=np.float32)
    out[view.top:view.bottom, view.left:view.right] = resize_map(input_map, (view.bottom - view.top,
                                                                             view.right - view.left))
    return out


def chance_level(shape: tuple[int, int], view: InputGeometry, mask: np.ndarray | None = None,
                 margin: float = DEFAULT_MARGIN) -> float:
    """The border fraction of a map spread evenly over what the model saw (in the original image of ``shape``).

    Without a crop this is :func:`~covidscreen.explain.regions.border_area` (the share of the image outside the
    chest region). With a crop, a heatmap can only lie inside the box, so the fair comparison is a map uniform over
    the box: 0 when the box lies inside the chest region (the model cannot see the border band at all).
    """
    view = view.scaled_to(int(shape[0]), int(shape[1]))
    if not view.crops:
        return border_area(tuple(shape), mask, margin)
    uniform = np.zeros(tuple(shape), dtype=np.float32)
    uniform[view.top:view.bottom, view.left:view.right] = 1.0
    return border_fraction(uniform, mask, margin)


def crop_description(pp: PreprocessConfig) -> str | None:
    """Plain words for how a run's preprocessing crops its inputs; None when it does not."""
    parts = []
    if pp.border_crop > 0:
        parts.append(f"a border crop of {pp.border_crop:.3g} of each side")
    if pp.crops:
        parts.append(f"a crop to the lungs' bounding box plus {pp.roi_margin:.3g} of its size (roi {pp.roi}; the "
                     "whole image where the lungs were not found)")
    return " then ".join(parts) or None


def crop_notes(description: str | None, chances: list[float], mask_region: bool = False) -> list[str]:
    """Sentences for HTML pages about heatmaps of a run that crops its inputs (none when it does not).

    Args:
        description: :func:`crop_description` of the run.
        chances: the :func:`chance_level` of each explained image.
        mask_region: the border fraction was measured outside a chest/lung mask rather than the central box.
    """
    if description is None:
        return []
    notes = [f"This run crops its inputs: {description}. Each heatmap is placed back where the model's input came "
             "from (the yellow box in the figures); outside it the model saw nothing, so the map is 0 there and left "
             "uncoloured. The border fraction is compared with a map spread evenly over what the model saw."]
    outside = "the image outside the chest mask" if mask_region else "the border band"
    finite = [c for c in chances if np.isfinite(c)]
    if finite and max(finite) == 0:
        notes.append(f"The model cannot see the border: it was cropped away (nothing of {outside} reaches the "
                     "model). Its border fractions are 0 by construction, so they say nothing about labels or markers "
                     "there; shortcuts inside the box (markers over the lungs, image processing, patient age) remain "
                     "possible.")
    elif finite:
        notes.append(f"The model still sees part of {outside} in some images (a map spread evenly over its view "
                     f"would score up to {max(finite):.2f}).")
    return notes
