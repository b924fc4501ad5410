import numpy as np
import pytest
from PIL import Image

from covidscreen.config import PreprocessConfig
from covidscreen.data.decode import load_resized, read_image
from covidscreen.data.preprocess import InputGeometry, load_preprocessed
from covidscreen.explain import inputs as explain_inputs
from covidscreen.explain.cam import ExplainError, resize_map
from covidscreen.explain.inputs import chance_level, crop_description, crop_notes, map_to_image, run_input_loader


def _loader(meta: dict, run_dir):
    """The input loader of a run whose sidecar holds ``meta``."""
    return run_input_loader(PreprocessConfig.from_dict(meta.get("preprocessing")), meta["image_size"], run_dir)


def test_plain_run_sees_the_resized_image(shared_data, tmp_path):
    f = shared_data / "samples" / "16747_3_1.jpg"
    load, mask_fn = _loader({"image_size": 64}, tmp_path)
    x, geometry = load(f)
    np.testing.assert_array_equal(x, load_resized(f, 64))
    assert not geometry.crops and mask_fn is None


def test_intensity_preprocessing_is_applied_as_in_training(shared_data, tmp_path):
    f = shared_data / "samples" / "16747_3_1.jpg"
    meta = {"image_size": 64, "preprocessing": {"intensity": "clahe"}}
    load, _ = _loader(meta, tmp_path)
    x, geometry = load(f)
    np.testing.assert_array_equal(x, load_preprocessed(f, 64, PreprocessConfig(intensity="clahe"), None))
    assert not np.array_equal(x, load_resized(f, 64)) and not geometry.crops


def test_a_border_cropping_run_is_explained_with_its_box(shared_data, tmp_path):
    f = shared_data / "samples" / "nih_00000001_000.png"
    load, _ = _loader({"image_size": 64, "preprocessing": {"border_crop": 0.1}}, tmp_path)
    x, geometry = load(f)
    h, w = read_image(f).shape
    assert geometry == InputGeometry(h, w, round(0.1 * h), h - round(0.1 * h), round(0.1 * w), w - round(0.1 * w))
    np.testing.assert_array_equal(x, load_preprocessed(f, 64, PreprocessConfig(border_crop=0.1)))


def test_a_run_whose_segmenter_copy_is_missing_is_refused_clearly(tmp_path):
    meta = {"image_size": 64, "preprocessing": {"roi": "lungs-crop", "segmentation_model": "lung_seg"}}
    with pytest.raises(ExplainError, match="needs its lung segmenter, which cannot be loaded"):
        _loader(meta, tmp_path)


def test_a_peak_of_the_input_map_lands_where_that_input_pixel_came_from():
    s = 64
    geometry = InputGeometry(200, 300, 30, 150, 60, 240)  # a 120 x 180 box
    for i, j in ((16, 48), (0, 0), (63, 63), (40, 5)):
        peak = np.zeros((s, s), np.float32)
        peak[i, j] = 1.0
        placed = map_to_image(peak, geometry, (200, 300))
        assert placed.shape == (200, 300)
        # pixel centres: input pixel i covers box rows [i * 120/64, (i + 1) * 120/64)
        expected = (30 + (i + 0.5) * 120 / s - 0.5, 60 + (j + 0.5) * 180 / s - 0.5)
        found = np.unravel_index(np.argmax(placed), placed.shape)
        assert abs(found[0] - expected[0]) <= 1 and abs(found[1] - expected[1]) <= 1, (i, j, found, expected)
        outside = np.ones((200, 300), bool)
        outside[30:150, 60:240] = False
        assert placed[outside].max() == 0  # the model saw nothing there


def test_a_geometry_of_a_reduced_decode_is_scaled_to_the_image_drawn_on():
    peak = np.zeros((64, 64), np.float32)
    peak[16, 48] = 1.0
    draft = InputGeometry(100, 150, 15, 75, 30, 120)  # the same box as above, decoded at half scale
    np.testing.assert_array_equal(map_to_image(peak, draft, (200, 300)),
                                  map_to_image(peak, InputGeometry(200, 300, 30, 150, 60, 240), (200, 300)))


