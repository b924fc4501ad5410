"""`security/chunks.py`: the searches' passes are bounded by images and pixels, and a search split into passes
finds what one pass finds (each candidate's loss and gradient depend only on its own images); the model the
searches run is frozen and folded, and given back as it was."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from covidscreen.security import mmbd as mmbd_module
from covidscreen.security import sanitize as sanitize_module
from covidscreen.security.chunks import CHUNK_IMAGES, frozen_model, images_per_pass
from covidscreen.security.mmbd import max_margins
from covidscreen.security.patches import patch_search
from covidscreen.security.sanitize import universal_perturbation

from .tiny import TinyNet


def test_passes_are_bounded_by_images_and_pixels():
    assert images_per_pass(32, 32) == images_per_pass(64, 64) == CHUNK_IMAGES == 256
    assert images_per_pass(224, 224) == 20  # 2**20 pixels: the default model's 80 MB per image stay near 1.6 GB
    assert images_per_pass(4096, 4096) == 1  # never none
    assert images_per_pass(64, 64, max_images=1000, max_pixels=4096 * 10) == 10


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return TinyNet(3).eval()


def _images(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 1, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_patch_search_in_passes_finds_what_one_pass_finds(net):
    fit, test = _images(8, 0), _images(12, 1)
    kw = {"side": 8, "steps": 5, "prune_after": (2,), "min_keep": 2}
    one = patch_search(net, fit, test, 1, max_batch=4096, **kw)  # 16 positions x 8 images: one pass
    split = patch_search(net, fit, test, 1, max_batch=24, **kw)  # 3 positions (24 images) per pass, 8 test images
    default = patch_search(net, fit, test, 1, **kw)
    for other in (split, default):
        assert other.position == one.position and other.success == one.success
        np.testing.assert_allclose(other.pattern, one.pattern, atol=1e-5)


def test_mmbd_in_passes_finds_what_one_pass_finds(net, monkeypatch):
    one = max_margins(net, (32, 32), 3, starts=3, steps=4)
    monkeypatch.setattr(mmbd_module, "images_per_pass", lambda h, w: 4)  # 9 images: passes of 4, 4 and 1
    np.testing.assert_allclose(max_margins(net, (32, 32), 3, starts=3, steps=4), one, rtol=1e-5)


def test_universal_perturbation_in_passes_is_the_one_pass_perturbation(net, monkeypatch):
    x, y = _images(10, 2), torch.arange(10) % 3
    one = universal_perturbation(net, x, y, 3.0, 4, torch.Generator().manual_seed(0))
    monkeypatch.setattr(sanitize_module, "images_per_pass", lambda h, w: 3)
    split = universal_perturbation(net, x, y, 3.0, 4, torch.Generator().manual_seed(0))
    torch.testing.assert_close(split, one, rtol=1e-4, atol=1e-5)


def test_the_searched_model_is_frozen_and_folded_and_given_back_as_it_was():
    torch.manual_seed(0)
    model = TinyNet(3, batchnorm=True)
    with torch.no_grad():  # BatchNorm statistics and affine maps that are not the identity
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    model.head.requires_grad_(False)  # a caller's frozen layer stays frozen afterwards
    modules, x = list(model.modules()), _images(4, 3)
    with torch.no_grad():
        expected = model.eval()(x)
    model.train()
    with frozen_model(model, x[:2]) as searched:
        assert not searched.training and not any(p.requires_grad for p in searched.parameters())
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in searched.modules())  # all three folded
        with torch.no_grad():
            torch.testing.assert_close(searched(x), expected, rtol=1e-4, atol=1e-5)
    assert list(model.modules()) == modules and model.training
    assert [p.requires_grad for p in model.parameters()] == [True] * 12 + [False, False]  # 3 x (conv, BN) + head
