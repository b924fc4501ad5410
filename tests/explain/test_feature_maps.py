import numpy as np
import pytest
import torch
from PIL import Image

from covidscreen.errors import ConfigError
from covidscreen.explain.feature_maps import feature_grid, feature_maps
from covidscreen.models import create_model
from covidscreen.workflows.feature_maps import feature_map_files


def test_feature_maps_are_the_layer_output_and_hooks_are_released():
    model = create_model("resnet18", pretrained=False, num_classes=2).eval()
    x = torch.rand(1, 1, 64, 64)
    maps = feature_maps(model, x, "layer2")
    assert maps.shape == (128, 8, 8)
    bb = model.backbone
    with torch.no_grad():
        ref = bb.layer2(bb.layer1(bb.maxpool(bb.relu(bb.bn1(bb.conv1(model.normalise(x)))))))
    np.testing.assert_allclose(maps, ref[0].numpy(), atol=1e-5)
    assert not bb.layer2._forward_hooks
    with pytest.raises(ConfigError, match="layer1"):
        feature_maps(model, x, "layer9")
    with pytest.raises(ConfigError, match="feature map"):
        feature_maps(model, x, "fc")


def test_grid_layout_and_per_channel_scaling():
    maps = np.stack([np.full((4, 4), float(i)) for i in range(5)])
    maps[0, 0, 0] = 10.0
    grid = feature_grid(maps, cell=8, gap=2)
    assert grid.shape == (2 * 10 - 2, 3 * 10 - 2)  # 5 channels: 3 columns, 2 rows
    assert grid[0, 0] == 255 and grid[3, 3] == 0  # channel 0 scaled on its own: its peak is white
    assert grid[-1, -1] == 255  # the unused sixth cell stays background


def test_feature_map_files_from_a_run(tiny_run, tmp_path):
    img = (np.random.default_rng(0).random((70, 80)) * 255).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "x.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    pngs = feature_map_files(tiny_run, [str(tmp_path / "x.png"), str(tmp_path / "bad.png")], tmp_path / "out",
                             "features.4", device="cpu")
    assert [p.name for p in pngs] == ["x_features.4.png"]
    assert Image.open(pngs[0]).size[0] > 64
