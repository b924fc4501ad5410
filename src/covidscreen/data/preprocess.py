"""Classification preprocessing beyond decode-and-resize: lung region of interest, intensity normalisation, borders.

One function, :func:`preprocess_image`, turns a decoded greyscale image (and, for the lung options, its predicted
lung mask) into the square ``uint8`` input of a classifier. The training cache (``data/cache.py``), prediction
(``inference/predictor.py``) and evaluation all go through :func:`load_preprocessed` / :func:`iter_preprocessed`,
which call it, so an image is prepared identically wherever it is used. The settings travel in the run's sidecar
(``preprocessing``), so ``predict`` applies them by itself.

Order of operations, and why:

1. ``border_crop``: cut a fraction of the height/width from every side (burnt-in labels, rulers and collimation
   borders sit at the edges and differ by hospital).
2. lung mask: predicted by the lung segmenter on the border-cropped image, in its geometry.
3. ``roi``: ``lungs-crop`` crops to the lung bounding box plus ``roi_margin`` of its size on every side;
   ``lungs-mask`` sets everything outside the (slightly dilated) lungs to 0; ``lungs-crop-mask`` does both.
   When the segmenter finds no plausible lungs (less than ``MIN_LUNG_FRACTION`` of the image) the whole image is
   kept, unmasked, and the fallback is counted.
4. resize to the model's square input.
5. ``intensity``: ``clahe`` (contrast-limited adaptive histogram equalisation), ``histeq`` (global histogram
   equalisation) or ``standardize`` (zero mean, unit variance mapped to ``128 + 42.5 z``), computed at the final
   size so that an image's source resolution does not change the result; with a lung mask, statistics come from
   the lung pixels only.

With every option off, the result is bit-identical to :func:`covidscreen.data.decode.load_resized`.

CT runs with ``ct_channels: lung+mediastinal`` read DICOM CT slices through several HU windows
(:func:`~covidscreen.data.decode.read_ct_channels`): every channel goes through the same steps, with the same
crop, and the model input is ``(C, size, size)`` instead of ``(size, size)``. Files without Hounsfield units
(PNG, JPEG, non-CT DICOM) are refused with an :class:`~covidscreen.errors.ImageDecodeError`.

Steps 1 and 3 crop. :func:`load_preprocessed_with_geometry` also reports where the model input came from (an
:class:`InputGeometry`: the box of the decoded image that was resized to the square), so that explanations can put a
heatmap of the model input back where it belongs in the original image.
"""

from __future__ import annotations

import hashlib
import os
import signal
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from scipy import ndimage
from tqdm.auto import tqdm

from ..config import INTENSITY_CHOICES, PreprocessConfig
from ..errors import ConfigError, ImageDecodeError
from .decode import read_ct_channels, read_image, resize_square

MIN_LUNG_FRACTION = 0.05  # smaller predicted lungs are not believed (not a chest X-ray, or a failed segmentation)
MASK_DILATION = 0.02  # the lung mask is grown by this fraction of the side: borders of the lungs carry findings too
CLAHE_CLIP, CLAHE_TILES = 2.0, 8


Box = tuple[int, int, int, int]  # (top, bottom, left, right), end-exclusive, in pixels


@dataclass(frozen=True)
class InputGeometry:
    """Where a model input came from: the box of a decoded image that was resized to the model's square input.

    Everything outside the box was cut away (border crop, lung crop) and never reached the model. For a run that
    does not crop, the box is the whole image.

    Attributes:
        height: height of the decoded image the box refers to (before any crop).
        width: its width.
        top: first row of the box.
        bottom: row after the box's last (end-exclusive).
        left: first column of the box.
        right: column after the box's last (end-exclusive).
    """

    height: int
    width: int
    top: int
    bottom: int
    left: int
    right: int

    @classmethod
    def whole(cls, shape: tuple[int, ...]) -> InputGeometry:
        """The geometry of an input made of the whole image (no crop)."""
        h, w = int(shape[0]), int(shape[1])
        return cls(h, w, 0, h, 0, w)

    @property
    def box(self) -> Box:
        return self.top, self.bottom, self.left, self.right

    @property
    def crops(self) -> bool:
        """True when part of the image was cut away before the model saw it."""
        return self.box != (0, self.height, 0, self.width)

    def scaled_to(self, height: int, width: int) -> InputGeometry:
        """The same box in another decode of the same image, of ``height`` x ``width`` pixels.

        JPEGs are decoded for preprocessing at a reduced (draft) scale; the full-resolution decode of the same file
        (what figures are drawn on) differs only by that scale, so box edges scale with the image's sides.
        """
        if (height, width) == (self.height, self.width):
            return self
        sy, sx = height / self.height, width / self.width
        top, left = min(int(round(self.top * sy)), height - 1), min(int(round(self.left * sx)), width - 1)
        bottom, right = int(round(self.bottom * sy)), int(round(self.right * sx))
        # a box is never empty: the model saw at least one pixel
        return InputGeometry(int(height), int(width), top, max(top + 1, min(bottom, height)), left,
                             max(left + 1, min(right, width)))


