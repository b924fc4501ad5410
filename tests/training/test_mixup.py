"""Mixup and CutMix: labels are probability vectors matching how much of each image went in."""

import numpy as np
import pytest
import torch

from covidscreen.training.mixup import BatchMixer, cutmix_images


def _constant_batch(b: int = 8, size: int = 16):
    # image i is filled with the value i, so every pixel says which image it came from
    x = torch.arange(b, dtype=torch.float32).view(b, 1, 1, 1).expand(b, 1, size, size).contiguous()
    y = torch.arange(b) % 3
    return x, y


@pytest.mark.parametrize("mixup,cutmix", [(0.4, 0.0), (0.0, 1.0), (0.4, 1.0)])
def test_mixed_labels_sum_to_one_and_input_is_untouched(mixup, cutmix):
    x, y = _constant_batch()
    before = x.clone()
    mixer = BatchMixer(3, mixup, cutmix, seed=0)
    for _ in range(10):
        xm, t = mixer(x, y)
        assert t.shape == (8, 3)
        assert torch.allclose(t.sum(1), torch.ones(8))
        assert (t >= 0).all()
    assert torch.equal(x, before)


def test_mixup_blends_images_and_labels_with_the_same_weight():
    x, y = _constant_batch()
    xm, t = BatchMixer(3, mixup_alpha=0.4, seed=3)(x, y)
    # the mixer draws lam, then the partner permutation, from its seeded generator
    rng = np.random.default_rng(3)
    lam = rng.beta(0.4, 0.4)
    perm = torch.from_numpy(rng.permutation(8))
    assert 0 < lam < 1 and not torch.equal(perm, torch.arange(8))
    assert torch.allclose(xm, lam * x + (1 - lam) * x[perm])
    onehot = torch.nn.functional.one_hot(y, 3).float()
    assert torch.allclose(t, lam * onehot + (1 - lam) * onehot[perm])


def test_cutmix_label_weight_equals_area_share():
    x, _ = _constant_batch(2, 32)
    other = x.flip(0)
    rng = np.random.default_rng(0)
    for lam in (0.1, 0.5, 0.9):
        out, lam_eff = cutmix_images(x, other, lam, rng)
        share_own = float((out[0] == x[0]).float().mean())
        assert share_own == pytest.approx(lam_eff)


def test_mixer_off_gives_one_hot_and_same_images():
    x, y = _constant_batch()
    mixer = BatchMixer(3)
    assert not mixer.active
    xm, t = mixer(x, y)
    assert xm is x
    assert torch.equal(t, torch.nn.functional.one_hot(y, 3).float())


def test_mixer_is_seeded():
    x, y = _constant_batch()
    a = BatchMixer(3, 0.4, 1.0, seed=5)
    b = BatchMixer(3, 0.4, 1.0, seed=5)
    for _ in range(3):
        (xa, ta), (xb, tb) = a(x, y), b(x, y)
        assert torch.equal(xa, xb) and torch.equal(ta, tb)
