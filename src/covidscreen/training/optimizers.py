"""The optimisers a run can train with, each with the defaults its users usually give it.

Umair et al. (2021) compared the same networks under SGD, Adam and RMSprop; the literature's usual settings are kept
here so that ``optimizer: sgd`` means what a reader of those papers expects (momentum 0.9 with Nesterov), while the
learning rate, weight decay and schedule stay those of the config (``lr``, ``weight_decay``, warm-up + cosine).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from ..config import OPTIMIZERS
from ..errors import ConfigError


def build_optimizer(name: str, params: Iterable[Any], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """An optimiser over ``params`` (tensors or parameter groups).

    - ``adamw``: decoupled weight decay (Loshchilov & Hutter), betas (0.9, 0.999) - the project's default.
    - ``adam``: Adam with L2 weight decay added to the gradient, as in Keras and the original papers.
    - ``sgd``: momentum 0.9 with Nesterov momentum.
    - ``rmsprop``: alpha 0.9, eps 1e-7 and no momentum, Keras' defaults (the papers trained in Keras).

    Raises:
        ConfigError: an unknown name (listing the known ones).
    """
    params = list(params)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, alpha=0.9, eps=1e-7, weight_decay=weight_decay)
    raise ConfigError(f"optimizer {name!r} is not known; use one of {', '.join(OPTIMIZERS)}")
