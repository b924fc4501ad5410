import numpy as np
import pytest

from covidscreen.data.perturb import PERTURBATIONS, perturb_batch, strengths_for, translation


def _image(side: int = 48) -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.random((side, side)) * 200 + 20).astype(np.uint8)


@pytest.mark.parametrize("k", [1, 3, 7])
def test_translation_moves_the_image_by_exactly_k_pixels(k):
    img = _image()
    out = translation(img, k)
    np.testing.assert_array_equal(out[k:, k:], img[:-k, :-k])
    assert (out[:k, :] == 0).all() and (out[:, :k] == 0).all()


def test_translation_of_a_single_bright_pixel():
    img = np.zeros((20, 20), np.uint8)
    img[5, 9] = 255
    out = translation(img, 4)
    assert list(zip(*np.nonzero(out))) == [(9, 13)]


@pytest.mark.parametrize("name", list(PERTURBATIONS))
def test_every_perturbation_is_the_identity_at_strength_zero_and_changes_the_image_above(name):
    batch = np.stack([_image(), _image()[::-1].copy()])
    before = batch.copy()
    same = perturb_batch(batch, name, 0.0)
    np.testing.assert_array_equal(same, batch)
    strongest = strengths_for(name, 48)[-1]
    changed = perturb_batch(batch, name, strongest)
    assert changed.shape == batch.shape and changed.dtype == np.uint8
    assert not np.array_equal(changed, batch)
    np.testing.assert_array_equal(batch, before)  # inputs are not mutated


def test_brightness_and_noise_are_exact_and_seeded():
    img = np.full((8, 8), 100, np.uint8)
    np.testing.assert_array_equal(PERTURBATIONS["brightness"][0](img, 0.2, 0), np.full((8, 8), 151, np.uint8))
    a = perturb_batch(np.stack([img]), "noise", 0.05, seed=3)
    b = perturb_batch(np.stack([img]), "noise", 0.05, seed=3)
    np.testing.assert_array_equal(a, b)
    assert abs(float(a.std()) - 0.05 * 255) < 4


def test_translation_strengths_scale_with_the_input():
    assert strengths_for("translation", 224)[-1] == 16 and strengths_for("translation", 112)[-1] == 8
