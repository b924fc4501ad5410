"""Inputs that are not frontal chest X-rays, written as image files, to measure the out-of-distribution flag.

Each builder writes PNG files into a folder and returns their paths, so that the probes go through the same decoding
and preprocessing as any file a user sends. Sets: natural photos (scikit-image's sample images, at several crops),
blank images, noise, rendered text, and chest X-rays rotated 90 degrees or flipped upside down (from given files);
CT slices are read from ``../shared/data/ct`` as they are.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy.ndimage import gaussian_filter

from ..data.decode import read_image

# scikit-image sample images that ship with the package (no download)
SKIMAGE_SAMPLES = ("astronaut", "camera", "cat", "coffee", "coins", "moon", "page", "rocket", "text", "horse",
                   "hubble_deep_field", "immunohistochemistry", "brick", "grass", "gravel", "clock", "logo",
                   "colorwheel", "retina", "chelsea", "checkerboard", "binary_blobs", "shepp_logan_phantom")


def _save(arr: np.ndarray, path: Path) -> Path:
    if arr.dtype != np.uint8:
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    Image.fromarray(arr).save(path)
    return path


def natural_photos(out: Path, crops_per_image: int = 3, seed: int = 0) -> list[Path]:
    """scikit-image's sample photos (whole, and random crops of half the side), as greyscale or colour PNGs."""
    # optional dependency: scikit-image (covidscreen[test]) ships the sample photos
    from skimage import data

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for name in SKIMAGE_SAMPLES:
        try:
            img = np.asarray(getattr(data, name)())
        except Exception:  # noqa: BLE001 - a sample that needs a download is left out
            continue
        if img.dtype == bool:
            img = img.astype(np.uint8) * 255
        elif img.dtype != np.uint8:
            lo, hi = float(img.min()), float(img.max())
            img = ((img - lo) / (hi - lo or 1) * 255).astype(np.uint8)
        if img.ndim == 3 and img.shape[2] == 4:
            img = img[..., :3]
        paths.append(_save(img, out / f"{name}.png"))
        h, w = img.shape[:2]
        for k in range(crops_per_image):
            y, x = rng.integers(0, h // 2 + 1), rng.integers(0, w // 2 + 1)
            paths.append(_save(np.ascontiguousarray(img[y:y + h // 2, x:x + w // 2]), out / f"{name}_crop{k}.png"))
    return paths


def blank_images(out: Path, n: int = 20, side: int = 512) -> list[Path]:
    """Uniform images from black to white."""
    out.mkdir(parents=True, exist_ok=True)
    return [_save(np.full((side, side), int(v), np.uint8), out / f"blank_{i:02d}.png")
            for i, v in enumerate(np.linspace(0, 255, n))]


def noise_images(out: Path, n: int = 40, side: int = 512, seed: int = 0) -> list[Path]:
    """Uniform and Gaussian pixel noise, and smoothed (blob) noise, in turn."""

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        kind = i % 3
        if kind == 0:
            arr = rng.integers(0, 256, (side, side))
        elif kind == 1:
            arr = rng.normal(128, 40, (side, side))
        else:
            arr = gaussian_filter(rng.normal(0, 1, (side, side)), 8)
            arr = (arr - arr.min()) / (np.ptp(arr) or 1) * 255
        paths.append(_save(arr, out / f"noise_{i:02d}.png"))
    return paths


def text_images(out: Path, n: int = 40, side: int = 512, seed: int = 0) -> list[Path]:
    """Pages of rendered text (dark on light and light on dark)."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    words = ("patient", "report", "chest", "radiograph", "findings", "impression", "normal", "lung", "COVID-19",
             "pneumonia", "the", "of", "and", "no", "acute", "disease", "2020", "left", "right", "view")
    try:
        font = ImageFont.truetype("DejaVuSans.ttf", 22)
    except OSError:
        font = ImageFont.load_default()
    paths = []
    for i in range(n):
        dark = i % 2 == 0
        img = Image.new("L", (side, side), 235 if dark else 20)
        draw = ImageDraw.Draw(img)
        for line in range(side // 30):
            text = " ".join(rng.choice(words, 6))
            draw.text((10, 8 + line * 30), text, fill=20 if dark else 235, font=font)
        paths.append(_save(np.asarray(img), out / f"text_{i:02d}.png"))
    return paths


def transformed_xrays(files: list[str | Path], out: Path, how: str) -> list[Path]:
    """Chest X-rays rotated 90 degrees (``rot90``, alternately clockwise and anticlockwise) or flipped upside down
    (``flipud``)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, f in enumerate(files):
        img = read_image(f)
        arr = np.rot90(img, 1 if i % 2 == 0 else -1) if how == "rot90" else np.flipud(img)
        paths.append(_save(np.ascontiguousarray(arr), out / f"{how}_{i:04d}.png"))
    return paths
