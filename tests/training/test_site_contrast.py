"""The within-site ranking loss: pairs only within sites, equals a manual computation, and pushes the right way."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from covidscreen.errors import ConfigError
from covidscreen.training.site_contrast import (
    NO_SITE,
    WithinSiteRankLoss,
    positive_log_odds,
    site_groups,
    within_site_rank_loss,
)


def test_positive_log_odds_matches_softmax():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 3.0, 1.0]])
    p = torch.softmax(logits, 1)[:, 0]
    assert torch.allclose(positive_log_odds(logits, 0), torch.log(p / (1 - p)), atol=1e-6)


def test_rank_loss_uses_same_site_pairs_only_and_matches_manual():
    torch.manual_seed(0)
    logits = torch.randn(6, 3)
    target = torch.tensor([0, 1, 0, 2, 0, 1])  # positive index 0
    groups = torch.tensor([0, 0, 1, 1, NO_SITE, 1])
    loss, n = within_site_rank_loss(logits, target, groups, 0)
    s = positive_log_odds(logits, 0)
    # pairs: site 0: (0, 1); site 1: (2, 3), (2, 5); image 4 has no site and image 1 is in another site than 2
    manual = [math.log1p(math.exp(float(s[j] - s[i]))) for i, j in [(0, 1), (2, 3), (2, 5)]]
    assert n == 3
    assert float(loss) == pytest.approx(np.mean(manual), rel=1e-5)


def test_no_pairs_gives_zero_with_gradient_graph():
    logits = torch.randn(4, 3, requires_grad=True)
    loss, n = within_site_rank_loss(logits, torch.tensor([0, 0, 1, 2]), torch.tensor([0, 0, 1, NO_SITE]), 0)
    assert n == 0 and float(loss.detach()) == 0.0 and loss.requires_grad
    loss.backward()  # must not raise
    assert torch.all(logits.grad == 0)


def test_gradient_raises_positive_above_same_site_negative():
    logits = torch.zeros(2, 3, requires_grad=True)
    loss_fn = WithinSiteRankLoss(nn.CrossEntropyLoss(), weight=1.0, positive_index=0)
    target, groups = torch.tensor([0, 1]), torch.tensor([0, 0])
    base = nn.CrossEntropyLoss()(logits, target)
    loss = loss_fn(logits, target, groups)
    loss, base = loss.detach(), base.detach()
    assert float(loss) > float(base)  # ranking term added (log 2 at equal scores)
    assert float(loss - base) == pytest.approx(math.log(2), rel=1e-5)
    logits_r = logits.detach().clone().requires_grad_(True)
    rank, _ = within_site_rank_loss(logits_r, target, groups, 0)
    rank.backward()
    assert logits_r.grad[0, 0] < 0 < logits_r.grad[1, 0]  # descent raises the positive's, lowers the other's
    assert loss_fn.pairs_seen == 1


def test_site_groups_mark_mixed_training_sites_only():
    table = pd.DataFrame({"site": ["a", "a", "b", "b", "c", "c"],
                          "label": ["covid", "normal", "normal", "pneumonia", "covid", "normal"]})
    train_idx = np.array([0, 1, 2, 3, 4])  # site c's normal is not in the training split: c is not mixed there
    g = site_groups(table, train_idx, "covid")
    assert list(g) == [0, 0, NO_SITE, NO_SITE, NO_SITE, NO_SITE]
    with pytest.raises(ConfigError, match="within_site_rank_weight"):
        site_groups(table, np.array([2, 3, 4]), "covid")
