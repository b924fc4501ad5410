"""Layers that train faster in float32 inside a CPU's bfloat16 autocast.

Under ``precision: bf16`` (what ``auto`` picks on a CPU with AMX), oneDNN runs most convolutions several times faster
in bfloat16, but not every depthwise convolution: on the AMX Xeon of docs/performance.md, one forward + backward at
EfficientNet-Lite0's shapes (batch 32) took 4-18x the float32 time in bfloat16 for those with a 5 x 5 kernel (470
ms against 64 ms: 144 channels, stride 2, 56 px) or a stride of 2 (130 ms against 8 ms: 240 channels, 3 x 3, 28 px),
while the 3 x 3 stride-1 depthwise convolutions and the pointwise and full ones were as fast or faster in bfloat16.
A training step of the default model was therefore slower in bfloat16 than in float32 (0.80x per epoch).

:func:`float32_slow_depthwise` runs those trainable depthwise convolutions in float32 (their input cast up, autocast
off for that one layer) for the length of a training epoch, on a CPU under bfloat16 autocast only; elsewhere it
does nothing. The weights are float32 either way (autocast never changes the parameters), so the checkpoint and
every later prediction are unaffected."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

WIDEST_FAST_KERNEL = 3  # bfloat16 depthwise kernels up to this side, at stride 1, were not slower (module docstring)


def slow_depthwise(model: nn.Module) -> list[nn.Conv2d]:
    """The trainable depthwise convolutions of ``model`` that train slower in bfloat16 on a CPU: a kernel wider than
    :data:`WIDEST_FAST_KERNEL` or a stride above 1."""
    return [m for m in model.modules()
            if isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels and m.weight.requires_grad
            and (max(m.kernel_size) > WIDEST_FAST_KERNEL or max(m.stride) > 1)]


def _float32_forward(conv: nn.Conv2d):
    forward = type(conv).forward

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type="cpu", enabled=False):
            return forward(conv, x.float())

    return run


@contextmanager
def float32_slow_depthwise(model: nn.Module, device: torch.device, amp: torch.dtype | None) -> Iterator[int]:
    """Within: :func:`slow_depthwise` layers compute in float32 when training on a CPU under bfloat16 autocast.

    Yields how many layers it changed (0 on other devices or precisions); their own ``forward`` is back when it
    ends, also after an error."""
    layers = slow_depthwise(model) if device.type == "cpu" and amp == torch.bfloat16 else []
    for conv in layers:
        conv.forward = _float32_forward(conv)
    try:
        yield len(layers)
    finally:
        for conv in layers:
            del conv.forward  # the instance attribute goes: the class's forward is back
