"""Decode chest images (PNG, JPEG, DICOM) into one greyscale ``uint8`` array.

Everything downstream (cache, training, prediction, explanations) sees the same representation: a 2-D ``uint8``
array in the image's own geometry. High bit-depth images are scaled linearly from their own min..max; DICOM files get
the modality LUT, then the VOI LUT / window, and MONOCHROME1 is inverted so that bone is bright in every image.

CT slices (DICOM ``Modality`` CT) are different: their pixel values are calibrated. They are converted to Hounsfield
units (``RescaleSlope`` / ``RescaleIntercept``) and shown through a fixed window, by default the lung window
(level -600 HU, width 1500 HU), whatever window the scanner stored: a model must see the same mapping of tissue
densities on every slice, from every scanner. A run may read a CT slice through several windows instead
(``ct_channels: lung+mediastinal``): :func:`read_ct_channels` / :func:`decode_dicom_channels` give one ``uint8``
channel per window, ``(C, H, W)``, and refuse anything that has no Hounsfield units (PNG, JPEG, non-CT DICOM).

Files come from outside, so decoding is defensive: the format is taken from the content (PNG and JPEG through
Pillow's two plugins only, DICOM by its ``DICM`` marker), the declared dimensions are checked against limits *before*
any pixel buffer is allocated (Pillow reads only the header on open; for DICOM, Rows x Columns x samples x
BitsAllocated x frames is checked against the limit and against the pixel data the file actually holds), and every
failure of the third-party decoders on a damaged or hostile file becomes an :class:`ImageDecodeError`.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image, UnidentifiedImageError
from pydicom.encaps import generate_frames
from pydicom.errors import InvalidDicomError

from ..errors import ImageDecodeError

try:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut, convert_color_space
except ImportError:  # pydicom 2.x
    from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_voi_lut, convert_color_space

ACCEPTED = "PNG or JPEG (8/16-bit greyscale or RGB) and DICOM (uncompressed or with an installed pixel handler)"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")

# Decompression bombs and absurd declared sizes: a chest radiograph is at most about 4,300 x 4,300 pixels (18 Mpx);
# 40 Mpx leaves room for any real detector while bounding one decode to a few hundred MB.
MAX_PIXELS = 40_000_000
MAX_SIDE = 16_384
MAX_FILE_BYTES = 256 * 1024 * 1024
Image.MAX_IMAGE_PIXELS = MAX_PIXELS  # Pillow's own check (it raises at twice this); ours below is exact
PIL_FORMATS = ("PNG", "JPEG")
DICOM_BITS = (1, 8, 16, 32)


#: (level, width) in HU. Lung: air (-1000) near black, lung (-800) dark grey, soft tissue (40) near white.
LUNG_WINDOW = (-600.0, 1500.0)
#: Soft tissue / mediastinum: the second channel of runs with ``ct_channels: lung+mediastinal`` (DICOM CT only).
MEDIASTINAL_WINDOW = (40.0, 400.0)


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


def hounsfield_units(pixels: np.ndarray, slope: float = 1.0, intercept: float = 0.0) -> np.ndarray:
    """Stored CT values to Hounsfield units: ``HU = stored * RescaleSlope + RescaleIntercept`` (float32)."""
    hu = pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    if not np.isfinite(hu).all():
        raise ValueError("CT pixel data gives NaN or infinite Hounsfield units")
    return hu


def apply_window(hu: np.ndarray, level: float, width: float) -> np.ndarray:
    """Map ``[level - width/2, level + width/2]`` HU linearly onto 0..255 (``uint8``), clipping outside it."""
    if not width > 0:
        raise ValueError(f"window width must be positive, got {width}")
    lo = level - width / 2.0
    scaled = (hu.astype(np.float32) - np.float32(lo)) * np.float32(255.0 / width)
    return np.round(np.clip(scaled, 0.0, 255.0)).astype(np.uint8)


def check_window(window: tuple[float, float]) -> tuple[float, float]:
    """A (level, width) pair in HU, validated (width > 0)."""
    try:
        level, width = (float(v) for v in window)
    except (TypeError, ValueError):
        raise ImageDecodeError(f"CT window {window!r} is invalid: expected (level, width) in HU, "
                               "e.g. -600,1500") from None
    if not (np.isfinite(level) and np.isfinite(width) and width > 0):
        raise ImageDecodeError(f"CT window {window!r} is invalid: expected a finite level and a width > 0 HU")
    return level, width


def dicom_modality_of(ds: object) -> str | None:
    """The DICOM ``Modality`` of a dataset, upper case, or None when the tag is absent or empty."""
    value = str(getattr(ds, "Modality", "") or "").strip().upper()
    return value or None


def read_dicom_header(path: str | Path) -> object:
    """A DICOM file's header (no pixel data). Raises :class:`ImageDecodeError` for a file that is not DICOM."""

    try:
        return pydicom.dcmread(str(path), stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise ImageDecodeError(f"{path}: not a valid DICOM file ({exc}). Accepted: {ACCEPTED}") from None


def dicom_modality(path: str | Path) -> str | None:
    """The ``Modality`` of a DICOM file (CR, DX, CT, ...), None for other formats or a DICOM file without it."""
    path = Path(path)
    if not is_dicom(path):
        return None
    return dicom_modality_of(read_dicom_header(path))


def ct_slice_to_uint8(ds: object, window: tuple[float, float] = LUNG_WINDOW, source: str = "CT slice") -> np.ndarray:
    """A CT slice (a read pydicom dataset) as a windowed ``uint8`` image: HU, then ``window`` = (level, width).

    Raises:
        ImageDecodeError: no or undecodable pixel data, several frames, colour data or a bad window.
    """
    level, width = check_window(window)
    return apply_window(ct_slice_hu(ds, source), level, width)


def ct_slice_hu(ds: object, source: str = "CT slice") -> np.ndarray:
    """A CT slice (a read pydicom dataset) in Hounsfield units (float32, 2-D).

    Raises:
        ImageDecodeError: no or undecodable pixel data, several frames, colour data or unusable rescale tags.
    """
    pixels = _pixels(ds, source)
    if pixels.ndim != 2:
        raise ImageDecodeError(f"{source}: a CT slice must be one greyscale frame, got pixel data of shape "
                               f"{pixels.shape}")
    try:
        slope = getattr(ds, "RescaleSlope", None)
        intercept = getattr(ds, "RescaleIntercept", None)
        return hounsfield_units(pixels, 1.0 if slope in (None, "") else float(slope),
                                0.0 if intercept in (None, "") else float(intercept))
    except (TypeError, ValueError) as exc:
        raise ImageDecodeError(f"{source}: RescaleSlope/RescaleIntercept unusable ({exc})") from None


def check_dimensions(path: str | Path, width: int, height: int, what: str = "image") -> None:
    """Refuse declared dimensions that no chest image has, before any pixels are decoded.

    Raises:
        ImageDecodeError: a side is not positive or above ``MAX_SIDE``, or the area is above ``MAX_PIXELS``.
    """
    if width <= 0 or height <= 0:
        raise ImageDecodeError(f"{path}: {what} declares an empty size {width}x{height}. Accepted: {ACCEPTED}")
    if width > MAX_SIDE or height > MAX_SIDE or width * height > MAX_PIXELS:
        raise ImageDecodeError(
            f"{path}: {what} declares {width}x{height} pixels, too large (limit {MAX_SIDE} a side and "
            f"{MAX_PIXELS:,} pixels); refused before decoding (possible decompression bomb)")


def _int_tag(ds: object, name: str, default: int | None = None) -> int:
    value = getattr(ds, name, default)
    if value is None or value == "":
        if default is None:
            raise ValueError(f"missing {name}")
        value = default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} = {str(value)[:40]!r} is not an integer") from None