def test_an_uncropped_map_is_the_plain_resize_as_before():
    heat = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    np.testing.assert_array_equal(map_to_image(heat, InputGeometry.whole((32, 48)), (97, 131)),
                                  resize_map(heat, (97, 131)))


def _lung_phantom(path, nodule=(330, 780)):
    """An 800 x 1200 JPEG: dark background, a bright 'lung' box (rows 160-640, columns 240-1000), a brighter disc."""
    img = np.full((800, 1200), 30, np.uint8)
    img[160:640, 240:1000] = 150
    yy, xx = np.mgrid[:800, :1200]
    img[(yy - nodule[0]) ** 2 + (xx - nodule[1]) ** 2 <= 20 ** 2] = 250
    Image.fromarray(img).save(path, quality=95)
    return nodule


@pytest.mark.parametrize("pre", [{"roi": "lungs-crop", "border_crop": 0.05}, {"roi": "lungs-crop-mask"},
                                 {"border_crop": 0.2}])
def test_a_hot_spot_of_the_model_input_goes_back_to_its_place_in_the_full_image(tmp_path, monkeypatch, pre):
    """What the model sees at an input pixel must be what the figure shows under the mapped heatmap: a map that
    lights up the input's brightest spot (the disc) must peak on the disc in the full-resolution image, whatever the
    crops and the reduced JPEG decode of preprocessing did."""
    monkeypatch.setattr(explain_inputs, "load_segmenter_for",
                        lambda pp, base_dir=None: (lambda images: [img > 100 for img in images]))
    path = tmp_path / "phantom.jpg"
    centre = _lung_phantom(path)
    meta = {"image_size": 64, "preprocessing": {"segmentation_model": "x", **pre}}
    load, _ = _loader(meta, tmp_path)
    x, geometry = load(path)
    assert geometry.crops
    heat = np.clip((x.astype(np.float32) - 200) / 55, 0, 1)  # 'hot' where the model input shows the disc
    full = read_image(path)
    placed = map_to_image(heat, geometry, full.shape)
    assert placed.shape == full.shape == (800, 1200)
    yy, xx = np.mgrid[:800, :1200]
    com = (float((placed * yy).sum() / placed.sum()), float((placed * xx).sum() / placed.sum()))
    view = geometry.scaled_to(800, 1200)
    pixel = ((view.bottom - view.top) / 64, (view.right - view.left) / 64)  # one model-input pixel, in full pixels
    assert abs(com[0] - centre[0]) <= pixel[0] and abs(com[1] - centre[1]) <= pixel[1], (com, centre, pixel)


def test_chance_level_is_a_map_uniform_over_what_the_model_saw():
    shape = (80, 80)  # band of 10 pixels at the default margin
    assert chance_level(shape, InputGeometry.whole(shape)) == pytest.approx(1 - 60 * 60 / 80 / 80)
    assert chance_level(shape, InputGeometry(80, 80, 20, 60, 20, 60)) == 0  # the box lies inside the chest region
    half = chance_level(shape, InputGeometry(80, 80, 0, 80, 10, 70))  # sees the top and bottom bands only
    assert half == pytest.approx(20 / 80)
    assert chance_level((160, 160), InputGeometry(80, 80, 0, 80, 10, 70)) == pytest.approx(half)  # scale-free


def test_crop_words_and_notes():
    assert crop_description(PreprocessConfig()) is None and crop_notes(None, [0.0]) == []
    words = crop_description(PreprocessConfig(roi="lungs-crop", border_crop=0.05, segmentation_model="x"))
    assert "border crop of 0.05" in words and "lungs' bounding box" in words
    notes = " ".join(crop_notes(words, [0.0, 0.0]))
    assert "the model cannot see the border: it was cropped away" in notes.lower()
    assert "cannot see the border" not in " ".join(crop_notes(words, [0.0, 0.2]))
    assert "outside the chest mask" in " ".join(crop_notes(words, [0.0, 0.2], mask_region=True))
