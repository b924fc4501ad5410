"""Tests of covidscreen.explain.cam: maps for every architecture, geometry, hooks, memory, errors."""

from __future__ import annotations

import gc
import os
import tracemalloc

import numpy as np
import pytest
import torch
from PIL import Image

from covidscreen.errors import CovidscreenError, ImageDecodeError
from covidscreen.explain import METHODS, Explainer, ExplainError, explain, resize_map
from covidscreen.models import create_model, list_models
from tests.explain_fixtures import hook_count, make_tiny, synthetic_images


@pytest.mark.parametrize("name", list_models())
def test_every_registry_model_gives_a_finite_map_in_the_image_geometry(name):
    model = create_model(name, pretrained=False, num_classes=3).eval()
    image = synthetic_images(1, "centre", 0)[0]
    image = np.asarray(Image.fromarray(image).resize((90, 70)))  # non-square: 70 rows, 90 columns
    heat = explain(model, image, target=1, image_size=64)
    assert heat.shape == (70, 90)
    assert heat.dtype == np.float32
    assert np.isfinite(heat).all()
    assert heat.min() >= 0 and heat.max() <= 1
    assert hook_count(model) == 0


def test_map_is_resized_back_from_the_square_input():
    # a map that is 1 on the left half of the square input must cover the left half of a wide image
    square = np.zeros((64, 64), np.float32)
    square[:, :32] = 1
    back = resize_map(square, (40, 200))
    assert back.shape == (40, 200)
    assert back[:, :95].min() > 0.99 and back[:, 105:].max() < 0.01


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_runs_and_releases_hooks(method):
    model = make_tiny()
    with Explainer(model, method=method, image_size=64) as ex:
        assert hook_count(model) > 0  # the context really hooks the model
        e = ex.explain(synthetic_images(1, "corner", 1)[0], target=0)
    assert e.heatmap.shape == (64, 64) and np.isfinite(e.heatmap).all()
    assert hook_count(model) == 0


def test_context_restores_model_state_and_releases_hooks_after_an_error():
    model = make_tiny()
    model.train()
    model.backbone.fc.weight.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    with pytest.raises(ExplainError):
        with Explainer(model, classes=["a", "b"], image_size=64) as ex:
            ex.explain(synthetic_images(1, None, 0)[0], target="c")
    assert hook_count(model) == 0
    assert model.training
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())  # no weight gradients are ever computed


def test_explain_works_under_no_grad_and_does_not_mutate_the_input():
    model = make_tiny()
    image = synthetic_images(1, "corner", 2)[0]
    copy = image.copy()
    with torch.inference_mode():
        heat = explain(model, image, target=1, image_size=64)
    with torch.no_grad():
        heat2 = explain(model, image, target=1, image_size=64)
    np.testing.assert_allclose(heat, heat2, atol=1e-6)
    np.testing.assert_array_equal(image, copy)


def test_target_by_name_index_and_default_prediction():
    model = make_tiny(3)
    image = synthetic_images(1, "corner", 3)[0]
    with Explainer(model, classes=["covid", "normal", "pneumonia"], image_size=64) as ex:
        by_name = ex.explain(image, target="normal")
        by_index = ex.explain(image, target=1)
        default = ex.explain(image)
    np.testing.assert_allclose(by_name.heatmap, by_index.heatmap, atol=1e-6)
    assert by_name.target_name == "normal"
    assert default.target == int(np.argmax(default.probs))
    np.testing.assert_allclose(default.probs.sum(), 1, atol=1e-5)


def test_border_fraction_of_an_explanation_uses_the_given_mask():
    from covidscreen.explain import border_fraction

    model = make_tiny()
    image = synthetic_images(1, "corner", 8)[0]
    lungs = np.zeros((32, 32), bool)
    lungs[8:24, 4:28] = True
    with Explainer(model, image_size=64) as ex:
        e = ex.explain(image, target=1, mask=lungs)
        box = ex.explain(image, target=1)
    assert e.mask is lungs
    assert e.border_fraction == border_fraction(e.heatmap, lungs)
    assert e.border_area == pytest.approx(1 - 16 * 24 / 32**2)
    assert box.border_area == pytest.approx(1 - 0.75**2) and box.mask is None