def ignore_sigint() -> None:
    """In decoding workers: Ctrl-C is the parent's to handle (it stops the pool), so that the user sees one
    message instead of a traceback from every worker."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def border_box(shape: tuple[int, ...], fraction: float) -> Box:
    """The box :func:`crop_border` keeps of an image of ``shape``."""
    h, w = int(shape[0]), int(shape[1])
    if fraction <= 0:
        return 0, h, 0, w
    dy, dx = int(round(h * fraction)), int(round(w * fraction))
    return dy, h - dy, dx, w - dx


def crop_border(image: np.ndarray, fraction: float) -> np.ndarray:
    """``image`` without ``fraction`` of its height and width on every side."""
    if fraction <= 0:
        return image
    top, bottom, left, right = border_box(image.shape, fraction)
    return image[top:bottom, left:right]


def lung_bbox(mask: np.ndarray, margin: float) -> tuple[int, int, int, int] | None:
    """``(top, bottom, left, right)`` (end-exclusive) of the mask's bounding box grown by ``margin`` of its size.

    Returns None when the mask covers less than :data:`MIN_LUNG_FRACTION` of the image.
    """
    if mask.mean() < MIN_LUNG_FRACTION:
        return None
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    my, mx = margin * (bottom - top), margin * (right - left)
    h, w = mask.shape
    return (max(0, int(np.floor(top - my))), min(h, int(np.ceil(bottom + my))),
            max(0, int(np.floor(left - mx))), min(w, int(np.ceil(right + mx))))


def _resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    return resize_square(mask.astype(np.uint8) * 255, size) >= 128


def normalise_intensity(image: np.ndarray, method: str, region: np.ndarray | None = None) -> np.ndarray:
    """Intensity normalisation of a 2-D ``uint8`` image; ``region`` (bool) limits the statistics to those pixels."""
    if method == "none":
        return image
    if region is not None and region.sum() < 16:
        region = None
    if method == "clahe":
        clahe = cv2.createCLAHE(clipLimit=CLAHE_CLIP, tileGridSize=(CLAHE_TILES, CLAHE_TILES))
        return clahe.apply(np.ascontiguousarray(image))
    if method == "histeq":
        if region is None:
            return cv2.equalizeHist(np.ascontiguousarray(image))
        hist = np.bincount(image[region], minlength=256).astype(np.float64)
        cdf = np.cumsum(hist) / hist.sum()
        return np.round(cdf[image] * 255).astype(np.uint8)
    if method == "standardize":
        vals = image[region] if region is not None else image
        mean, std = float(vals.mean()), float(vals.std())
        z = (image.astype(np.float32) - mean) / max(std, 1.0)
        return np.clip(np.round(128 + 42.5 * z), 0, 255).astype(np.uint8)
    raise ConfigError(f"intensity {method!r} is not known; use one of {', '.join(INTENSITY_CHOICES)}")


def preprocess_image(image: np.ndarray, size: int, cfg: PreprocessConfig,
                     lung_mask: np.ndarray | None = None, stats: dict[str, int] | None = None) -> np.ndarray:
    """The classifier input of one decoded image: border crop, lung ROI, resize, intensity (see the module doc).

    Args:
        image: 2-D ``uint8`` image (as decoded).
        size: square output side.
        cfg: the settings.
        lung_mask: boolean lung mask in the geometry of ``crop_border(image, cfg.border_crop)``; required when
            ``cfg.roi`` is not ``none``.
        stats: when given, ``stats["roi_fallback"]`` counts images whose lungs were not found (whole image kept).

    Returns:
        ``(size, size)`` ``uint8`` array.
    """
    return preprocess_image_and_box(image, size, cfg, lung_mask, stats)[0]


def preprocess_image_and_box(image: np.ndarray, size: int, cfg: PreprocessConfig,
                             lung_mask: np.ndarray | None = None,
                             stats: dict[str, int] | None = None) -> tuple[np.ndarray, Box]:
    """:func:`preprocess_image`, and the box of ``image`` that became the output (``(top, bottom, left, right)``,
    end-exclusive, in ``image``'s pixels: the border crop, then the lung box within it)."""
    top, bottom, left, right = border_box(image.shape, cfg.border_crop)
    img = crop_border(image, cfg.border_crop)
    mask = None
    if cfg.needs_segmentation:
        if lung_mask is None or lung_mask.shape != img.shape:
            raise ValueError(f"roi {cfg.roi} needs a lung mask of shape {img.shape}, got "
                             f"{None if lung_mask is None else lung_mask.shape}")
        box = lung_bbox(lung_mask, cfg.roi_margin)
        if box is None:
            if stats is not None:
                stats["roi_fallback"] = stats.get("roi_fallback", 0) + 1
        else:
            mask = lung_mask
            if cfg.crops:
                t, b, lo, r = box
                img, mask = img[t:b, lo:r], mask[t:b, lo:r]
                top, bottom, left, right = top + t, top + b, left + lo, left + r
    out = resize_square(img, size)
    region = None
    if mask is not None and cfg.masks:
        region = _resize_mask(mask, size)
        grow = int(np.ceil(MASK_DILATION * size))
        if grow:
            region = ndimage.binary_dilation(region, iterations=grow)
    out = normalise_intensity(out, cfg.intensity, region)
    if region is not None:
        out = np.where(region, out, 0).astype(np.uint8)
    return out, (top, bottom, left, right)


def _draft_size(size: int, cfg: PreprocessConfig) -> int:
    # a lung crop keeps roughly the central 60-80% of the width: decode larger so the crop still has >= size pixels
    return size * 2 if cfg.crops else size


def decode_for(path: str | Path, size: int, cfg: PreprocessConfig) -> np.ndarray:
    """Decode an image at the resolution its preprocessing needs and apply the border crop."""
    return crop_border(read_image(path, draft_size=_draft_size(size, cfg)), cfg.border_crop)


def _preprocess_batch(images: list[np.ndarray], size: int, cfg: PreprocessConfig, segmenter: Any,
                      stats: dict[str, int] | None) -> list[tuple[np.ndarray, Box]]:
    masks: list[np.ndarray | None] = [None] * len(images)
    if cfg.needs_segmentation:
        if segmenter is None:
            raise ConfigError(f"roi {cfg.roi} needs the lung segmenter, but none was loaded")
        masks = segmenter(images)
    # the border crop was applied by decode_for: apply the rest only
    rest = replace(cfg, border_crop=0.0)
    return [preprocess_image_and_box(img, size, rest, m, stats) for img, m in zip(images, masks, strict=True)]


def preprocess_decoded(images: list[np.ndarray], size: int, cfg: PreprocessConfig, segmenter: Any = None,
                       stats: dict[str, int] | None = None) -> list[np.ndarray]:
    """:func:`preprocess_image` of border-cropped decoded images, segmenting them in one batch when needed."""
    return [out for out, _ in _preprocess_batch(images, size, cfg, segmenter, stats)]


def load_preprocessed(path: str | Path, size: int, cfg: PreprocessConfig | None = None, segmenter: Any = None,
                      stats: dict[str, int] | None = None) -> np.ndarray:
    """Read one file and prepare it for a classifier: the single path of cache, predict and evaluation.

    Raises:
        ImageDecodeError: the file cannot be read.
    """
    return load_preprocessed_with_geometry(path, size, cfg, segmenter, stats)[0]


def load_preprocessed_sizes(path: str | Path, sizes: list[int], cfg: PreprocessConfig | None = None,
                            segmenter: Any = None, stats: dict[str, int] | None = None) -> list[np.ndarray]:
    """:func:`load_preprocessed` at several sizes from one decode (an ensemble of members trained at different input
    sizes): each output is prepared from the decoded image and resized once, to its own size.

    A JPEG is decoded at the draft scale of the largest size, so a smaller member may see a finer decode than its
    own run's (PNG and DICOM are always decoded in full, so they are exactly what the member's run would prepare).

    Raises:
        ImageDecodeError: the file cannot be read.
    """
    cfg = cfg or PreprocessConfig()
    if cfg.ct_windows is not None:
        decoded = read_ct_channels(path, cfg.ct_windows)
    else:
        largest = max(sizes)
        decoded = read_image(path, draft_size=largest if cfg.is_identity else _draft_size(largest, cfg))
    return [preprocess_with_geometry(decoded, size, cfg, segmenter, stats)[0] for size in sizes]


def load_preprocessed_with_geometry(path: str | Path, size: int, cfg: PreprocessConfig | None = None,
                                    segmenter: Any = None, stats: dict[str, int] | None = None
                                    ) -> tuple[np.ndarray, InputGeometry]:
    """:func:`load_preprocessed`, and where its output came from in the decoded image.

    The geometry is in the pixels of the image as decoded here: JPEGs are decoded at a reduced (draft) scale, so
    use :meth:`InputGeometry.scaled_to` to place the box in another decode of the file (e.g. the full-resolution
    :func:`~covidscreen.data.decode.read_image` that figures are drawn on). When the lungs were not found, the box
    is the border-cropped image (the fallback keeps the whole image).

    Returns:
        ``((size, size) uint8 model input, geometry)``; ``(C, size, size)`` for runs that read several CT windows.

    Raises:
        ImageDecodeError: the file cannot be read.
    """
    cfg = cfg or PreprocessConfig()
    if cfg.ct_windows is not None:  # DICOM CT through each window, (C, H, W); anything without HU is refused
        return preprocess_with_geometry(read_ct_channels(path, cfg.ct_windows), size, cfg, segmenter, stats)
    draft = size if cfg.is_identity else _draft_size(size, cfg)
    return preprocess_with_geometry(read_image(path, draft_size=draft), size, cfg, segmenter, stats)


def preprocess_with_geometry(decoded: np.ndarray, size: int, cfg: PreprocessConfig | None = None,
                             segmenter: Any = None, stats: dict[str, int] | None = None
                             ) -> tuple[np.ndarray, InputGeometry]:
    """:func:`load_preprocessed_with_geometry` of an image decoded already (e.g. a DICOM dataset received over the
    network): the same steps, so a file and its in-memory decode give the same model input.

    ``decoded`` is 2-D for one-channel runs and ``(C, H, W)`` (one channel per CT window,
    :func:`~covidscreen.data.decode.decode_dicom_channels`) for runs with ``ct_channels`` other than ``lung``.

    Raises:
        ImageDecodeError: a one-channel image given to a run that reads CT windows (it has no Hounsfield units).
    """
    cfg = cfg or PreprocessConfig()
    if cfg.ct_windows is not None:
        if decoded.ndim != 3 or decoded.shape[0] != len(cfg.ct_windows):
            raise ImageDecodeError(
                f"this model reads {len(cfg.ct_windows)} CT windows ({cfg.ct_channels}) as channels, but got an image "
                f"of shape {decoded.shape}: decode the DICOM CT slice with decode_dicom_channels (PNG/JPEG and "
                "non-CT images have no Hounsfield units)")
        channels = [preprocess_with_geometry(ch, size, replace(cfg, ct_channels="lung"), segmenter, stats)
                    for ch in decoded]  # the same steps and crop per channel (no step depends on the others)
        return np.stack([out for out, _ in channels]), channels[0][1]
    if decoded.ndim != 2:
        raise ImageDecodeError(f"this model reads one grey channel, but got an image of shape {decoded.shape}")
    if cfg.is_identity:
        return resize_square(decoded, size), InputGeometry.whole(decoded.shape)
    top, _, left, _ = border_box(decoded.shape, cfg.border_crop)
    ((out, (t, b, lo, r)),) = _preprocess_batch([crop_border(decoded, cfg.border_crop)], size, cfg, segmenter, stats)
    h, w = decoded.shape
    return out, InputGeometry(h, w, top + t, top + b, left + lo, left + r)


def _decode_job(args: tuple[str, int, PreprocessConfig]) -> tuple[np.ndarray | None, str | None]:
    path, size, cfg = args
    try:
        if cfg.needs_segmentation:
            return decode_for(path, size, cfg), None
        return load_preprocessed(path, size, cfg), None
    except ImageDecodeError as exc:
        return None, str(exc)


def iter_preprocessed(paths: list[str], size: int, cfg: PreprocessConfig, segmenter: Any = None,
                      workers: int | None = None, progress: bool = True, chunk: int = 64,
                      stats: dict[str, int] | None = None) -> Iterator[tuple[int, np.ndarray | None, str | None]]:
    """``(index, image or None, error or None)`` for every path, in order: decoding in worker processes, lung
    segmentation (when needed) in batches in this process (a network is not shared across forked workers)."""
    workers = workers or min(4, os.cpu_count() or 1)
    bar = tqdm(total=len(paths), desc=f"preprocessing images at {size}px", unit="img", disable=not progress)
    pool = (ProcessPoolExecutor(workers, initializer=ignore_sigint) if workers > 1 and len(paths) > chunk
            else None)
    try:
        for start in range(0, len(paths), chunk):
            jobs = [(p, size, cfg) for p in paths[start:start + chunk]]
            results = list(pool.map(_decode_job, jobs, chunksize=8)) if pool else [_decode_job(j) for j in jobs]
            if cfg.needs_segmentation:
                ok = [i for i, (img, _) in enumerate(results) if img is not None]
                done = preprocess_decoded([results[i][0] for i in ok], size, cfg, segmenter, stats)
                for i, img in zip(ok, done, strict=True):
                    results[i] = (img, None)
            for i, (img, err) in enumerate(results):
                yield start + i, img, err
            bar.update(len(jobs))
    finally:
        if pool is not None:
            pool.shutdown()
        bar.close()


def preprocess_digest(cfg: PreprocessConfig) -> str:
    """Short digest of :meth:`PreprocessConfig.key` (for file names)."""
    return hashlib.sha256(cfg.key().encode()).hexdigest()[:8] if cfg.key() else ""
