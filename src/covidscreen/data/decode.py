"""Decode chest images (PNG, JPEG, DICOM) into one greyscale ``uint8`` array.

Everything downstream (cache, training, prediction, explanations) sees the same representation: a 2-D ``uint8``
array in the image's own geometry. High bit-depth images are scaled linearly from their own min..max; DICOM files get
the modality LUT, then the VOI LUT / window, and MONOCHROME1 is inverted so that bone is bright in every image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import ImageDecodeError

ACCEPTED = "PNG or JPEG (8/16-bit greyscale or RGB) and DICOM (uncompressed or with an installed pixel handler)"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")

# Decompression bombs: a chest X-ray is at most a few thousand pixels a side.
Image.MAX_IMAGE_PIXELS = 12_000 * 12_000


def is_dicom(path: Path) -> bool:
    """True when the file carries the DICOM preamble marker (``DICM`` at byte 128)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """Scale an array linearly from its own min..max to 0..255 (``uint8`` input is returned as is)."""
    if arr.dtype == np.uint8:
        return arr
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise ValueError("pixel data contains NaN or infinite values")
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    return np.round((arr - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _decode_dicom(path: Path) -> np.ndarray:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(str(path))
    except InvalidDicomError as exc:
        raise ImageDecodeError(f"{path}: not a valid DICOM file ({exc}). Accepted: {ACCEPTED}") from None
    return decode_dicom_dataset(ds, str(path))


def decode_dicom_dataset(ds, path: str = "DICOM dataset") -> np.ndarray:
    """Decode a DICOM dataset already in memory (e.g. received over the network) exactly as :func:`read_image`
    decodes a DICOM file: modality LUT, VOI LUT/window, MONOCHROME1 inverted, to 2-D ``uint8``.

    Args:
        ds: a ``pydicom.Dataset`` with its ``file_meta`` (the transfer syntax says how to read the pixel data).
        path: how to name the dataset in error messages.

    Raises:
        ImageDecodeError: no pixel data, undecodable pixel data, several frames, or an image smaller than 8x8.
    """
    try:
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError:  # pydicom 2.x
        from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_voi_lut

    if "PixelData" not in ds:
        raise ImageDecodeError(f"{path}: DICOM file has no pixel data (not an image object). Accepted: {ACCEPTED}")
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # missing decoder for a compressed transfer syntax, truncated data, ...
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
        raise ImageDecodeError(
            f"{path}: DICOM pixel data could not be decoded (transfer syntax {syntax}: {exc}). "
            "Compressed DICOM needs pylibjpeg or gdcm installed."
        ) from None
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ImageDecodeError(f"{path}: multi-frame DICOM ({frames} frames); a single chest radiograph is expected")
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    if pixels.ndim == 3:  # colour DICOM (RGB / YBR): convert to grey
        if "YBR" in photometric:
            from pydicom.pixels import convert_color_space

            pixels = convert_color_space(pixels, photometric, "RGB")
        rgb = pixels.astype(np.float32)
        return _to_uint8(rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32))
    arr = apply_modality_lut(pixels, ds)
    arr = apply_voi_lut(arr, ds) if ("WindowCenter" in ds or "VOILUTSequence" in ds) else arr
    arr = np.asarray(arr, dtype=np.float32)
    if photometric == "MONOCHROME1":
        arr = arr.max() - arr
    out = _to_uint8(arr)
    if out.ndim != 2 or min(out.shape) < 8:
        raise ImageDecodeError(f"{path}: image of shape {out.shape} is too small (need at least 8x8 pixels)")
    return out


def _decode_pil(path: Path, draft_size: int | None) -> np.ndarray:
    try:
        with Image.open(path) as im:
            if draft_size and im.format == "JPEG":
                # Let libjpeg decode at a reduced scale (still >= draft_size): 2-4x faster for big images.
                im.draft("L", (draft_size, draft_size))
            im.load()
            mode = im.mode
            if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                return _to_uint8(np.asarray(im))
            if mode == "P" or mode == "PA" or mode == "LA" or mode == "RGBA" or mode == "CMYK" or mode == "YCbCr":
                im = im.convert("RGB")
            if im.mode == "RGB":
                im = im.convert("L")
            elif im.mode == "1":
                im = im.convert("L")
            if im.mode != "L":
                raise ImageDecodeError(f"{path}: unsupported pixel mode {mode!r}. Accepted: {ACCEPTED}")
            return np.asarray(im, dtype=np.uint8).copy()
    except ImageDecodeError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
        kind = exc.__class__.__name__
        raise ImageDecodeError(f"{path}: not a readable image ({kind}). Accepted: {ACCEPTED}") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageDecodeError(f"{path}: image is damaged or truncated ({exc}). Accepted: {ACCEPTED}") from None


def read_image(path: str | Path, draft_size: int | None = None) -> np.ndarray:
    """Read one chest image as a 2-D greyscale ``uint8`` array.

    Args:
        path: PNG, JPEG or DICOM file (the format is detected from the content, not the suffix).
        draft_size: when set, JPEGs may be decoded at a reduced scale whose sides stay >= this size (for the cache).

    Raises:
        ImageDecodeError: the file is missing, not an image, damaged, or of an unsupported kind.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageDecodeError(f"{path}: file not found. Accepted: {ACCEPTED}")
    if path.stat().st_size == 0:
        raise ImageDecodeError(f"{path}: file is empty. Accepted: {ACCEPTED}")
    arr = _decode_dicom(path) if is_dicom(path) else _decode_pil(path, draft_size)
    if arr.ndim != 2 or min(arr.shape) < 8:
        raise ImageDecodeError(f"{path}: image of shape {arr.shape} is too small (need at least 8x8 pixels)")
    return arr


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """Resize a greyscale ``uint8`` image to ``size`` x ``size`` (aspect not kept, as in the seed papers).

    Plain resizing (rather than letterboxing) avoids adding padded borders whose size would differ by source.
    """
    if image.shape == (size, size):
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0))


def load_resized(path: str | Path, size: int) -> np.ndarray:
    """Read an image and resize it to ``size`` x ``size``: the one preprocessing path of cache, predict and explain."""
    return resize_square(read_image(path, draft_size=size), size)
