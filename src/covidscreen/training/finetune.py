"""Fine-tuning depth: which parameters train. Stages come from the registry metadata of each architecture."""

from __future__ import annotations

from torch import nn

from ..errors import ConfigError
from ..models import ScreeningModel


def set_trainable_stages(model: ScreeningModel, train_stages: int | None) -> list[str]:
    """Freeze the trunk except its last ``train_stages`` stages; the head always trains.

    Frozen stages also keep their BatchNorm statistics (their modules are put in eval mode by
    :func:`freeze_batchnorm` during training).

    Returns:
        The names of the stages that train.
    """
    stages = model.spec.stages
    for p in model.parameters():
        p.requires_grad = True
    if train_stages is None:
        return ["all"]
    if not stages:
        raise ConfigError(f"train_stages is not supported for {model.spec.name}: the registry has no stages for it; "
                          "use train_stages: null (full fine-tuning)")
    if train_stages > len(stages):
        raise ConfigError(f"train_stages={train_stages} but {model.spec.name} has {len(stages)} stages")
    frozen = stages[: len(stages) - train_stages]
    for group in frozen:
        for path in group:
            for p in model.backbone.get_submodule(path).parameters():
                p.requires_grad = False
    return ["+".join(g) for g in stages[len(stages) - train_stages:]] + ["head"]


def freeze_batchnorm(model: ScreeningModel) -> None:
    """Put BatchNorm layers whose parameters are all frozen in eval mode (call after ``model.train()``)."""

    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            params = list(m.parameters())
            if params and not any(p.requires_grad for p in params):
                m.eval()


def _stage_of_parameters(model: ScreeningModel) -> dict[int, int]:
    """``id(parameter) -> depth``: 0 for the head and anything outside the stages, k for the k-th stage from the top."""
    stages = model.spec.stages
    depth: dict[int, int] = {}
    for k, group in enumerate(reversed(stages), start=1):
        for path in group:
            for p in model.backbone.get_submodule(path).parameters():
                depth[id(p)] = k
    return depth


def discriminative_param_groups(model: ScreeningModel, lr: float, lr_decay: float = 1.0) -> list[dict]:
    """Optimizer parameter groups: the head at ``lr``, the k-th trunk stage below it at ``lr * lr_decay**k``.

    Earlier stages hold generic features (edges, textures) that ImageNet already taught well, so they move less
    (Howard & Ruder 2018; the layer-wise rates of chest X-ray transfer studies). Only parameters that currently
    train (``requires_grad``) are included, plus those a warm-up will unfreeze later: pass the model after
    :func:`set_trainable_stages`. Parameters outside the registry stages (heads, VGG's fully connected layers)
    count as the head.

    Raises:
        ConfigError: ``lr_decay < 1`` for a model whose registry entry has no stages.
    """
    if lr_decay < 1 and not model.spec.stages:
        raise ConfigError(f"lr_decay={lr_decay} needs stages, but the registry has none for {model.spec.name}; "
                          "use lr_decay: 1")
    depth = _stage_of_parameters(model) if lr_decay < 1 else {}
    groups: dict[int, list] = {}
    for p in model.parameters():
        if p.requires_grad:
            groups.setdefault(depth.get(id(p), 0), []).append(p)
    return [{"params": groups[k], "lr": lr * lr_decay**k, "stage_depth": k} for k in sorted(groups)]


class HeadWarmup:
    """Head-first schedule (as in DeepCOVID-XR): the first ``epochs`` train only the head, then the trunk stages
    chosen by ``train_stages`` unfreeze.

    The optimizer is built once with every parameter that will ever train; during the warm-up the trunk parameters
    have ``requires_grad=False``, so they get no gradient, AdamW leaves them (and their weight decay) alone, and
    their BatchNorm layers keep their statistics (:func:`freeze_batchnorm`).
    """

    def __init__(self, model: ScreeningModel, epochs: int) -> None:
        self.epochs = epochs
        head = {id(p) for p in model.head_parameters()}
        self.trunk = [p for p in model.parameters() if p.requires_grad and id(p) not in head] if epochs > 0 else []

    def set_epoch(self, epoch: int) -> bool:
        """Freeze or unfreeze the trunk for 1-based ``epoch``; returns True while only the head trains."""
        warming = epoch <= self.epochs
        for p in self.trunk:
            p.requires_grad = not warming
        return warming and bool(self.trunk)