def check_dicom_pixels(path: str | Path, ds: object) -> None:
    """Check a DICOM dataset's image tags before its pixel data is decoded.

    Rows x Columns x SamplesPerPixel x BitsAllocated x NumberOfFrames must be within the limits and, for native
    (uncompressed) pixel data, match what the file holds: a small file cannot declare a huge image.

    Raises:
        ImageDecodeError: absurd, missing or inconsistent tags.
    """
    try:
        rows, cols = _int_tag(ds, "Rows"), _int_tag(ds, "Columns")
        bits = _int_tag(ds, "BitsAllocated")
        samples = _int_tag(ds, "SamplesPerPixel", 1)
        frames = _int_tag(ds, "NumberOfFrames", 1)
        stored = _int_tag(ds, "BitsStored", bits)
        representation = _int_tag(ds, "PixelRepresentation", 0)
    except ValueError as exc:
        raise ImageDecodeError(f"{path}: DICOM image tags are invalid ({exc}). Accepted: {ACCEPTED}") from None
    check_dimensions(path, cols, rows, "DICOM image")
    if bits not in DICOM_BITS or not 1 <= stored <= bits or representation not in (0, 1):
        raise ImageDecodeError(f"{path}: DICOM BitsAllocated {bits} / BitsStored {stored} / PixelRepresentation "
                               f"{representation} are not those of an image (BitsAllocated 1, 8, 16 or 32)")
    if samples not in (1, 3):
        raise ImageDecodeError(f"{path}: DICOM SamplesPerPixel {samples}; 1 (grey) or 3 (colour) is expected")
    if frames != 1:
        raise ImageDecodeError(f"{path}: DICOM with {frames} frames; a single chest radiograph is expected")
    expected = rows * cols * samples * bits // 8
    if expected > MAX_PIXELS * 4:
        raise ImageDecodeError(f"{path}: DICOM declares {expected:,} bytes of pixels, above the limit; refused")
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    compressed = bool(syntax is not None and getattr(syntax, "is_compressed", False))
    if compressed and "PixelData" in ds:  # type: ignore[operator]
        _check_encapsulated_jpeg(path, ds, rows, cols)
    if not compressed:
        held = len(ds.PixelData) if "PixelData" in ds else 0  # type: ignore[operator]
        if held < expected:
            raise ImageDecodeError(f"{path}: DICOM declares {rows}x{cols}x{samples} pixels of {bits} bits "
                                   f"({expected:,} bytes) but holds {held:,} bytes of pixel data; truncated or forged")


