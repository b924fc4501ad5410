"""Preprocessing: crops and masks keep image geometry and order; identity is bit-exact; the cache key follows."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from covidscreen.data.cache import ImageCache
from covidscreen.data.decode import load_resized, resize_square
from covidscreen.data.preprocess import (
    MASK_DILATION,
    PreprocessConfig,
    crop_border,
    iter_preprocessed,
    load_preprocessed,
    lung_bbox,
    normalise_intensity,
    preprocess_image,
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
