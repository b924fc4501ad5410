"""Frozen BatchNorm folded into the convolutions during an epoch: the same function, the same training, the original
modules (and weights) back afterwards, and no fold where it would be wrong (trained or hooked layers, a convolution
whose output is used twice)."""

import contextlib

import numpy as np
import pytest
import torch
from torch import nn

from covidscreen.models import create_model
from covidscreen.training.finetune import freeze_batchnorm, set_trainable_stages
from covidscreen.training.folding import foldable_pairs, folded_frozen_batchnorm
from covidscreen.training.loop import Optimisation, classification_step, train_one_epoch


def _randomise_bn(model: nn.Module, seed: int = 0) -> None:
    """Running statistics and affine parameters far from identity, so a wrong fold shows."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.2)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.3)


def _model(name: str = "efficientnet_lite0", train_stages: int = 5) -> nn.Module:
    torch.manual_seed(0)
    model = create_model(name, pretrained=False, num_classes=3)
    _randomise_bn(model)
    set_trainable_stages(model, train_stages)
    model = model.to(memory_format=torch.channels_last)
    model.train()
    freeze_batchnorm(model)
    return model


def _x(n: int = 4, size: int = 64, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(seed)).to(
        memory_format=torch.channels_last)


def _eval_out(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    with torch.no_grad():
        out = model(x)
    for m, t in modes:
        m.training = t
    return out


@pytest.mark.parametrize("name", ["efficientnet_lite0", "mobilenet_v2_035", "resnet18"])
def test_folds_only_frozen_pairs_and_computes_the_same_function(name):
    model = _model(name, train_stages=2)
    pairs = foldable_pairs(model)
    assert pairs, "the frozen stages hold Conv+BatchNorm pairs"
    for parent, cname, bname in pairs:  # every folded pair is frozen and in eval mode
        assert not any(p.requires_grad for p in getattr(parent, cname).parameters())
        assert not getattr(parent, bname).training
    n_bn_trained = sum(1 for m in model.modules() if isinstance(m, nn.BatchNorm2d) and m.training)
    assert n_bn_trained > 0
    x = _x()
    before_state = {k: v.clone() for k, v in model.state_dict().items()}
    expected = _eval_out(model, x)
    with folded_frozen_batchnorm(model, x[:2]) as n:
        assert n == len(pairs)
        n_bn = sum(1 for m in model.modules() if isinstance(m, nn.BatchNorm2d))
        assert n_bn == n_bn_trained  # only the trained (train-mode) BatchNorm layers are left
        torch.testing.assert_close(_eval_out(model, x), expected, rtol=1e-4, atol=1e-4)
    after_state = model.state_dict()
    assert list(after_state) == list(before_state)  # the original modules are back
    for k, v in before_state.items():
        assert torch.equal(after_state[k], v), k


def test_a_training_step_gives_the_same_loss_and_gradients_folded():
    # in float64: in float32 the gradients of two exact rewritings (or of 1 and 2 threads) differ by up to a few
    # percent element-wise, because rounding flips which activations sit on a ReLU6 bound
    model = _model().double()
    x, y = _x(8).double(), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    loss_fn = nn.CrossEntropyLoss()
    plain = loss_fn(model(x), y)
    plain.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    with folded_frozen_batchnorm(model, x[:2]) as n:
        assert n > 0
        folded = loss_fn(model(x), y)
        folded.backward()
    torch.testing.assert_close(folded, plain, rtol=1e-10, atol=1e-10)
    for name, p in model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, grads[name], rtol=1e-7, atol=1e-9, msg=name)


def test_an_epoch_trains_the_same_weights_with_and_without_the_fold(monkeypatch):
    from covidscreen.training import loop

    folded_counts = []
    real = loop.folded_frozen_batchnorm

    @contextlib.contextmanager
    def spy(model, example):
        with real(model, example) as n:
            folded_counts.append(n)
            yield n

    monkeypatch.setattr(loop, "folded_frozen_batchnorm", spy)
    images = np.random.default_rng(0).integers(0, 255, (16, 48, 48), dtype=np.uint8)
    labels = np.array([0, 1, 2, 0] * 4)
    states = []
    for fold in (True, False):
        model = _model()
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
        opt = Optimisation(model, optimizer, None, torch.device("cpu"), 8, torch.Generator().manual_seed(0),
                           fold_frozen_batchnorm=fold)
        train_one_epoch(opt, images, np.arange(16), labels,
                        classification_step(model, nn.CrossEntropyLoss(), torch.device("cpu")), progress=False)
        states.append(model.state_dict())
    assert folded_counts[0] > 0 and folded_counts[1] == 0  # folded in the first epoch only
    assert list(states[0]) == list(states[1])
    trainable = {f"{n}" for n, p in _model().named_parameters() if p.requires_grad}
    for k in states[0]:
        if k in trainable:  # float32 rounding of the two paths, amplified by train-mode BatchNorm (2 SGD steps)
            torch.testing.assert_close(states[0][k], states[1][k], rtol=1e-3, atol=5e-4, msg=k)
        elif "running" not in k and "num_batches" not in k:  # frozen: bit for bit
            assert torch.equal(states[0][k], states[1][k]), k


def test_hooked_and_trained_layers_are_left_alone():
    model = _model(train_stages=None)  # everything trains: nothing is frozen, nothing folds
    assert foldable_pairs(model) == []
    model = _model()
    parent, cname, bname = foldable_pairs(model)[0]
    handle = getattr(parent, bname).register_forward_hook(lambda *a: None)
    assert (parent, cname, bname) not in foldable_pairs(model)
    handle.remove()
    assert (parent, cname, bname) in foldable_pairs(model)


def test_no_example_folds_nothing():
    model = _model()
    with folded_frozen_batchnorm(model, None) as n:
        assert n == 0


class _ConvUsedTwice(nn.Module):
    """A convolution whose output also feeds a skip connection: its BatchNorm cannot be folded into it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        c = self.conv(x)
        return self.head((self.bn(c) + c).mean((2, 3)))


