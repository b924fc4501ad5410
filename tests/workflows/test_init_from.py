"""Sequential fine-tuning: the trunk comes from the earlier run, the head is new, leaks are refused."""

import pandas as pd
import pytest
import torch

from covidscreen.errors import ConfigError
from covidscreen.inference.checkpoint import save_checkpoint
from covidscreen.models import create_model
from covidscreen.workflows.init_from import check_no_leak, load_trunk


def _run(tmp_path, classes, arch="mobilenet_v2_035", seed=0):
    torch.manual_seed(seed)
    model = create_model(arch, pretrained=False, num_classes=len(classes))
    with torch.no_grad():  # make the trunk recognisably different from any fresh model
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    run = tmp_path / f"{arch}-{len(classes)}"
    save_checkpoint(run, model, {"classes": classes, "image_size": 32, "data_dir": str(tmp_path / "data")})
    return run, model


def test_trunk_is_copied_and_head_is_fresh(tmp_path):
    run, prev = _run(tmp_path, ["normal", "pneumonia"])
    torch.manual_seed(1)
    model = create_model("mobilenet_v2_035", pretrained=False, num_classes=3)
    info = load_trunk(model, run)
    assert info["classes"] == ["normal", "pneumonia"] and info["weights_sha256"]
    new, old = model.backbone.state_dict(), prev.backbone.state_dict()
    trunk = [k for k in new if not k.startswith("classifier.1.")]
    assert trunk and all(torch.equal(new[k], old[k]) for k in trunk)
    assert new["classifier.1.weight"].shape == (3, old["classifier.1.weight"].shape[1])
    assert new["classifier.1.weight"].abs().max() < 0.1  # the registry's small fresh head, not the old one


def test_other_architecture_is_refused(tmp_path):
    run, _ = _run(tmp_path, ["normal", "pneumonia"], arch="squeezenet1_1")
    model = create_model("mobilenet_v2_035", pretrained=False, num_classes=3)
    with pytest.raises(ConfigError, match="init_from.*squeezenet1_1"):
        load_trunk(model, run)


def test_leak_check(tmp_path):
    run, _ = _run(tmp_path, ["normal", "pneumonia"])
    pd.DataFrame({"image": ["a.png", "b.png", "c.png"], "split": ["train", "train", "test"]}).to_csv(
        run / "split.csv", index=False)
    data = tmp_path / "data"
    ok = pd.DataFrame({"image": ["a.png", "b.png", "c.png", "d.png"], "split": ["train", "train", "test", "val"]})
    check_no_leak(run, ok, data)  # earlier training images only in training again: fine
    bad = ok.assign(split=["train", "val", "test", "val"])
    with pytest.raises(ConfigError, match="1 image"):
        check_no_leak(run, bad, data)
    check_no_leak(run, bad, tmp_path / "other_data")  # other files entirely
