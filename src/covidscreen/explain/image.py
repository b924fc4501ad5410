"""One image's explanation, made as ``covidscreen explain`` makes each of its images (for interfaces that answer
one request at a time: the HTTP service, a DICOM node).

The same steps as :func:`~covidscreen.explain.files.explain_files` per file, without the batch sanity checks: the
run's own preprocessing gives the model input and where it came from; the map of that input is placed back into the
full-resolution decode of the same file (0 where a cropping run's model saw nothing); the border fraction and its
chance level are measured there.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..data.decode import read_image
from ..data.preprocess import InputGeometry
from .cam import Explainer, Explanation
from .inputs import InputLoader, chance_level, map_to_image
from .regions import DEFAULT_MARGIN, border_fraction


def place_on_image(input_map: np.ndarray, geometry: InputGeometry, image: np.ndarray, probs: np.ndarray,
                   target: int, classes: list[str], method: str, source: str,
                   mask_fn: Callable[[np.ndarray], np.ndarray] | None = None, margin: float = DEFAULT_MARGIN,
                   checks: dict | None = None) -> Explanation:
    """An explanation of a model input's map, placed into the full-resolution decode ``image`` of the same file
    (0 where a cropping run's model saw nothing), with the border fraction and its chance level measured there."""
    view = geometry.scaled_to(*image.shape)  # preprocessing may have decoded a JPEG at a reduced scale
    heat = map_to_image(input_map, view, image.shape)
    mask = mask_fn(image) if mask_fn is not None else None
    return Explanation(heatmap=heat, input_heatmap=input_map, image=image, probs=np.asarray(probs), target=int(target),
                       classes=list(classes), method=method, border_fraction=border_fraction(heat, mask, margin),
                       border_area=chance_level(heat.shape, view, mask, margin), source=source,
                       checks=checks or {}, mask=mask, view=view if view.crops else None)


def explain_image(explainer: Explainer, load_input: InputLoader, path: str | Path, target: int | str | None = None,
                  mask_fn: Callable[[np.ndarray], np.ndarray] | None = None,
                  margin: float = DEFAULT_MARGIN) -> Explanation:
    """The explanation of one file.

    Args:
        explainer: an open :class:`Explainer` of the run's model (``with Explainer(...) as ex``).
        load_input: the run's input loader (:func:`~covidscreen.explain.inputs.run_input_loader`).
        path: a PNG, JPEG or DICOM file.
        target: class to explain (name or index); None: the most probable class.
        mask_fn: the run's lung-mask function (None: the central box of the border fraction).
        margin: border band of the shortcut indicator (fraction of each side).

    Raises:
        ImageDecodeError: the file cannot be read.
    """
    x, geometry = load_input(path)
    maps, probs, idx = explainer.maps(x[None], explainer.resolve_target(target))
    return place_on_image(maps[0], geometry, read_image(path), probs[0], idx[0], explainer.classes, explainer.method,
                          str(path), mask_fn, margin)
