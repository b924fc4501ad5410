"""Explanations: where a model looks, and whether that can be trusted.

- ``cam.py``: Grad-CAM family maps (pytorch-grad-cam) of a model or an ensemble, in the original image's geometry;
  :class:`Explainer` is the context manager that owns the hooks, :func:`explain` the one-call API.
- ``inputs.py``: what a trained run's model sees (its own preprocessing, lung crops included) and how its maps go
  back into the original image (0 outside what a cropping run's model saw).
- ``regions.py``: the shortcut indicator (heatmap mass on the border band and corners, or outside a chest mask).
- ``sanity.py``: the model-randomisation test (Adebayo et al. 2018) and a ROAD faithfulness score.
- ``figures.py``: the per-image PNG (X-ray, overlay with colour bar, probabilities) and the HTML contact sheet.
- ``files.py``: ``covidscreen explain`` on files and folders.
- ``summary.py``: the heatmap audit of a run's test split for the evaluation report (:func:`heatmap_summary`), and
  :func:`heatmap_provider`, a ``heatmap_fn(path)`` of a run for report thumbnails.
"""

from .cam import CLASS_AGNOSTIC, METHODS, Explainer, ExplainError, Explanation, explain, resize_map
from .regions import DEFAULT_MARGIN, border_area, border_fraction, central_region

__all__ = [
    "CLASS_AGNOSTIC", "DEFAULT_MARGIN", "METHODS", "ExplainError", "Explainer", "Explanation", "border_area",
    "border_fraction", "central_region", "explain", "resize_map",
]