def test_ensemble_averages_the_members_maps_and_probabilities():
    a, b = make_tiny(seed=1), make_tiny(seed=2)
    image = synthetic_images(1, "centre", 4)[0]
    with Explainer([a, b], image_size=64) as ex:
        both = ex.explain(image, target=1)
    with Explainer(a, image_size=64) as ex:
        ea = ex.explain(image, target=1)
    with Explainer(b, image_size=64) as ex:
        eb = ex.explain(image, target=1)
    np.testing.assert_allclose(both.heatmap, (ea.heatmap + eb.heatmap) / 2, atol=1e-5)
    np.testing.assert_allclose(both.probs, (ea.probs + eb.probs) / 2, atol=1e-6)
    assert hook_count(a) == 0 and hook_count(b) == 0


def test_files_are_read_like_predict_reads_them(tmp_path):
    model = make_tiny()
    image = synthetic_images(1, "corner", 5)[0]
    wide = np.asarray(Image.fromarray(image).resize((100, 80)))
    Image.fromarray(wide).save(tmp_path / "x.png")
    heat = explain(model, tmp_path / "x.png", target=1, image_size=64)
    assert heat.shape == (80, 100)
    np.testing.assert_allclose(heat, explain(model, wide, target=1, image_size=64), atol=1e-6)


def test_bad_input_gives_clear_errors(tmp_path):
    model = make_tiny()
    image = synthetic_images(1, None, 0)[0]
    with pytest.raises(ExplainError, match="unknown explanation method 'lime'.*gradcam"):
        explain(model, image, method="lime")
    with pytest.raises(ExplainError, match="class 'covid' is not a class of this model; classes: normal, pneumonia"):
        explain(model, image, target="covid", classes=["normal", "pneumonia"])
    with pytest.raises(ExplainError, match="out of range"):
        explain(model, image, target=5)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(ImageDecodeError, match="broken.png"):
        explain(model, bad)
    with pytest.raises(ExplainError, match="2-D uint8"):
        explain(model, np.zeros((4, 64, 64), np.float32))
    for exc in (ExplainError, ImageDecodeError):
        assert issubclass(exc, CovidscreenError)
    assert hook_count(model) == 0


def _rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc to read the resident set size")
def test_memory_stays_flat_over_50_calls():
    model = create_model("resnet18", pretrained=False, num_classes=3).eval()
    image = synthetic_images(1, "centre", 6)[0]
    with Explainer(model, image_size=96) as ex:
        for _ in range(5):  # warm-up: allocator pools, lazy initialisation
            ex.explain(image, target=0)
        gc.collect()
        rss0 = _rss_mb()
        tracemalloc.start()
        snap0 = tracemalloc.take_snapshot()
        for _ in range(50):
            ex.explain(image, target=0)
        gc.collect()
        snap1 = tracemalloc.take_snapshot()
        tracemalloc.stop()
        rss1 = _rss_mb()
    py_growth = sum(s.size_diff for s in snap1.compare_to(snap0, "filename")) / 2**20
    # one call's activations and graph at 96 px are ~10 MB: keeping them per call would add hundreds of MB
    assert rss1 - rss0 < 40, f"RSS grew by {rss1 - rss0:.1f} MB over 50 calls"
    assert py_growth < 2, f"Python allocations grew by {py_growth:.2f} MB over 50 calls"
    assert hook_count(model) == 0


def test_chunked_score_cam_equals_the_librarys():
    from pytorch_grad_cam import ScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = make_tiny()
    images = synthetic_images(2, "corner", 7)
    with Explainer(model, method="scorecam", image_size=64) as ex:
        ours, _, _ = ex.maps(images, 1)
    x = torch.from_numpy(images).float().div(255)[:, None]
    with ScoreCAM(model=model, target_layers=[model.gradcam_layer]) as cam:
        theirs = cam(input_tensor=x, targets=[ClassifierOutputTarget(1)] * 2)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    assert hook_count(model) == 0