def jpeg_frame_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the SOF marker of a JPEG (or JPEG-lossless) stream, None if there is none."""
    i = 2
    while i + 9 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        length = struct.unpack(">H", data[i + 2:i + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", data[i + 5:i + 9])
            return width, height
        i += 2 + length
    return None


def _check_encapsulated_jpeg(path: str | Path, ds: object, rows: int, cols: int) -> None:
    """Compressed JPEG pixel data must be the size the tags declare: the decoder allocates what the tags say."""

    try:
        frame = next(generate_frames(ds.PixelData, number_of_frames=1))  # type: ignore[attr-defined]
    except Exception as exc:
        raise ImageDecodeError(f"{path}: DICOM compressed pixel data is damaged ({exc.__class__.__name__})") from None
    if frame[:2] != b"\xff\xd8":
        return  # JPEG 2000, RLE, ...: only the limits above apply
    size = jpeg_frame_size(frame)
    if size != (cols, rows):
        held = "no frame header" if size is None else f"{size[0]}x{size[1]} pixels"
        raise ImageDecodeError(f"{path}: DICOM declares {cols}x{rows} pixels but its JPEG stream holds {held}; "
                               "damaged or forged")


def _pixels(ds: object, source: str) -> np.ndarray:
    """A dataset's pixel array after its tags were checked against the limits and the data it holds."""
    if "PixelData" not in ds:
        raise ImageDecodeError(f"{source}: DICOM file has no pixel data (not an image object). Accepted: {ACCEPTED}")
    check_dicom_pixels(source, ds)
    try:
        return ds.pixel_array
    except Exception as exc:  # missing decoder for a compressed transfer syntax, truncated data, ...
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
        raise ImageDecodeError(
            f"{source}: DICOM pixel data could not be decoded (transfer syntax {syntax}: {exc}). "
            "Compressed DICOM needs pylibjpeg or gdcm installed."
        ) from None


