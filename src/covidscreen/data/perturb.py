"""Controlled acquisition changes of a model input (a square uint8 greyscale image), for robustness evaluation.

Each perturbation takes an image and a strength, returns a new image of the same shape and dtype, and is the
identity at strength 0. Geometric changes fill uncovered pixels with black (0), as a detector border would be;
pixel arithmetic is done in float and rounded back to uint8. Nguon et al. (2021) tested a classifier at varied image
sizes and positions; the other changes are the usual differences between X-ray acquisitions.

====================  ==========================================================  ==========================
name                  strength                                                    default strengths
====================  ==========================================================  ==========================
scale                 shrink factor: content scaled to (1 - s), centred           0 .. 0.4
translation           shift right and down by s pixels (integer)                  0 .. 16 px at 224 px
rotation              degrees, counter-clockwise, about the centre                0 .. 20
crop                  fraction removed from every side, the rest resized back     0 .. 0.2
brightness            added to every pixel, as a fraction of 255                  0 .. 0.3
contrast              (x - mean) * (1 + s) + mean                                 0 .. 0.6
jpeg                  100 - JPEG quality (s = 0: no compression)                  0 .. 90
noise                 Gaussian noise, sd as a fraction of 255 (seeded)            0 .. 0.1
====================  ==========================================================  ==========================
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image

from ..errors import ConfigError


def _check(img: np.ndarray) -> np.ndarray:
    if img.ndim != 2 or img.dtype != np.uint8:
        raise ConfigError(f"perturbations take a 2-d uint8 image, got shape {img.shape} and dtype {img.dtype}")
    return img


def _to_u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def scale(img: np.ndarray, s: float, seed: int = 0) -> np.ndarray:
    img = _check(img)
    if s == 0:
        return img.copy()
    h, w = img.shape
    nh, nw = max(1, round(h * (1 - s))), max(1, round(w * (1 - s)))
    small = np.asarray(Image.fromarray(img).resize((nw, nh), Image.Resampling.BILINEAR))
    out = np.zeros_like(img)
    top, left = (h - nh) // 2, (w - nw) // 2
    out[top:top + nh, left:left + nw] = small
    return out


def translation(img: np.ndarray, s: float, seed: int = 0) -> np.ndarray:
    img = _check(img)
    k = int(round(s))
    out = np.zeros_like(img)
    if k == 0:
        return img.copy()
    if k >= min(img.shape):
        return out
    out[k:, k:] = img[:-k, :-k]
    return out


def rotation(img: np.ndarray, s: float, seed: int = 0) -> np.ndarray:
    img = _check(img)
    if s == 0:
        return img.copy()
    return np.asarray(Image.fromarray(img).rotate(s, resample=Image.Resampling.BILINEAR, fillcolor=0))


def crop(img: np.ndarray, s: float, seed: int = 0) -> np.ndarray:
    img = _check(img)
    if s == 0:
        return img.copy()
    h, w = img.shape
    dy, dx = int(round(h * s)), int(round(w * s))
    inner = img[dy:h - dy, dx:w - dx]
    return np.asarray(Image.fromarray(inner).resize((w, h), Image.Resampling.BILINEAR))


def brightness(img: np.ndarray, s: float, seed: int = 0) -> np.ndarray:
    return _to_u8(_check(img).astype(np.float64) + s * 255)


def contrast(img: np.ndarray, s: float, seed: int = 0) -> np.ndarray:
    x = _check(img).astype(np.float64)
    return _to_u8((x - x.mean()) * (1 + s) + x.mean()) if s else img.copy()


def jpeg(img: np.ndarray, s: float, seed: int = 0) -> np.ndarray:
    img = _check(img)
    if s == 0:
        return img.copy()
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=int(max(1, min(100, round(100 - s)))))
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("L"))


def noise(img: np.ndarray, s: float, seed: int = 0) -> np.ndarray:
    img = _check(img)
    if s == 0:
        return img.copy()
    rng = np.random.default_rng(seed)
    return _to_u8(img.astype(np.float64) + rng.normal(0, s * 255, img.shape))


Perturbation = Callable[[np.ndarray, float, int], np.ndarray]

#: name -> (function, default strengths; translation in pixels at 224 px, scaled with the input size)
PERTURBATIONS: dict[str, tuple[Perturbation, tuple[float, ...]]] = {
    "scale": (scale, (0, 0.1, 0.2, 0.3, 0.4)),
    "translation": (translation, (0, 4, 8, 12, 16)),
    "rotation": (rotation, (0, 5, 10, 15, 20)),
    "crop": (crop, (0, 0.05, 0.1, 0.15, 0.2)),
    "brightness": (brightness, (0, 0.075, 0.15, 0.225, 0.3)),
    "contrast": (contrast, (0, 0.15, 0.3, 0.45, 0.6)),
    "jpeg": (jpeg, (0, 30, 60, 80, 90)),
    "noise": (noise, (0, 0.025, 0.05, 0.075, 0.1)),
}


def strengths_for(name: str, image_size: int) -> tuple[float, ...]:
    """Default strengths of perturbation ``name`` for inputs of ``image_size`` pixels."""
    fn, values = PERTURBATIONS[name]
    if name == "translation":  # the same share of the image at every input size
        return tuple(float(round(v * image_size / 224)) for v in values)
    return values


def perturb_batch(images: np.ndarray, name: str, strength: float, seed: int = 0) -> np.ndarray:
    """Apply perturbation ``name`` to every image of a ``(B, H, W)`` uint8 batch (image ``i`` seeded ``seed + i``)."""
    if name not in PERTURBATIONS:
        raise ConfigError(f"perturbation {name!r} is not known; use one of {', '.join(PERTURBATIONS)}")
    fn = PERTURBATIONS[name][0]
    return np.stack([fn(im, strength, seed + i) for i, im in enumerate(images)]) if len(images) else images.copy()
