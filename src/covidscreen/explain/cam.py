"""Class activation maps (Grad-CAM and relatives) of covidscreen models, in the original image's geometry.

The maps come from pytorch-grad-cam; this module adds what the library leaves to the caller:

- the layer to hook is the registry's (``ScreeningModel.gradcam_layer``), so every architecture works alike;
- hooks live only inside a context (:class:`Explainer`), and are released on exit, also after an error;
- nothing outlives a call: activations, the autograd graph and the model's outputs are dropped after every map,
  parameter gradients are never computed (weights are frozen while the context is open), so memory stays flat;
- :meth:`Explainer.explain` feeds a plain square resize (``load_resized``, what predict feeds a run without
  preprocessing), and the map is resized back from that square to the image's own height and width; explanations
  of a trained run (``files.py``, ``summary.py``) apply the run's own preprocessing instead and place maps of
  cropped inputs back into the original image (``inputs.py``);
- several models (an ensemble) give one map: the members' maps (each scaled to [0, 1] by the library) are averaged,
  as are their probabilities.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, ScoreCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from ..data.decode import load_resized, read_image, resize_square
from ..data.preprocess import InputGeometry
from ..errors import CovidscreenError
from ..runtime import to_input
from .regions import DEFAULT_MARGIN, border_area, border_fraction


class ExplainError(CovidscreenError):
    """An explanation was asked for with an unknown method, a class the model lacks, or an unusable image."""


class _QuietScoreCAM(ScoreCAM):
    """Score-CAM, computed channel chunk by channel chunk.

    Same weights as the library's (softmax over channels of the target score of the input masked by each
    normalised, upsampled activation map), without its progress bar and without materialising all masked inputs
    at once (1280 x 224 x 224 floats per image for efficientnet_lite0).
    """

    batch_size = 32

    def get_cam_weights(self, input_tensor, target_layer, targets, activations, grads):  # noqa: D102
        with torch.no_grad():
            acts = torch.from_numpy(activations).to(self.device)
            scores = torch.empty(acts.shape[:2])
            for b, target in enumerate(targets):
                for start in range(0, acts.shape[1], self.batch_size):
                    chunk = acts[b, start:start + self.batch_size, None]  # (k, 1, h, w)
                    up = nn.functional.interpolate(chunk, size=input_tensor.shape[-2:], mode="bilinear",
                                                   align_corners=True)
                    flat = up.flatten(1)
                    lo, hi = flat.min(1)[0][:, None, None, None], flat.max(1)[0][:, None, None, None]
                    masked = input_tensor[b, None] * ((up - lo) / (hi - lo + 1e-8))  # (k, C_in, H, W)
                    out = self.model(masked)
                    scores[b, start:start + len(out)] = torch.stack([target(o) for o in out]).float().cpu()
            return torch.softmax(scores, dim=-1).numpy()


METHODS: dict[str, type] = {
    "gradcam": GradCAM,
    "gradcam++": GradCAMPlusPlus,
    "scorecam": _QuietScoreCAM,
    "eigencam": EigenCAM,
}

#: Methods whose map does not depend on the target class (a sanity check will and should report that).
CLASS_AGNOSTIC = frozenset({"eigencam"})


def check_method(method: str) -> str:
    """Return ``method`` if it is known, else raise :class:`ExplainError` listing the known ones."""
    if method not in METHODS:
        raise ExplainError(f"unknown explanation method {method!r}; choose one of {', '.join(METHODS)}")
    return method


@dataclass
class Explanation:
    """One image's explanation.

    Attributes:
        heatmap: ``(H, W)`` float32 map in [0, 1] in the original image's geometry.
        input_heatmap: the same map at the model's square input size.
        image: the original greyscale ``uint8`` image ``(H, W)``.
        probs: the model's (ensemble-averaged) class probabilities.
        target: index of the explained class.
        classes: class names in index order.
        method: the CAM method.
        border_fraction: share of the map's mass outside the central chest region (or outside the given mask);
            NaN when the map is empty (no positive evidence for the target class).
        border_area: the border fraction of a uniform map (the chance level): the share of the image outside that
            region; for a run that crops its inputs, of a map spread evenly over what the model saw (``view``).
        source: file the image came from, if any.
        checks: sanity-check results of this image, when they were run (see ``sanity.py``; computed on the model
            input and its square map).
        mask: the chest/lung mask that replaced the central box of the border fraction, if one was given.
        view: the box of ``image`` that became the model input (in ``image``'s pixels), when the run crops its
            inputs; ``heatmap`` is 0 outside it. None: the model saw the whole image.
    """

    heatmap: np.ndarray
    input_heatmap: np.ndarray
    image: np.ndarray
    probs: np.ndarray
    target: int
    classes: list[str]
    method: str
    border_fraction: float
    border_area: float
    source: str | None = None
    checks: dict = field(default_factory=dict)
    mask: np.ndarray | None = None
    view: InputGeometry | None = None

    @property
    def target_name(self) -> str:
        return self.classes[self.target]

    @property
    def predicted(self) -> str:
        """The class of highest probability (not the run's thresholded decision)."""
        return self.classes[int(np.argmax(self.probs))]


def resize_map(heatmap: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize a float map to ``shape`` = (height, width) bilinearly: undoes the plain square resize of the input."""
    heatmap = np.asarray(heatmap, dtype=np.float32)
    if heatmap.shape == tuple(shape):
        return heatmap
    out = Image.fromarray(heatmap, mode="F").resize((shape[1], shape[0]), Image.Resampling.BILINEAR)
    return np.clip(np.asarray(out, dtype=np.float32), 0.0, 1.0)


def _tensor(images: np.ndarray) -> torch.Tensor:
    # a copy: decoded images may be read-only views (PIL buffers, memory maps), which torch warns about
    return torch.from_numpy(np.array(images, dtype=np.uint8, copy=True))


def _as_models(model: nn.Module | Sequence[nn.Module]) -> list[nn.Module]:
    models = list(model) if isinstance(model, list | tuple) else [model]
    if not models:
        raise ExplainError("no model to explain: give a model or a non-empty list of models (an ensemble)")
    return models


def _target_layer(model: nn.Module) -> nn.Module:
    try:
        return model.gradcam_layer
    except AttributeError as exc:  # no such property, or a registry path that is not in the module
        raise ExplainError(f"{type(model).__name__} has no usable gradcam_layer ({exc}); explain covidscreen "
                           "ScreeningModels, whose registry entry names the layer") from None


class Explainer:
    """Grad-CAM-family maps of one model or an ensemble; a context manager that owns the hooks.

    Example::

        with Explainer(model, classes=["covid", "normal", "pneumonia"], image_size=224) as ex:
            e = ex.explain("xray.png", target="covid")
        e.heatmap  # (H, W) in the file's own geometry

    Args:
        model: a :class:`~covidscreen.models.ScreeningModel` (anything with a ``gradcam_layer``), or a list of them
            (an ensemble: their maps and probabilities are averaged). All must have the same classes.
        method: ``gradcam``, ``gradcam++``, ``scorecam`` or ``eigencam``.
        classes: class names in index order (default: ``"0"``, ``"1"``, ...).
        image_size: square input side (default: the first model's registry input size).
    """

    def __init__(self, model: nn.Module | Sequence[nn.Module], method: str = "gradcam",
                 classes: Sequence[str] | None = None, image_size: int | None = None) -> None:
        self.models = _as_models(model)
        self.method = check_method(method)
        self.layers = [_target_layer(m) for m in self.models]
        counts = {getattr(m, "num_classes", None) for m in self.models}
        if len(counts) != 1:
            raise ExplainError(f"ensemble members disagree on the number of classes ({sorted(map(str, counts))})")
        n = counts.pop()
        self.classes = list(classes) if classes is not None else [str(i) for i in range(n or 0)]
        if n is not None and len(self.classes) != n:
            raise ExplainError(f"{len(self.classes)} class names given for a model with {n} outputs")
        spec = getattr(self.models[0], "spec", None)
        self.image_size = int(image_size or getattr(spec, "input_size", 224))
        self.device = next(self.models[0].parameters()).device
        self.batch_size = 16  # images per forward/backward pass (bounds memory on large batches)
        # cells of the hooked layer's map (height, width) seen in the last call: the heatmap's true resolution
        self.map_resolution: tuple[int, int] | None = None
        self._cams: list = []
        self._saved: list[tuple[bool, list[bool]]] = []

    # -- context ---------------------------------------------------------------------------------------------------
    def __enter__(self) -> Explainer:
        self.open()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.close()
        return False  # never swallow errors (pytorch-grad-cam's own __exit__ swallows IndexError)

    def open(self) -> None:
        """Register the hooks. Weights are frozen meanwhile: only activations need gradients, never parameters."""
        if self._cams:
            return
        try:
            for m, layer in zip(self.models, self.layers, strict=True):
                params = list(m.parameters())
                self._saved.append((m.training, [p.requires_grad for p in params]))
                for p in params:
                    p.requires_grad_(False)
                self._cams.append(METHODS[self.method](model=m, target_layers=[layer]))  # puts m in eval mode
        except Exception:
            self.close()
            raise

    def close(self) -> None:
        """Remove every hook and restore the models' training mode and ``requires_grad`` flags."""
        for cam in self._cams:
            cam.activations_and_grads.release()
            cam.outputs = None
        self._cams.clear()
        for m, (training, flags) in zip(self.models, self._saved, strict=False):  # shorter if open() failed midway
            for p, flag in zip(m.parameters(), flags, strict=True):
                p.requires_grad_(flag)
            m.train(training)
        self._saved.clear()

    # -- maps ------------------------------------------------------------------------------------------------------
    def resolve_target(self, target: int | str | None) -> int | None:
        """A class name or index to an index; ``None`` stays ``None`` (the predicted class)."""
        if target is None:
            return None
        if isinstance(target, str | np.str_):
            if target in self.classes:
                return self.classes.index(target)
            if target.isdigit() and int(target) < len(self.classes):
                return int(target)
            raise ExplainError(f"class {target!r} is not a class of this model; classes: {', '.join(self.classes)}")
        if isinstance(target, int | np.integer) and 0 <= int(target) < len(self.classes):
            return int(target)
        raise ExplainError(f"class index {target!r} is out of range; this model has {len(self.classes)} classes "
                           f"({', '.join(self.classes)})")

    @torch.no_grad()
    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Ensemble-averaged class probabilities of a ``(B, S, S)`` uint8 batch."""
        x = to_input(_tensor(images), self.device)
        return np.mean([torch.softmax(m(x).float(), 1).cpu().numpy() for m in self.models], axis=0)

    def maps(self, images: np.ndarray, targets: Sequence[int | str | None] | int | str | None = None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Maps of a batch of model-sized images.

        Args:
            images: ``(B, S, S)`` uint8 (already resized to the input size); ``(B, C, S, S)`` for runs that read
                several CT windows as channels.
            targets: one class (name or index) for all, one per image, or None for each image's predicted class.

        Returns:
            ``(maps (B, S, S) float32 in [0, 1], probs (B, C), targets (B,) int)``.
        """
        if not self._cams:
            raise RuntimeError("Explainer.maps() needs an open explainer: use 'with Explainer(...) as ex:'")
        images = np.asarray(images)
        if images.ndim not in (3, 4) or images.dtype != np.uint8 or len(images) == 0:
            raise ExplainError(f"expected a non-empty (batch, [channels,] size, size) uint8 array, got {images.dtype} "
                               f"{images.shape}")
        b = len(images)
        if targets is None or isinstance(targets, str | int | np.integer):
            targets = [targets] * b
        idx = [self.resolve_target(t) for t in targets]
        if len(idx) != b:
            raise ExplainError(f"{len(idx)} targets given for {b} images")
        probs = None
        if any(t is None for t in idx):
            probs = self.probabilities(images)
            idx = [int(np.argmax(p)) if t is None else t for t, p in zip(idx, probs, strict=True)]
        maps, member_probs = [], []
        for start in range(0, b, self.batch_size):
            chunk = slice(start, start + self.batch_size)
            m, p = self._chunk_maps(images[chunk], idx[chunk])
            maps.append(m)
            member_probs.append(p)
        out = np.concatenate(maps).astype(np.float32)
        if not np.isfinite(out).all():
            raise ExplainError("the heatmap is not finite (the model produced NaN/inf gradients or activations)")
        if probs is None:
            probs = np.concatenate(member_probs)
        return out, probs.astype(np.float64), np.asarray(idx, dtype=int)

    def _chunk_maps(self, images: np.ndarray, idx: list[int]) -> tuple[np.ndarray, np.ndarray]:
        wanted = [ClassifierOutputTarget(t) for t in idx]
        maps, member_probs = [], []
        # Grad-CAM needs autograd even when the caller runs under no_grad / inference_mode.
        with torch.inference_mode(False), torch.enable_grad():
            for cam in self._cams:
                x = to_input(_tensor(images), self.device).requires_grad_(True)
                try:
                    maps.append(cam(input_tensor=x, targets=wanted))
                    member_probs.append(torch.softmax(cam.outputs.detach().float(), 1).cpu().numpy())
                    acts = cam.activations_and_grads.activations
                    if acts:
                        self.map_resolution = tuple(int(v) for v in acts[0].shape[-2:])
                finally:
                    # drop activations, gradients and the retained graph now, not at the next call
                    cam.activations_and_grads.clear()
                    cam.outputs = None
                    del x
        return np.mean(maps, axis=0), np.mean(member_probs, axis=0)

    def load(self, image: str | Path | np.ndarray) -> tuple[np.ndarray, np.ndarray, str | None]:
        """``(original (H, W) uint8, model input (S, S) uint8, source)`` of a file or a greyscale array."""
        if isinstance(image, str | Path):
            # the input is decoded exactly as predict decodes it, so the probabilities shown match predict's
            return read_image(image), load_resized(image, self.image_size), str(image)
        arr = np.asarray(image)
        if arr.ndim == 3 and arr.shape[-1] in (3, 4) and arr.dtype == np.uint8:
            arr = np.asarray(Image.fromarray(arr[..., :3]).convert("L"))
        if arr.ndim != 2 or arr.dtype != np.uint8 or min(arr.shape) < 8:
            raise ExplainError(f"image array of dtype {arr.dtype} and shape {arr.shape} is not usable; give a file "
                               "path (PNG, JPEG, DICOM) or a 2-D uint8 greyscale array of at least 8x8 pixels")
        return arr, resize_square(arr, self.image_size), None

    def explain(self, image: str | Path | np.ndarray, target: int | str | None = None,
                mask: np.ndarray | None = None, margin: float = DEFAULT_MARGIN) -> Explanation:
        """Explain one image (file or 2-D uint8 array in its own geometry).

        Args:
            image: a PNG/JPEG/DICOM path or a greyscale array.
            target: class name or index to explain; None: the predicted class.
            mask: optional chest/lung mask (any size, resized to the image) replacing the central box of the
                border-fraction score; True where the map *should* be.
            margin: width of the border band as a fraction of each side (when no mask is given).
        """
        original, resized, source = self.load(image)
        maps, probs, idx = self.maps(resized[None], target)
        heat = resize_map(maps[0], original.shape)
        return Explanation(
            heatmap=heat, input_heatmap=maps[0], image=original, probs=probs[0], target=int(idx[0]),
            classes=self.classes, method=self.method, border_fraction=border_fraction(heat, mask, margin),
            border_area=border_area(heat.shape, mask, margin), source=source, mask=mask,
        )


def explain(model: nn.Module | Sequence[nn.Module], image: str | Path | np.ndarray, target: int | str | None = None,
            method: str = "gradcam", classes: Sequence[str] | None = None,
            image_size: int | None = None) -> np.ndarray:
    """The heatmap of one image, in the image's own geometry: ``(H, W)`` float32 in [0, 1].

    Hooks are registered and released within the call. For many images, open one :class:`Explainer` instead.

    Args:
        model: a ScreeningModel or a list of them (ensemble: maps are averaged).
        image: a PNG/JPEG/DICOM path or a 2-D uint8 greyscale array.
        target: class name (needs ``classes``) or index; None explains the predicted class.
        method: ``gradcam``, ``gradcam++``, ``scorecam`` or ``eigencam``.
        classes: class names in index order.
        image_size: the model's square input side (default: the registry's input size; use the run's size).

    Raises:
        ExplainError: unknown method or class, or an unusable array.
        ImageDecodeError: the file cannot be read.
    """
    with Explainer(model, method=method, classes=classes, image_size=image_size) as ex:
        return ex.explain(image, target=target).heatmap