def _guarded(source: str, decode, *args) -> np.ndarray:
    """Run a DICOM decode step; pydicom and its LUT code raise many kinds of errors on damaged or hostile tags."""
    try:
        return decode(*args)
    except ImageDecodeError:
        raise
    except MemoryError:
        raise ImageDecodeError(f"{source}: DICOM file needs more memory than allowed to decode; refused") from None
    except Exception as exc:
        raise ImageDecodeError(f"{source}: DICOM file is damaged or has invalid tags ({exc.__class__.__name__}: "
                               f"{str(exc)[:200]}). Accepted: {ACCEPTED}") from None


def _decode_dicom(path: Path, ct_window: tuple[float, float] = LUNG_WINDOW) -> np.ndarray:
    return _guarded(str(path), _read_and_decode_dicom, path, ct_window)


def _read_and_decode_dicom(path: Path, ct_window: tuple[float, float]) -> np.ndarray:

    try:
        ds = pydicom.dcmread(str(path))
    except InvalidDicomError as exc:
        raise ImageDecodeError(f"{path}: not a valid DICOM file ({exc}). Accepted: {ACCEPTED}") from None
    return _decode_dataset(ds, str(path), ct_window)


def decode_dicom_dataset(ds, path: str = "DICOM dataset", ct_window: tuple[float, float] = LUNG_WINDOW) -> np.ndarray:
    """Decode a DICOM dataset already in memory (e.g. received over the network) exactly as :func:`read_image`
    decodes a DICOM file: a CT slice to Hounsfield units through ``ct_window``; otherwise modality LUT, VOI
    LUT/window, MONOCHROME1 inverted; to 2-D ``uint8``. The same limits and checks apply.

    Args:
        ds: a ``pydicom.Dataset`` with its ``file_meta`` (the transfer syntax says how to read the pixel data).
        path: how to name the dataset in error messages.

    Raises:
        ImageDecodeError: no pixel data, absurd or inconsistent tags, undecodable pixel data, several frames, or an
            image smaller than 8x8.
    """
    return _guarded(path, _decode_dataset, ds, path, ct_window)


def _decode_dataset(ds, path: str, ct_window: tuple[float, float]) -> np.ndarray:
    if dicom_modality_of(ds) == "CT":
        return ct_slice_to_uint8(ds, ct_window, source=path)
    pixels = _pixels(ds, path)
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    if pixels.ndim == 3:  # colour DICOM (RGB / YBR): convert to grey
        if "YBR" in photometric:
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
        # formats: only Pillow's PNG and JPEG plugins may claim the file (by content; TIFF, BMP, PSD, ... refused)
        with Image.open(path, formats=PIL_FORMATS) as im:
            check_dimensions(path, *im.size, f"{im.format} image")  # header only: no pixels allocated yet
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
    except Image.DecompressionBombError as exc:  # Pillow's own header check, at twice MAX_PIXELS
        raise ImageDecodeError(f"{path}: image declares too many pixels, too large ({exc}); refused before "
                               "decoding (possible decompression bomb)") from None
    except UnidentifiedImageError as exc:
        kind = exc.__class__.__name__
        raise ImageDecodeError(f"{path}: not a readable image ({kind}). Accepted: {ACCEPTED}") from None
    except (OSError, ValueError, SyntaxError, EOFError, struct.error, IndexError, KeyError, TypeError,
            ZeroDivisionError, OverflowError) as exc:  # what Pillow's plugins raise on damaged or forged files
        raise ImageDecodeError(f"{path}: image is damaged or truncated ({exc.__class__.__name__}: {str(exc)[:200]})."
                               f" Accepted: {ACCEPTED}") from None
    except MemoryError:
        raise ImageDecodeError(f"{path}: image needs more memory than allowed to decode; refused") from None


