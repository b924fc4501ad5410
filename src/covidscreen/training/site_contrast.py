"""Within-site ranking loss: learn the contrasts that a site cannot explain.

On the shared data every COVID image comes from one collection (``cohen``), so "COVID vs the rest" can be learned as
"cohen vs the rest". The only pairs of images whose difference cannot be the collection are a COVID and a non-COVID
image *of the same site*. ``within_site_rank_weight: w`` adds to the classification loss ``w`` times a pairwise
logistic ranking loss (a smooth surrogate of 1 - AUC) over exactly those pairs in each batch:

    rank = mean over same-site (positive i, other j) pairs of softplus(s_j - s_i),
    s = log-odds of the positive class = logit_pos - logsumexp(other logits)

so the model is pushed to rank every positive image above every other image of its own site, which is the
within-site AUC that the generalisation study judges on (docs/generalisation.md). Images of sites holding only one
class take part in the classification loss only. It needs batches that contain such pairs: pair it with
``site_balanced: true``, which draws the mixed site's rare negatives far more often than uniform sampling.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

NO_SITE = -1  # group of images whose site does not hold both classes in the training split


def positive_log_odds(logits: torch.Tensor, positive_index: int) -> torch.Tensor:
    """``log p_pos - log(1 - p_pos)`` of softmax(logits), computed stably from the logits."""
    others = torch.cat([logits[:, :positive_index], logits[:, positive_index + 1:]], dim=1)
    return logits[:, positive_index] - torch.logsumexp(others, dim=1)


def within_site_rank_loss(logits: torch.Tensor, target: torch.Tensor, groups: torch.Tensor,
                          positive_index: int) -> tuple[torch.Tensor, int]:
    """``(mean pairwise ranking loss over same-group (positive, other) pairs, number of pairs)``; 0 without pairs.

    Args:
        logits: ``(B, C)``.
        target: ``(B,)`` class indices.
        groups: ``(B,)`` site group per image; :data:`NO_SITE` images form no pairs.
        positive_index: index of the screened class.
    """
    s = positive_log_odds(logits.float(), positive_index)
    pos = target == positive_index
    same = (groups[:, None] == groups[None, :]) & (groups[:, None] != NO_SITE)
    pairs = same & pos[:, None] & ~pos[None, :]  # row i positive, column j other, same site
    n = int(pairs.sum())
    if n == 0:
        return logits.sum() * 0.0, 0  # keeps the graph (and the device) without contributing
    diff = s[None, :] - s[:, None]  # [i, j] = s_j - s_i
    return F.softplus(diff[pairs]).mean(), n


class WithinSiteRankLoss(nn.Module):
    """``base(logits, target) + weight * within_site_rank_loss``; called with the batch's site groups."""

    def __init__(self, base: nn.Module, weight: float, positive_index: int) -> None:
        super().__init__()
        self.base, self.weight, self.positive_index = base, float(weight), int(positive_index)
        self.pairs_seen = 0

    def forward(self, logits: torch.Tensor, target: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
        loss = self.base(logits, target)
        if groups is None or self.weight == 0:
            return loss
        rank, n = within_site_rank_loss(logits, target, groups, self.positive_index)
        self.pairs_seen += n
        return loss + self.weight * rank


def site_groups(table: pd.DataFrame, train_idx: np.ndarray, positive_class: str) -> np.ndarray:
    """Per row of ``table``: an integer per site that holds the positive class *and* others in the training split,
    :data:`NO_SITE` for every other row.

    Raises:
        ConfigError: no training site holds both, so the ranking loss would have no pairs.
    """
    train = table.iloc[train_idx]
    is_pos = train["label"].astype(str) == positive_class
    mixed = sorted(s for s, g in is_pos.groupby(train["site"].astype(str)) if g.any() and not g.all())
    if not mixed:
        raise ConfigError(f"within_site_rank_weight > 0 needs a site holding both '{positive_class}' and other images "
                          "in the training split; none does. Set within_site_rank_weight: 0")
    code = {s: i for i, s in enumerate(mixed)}
    return table["site"].astype(str).map(code).fillna(NO_SITE).astype(int).to_numpy()
