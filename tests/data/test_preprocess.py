"""Preprocessing: crops and masks keep image geometry and order; identity is bit-exact; the cache key follows."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from covidscreen.config import PreprocessConfig
from covidscreen.data.cache import ImageCache
from covidscreen.data.decode import load_resized, resize_square
from covidscreen.data.preprocess import (
    MASK_DILATION,
    InputGeometry,
    crop_border,
    iter_preprocessed,
    load_preprocessed,
    load_preprocessed_with_geometry,
    lung_bbox,
    normalise_intensity,
    preprocess_image,
    preprocess_image_and_box,
)
from covidscreen.errors import ConfigError

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "cxr"


def threshold_segmenter(images):
    """A stand-in segmenter for synthetic images: the 'lungs' are the pixels brighter than 100."""
    return [img > 100 for img in images]


def _phantom(h=200, w=300, box=(40, 160, 60, 250), value=200, seed=0) -> tuple[np.ndarray, tuple]:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 60, (h, w)).astype(np.uint8)
    t, b, left, r = box
    img[t:b, left:r] = value + rng.integers(0, 40, (b - t, r - left)).astype(np.uint8)
    return img, box


def test_identity_is_bit_exact_with_load_resized(tmp_path):
    img, _ = _phantom()
    path = tmp_path / "x.png"
    Image.fromarray(img).save(path)
    np.testing.assert_array_equal(load_preprocessed(path, 64), load_resized(path, 64))
    real = sorted((DATA / "images" / "cohen").glob("*.jpg"))[0]
    np.testing.assert_array_equal(load_preprocessed(real, 96, PreprocessConfig()), load_resized(real, 96))


def test_lung_crop_is_exactly_the_lung_box():
    img, (t, b, left, r) = _phantom()
    mask = np.zeros(img.shape, bool)
    mask[t:b, left:r] = True
    out = preprocess_image(img, 64, PreprocessConfig(roi="lungs-crop", roi_margin=0.0, segmentation_model="x"), mask)
    np.testing.assert_array_equal(out, resize_square(img[t:b, left:r], 64))


def test_margin_grows_the_box_and_is_clipped_to_the_image():
    mask = np.zeros((100, 200), bool)
    mask[20:60, 50:150] = True  # 40 x 100 box
    assert lung_bbox(mask, 0.0) == (20, 60, 50, 150)
    assert lung_bbox(mask, 0.1) == (16, 64, 40, 160)
    assert lung_bbox(mask, 1.0) == (0, 100, 0, 200)
    assert lung_bbox(np.zeros((100, 200), bool), 0.1) is None


def test_lung_mask_blanks_outside_and_keeps_inside_aligned():
    img, (t, b, left, r) = _phantom(h=256, w=256, box=(64, 192, 32, 224))
    mask = np.zeros(img.shape, bool)
    mask[t:b, left:r] = True
    cfg = PreprocessConfig(roi="lungs-mask", segmentation_model="x")
    out = preprocess_image(img, 128, cfg, mask)
    plain = resize_square(img, 128)
    grow = int(np.ceil(MASK_DILATION * 128))
    inside = (slice(t // 2 + 1, b // 2 - 1), slice(left // 2 + 1, r // 2 - 1))
    np.testing.assert_array_equal(out[inside], plain[inside])
    assert (out[: t // 2 - grow - 1] == 0).all() and (out[b // 2 + grow + 1:] == 0).all()
    assert (out[:, : left // 2 - grow - 1] == 0).all()


def test_crop_and_mask_together():
    img, (t, b, left, r) = _phantom()
    mask = np.zeros(img.shape, bool)
    mask[t:b, left:r] = True
    mask[t:t + 20, left:left + 30] = False  # a notch: outside the lungs but inside their box
    cfg = PreprocessConfig(roi="lungs-crop-mask", roi_margin=0.0, segmentation_model="x")
    out = preprocess_image(img, 120, cfg, mask)
    assert out.shape == (120, 120)
    assert out[:5, :5].max() == 0  # the notch (top-left of the box) is blanked...
    assert out[-20:, -20:].min() > 100  # ...the lungs are kept


def test_no_lungs_falls_back_to_whole_image_and_is_counted():
    img, _ = _phantom()
    stats: dict = {}
    cfg = PreprocessConfig(roi="lungs-crop-mask", segmentation_model="x")
    out = preprocess_image(img, 64, cfg, np.zeros(img.shape, bool), stats)
    np.testing.assert_array_equal(out, resize_square(img, 64))
    assert stats == {"roi_fallback": 1}


def test_border_crop_removes_each_side():
    img = np.arange(100 * 80, dtype=np.uint32).reshape(100, 80).astype(np.uint8)
    np.testing.assert_array_equal(crop_border(img, 0.1), img[10:90, 8:72])
    out = preprocess_image(img, 32, PreprocessConfig(border_crop=0.1))
    np.testing.assert_array_equal(out, resize_square(img[10:90, 8:72], 32))


def test_intensity_methods():
    rng = np.random.default_rng(0)
    img = np.clip(rng.normal(80, 10, (64, 64)), 0, 255).astype(np.uint8)  # low contrast
    for method in ("clahe", "histeq", "standardize"):
        out = normalise_intensity(img, method)
        assert out.dtype == np.uint8 and out.shape == img.shape
        assert out.std() > img.std()  # contrast stretched
    assert abs(normalise_intensity(img, "standardize").mean() - 128) < 2
    eq = normalise_intensity(img, "histeq")
    assert eq.min() < 20 and eq.max() > 235
    # statistics from a region only: the region is stretched fully whatever lies outside it
    region = np.zeros(img.shape, bool)
    region[:32] = True
    both = img.copy()
    both[32:] = 250
    eq_region = normalise_intensity(both, "histeq", region)
    assert eq_region[:32].max() == 255 and eq_region[:32].min() < 20
    assert normalise_intensity(img, "none") is img
    with pytest.raises(ConfigError, match="intensity"):
        normalise_intensity(img, "gamma")


def test_config_validation():
    with pytest.raises(ConfigError, match="roi 'lungs'"):
        PreprocessConfig(roi="lungs").validate()
    with pytest.raises(ConfigError, match="segmentation_model"):
        PreprocessConfig(roi="lungs-crop").validate()
    with pytest.raises(ConfigError, match="border_crop"):
        PreprocessConfig(border_crop=0.3).validate()
    assert PreprocessConfig().key() == ""
    a = PreprocessConfig(roi="lungs-crop", segmentation_model="a", segmentation_sha256="1" * 64)
    b = PreprocessConfig(roi="lungs-crop", segmentation_model="elsewhere", segmentation_sha256="1" * 64)
    c = PreprocessConfig(roi="lungs-crop", segmentation_model="a", segmentation_sha256="2" * 64)
    assert a.key() == b.key() != c.key()  # the segmenter counts by its weights, not its path
    assert PreprocessConfig.from_dict(a.to_dict()) == a


@pytest.mark.parametrize("workers", [1, 2])
def test_batches_keep_order_with_unreadable_files(tmp_path, workers):
    """Image i of the output must come from file i (the label of row i), also around a file that fails."""
    paths = []
    for i in range(11):
        p = tmp_path / f"{i:02d}.png"
        if i == 5:
            p.write_bytes(b"not an image")
        else:
            img = np.full((60 + i, 80), 20, np.uint8)
            img[10:50, 10 + i:70] = 120 + 10 * i  # a 'lung' of its own brightness and position
            Image.fromarray(img).save(p)
        paths.append(str(p))
    cfg = PreprocessConfig(roi="lungs-crop", roi_margin=0.0, segmentation_model="x")
    out = list(iter_preprocessed(paths, 16, cfg, threshold_segmenter, workers=workers, progress=False, chunk=4))
    assert [i for i, _, _ in out] == list(range(11))
    for i, img, err in out:
        if i == 5:
            assert img is None and "not a readable image" in err
        else:
            assert err is None and int(np.median(img)) == 120 + 10 * i


def test_cache_key_follows_preprocessing(tmp_path):
    img, _ = _phantom()
    path = tmp_path / "a.png"
    Image.fromarray(img).save(path)
    plain = ImageCache([str(path)], 32, cache_dir=tmp_path / "c", progress=False)
    clahe = ImageCache([str(path)], 32, cache_dir=tmp_path / "c", progress=False,
                       preprocess=PreprocessConfig(intensity="clahe"))
    cfg = PreprocessConfig(roi="lungs-crop", segmentation_model="x", segmentation_sha256="1" * 64)
    crop = ImageCache([str(path)], 32, cache_dir=tmp_path / "c", progress=False, preprocess=cfg,
                      segmenter=threshold_segmenter)
    assert len({plain.file, clahe.file, crop.file}) == 3
    np.testing.assert_array_equal(plain.images[0], load_resized(path, 32))
    np.testing.assert_array_equal(crop.images[0], load_preprocessed(path, 32, cfg, threshold_segmenter))
    again = ImageCache([str(path)], 32, cache_dir=tmp_path / "c", progress=False, preprocess=cfg)
    assert again.file == crop.file  # reused: no segmenter needed to read a built cache


# --- geometry: where the model input came from (explanations map heatmaps back with it) ---------------------------

def _previous_load_preprocessed(path, size, cfg, segmenter):
    """The implementation of ``load_preprocessed`` before geometry was reported, copied verbatim (with its private
    helpers ``crop_border``, ``preprocess_image``, ``decode_for``, ``preprocess_decoded``), to prove the refactoring
    left every output unchanged."""
    from dataclasses import replace

    from scipy import ndimage

    from covidscreen.data.decode import read_image
    from covidscreen.data.preprocess import _resize_mask

    def crop(image, fraction):
        if fraction <= 0:
            return image
        h, w = image.shape[:2]
        dy, dx = int(round(h * fraction)), int(round(w * fraction))
        return image[dy:h - dy, dx:w - dx]

    def prep(image, size, cfg, lung_mask):
        img = crop(image, cfg.border_crop)
        mask = None
        if cfg.needs_segmentation:
            box = lung_bbox(lung_mask, cfg.roi_margin)
            if box is not None:
                mask = lung_mask
                if cfg.crops:
                    top, bottom, left, right = box
                    img, mask = img[top:bottom, left:right], mask[top:bottom, left:right]
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
        return out

    if cfg.is_identity:
        return resize_square(read_image(path, draft_size=size), size)
    draft = size * 2 if cfg.crops else size
    img = crop(read_image(path, draft_size=draft), cfg.border_crop)
    masks = segmenter([img]) if cfg.needs_segmentation else [None]
    return prep(img, size, replace(cfg, border_crop=0.0), masks[0])


def central_lungs_segmenter(images):
    """A stand-in segmenter for real images: two 'lungs' at fixed fractions of whatever image it is given."""
    out = []
    for img in images:
        h, w = img.shape
        m = np.zeros((h, w), bool)
        m[int(0.2 * h):int(0.8 * h), int(0.15 * w):int(0.45 * w)] = True
        m[int(0.2 * h):int(0.8 * h), int(0.55 * w):int(0.85 * w)] = True
        out.append(m)
    return out


def no_lungs_segmenter(images):
    return [np.zeros(img.shape, bool) for img in images]


@pytest.mark.parametrize("roi", ["none", "lungs-crop", "lungs-mask", "lungs-crop-mask"])
@pytest.mark.parametrize("border", [0.0, 0.05])
def test_load_preprocessed_is_unchanged_on_real_images(roi, border):
    files = [DATA / "images" / "cohen" / "000001-12-fbea56d7.jpg",  # 373 x 361
             DATA / "images" / "cohen" / "01E392EE-69F9-4E33-BFCE-E5C968654078-2ff484e6.jpg",  # 512 x 381
             DATA / "images" / "nih" / "00000061_012-090ac51e.jpg",  # 512 x 512
             DATA / "images" / "kermany" / "IM-0001-0001-a65c7f9e.jpg"]  # 224 x 224
    for intensity, segmenter in (("none", central_lungs_segmenter), ("clahe", central_lungs_segmenter),
                                 ("standardize", no_lungs_segmenter)):
        cfg = PreprocessConfig(roi=roi, intensity=intensity, border_crop=border,
                               segmentation_model="x" if roi != "none" else None)
        for f in files:
            expected = _previous_load_preprocessed(f, 64, cfg, segmenter)
            np.testing.assert_array_equal(load_preprocessed(f, 64, cfg, segmenter), expected)
            out, geometry = load_preprocessed_with_geometry(f, 64, cfg, segmenter)
            np.testing.assert_array_equal(out, expected)
            assert 0 <= geometry.top < geometry.bottom <= geometry.height
            assert 0 <= geometry.left < geometry.right <= geometry.width


def test_geometry_of_the_border_crop(tmp_path):
    img = np.arange(100 * 80, dtype=np.uint32).reshape(100, 80).astype(np.uint8)
    out, box = preprocess_image_and_box(img, 32, PreprocessConfig(border_crop=0.1))
    assert box == (10, 90, 8, 72)  # 10 % of 100 rows, 10 % of 80 columns on every side
    np.testing.assert_array_equal(out, resize_square(img[10:90, 8:72], 32))
    path = tmp_path / "x.png"
    Image.fromarray(img).save(path)
    out, geometry = load_preprocessed_with_geometry(path, 32, PreprocessConfig(border_crop=0.1))
    assert geometry == InputGeometry(100, 80, 10, 90, 8, 72) and geometry.crops
    np.testing.assert_array_equal(out, load_preprocessed(path, 32, PreprocessConfig(border_crop=0.1)))
    _, plain = load_preprocessed_with_geometry(path, 32, PreprocessConfig(intensity="clahe"))
    assert plain == InputGeometry(100, 80, 0, 100, 0, 80) and not plain.crops


@pytest.mark.parametrize("roi", ["lungs-crop", "lungs-crop-mask"])
def test_geometry_of_the_lung_crop_after_a_border_crop(tmp_path, roi):
    img, (t, b, left, r) = _phantom()  # lungs: rows 40..160, columns 60..250 of a 200 x 300 image
    path = tmp_path / "x.png"
    Image.fromarray(img).save(path)
    cfg = PreprocessConfig(roi=roi, border_crop=0.05, roi_margin=0.1, segmentation_model="x")
    out, geometry = load_preprocessed_with_geometry(path, 64, cfg, threshold_segmenter)
    # the lung box grown by 10 % of its size (12 rows, 19 columns) on every side, in the original image's pixels:
    # the border crop (10 rows, 15 columns) is undone
    assert geometry == InputGeometry(200, 300, t - 12, b + 12, left - 19, r + 19)
    np.testing.assert_array_equal(out, load_preprocessed(path, 64, cfg, threshold_segmenter))
    if roi == "lungs-crop":
        np.testing.assert_array_equal(out, resize_square(img[t - 12:b + 12, left - 19:r + 19], 64))


def test_geometry_when_the_lungs_are_not_found_is_the_border_cropped_image(tmp_path):
    img, _ = _phantom()
    path = tmp_path / "x.png"
    Image.fromarray(img).save(path)
    stats: dict = {}
    cfg = PreprocessConfig(roi="lungs-crop", border_crop=0.05, segmentation_model="x")
    _, geometry = load_preprocessed_with_geometry(path, 64, cfg, no_lungs_segmenter, stats)
    assert geometry == InputGeometry(200, 300, 10, 190, 15, 285) and stats == {"roi_fallback": 1}
    masked = PreprocessConfig(roi="lungs-mask", segmentation_model="x")  # masks, keeps the whole image
    _, geometry = load_preprocessed_with_geometry(path, 64, masked, threshold_segmenter)
    assert geometry == InputGeometry.whole((200, 300))


def test_geometry_of_a_draft_decoded_jpeg_scales_to_the_full_image(tmp_path):
    """JPEGs are decoded for preprocessing at a reduced scale; the box must land on the full-resolution image."""
    from covidscreen.data.decode import read_image

    img, (t, b, left, r) = _phantom()
    big = np.kron(img, np.ones((4, 4), np.uint8))  # 800 x 1200, lungs at 4x the phantom's box
    path = tmp_path / "x.jpg"
    Image.fromarray(big).save(path, quality=95)
    cfg = PreprocessConfig(roi="lungs-crop", roi_margin=0.0, segmentation_model="x")
    _, geometry = load_preprocessed_with_geometry(path, 64, cfg, threshold_segmenter)
    assert (geometry.height, geometry.width) < (800, 1200)  # decoded at a draft scale
    full = geometry.scaled_to(*read_image(path).shape)
    assert full.height == 800 and full.width == 1200
    np.testing.assert_allclose(full.box, (4 * t, 4 * b, 4 * left, 4 * r), atol=4)  # one draft pixel


def test_geometry_of_a_real_lung_mask_on_a_real_image():
    """A segmenter that returns the image's true lung mask (resized to what it is given): the box in the full image
    is the true mask's box with the margin, whatever scale the JPEG was decoded at."""
    import pandas as pd

    from covidscreen.data.decode import read_image

    meta = pd.read_csv(DATA / "metadata.csv", keep_default_na=False)
    row = meta[meta["image"] == "images/cohen/01E392EE-69F9-4E33-BFCE-E5C968654078-2ff484e6.jpg"].iloc[0]
    true_mask = np.asarray(Image.open(DATA / row["lung_mask"]).convert("L")) > 0

    def segmenter(images):
        return [np.asarray(Image.fromarray(true_mask).resize(img.shape[::-1], Image.Resampling.NEAREST))
                for img in images]

    cfg = PreprocessConfig(roi="lungs-crop", roi_margin=0.1, segmentation_model="x")
    _, geometry = load_preprocessed_with_geometry(DATA / row["image"], 64, cfg, segmenter)
    full = geometry.scaled_to(*read_image(DATA / row["image"]).shape)
    assert (full.height, full.width) == true_mask.shape == (381, 512)
    np.testing.assert_allclose(full.box, lung_bbox(true_mask, 0.1), atol=3)


def test_scaled_geometry_never_leaves_the_image_or_becomes_empty():
    g = InputGeometry(10, 10, 9, 10, 0, 10)
    assert g.scaled_to(10, 10) is g
    small = g.scaled_to(3, 3)
    assert 0 <= small.top < small.bottom <= 3 and (small.left, small.right) == (0, 3)