def read_image(path: str | Path, draft_size: int | None = None,
               ct_window: tuple[float, float] = LUNG_WINDOW) -> np.ndarray:
    """Read one chest image as a 2-D greyscale ``uint8`` array.

    Args:
        path: PNG, JPEG or DICOM file (the format is detected from the content, not the suffix).
        draft_size: when set, JPEGs may be decoded at a reduced scale whose sides stay >= this size (for the cache).
        ct_window: (level, width) in HU for DICOM CT slices (default: the lung window).

    Raises:
        ImageDecodeError: the file is missing, not an image, damaged, too large, or of an unsupported kind.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageDecodeError(f"{path}: file not found. Accepted: {ACCEPTED}")
    size = path.stat().st_size
    if size == 0:
        raise ImageDecodeError(f"{path}: file is empty. Accepted: {ACCEPTED}")
    if size > MAX_FILE_BYTES:
        raise ImageDecodeError(f"{path}: file of {size:,} bytes is larger than the limit of {MAX_FILE_BYTES:,} bytes")
    arr = _decode_dicom(path, ct_window) if is_dicom(path) else _decode_pil(path, draft_size)
    if arr.ndim != 2 or min(arr.shape) < 8:
        raise ImageDecodeError(f"{path}: image of shape {arr.shape} is too small (need at least 8x8 pixels)")
    return arr


def ct_windows_to_uint8(hu: np.ndarray, windows: tuple[tuple[float, float], ...]) -> np.ndarray:
    """Hounsfield units through each (level, width) window: ``(len(windows), H, W)`` ``uint8``, one channel each."""
    return np.stack([apply_window(hu, *check_window(w)) for w in windows])


def _no_hu(source: str, what: str, windows: tuple[tuple[float, float], ...]) -> ImageDecodeError:
    shown = ", ".join(f"{lv:g}/{w:g}" for lv, w in windows)
    return ImageDecodeError(f"{source}: {what} holds no Hounsfield units, but this model reads CT slices through "
                            f"several HU windows (level/width {shown}): give the DICOM CT slice (Modality CT), "
                            "or use a run trained with ct_channels lung on PNG/JPEG slices")


def _ct_channels_of(ds, source: str, windows: tuple[tuple[float, float], ...]) -> np.ndarray:
    modality = dicom_modality_of(ds)
    if modality != "CT":
        raise _no_hu(source, f"DICOM with Modality {modality or 'missing'}", windows)
    return ct_windows_to_uint8(ct_slice_hu(ds, source), windows)


def decode_dicom_channels(ds, path: str = "DICOM dataset",
                          windows: tuple[tuple[float, float], ...] = (LUNG_WINDOW, MEDIASTINAL_WINDOW)) -> np.ndarray:
    """A DICOM CT slice in memory through several windows, ``(C, H, W)`` ``uint8`` (see :func:`read_ct_channels`).

    Raises:
        ImageDecodeError: not a CT slice (no Hounsfield units), or its pixel data cannot be read.
    """
    out = _guarded(path, _ct_channels_of, ds, path, windows)
    if min(out.shape[1:]) < 8:
        raise ImageDecodeError(f"{path}: image of shape {out.shape[1:]} is too small (need at least 8x8 pixels)")
    return out


def read_ct_channels(path: str | Path,
                     windows: tuple[tuple[float, float], ...] = (LUNG_WINDOW, MEDIASTINAL_WINDOW)) -> np.ndarray:
    """Read a DICOM CT slice through each (level, width) window: ``(len(windows), H, W)`` ``uint8``.

    Only a DICOM CT slice has Hounsfield units to window: a PNG or JPEG (already windowed by whoever made it) or a
    DICOM of another modality is refused, never guessed.

    Raises:
        ImageDecodeError: missing, too large or damaged file, PNG/JPEG, or a DICOM that is not a CT slice.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageDecodeError(f"{path}: file not found. Accepted: DICOM CT slices")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ImageDecodeError(f"{path}: file of {size:,} bytes is larger than the limit of {MAX_FILE_BYTES:,} bytes")
    if not is_dicom(path):
        raise _no_hu(str(path), "a PNG/JPEG (or other non-DICOM) file", windows)
    ds = _guarded(str(path), _read_dicom_dataset, path)
    return decode_dicom_channels(ds, str(path), windows)


def _read_dicom_dataset(path: Path):

    try:
        return pydicom.dcmread(str(path))
    except InvalidDicomError as exc:
        raise ImageDecodeError(f"{path}: not a valid DICOM file ({exc}). Accepted: {ACCEPTED}") from None


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
