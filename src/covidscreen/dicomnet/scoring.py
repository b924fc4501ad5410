"""Scoring DICOM images held in memory with a run: the run's :class:`Predictor` and its Grad-CAM figure.

The probabilities are the Predictor's (temperature and operating point included), computed on exactly the input that
``covidscreen predict`` would feed the model for the same file (same decode, same preprocessing), so the node and
``predict`` agree. The figure is the one ``covidscreen explain --class <positive class>`` draws (same preprocessing,
the map placed back where the model's input came from, same PNG), with the Predictor's probabilities in its bars.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..auditlog import code_version
from ..data.preprocess import InputGeometry, preprocess_with_geometry
from ..errors import ConfigError
from ..explain.cam import Explainer, Explanation
from ..explain.figures import explanation_png
from ..explain.inputs import chance_level, map_to_image
from ..explain.regions import DEFAULT_MARGIN, border_fraction
from ..inference.run import DEFAULT_POINT
from ..inference.site_figures import PointSiteSummary, point_site_summary
from ..workflows.predict import open_predictor

#: Modalities the models are trained for (plain chest radiographs).
RADIOGRAPH_MODALITIES = ("CR", "DX")


@dataclass(frozen=True)
class PointInfo:
    """The operating point a decision was made at, with what it achieved on the run's validation split."""

    name: str
    threshold: float | None
    sensitivity: float | None
    specificity: float | None
    sites: PointSiteSummary | None = None  # per validation site, and its weakest site (inference/site_figures.py)


@dataclass
class Score:
    """One image's result.

    Attributes:
        probabilities: class name -> probability (the Predictor's).
        decision: the class decided at ``point``.
        positive_class: the run's positive class (``covid``), None for a run without one.
        point: the operating point and its validation sensitivity/specificity.
        figure_png: the Grad-CAM figure (None when heatmaps are off).
        warnings: image-quality warnings, ``"<code>: <message>"``.
        seconds: time spent scoring this image (its share of the batch).
        heatmap: the Grad-CAM map in the input image's own pixel grid (rows x columns, values 0-1; None when heatmaps
            are off): what the Parametric Map carries.
    """

    probabilities: dict[str, float]
    decision: str
    positive_class: str | None
    point: PointInfo
    figure_png: bytes | None = None
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    ood_score: float | None = None  # out-of-distribution score (None: the run has no OOD model)
    in_distribution: bool | None = None  # False: unlike the images the model was validated on
    heatmap: np.ndarray | None = None

    @property
    def positive_probability(self) -> float | None:
        return self.probabilities.get(self.positive_class) if self.positive_class else None


def dataset_warnings(ds, image_shape: tuple[int, int] | None = None) -> list[str]:
    """What makes a received image unlike what the model was trained on (it is scored all the same)."""
    out = []
    modality = str(getattr(ds, "Modality", "") or "").upper()
    if modality and modality not in RADIOGRAPH_MODALITIES:
        out.append(f"modality: DICOM Modality is {modality}; the model was trained on CR/DX chest radiographs")
    view = str(getattr(ds, "ViewPosition", "") or "").upper()
    if view in ("LL", "RL", "LAT", "LATERAL"):
        out.append(f"view: ViewPosition is {view} (lateral); the model was trained on frontal (PA/AP) views")
    if image_shape is not None and min(image_shape) < 256:
        out.append(f"small_image: the image is only {image_shape[1]} x {image_shape[0]} pixels")
    return out


def _finite(value) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


