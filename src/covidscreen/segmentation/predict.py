"""Lung masks in each image's own geometry, from a trained :class:`~covidscreen.segmentation.model.LungSegNet`.

The image is resized (square) to the network's size, optionally histogram-equalised, segmented, and the
probability map is resized back to the image's height and width before thresholding, so the mask lines up with the
pixels it was computed from. Post-processing keeps the (at most two) largest connected regions and fills holes:
stray blobs would otherwise stretch a lung bounding box.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from ..config import PreprocessConfig
from ..data.decode import resize_square
from .checkpoint import load_segmenter
from .model import LungSegNet


def equalize_u8(image: np.ndarray) -> np.ndarray:
    """Global histogram equalisation of a 2-D ``uint8`` image."""
    return cv2.equalizeHist(np.ascontiguousarray(image, dtype=np.uint8))


def network_input(images: list[np.ndarray], size: int, equalize: bool) -> torch.Tensor:
    """``(B, 1, size, size)`` float tensor in [0, 1] from 2-D ``uint8`` images of any sizes."""
    batch = []
    for img in images:
        small = resize_square(np.asarray(img, dtype=np.uint8), size)
        batch.append(equalize_u8(small) if equalize else small)
    return torch.from_numpy(np.stack(batch)).unsqueeze(1).float().div_(255.0)


def clean_mask(mask: np.ndarray, keep: int = 2, min_relative_area: float = 0.1) -> np.ndarray:
    """Keep the ``keep`` largest connected regions (those at least ``min_relative_area`` of the largest), fill holes."""
    labels, n = ndimage.label(mask)
    if n == 0:
        return np.zeros(mask.shape, dtype=bool)
    areas = ndimage.sum_labels(np.ones(mask.shape), labels, index=np.arange(1, n + 1))
    order = np.argsort(areas)[::-1][:keep]
    kept = [i + 1 for i in order if areas[i] >= min_relative_area * areas[order[0]]]
    return ndimage.binary_fill_holes(np.isin(labels, kept))


@torch.inference_mode()
def predict_lung_probs(model: LungSegNet, images: list[np.ndarray], batch_size: int = 32) -> list[np.ndarray]:
    """Lung probability maps, each resized to its image's own height and width (float32 in [0, 1])."""
    model.eval()
    device = next(model.parameters()).device
    out: list[np.ndarray] = []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        x = network_input(chunk, model.image_size, model.equalize).to(device)
        probs = torch.sigmoid(model(x).float())
        for img, p in zip(chunk, probs, strict=True):
            full = F.interpolate(p[None], size=tuple(np.asarray(img).shape[:2]), mode="bilinear", align_corners=False)
            out.append(full[0, 0].cpu().numpy())
    return out


def predict_lung_mask(model: LungSegNet, image: np.ndarray, threshold: float = 0.5, clean: bool = True) -> np.ndarray:
    """Boolean lung mask of one 2-D greyscale image, with the image's shape.

    Args:
        model: a trained :class:`LungSegNet` (e.g. from :func:`~covidscreen.segmentation.checkpoint.load_segmenter`).
        image: 2-D ``uint8`` array (as :func:`~covidscreen.data.decode.read_image` returns).
        threshold: probability above which a pixel is lung.
        clean: keep the two largest regions and fill holes.
    """
    (prob,) = predict_lung_probs(model, [image])
    mask = prob >= threshold
    return clean_mask(mask) if clean else mask


class LungSegmenter:
    """A trained segmenter ready for batches: ``LungSegmenter.load(path)(images) -> masks``.

    Attributes:
        model: the network (eval mode).
        meta: its checkpoint sidecar.
        sha256: sha256 of its weights file (part of every cache key and classification sidecar that uses it).
    """

    def __init__(self, model: LungSegNet, meta: dict, threshold: float = 0.5) -> None:
        self.model = model.eval()
        self.meta = meta
        self.threshold = threshold
        self.sha256: str = meta.get("weights_sha256", "")

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu",
             expected_sha256: str | None = None) -> LungSegmenter:
        """Load a checkpoint folder; ``expected_sha256`` (from a run's sidecar) must match its weights when given."""
        model, meta = load_segmenter(path, device, expected_sha256)
        return cls(model, meta, float(meta.get("threshold", 0.5)))

    def __call__(self, images: list[np.ndarray]) -> list[np.ndarray]:
        return [clean_mask(p >= self.threshold) for p in predict_lung_probs(self.model, images)]


def load_segmenter_for(cfg: PreprocessConfig, base_dir: str | Path | None = None, device: str = "cpu") -> Any:
    """The lung segmenter a config names (None when it needs none), its weights checked against the config's sha256.

    A relative ``segmentation_model`` is resolved against ``base_dir`` (a run folder carries its own copy).
    """
    if not cfg.needs_segmentation:
        return None
    path = Path(cfg.segmentation_model)
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    return LungSegmenter.load(path, device=device, expected_sha256=cfg.segmentation_sha256)
