"""Fine-tuning depth: frozen parameters stay unchanged, discriminative learning rates fall with depth, and the
head-first warm-up trains only the head before unfreezing."""

import numpy as np
import pytest
import torch

from covidscreen.errors import ConfigError
from covidscreen.models import create_model
from covidscreen.training.finetune import HeadWarmup, discriminative_param_groups, set_trainable_stages
from covidscreen.training.loop import Optimisation, classification_step, train_one_epoch


def _model():
    torch.manual_seed(0)
    return create_model("mobilenet_v2_035", pretrained=False, num_classes=3)  # 6 registry stages


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _step(model, optimizer, epochs: int = 1):
    images = np.random.default_rng(0).integers(0, 255, (6, 32, 32), dtype=np.uint8)
    labels = np.array([0, 1, 2, 0, 1, 2])
    for _ in range(epochs):
        opt = Optimisation(model, optimizer, None, torch.device("cpu"), 6, torch.Generator().manual_seed(0))
        step = classification_step(model, torch.nn.CrossEntropyLoss(), torch.device("cpu"))
        train_one_epoch(opt, images, np.arange(6), labels, step, progress=False)


def _stage_keys(model, stage):
    return [f"backbone.{p}.{k}" for p in stage for k in model.backbone.get_submodule(p).state_dict()]


def test_frozen_stages_are_unchanged_after_training_steps():
    model = _model()
    trained = set_trainable_stages(model, 1)
    assert trained == ["features.18", "head"]
    before = _snapshot(model)
    opt = torch.optim.AdamW(discriminative_param_groups(model, 1e-2), weight_decay=0.1)
    _step(model, opt)
    after = model.state_dict()
    frozen = [k for s in model.spec.stages[:-1] for k in _stage_keys(model, s)]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)  # weights and BatchNorm statistics
    last = _stage_keys(model, model.spec.stages[-1])
    assert any(not torch.equal(before[k], after[k]) for k in last)
    head = [k for k in after if k.startswith("backbone.classifier.1")]
    assert all(not torch.equal(before[k], after[k]) for k in head)


def test_head_only_trains_only_the_head():
    model = _model()
    set_trainable_stages(model, 0)
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert n_trainable == sum(p.numel() for p in model.head_parameters())


def test_discriminative_learning_rates_fall_with_depth():
    model = _model()
    set_trainable_stages(model, None)
    groups = discriminative_param_groups(model, 1e-3, lr_decay=0.5)
    assert [g["stage_depth"] for g in groups] == list(range(7))  # head + 6 stages
    assert [g["lr"] for g in groups] == pytest.approx([1e-3 * 0.5**k for k in range(7)])
    # every trainable parameter is in exactly one group; the first stage gets the lowest rate
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == sum(1 for p in model.parameters() if p.requires_grad)
    first_stage = {id(p) for path in model.spec.stages[0] for p in model.backbone.get_submodule(path).parameters()}
    assert {id(p) for p in groups[-1]["params"]} == first_stage
    # lr_decay 1: one group at the base rate (the spine's behaviour)
    assert [g["lr"] for g in discriminative_param_groups(model, 1e-3)] == [1e-3]


def test_discriminative_groups_only_hold_trainable_parameters():
    model = _model()
    set_trainable_stages(model, 2)
    groups = discriminative_param_groups(model, 1e-3, lr_decay=0.3)
    assert [g["stage_depth"] for g in groups] == [0, 1, 2]


def test_lr_decay_needs_registry_stages():
    model = create_model("resnet10t", pretrained=False, num_classes=2)  # a timm name outside the registry
    with pytest.raises(ConfigError, match="lr_decay"):
        discriminative_param_groups(model, 1e-3, lr_decay=0.5)


def test_head_warmup_freezes_the_trunk_then_unfreezes_it():
    model = _model()
    set_trainable_stages(model, None)
    opt = torch.optim.AdamW(discriminative_param_groups(model, 1e-2, 0.5), weight_decay=0.1)
    warmup = HeadWarmup(model, epochs=1)
    head_keys = {f"backbone.classifier.1.{k}" for k in ("weight", "bias")}
    trunk_keys = [k for k in model.state_dict() if k not in head_keys]

    assert warmup.set_epoch(1) is True
    before = _snapshot(model)
    _step(model, opt)
    after = _snapshot(model)
    assert all(torch.equal(before[k], after[k]) for k in trunk_keys)  # incl. BatchNorm running statistics
    assert all(not torch.equal(before[k], after[k]) for k in head_keys)

    assert warmup.set_epoch(2) is False
    _step(model, opt)
    later = model.state_dict()
    assert sum(not torch.equal(after[k], later[k]) for k in trunk_keys) > len(trunk_keys) // 2


@pytest.mark.parametrize(("name", "convs"), [("vgg16", [2, 2, 3, 3, 3]), ("vgg19", [2, 2, 4, 4, 4])])
def test_vgg_train_stages_count_convolution_blocks(name, convs):
    """Lee et al. 2020 fine-tune VGG-16/19's last k of five convolution blocks: train_stages=k unfreezes exactly the
    convolutions of those blocks (the two hidden fully connected layers and the head always train)."""
    model = create_model(name, pretrained=False, num_classes=2)
    conv_layers = [m for m in model.backbone.features if isinstance(m, torch.nn.Conv2d)]
    assert len(conv_layers) == sum(convs)
    for k in range(6):
        set_trainable_stages(model, k)
        trainable = [c.weight.requires_grad for c in conv_layers]
        assert trainable == [False] * sum(convs[:5 - k]) + [True] * sum(convs[5 - k:]), k
        assert all(p.requires_grad for p in model.backbone.classifier.parameters())
    with pytest.raises(ConfigError, match="5 stages"):
        set_trainable_stages(model, 6)
