"""Tests of covidscreen.explain.figures: what a cropping run's model never saw is shown darkened, without colour."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from covidscreen.data.preprocess import InputGeometry
from covidscreen.explain.cam import Explanation
from covidscreen.explain.figures import _for_display, explanation_png, overlay_png


def _explanation(view=None, shape=(600, 800)) -> Explanation:
    heat = np.zeros(shape, np.float32)
    if view is not None:
        heat[view.top:view.bottom, view.left:view.right] = 0.05  # too faint to colour: the X-ray shows through
    image = np.full(shape, 128, np.uint8)
    image[0, 0], image[-1, -1] = 0, 255  # so that the rest shows as mid-grey
    return Explanation(heatmap=heat, input_heatmap=np.zeros((8, 8)), image=image,
                       probs=np.array([0.3, 0.7]), target=1, classes=["covid", "normal"], method="gradcam",
                       border_fraction=0.0, border_area=0.0, view=view)


def _grey(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=float)


def test_what_the_model_never_saw_is_darkened_and_uncoloured():
    view = InputGeometry(600, 800, 150, 450, 200, 600)
    plain, cropped = _grey(overlay_png(_explanation(), margin=None)), _grey(overlay_png(_explanation(view), None))
    h, w = cropped.shape
    corner = (slice(h // 10, h // 5), slice(w // 10, w // 5))  # outside the view, away from the figure edge
    centre = (slice(2 * h // 5, 3 * h // 5), slice(2 * w // 5, 3 * w // 5))
    assert abs(plain[corner].mean() - plain[centre].mean()) < 2  # nothing to tell them apart without a crop
    assert cropped[corner].mean() < cropped[centre].mean() - 30  # outside the view: darkened
    rgb = np.asarray(Image.open(io.BytesIO(overlay_png(_explanation(view), None))).convert("RGB"), dtype=int)
    assert np.ptp(rgb[corner], axis=-1).max() <= 2  # ... and grey, never heatmap-coloured
    assert explanation_png(_explanation(view))[:4] == b"\x89PNG"


def test_the_view_shrinks_with_the_figure():
    e = _for_display(_explanation(InputGeometry(600, 800, 150, 450, 200, 600)), 400)
    assert e.image.shape == e.heatmap.shape == (300, 400)
    assert e.view == InputGeometry(300, 400, 75, 225, 100, 300)
