"""Frozen Convolution + BatchNorm pairs folded into one convolution for the length of a training epoch.

A frozen stage (no parameter trains, its BatchNorm layers in eval mode: :func:`.finetune.freeze_batchnorm`) computes
a fixed function, so each BatchNorm right after a convolution is an affine map that can be folded into that
convolution's weights and bias (``torch.nn.utils.fusion.fuse_conv_bn_eval``, what PyTorch's own inference
optimisations do). On the default model (EfficientNet-Lite0, 5 of 9 stages trained) the frozen early stages run at
the highest resolutions, and their eval-mode BatchNorm took 39% of their forward time; folding it makes a training
step faster without changing what is computed (docs/performance.md, ``benchmarks/bench_epoch.py``).

The folded modules replace the originals only inside :func:`folded_frozen_batchnorm`; the originals go back when it
ends, so validation, checkpoints and the saved weights never see them. Pairs are found as adjacent children of one
module (a convolution registered right before its BatchNorm, as in timm's and torchvision's blocks and in every
``nn.Sequential``), and the fold is checked: the network's output on a real batch, in eval mode, must be unchanged
to float32 rounding, else nothing is folded. Modules with hooks (a feature tap, Grad-CAM) are never replaced.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

try:  # timm's BatchNorm with its activation (EfficientNet, ...): fold the BatchNorm, keep the activation
    from timm.layers import BatchNormAct2d
except ImportError:  # pragma: no cover - timm is a dependency; older layouts
    BatchNormAct2d = None


def _hooked(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks)


def _frozen(m: nn.Module) -> bool:
    return not any(p.requires_grad for p in m.parameters())


def _after_fold(bn: nn.Module) -> nn.Module | None:
    """What stays of ``bn`` once its normalisation is folded (None: not a BatchNorm this module folds)."""
    if BatchNormAct2d is not None and type(bn) is BatchNormAct2d:
        return nn.Sequential(bn.drop, bn.act)
    if type(bn) is nn.BatchNorm2d:
        return nn.Identity()
    return None


def foldable_pairs(model: nn.Module) -> list[tuple[nn.Module, str, str]]:
    """``(parent, conv name, batchnorm name)`` for every frozen convolution registered right before a frozen,
    eval-mode BatchNorm that tracks running statistics, neither of them hooked."""
    pairs = []
    for parent in model.modules():
        children = list(parent.named_children())
        for (cname, conv), (bname, bn) in zip(children, children[1:], strict=False):
            if (isinstance(conv, nn.Conv2d) and _after_fold(bn) is not None and not bn.training
                    and bn.track_running_stats and bn.running_mean is not None and bn.affine
                    and _frozen(conv) and _frozen(bn) and not _hooked(conv) and not _hooked(bn)
                    and conv.out_channels == bn.num_features):
                pairs.append((parent, cname, bname))
    return pairs


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    fused = fuse_conv_bn_eval(copy.deepcopy(conv).eval(), bn)
    if conv.weight.is_contiguous(memory_format=torch.channels_last):
        fused.weight.data = fused.weight.data.contiguous(memory_format=torch.channels_last)
    fused.requires_grad_(False)
    return fused.train(conv.training)


@torch.no_grad()
def _outputs(model: nn.Module, example: torch.Tensor) -> torch.Tensor:
    """``model(example)`` in eval mode, every module's mode restored afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        return model(example).float()
    finally:
        for m, training in modes:
            m.training = training


@contextmanager
def folded_frozen_batchnorm(model: nn.Module, example: torch.Tensor | None) -> Iterator[int]:
    """Within: every foldable pair of ``model`` (:func:`foldable_pairs`) folded into one convolution; yields how
    many. ``example`` (a real input batch, two images are enough) checks the fold; without it nothing is folded.
    Call after the model's modes are set for training (``model.train()`` + ``freeze_batchnorm``)."""
    pairs = foldable_pairs(model) if example is not None else []
    if not pairs:
        yield 0
        return
    before = _outputs(model, example)
    originals = []
    for parent, cname, bname in pairs:
        conv, bn = getattr(parent, cname), getattr(parent, bname)
        originals.append((parent, cname, conv, bname, bn))
        setattr(parent, cname, _fold(conv, bn))
        setattr(parent, bname, _after_fold(bn))
    try:
        after = _outputs(model, example)
        tol = 1e-4 * max(1.0, float(before.abs().max()))
        if before.shape != after.shape or not torch.allclose(before, after, rtol=1e-3, atol=tol):
            for parent, cname, conv, bname, bn in originals:
                setattr(parent, cname, conv)
                setattr(parent, bname, bn)
            originals = []
            warnings.warn("frozen BatchNorm layers were not folded: the folded network's output differed from the "
                          "original's (a convolution's output used elsewhere?); training runs unfolded", stacklevel=3)
        yield len(originals)
    finally:
        for parent, cname, conv, bname, bn in originals:
            setattr(parent, cname, conv)
            setattr(parent, bname, bn)
