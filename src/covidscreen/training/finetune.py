"""Fine-tuning depth: which parameters train. Stages come from the registry metadata of each architecture."""

from __future__ import annotations

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
    from torch import nn

    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            params = list(m.parameters())
            if params and not any(p.requires_grad for p in params):
                m.eval()
