"""Focal loss equals cross-entropy at gamma = 0 and down-weights easy examples."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from covidscreen.training.losses import FocalLoss, build_loss, inverse_frequency_weights, positive_alpha_weights


def _batch(seed: int = 0, n: int = 16, c: int = 3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, generator=g) * 3, torch.randint(0, c, (n,), generator=g)


@pytest.mark.parametrize("weighted", [False, True])
def test_focal_with_gamma_zero_is_cross_entropy_hard_labels(weighted):
    logits, y = _batch()
    w = torch.tensor([0.5, 1.0, 3.0]) if weighted else None
    assert torch.allclose(FocalLoss(0.0, w)(logits, y), F.cross_entropy(logits, y, weight=w), atol=1e-6)


@pytest.mark.parametrize("weighted", [False, True])
def test_focal_with_gamma_zero_is_cross_entropy_soft_targets(weighted):
    logits, y = _batch(1)
    soft = torch.softmax(torch.randn(len(y), 3), 1)
    w = torch.tensor([2.0, 1.0, 0.25]) if weighted else None
    assert torch.allclose(FocalLoss(0.0, w)(logits, soft), nn.CrossEntropyLoss(weight=w)(logits, soft), atol=1e-6)


def test_focal_down_weights_easy_examples_more_than_hard_ones():
    easy = torch.tensor([[6.0, 0.0, 0.0]])  # p(true) ~ 0.995
    hard = torch.tensor([[0.0, 1.0, 0.0]])  # p(true) ~ 0.21
    y = torch.tensor([0])
    ratio_easy = FocalLoss(2.0)(easy, y) / F.cross_entropy(easy, y)
    ratio_hard = FocalLoss(2.0)(hard, y) / F.cross_entropy(hard, y)
    p_easy = torch.softmax(easy, 1)[0, 0]
    assert ratio_easy == pytest.approx(float((1 - p_easy) ** 2), rel=1e-4)  # Lin et al.: (1 - p_t)^gamma
    assert ratio_easy < 1e-4 < 0.5 < ratio_hard < 1
    # larger gamma, stronger down-weighting; the loss never exceeds cross-entropy
    logits, y = _batch(2)
    losses = [FocalLoss(g)(logits, y).item() for g in (0.0, 1.0, 2.0, 5.0)]
    assert losses == sorted(losses, reverse=True)


def test_focal_gradient_concentrates_on_hard_examples():
    logits = torch.tensor([[6.0, 0.0, 0.0], [0.0, 1.0, 0.0]], requires_grad=True)
    y = torch.tensor([0, 0])
    FocalLoss(2.0)(logits, y).backward()
    g_focal = logits.grad.norm(dim=1)
    logits.grad = None
    F.cross_entropy(logits, y).backward()
    g_ce = logits.grad.norm(dim=1)
    # share of the gradient that goes to the easy image shrinks under focal loss
    assert g_focal[0] / g_focal.sum() < 0.1 * (g_ce[0] / g_ce.sum())


def test_build_loss_and_alpha_weights():
    assert isinstance(build_loss(None), nn.CrossEntropyLoss)
    focal = build_loss(torch.ones(3), "focal", 1.5)
    assert isinstance(focal, FocalLoss) and focal.gamma == 1.5
    assert positive_alpha_weights(3, 0, 0.25).tolist() == [0.25, 0.75, 0.75]
    w = inverse_frequency_weights([0, 0, 0, 1], 3)
    assert w.tolist() == pytest.approx([2 / 3, 2.0, 0.0])  # N / (K * n_c) over the K=2 classes present


def test_criterion_of_a_config():
    from covidscreen.config import TrainConfig
    from covidscreen.training.losses import criterion

    labels = [0, 0, 0, 1, 2, 2]
    classes = ["covid", "normal", "pneumonia"]
    ce = criterion(TrainConfig(), classes, labels)
    assert isinstance(ce, nn.CrossEntropyLoss) and ce.weight.tolist() == pytest.approx([2 / 3, 2.0, 1.0])
    assert criterion(TrainConfig(class_weights=False), classes, labels).weight is None
    focal = criterion(TrainConfig(loss="focal", focal_gamma=3, focal_alpha=0.25, class_weights=False), classes, labels)
    assert isinstance(focal, FocalLoss) and focal.gamma == 3 and focal.weight.tolist() == [0.25, 0.75, 0.75]