def test_a_fold_that_changes_the_output_is_undone_with_a_warning():
    torch.manual_seed(0)
    model = _ConvUsedTwice()
    _randomise_bn(model)
    model.conv.requires_grad_(False)
    model.bn.requires_grad_(False)
    model.bn.eval()
    x = torch.rand(2, 1, 8, 8)
    expected = model(x)
    with pytest.warns(UserWarning, match="not folded"), folded_frozen_batchnorm(model, x) as n:
        assert n == 0
        assert isinstance(model.bn, nn.BatchNorm2d)
        torch.testing.assert_close(model(x), expected)


def test_bfloat16_autocast_trains_through_the_fold_in_channels_last():
    """bfloat16 training (``precision`` bf16/auto on a CPU) with the fold: the fold is checked in float32 (outside
    autocast) and happens; the folded convolutions keep channels_last weights, the trained layers' bfloat16
    activations stay channels_last, the parameters and their gradients stay float32, and the loss is the unfolded
    one's to bfloat16 rounding."""
    model, x = _model(), _x(8, 64)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    loss_fn = nn.CrossEntropyLoss()
    with torch.no_grad():
        ref32 = loss_fn(model(x), y)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ref16 = loss_fn(model(x), y)
    pairs = foldable_pairs(model)
    trained_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d) and m.weight.requires_grad)
    seen = []
    handle = trained_conv.register_forward_hook(lambda m, i, out: seen.append(out))
    try:
        with folded_frozen_batchnorm(model, x[:2]) as n:
            assert n == len(pairs) > 0
            for parent, cname, _ in pairs:
                assert getattr(parent, cname).weight.is_contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = loss_fn(model(x), y)
            loss.backward()
    finally:
        handle.remove()
    assert seen[-1].dtype == torch.bfloat16 and seen[-1].is_contiguous(memory_format=torch.channels_last)
    for p in model.parameters():
        assert p.dtype == torch.float32
        if p.requires_grad:
            assert p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()
    assert loss.item() == pytest.approx(ref16.item(), rel=0.03)  # bf16 keeps 8 bits of mantissa
    assert loss.item() == pytest.approx(ref32.item(), rel=0.05)