class DicomScorer:
    """A run ready to score decoded images: ``DicomScorer(run_dir).score([image], ["title"])``.

    Args:
        run_dir: a run or ensemble folder.
        operating_point: the decision's operating point (``default``: the run's default point).
        device: ``auto``, ``cpu``, ``cuda``.
        backend: ``torch``, ``onnx`` or ``auto`` (probabilities); heatmaps always use the PyTorch model.
        heatmap: draw the Grad-CAM figure of the positive class.
        method: the CAM method (``gradcam``, ``gradcam++``, ``scorecam``, ``eigencam``).
    """

    def __init__(self, run_dir: str | Path, operating_point: str = "default", device: str = "auto",
                 backend: str = "torch", heatmap: bool = True, method: str = "gradcam",
                 margin: float = DEFAULT_MARGIN) -> None:
        # the engine as predict and serve choose it (workflows/predict.py)
        self.predictor = open_predictor(run_dir, backend, device, operating_point)
        self.ood = self.predictor.ood  # every result says whether its image is unlike the training images
        run = self.run = self.predictor.run
        if run.modality != "cxr":  # the node receives radiographs (CR/DX); it must not score them with a CT model
            raise ConfigError(f"{run.path} reads {run.modality} images, but the DICOM node receives chest radiographs "
                              "(CR/DX); give it a chest X-ray run, and score CT series with covidscreen predict-series")
        self.classes = list(run.classes)
        self.positive_class = run.positive_class if run.positive_class in self.classes else None
        self.heatmap = heatmap
        self.method = method
        self.margin = margin
        self.point = self._point_info(operating_point)
        self.model_id = run.model_id  # the project's one model id (folder@weights digest), as the service logs it
        sha = run.weights_sha256
        if not sha:  # an ensemble: its manifest names (and pins) the members' weights
            sha = run.record_sha256()
        self.weights_sha256 = str(sha)
        self.code_version = code_version()
        seg = self.predictor.segmenter
        self._mask_fn = (lambda image: seg([image])[0]) if seg is not None else None
        self._explainer = Explainer(self.predictor.model, method=method, classes=self.classes,
                                    image_size=self.predictor.size) if heatmap else None

    def _point_info(self, name: str) -> PointInfo:
        run = self.run
        point = run.point(name)
        shown = run.default_point if name == DEFAULT_POINT else name  # the point "default" stands for
        figures = run.operating_points.get(shown, point)
        if point is None:
            return PointInfo(shown, None, None, None)
        return PointInfo(shown, _finite(point.threshold), _finite(figures.sensitivity), _finite(figures.specificity),
                         point_site_summary(run, name))

    def score(self, images: Sequence[np.ndarray], titles: Sequence[str] | None = None,
              warnings: Sequence[list[str]] | None = None, figures: bool | None = None) -> list[Score]:
        """Score decoded images (2-D ``uint8``, as :func:`~covidscreen.data.decode.decode_dicom_dataset` gives).

        Args:
            images: the decoded images.
            titles: first line of each figure (never a patient identifier: it is burnt into pixels).
            warnings: image-quality warnings per image, carried into the results.
            figures: draw the Grad-CAM figures now (default: when the scorer makes heatmaps); the node draws them
                later with :meth:`add_figures`, so that the SR does not wait for them.
        """
        if not images:
            return []
        start = time.perf_counter()
        p = self.predictor
        prepared = [preprocess_with_geometry(img, p.size, p.preprocess, p.segmenter) for img in images]
        batch = np.stack([x for x, _ in prepared])
        probs, ood_scores = p.score_arrays(batch)
        decisions = p.decide(probs)
        pngs: list[bytes | None] = [None] * len(images)
        heats: list[np.ndarray | None] = [None] * len(images)
        if self._explainer is not None and figures is not False:
            pngs, heats = self._figures(images, prepared, batch, probs, titles)
        per_image = (time.perf_counter() - start) / len(images)
        inside = p.in_distribution(ood_scores) if ood_scores is not None else None
        return [Score({c: float(v) for c, v in zip(self.classes, pr, strict=True)}, d, self.positive_class,
                      self.point, png, list(warnings[i]) if warnings else [], per_image,
                      None if ood_scores is None else float(ood_scores[i]),
                      None if inside is None else bool(inside[i]), heat)
                for i, (pr, d, png, heat) in enumerate(zip(probs, decisions, pngs, heats, strict=True))]

    def add_figures(self, images: Sequence[np.ndarray], scores: Sequence[Score],
                    titles: Sequence[str] | None = None) -> None:
        """Draw the Grad-CAM figure of each (already scored) image into its score's ``figure_png``.

        Raises:
            ValueError: the scorer was made with ``heatmap=False``.
        """
        if self._explainer is None:
            raise ValueError("this scorer makes no heatmaps (heatmap=False)")
        if not images:
            return
        start = time.perf_counter()
        p = self.predictor
        prepared = [preprocess_with_geometry(img, p.size, p.preprocess, p.segmenter) for img in images]
        batch = np.stack([x for x, _ in prepared])
        probs = np.array([[sc.probabilities[c] for c in self.classes] for sc in scores])
        pngs, heats = self._figures(images, prepared, batch, probs, titles)
        for sc, png, heat in zip(scores, pngs, heats, strict=True):
            sc.figure_png, sc.heatmap = png, heat
            sc.seconds += (time.perf_counter() - start) / len(images)

    def _figures(self, images: Sequence[np.ndarray], prepared: list[tuple[np.ndarray, InputGeometry]],
                 batch: np.ndarray, probs: np.ndarray, titles: Sequence[str] | None
                 ) -> tuple[list[bytes], list[np.ndarray]]:
        target = self.positive_class  # explain the COVID evidence, as `covidscreen explain --class covid`
        with self._explainer as ex:
            maps, _, idx = ex.maps(batch, target)
        out, heats = [], []
        for i, (image, (_, geometry)) in enumerate(zip(images, prepared, strict=True)):
            view = geometry.scaled_to(*image.shape)
            heat = map_to_image(maps[i], view, image.shape)
            heats.append(heat)
            mask = self._mask_fn(image) if self._mask_fn is not None else None
            title = titles[i] if titles else "DICOM image"
            e = Explanation(heatmap=heat, input_heatmap=maps[i], image=image, probs=probs[i], target=int(idx[i]),
                            classes=self.classes, method=self.method,
                            border_fraction=border_fraction(heat, mask, self.margin),
                            border_area=chance_level(heat.shape, view, mask, self.margin), source=title, mask=mask,
                            view=view if view.crops else None)
            out.append(explanation_png(e, self.margin, title=title))
        return out, heats
