"""Lung segmenter: tiny forward passes, gradients, masks in the image's geometry, checkpoints, Dice."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from covidscreen.errors import CheckpointError, ModelError
from covidscreen.segmentation.checkpoint import load_segmenter, save_segmenter
from covidscreen.segmentation.model import ENCODER_LAYOUTS, LungSegNet
from covidscreen.segmentation.predict import LungSegmenter, clean_mask, predict_lung_mask
from covidscreen.workflows.segment import dice

SHARED_WEIGHTS = Path(__file__).resolve().parents[2] / ".." / "shared" / "weights"


@pytest.mark.parametrize("encoder", sorted(ENCODER_LAYOUTS))
def test_tiny_forward_and_every_parameter_gets_a_gradient(encoder):
    torch.manual_seed(0)
    model = LungSegNet(encoder, pretrained=False, image_size=64)
    x = torch.rand(2, 1, 64, 64)
    out = model(x)
    assert out.shape == (2, 1, 64, 64) and torch.isfinite(out).all()
    out.mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


def test_odd_input_sizes_and_full_resolution_decoder():
    model = LungSegNet("mobilenet_v2_035", pretrained=False, decoder_channels=(32, 24, 16, 8, 8), image_size=64)
    assert model(torch.rand(1, 1, 80, 96)).shape == (1, 1, 80, 96)
    with pytest.raises(ModelError, match="encoder"):
        LungSegNet("vgg16", pretrained=False)
    with pytest.raises(ModelError, match="image_size"):
        LungSegNet(pretrained=False, image_size=100)


@pytest.mark.skipif(not (SHARED_WEIGHTS / "mobilenet_v2_035_features_imagenet_keras.pth").is_file(),
                    reason="shared ImageNet weights not present")
def test_encoder_gets_the_registry_imagenet_weights():
    state = torch.load(SHARED_WEIGHTS / "mobilenet_v2_035_features_imagenet_keras.pth", weights_only=True)
    model = LungSegNet("mobilenet_v2_035", pretrained=True, image_size=64)
    first_conv = model.levels[0][0][0].weight  # features.0 = Conv2dNormActivation -> its conv
    key = next(k for k in state if k.endswith("0.0.weight"))
    torch.testing.assert_close(first_conv, state[key])


def test_mask_is_in_the_image_geometry():
    torch.manual_seed(0)
    model = LungSegNet("mobilenet_v2_035", pretrained=False, image_size=64)
    img = (np.random.default_rng(0).random((123, 77)) * 255).astype(np.uint8)
    mask = predict_lung_mask(model, img)
    assert mask.shape == img.shape and mask.dtype == bool
    masks = LungSegmenter(model, {"weights_sha256": ""})([img, img[:50]])
    assert [m.shape for m in masks] == [(123, 77), (50, 77)]


def test_clean_mask_keeps_two_largest_regions_and_fills_holes():
    m = np.zeros((50, 50), bool)
    m[5:40, 5:20] = True
    m[5:40, 28:45] = True
    m[20:22, 10:12] = False  # a hole
    m[45:47, 45:47] = True  # a speck
    out = clean_mask(m)
    assert out[21, 11] and not out[46, 46] and out[10, 30]


def test_dice():
    a = np.zeros((10, 10), bool)
    b = np.zeros((10, 10), bool)
    a[:5] = True
    b[:4] = True
    assert dice(a, b) == pytest.approx(2 * 40 / 90)
    assert dice(a, a) == 1.0 and dice(b & False, a & False) == 1.0


def test_checkpoint_roundtrip_and_sha256(tmp_path):
    torch.manual_seed(0)
    model = LungSegNet("mobilenet_v2_035", pretrained=False, image_size=64, equalize=False).eval()
    save_segmenter(tmp_path, model, {"held_out_dice": 0.5})
    loaded, meta = load_segmenter(tmp_path)
    x = torch.rand(1, 1, 64, 64)
    torch.testing.assert_close(loaded(x), model(x))
    assert meta["image_size"] == 64 and meta["equalize"] is False and len(meta["weights_sha256"]) == 64
    with pytest.raises(CheckpointError, match="classification run expects"):
        load_segmenter(tmp_path, expected_sha256="0" * 64)
    sidecar = tmp_path / "lung_seg.json"
    meta["weights_sha256"] = "f" * 64
    sidecar.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="changed or replaced"):
        load_segmenter(tmp_path)
    with pytest.raises(CheckpointError, match="not a lung segmentation checkpoint"):
        load_segmenter(tmp_path / "nothing")


@pytest.mark.slow
def test_train_command_on_a_few_masked_images(tmp_path):
    from covidscreen.config import SegmentConfig
    from covidscreen.workflows.segment import train_segmenter

    out = train_segmenter(SegmentConfig(output=str(tmp_path / "seg"), image_size=64, epochs=1, max_images=24,
                                        batch_size=8, device="cpu"), progress=False)
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["test"]["dice_mean"] <= 1 and metrics["patients"]["test"] >= 1
    model, meta = load_segmenter(out)
    assert meta["held_out_dice"] == metrics["test"]["dice_mean"]
