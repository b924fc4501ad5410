"""Gradient reversal, the site adversary, its training epoch and the site probe."""

import numpy as np
import pytest
import torch

from covidscreen.models import create_model
from covidscreen.training.adversarial import (
    FeatureTap,
    GradientReversal,
    SiteAdversary,
    adversarial_step,
    extract_features,
    feature_size,
    grad_reverse,
    grl_schedule,
)
from covidscreen.training.loop import Optimisation, train_one_epoch


def test_gradient_reversal_flips_and_scales_gradients():
    x = torch.randn(4, 5, requires_grad=True)
    w = torch.randn(4, 5)
    y = grad_reverse(x, 0.3)
    torch.testing.assert_close(y, x)  # identity forward
    (y * w).sum().backward()
    torch.testing.assert_close(x.grad, -0.3 * w)
    x2 = x.detach().clone().requires_grad_(True)
    (GradientReversal(2.0)(x2) * w).sum().backward()
    torch.testing.assert_close(x2.grad, -2.0 * w)


def test_schedule_ramps_from_zero_to_weight():
    assert grl_schedule(0.0, 0.5) == 0.0
    assert grl_schedule(1.0, 0.5) == pytest.approx(0.5, abs=1e-4)
    vals = [grl_schedule(p, 1.0) for p in np.linspace(0, 1, 11)]
    assert all(a < b for a, b in zip(vals, vals[1:], strict=False))


def test_adversary_head_learns_site_while_features_get_the_opposite_gradient():
    torch.manual_seed(0)
    feats = torch.randn(64, 8)
    sites = (feats[:, 0] > 0).long()  # site readable from feature 0
    labels = torch.zeros(64, dtype=torch.long)
    adv = SiteAdversary(8, 2, 3, conditional=True)
    adv.grl.coeff = 1.0
    adv.eval()  # no dropout: the two passes below must see the same network
    f = feats.clone().requires_grad_(True)
    adv.loss(f, sites, labels).backward()
    g_reversed = f.grad.clone()
    f2 = feats.clone().requires_grad_(True)
    plain = torch.nn.functional.cross_entropy(
        adv.head(torch.cat([f2, torch.nn.functional.one_hot(labels, 3).float()], 1)), sites)
    plain.backward()
    torch.testing.assert_close(g_reversed, -f2.grad)
    adv.train()
    opt = torch.optim.Adam(adv.parameters(), lr=1e-2)
    first = adv.loss(feats, sites, labels).item()
    for _ in range(100):
        opt.zero_grad()
        adv.loss(feats, sites, labels).backward()
        opt.step()
    assert adv.loss(feats, sites, labels).item() < 0.5 * first


@pytest.mark.parametrize("name", ["mobilenet_v2_035", "squeezenet1_1", "efficientnet_lite0"])
def test_feature_tap_reads_the_pooled_features(name):
    model = create_model(name, pretrained=False, num_classes=3)
    n = feature_size(model, 64, torch.device("cpu"))
    tap = FeatureTap(model)
    model.eval()
    model(torch.rand(2, 1, 64, 64))
    assert tap.features.shape == (2, n)
    tap.remove()
    assert not model.backbone.get_submodule(model.spec.head)._forward_pre_hooks


def test_adversarial_epoch_trains_model_and_site_head():
    torch.manual_seed(0)
    model = create_model("squeezenet1_1", pretrained=False, num_classes=2)
    adv = SiteAdversary(feature_size(model, 32, torch.device("cpu")), 2, 2)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (16, 32, 32)).astype(np.uint8)
    params = [p for p in model.parameters()] + list(adv.parameters())
    before = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=1e-3)
    cpu = torch.device("cpu")
    state = Optimisation(model, opt, None, cpu, 8, torch.Generator().manual_seed(0))
    labels, sites = rng.integers(0, 2, 16), rng.integers(0, 2, 16)
    with FeatureTap(model) as tap:
        step = adversarial_step(model, adv, torch.nn.CrossEntropyLoss(), tap, 1.0, 0.5, 1.0, cpu)
        stats = train_one_epoch(state, images, np.arange(16), labels, step, {"sites": sites}, progress=False)
    assert set(stats) == {"loss", "site_loss", "site_accuracy"} and all(np.isfinite(list(stats.values())))
    assert not model.backbone.get_submodule(model.spec.head)._forward_pre_hooks  # the tap is gone after the epoch
    assert adv.grl.coeff > 0
    changed = sum(not torch.equal(a, b) for a, b in zip(before, params, strict=True))
    assert changed > len(params) // 2
    feats = extract_features(model, images, np.arange(16), torch.device("cpu"), 8)
    assert feats.shape[0] == 16
