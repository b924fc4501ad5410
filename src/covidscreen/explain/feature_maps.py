"""Intermediate feature maps: the activations of one layer for one image, as a grid of channels (Umair et al. 2021
showed them next to Grad-CAM). A forward hook captures the layer's output; it is removed even when the forward pass
fails."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..errors import ConfigError


def layer_names(model: nn.Module, depth: int = 2) -> list[str]:
    """Dotted names of the backbone's modules up to ``depth`` levels (what ``--feature-maps`` accepts)."""
    return [n for n, _ in model.backbone.named_modules() if n and n.count(".") < depth]


def feature_maps(model: nn.Module, x: torch.Tensor, layer: str) -> np.ndarray:
    """Activations ``(C, h, w)`` of backbone module ``layer`` for a single input ``x`` of shape ``(1, 1|3, H, W)``.

    Raises:
        ConfigError: an unknown layer (listing the top-level ones) or a layer whose output is not a feature map.
    """
    try:
        module = model.backbone.get_submodule(layer)
    except AttributeError:
        raise ConfigError(f"layer {layer!r} is not in {model.spec.name}; layers: {', '.join(layer_names(model))} "
                          "(or deeper dotted names)") from None
    captured: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda _m, _i, out: captured.append(out.detach()))
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        handle.remove()
    out = captured[0] if captured else None
    if not isinstance(out, torch.Tensor) or out.ndim != 4:
        raise ConfigError(f"layer {layer!r} does not output a feature map (B, C, H, W); choose a convolutional "
                          "block, e.g. one of " + ", ".join(layer_names(model, 1)))
    return out[0].float().cpu().numpy()


def feature_grid(maps: np.ndarray, max_channels: int = 64, cell: int = 64, gap: int = 2) -> np.ndarray:
    """The first ``max_channels`` channels, each scaled to [0, 255] on its own, as a near-square uint8 grid."""
    maps = maps[:max_channels]
    n = len(maps)
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    grid = np.full((rows * (cell + gap) - gap, cols * (cell + gap) - gap), 255, np.uint8)
    for i, m in enumerate(maps):
        lo, hi = float(m.min()), float(m.max())
        scaled = np.zeros_like(m) if hi - lo < 1e-12 else (m - lo) / (hi - lo)
        tile = np.asarray(Image.fromarray((scaled * 255).astype(np.uint8)).resize((cell, cell),
                                                                               Image.Resampling.NEAREST))
        r, c = divmod(i, cols)
        grid[r * (cell + gap):r * (cell + gap) + cell, c * (cell + gap):c * (cell + gap) + cell] = tile
    return grid


def grid_png(grid: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(grid).save(buf, format="PNG")
    return buf.getvalue()
