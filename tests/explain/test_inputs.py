import numpy as np
import pytest

from covidscreen.data.decode import load_resized
from covidscreen.data.preprocess import PreprocessConfig, load_preprocessed
from covidscreen.explain.cam import ExplainError
from covidscreen.explain.inputs import run_input_loader


def test_plain_run_sees_the_resized_image(shared_data, tmp_path):
    f = shared_data / "samples" / "16747_3_1.jpg"
    load, mask_fn = run_input_loader({"image_size": 64}, tmp_path)
    np.testing.assert_array_equal(load(f), load_resized(f, 64))
    assert mask_fn is None


def test_intensity_preprocessing_is_applied_as_in_training(shared_data, tmp_path):
    f = shared_data / "samples" / "16747_3_1.jpg"
    meta = {"image_size": 64, "preprocessing": {"intensity": "clahe"}}
    load, _ = run_input_loader(meta, tmp_path)
    expected = load_preprocessed(f, 64, PreprocessConfig(intensity="clahe"), None)
    np.testing.assert_array_equal(load(f), expected)
    assert not np.array_equal(load(f), load_resized(f, 64))


@pytest.mark.parametrize("pre", [{"border_crop": 0.05}, {"roi": "lungs-crop", "segmentation_model": "seg"}])
def test_cropping_runs_are_refused_clearly(tmp_path, pre):
    with pytest.raises(ExplainError, match="crops its inputs"):
        run_input_loader({"image_size": 64, "preprocessing": pre}, tmp_path)
