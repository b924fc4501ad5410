"""`training/precision.py`: under a CPU's bfloat16 autocast the trainable depthwise convolutions that oneDNN trains
slowly in bfloat16 (5 x 5 kernels, stride 2) compute in float32 for the length of an epoch, the others stay in
bfloat16, and everything is as before afterwards."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from covidscreen.training.precision import float32_slow_depthwise, slow_depthwise


def net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1),  # full convolution
                         nn.Conv2d(8, 8, 5, padding=2, groups=8),  # 5 x 5 depthwise: float32
                         nn.Conv2d(8, 8, 3, padding=1, groups=8),  # 3 x 3 depthwise, stride 1: bfloat16 is fast
                         nn.Conv2d(8, 8, 5, padding=2, groups=8),  # 5 x 5 depthwise, frozen below: no backward
                         nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8),  # stride 2: float32
                         nn.Conv2d(8, 16, 1))


def dtypes(model: nn.Module, x: torch.Tensor) -> list[torch.dtype]:
    seen = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype)) for m in model]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(x).float().sum().backward()
    for h in hooks:
        h.remove()
    return seen


def test_only_trainable_slow_depthwise_layers_run_in_float32_and_only_under_cpu_bfloat16():
    model = net()
    model[3].weight.requires_grad_(False)
    assert slow_depthwise(model) == [model[1], model[4]]
    x = torch.randn(2, 3, 16, 16)
    bf16, f32 = torch.bfloat16, torch.float32
    assert dtypes(model, x) == [bf16] * 6
    with float32_slow_depthwise(model, torch.device("cpu"), bf16) as changed:
        assert changed == 2
        assert dtypes(model, x) == [bf16, f32, bf16, bf16, f32, bf16]
        assert model[1].weight.grad.dtype == f32
    assert "forward" not in vars(model[1]) and dtypes(model, x) == [bf16] * 6  # its own forward is back
    cpu = torch.device("cpu")
    for device, amp in [(cpu, None), (torch.device("cuda"), bf16), (cpu, torch.float16)]:
        with float32_slow_depthwise(model, device, amp) as changed:
            assert changed == 0 and "forward" not in vars(model[1])


def test_the_float32_layer_computes_what_it_computed_and_is_restored_after_an_error():
    model = net()
    x = torch.randn(2, 8, 16, 16)
    with torch.no_grad():
        expected = model[1](x)
        with float32_slow_depthwise(model, torch.device("cpu"), torch.bfloat16), torch.autocast("cpu", torch.bfloat16):
            got = model[1](x.bfloat16())  # a bfloat16 input from the layer before is cast up
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=0.05, rtol=0.02)  # only the input's bfloat16 rounding differs
    with pytest.raises(RuntimeError, match="boom"), float32_slow_depthwise(model, torch.device("cpu"),
                                                                           torch.bfloat16):
        raise RuntimeError("boom")
    assert "forward" not in vars(model[1])
