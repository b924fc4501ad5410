"""The shortcut probe detects a visible site and stays at chance for an invisible one."""

import numpy as np
import pandas as pd
import torch

from covidscreen.audit.imagestats import image_stats
from covidscreen.audit.shortcut import (
    is_predictable,
    low_resolution_target,
    model_features,
    pediatric_target,
    pixel_features,
    probe,
)
from covidscreen.models import create_model


def test_site_is_predictable_when_planted_and_not_otherwise(planted):
    _, table, cache = planted
    stats = image_stats(cache.images, cache.rows(table["path"].tolist()))
    feats = pixel_features(stats)
    r = probe(feats, table["site"], table["group"].to_numpy())
    assert r["balanced_accuracy"] > 0.9 and is_predictable(r) and r["grouped"]
    # a random "site" that nothing in the pixels reveals
    fake = pd.Series(np.random.default_rng(0).choice(["x", "y"], len(table)))
    r0 = probe(feats, fake, table["group"].to_numpy())
    assert not is_predictable(r0) and abs(r0["balanced_accuracy"] - 0.5) < 0.2


def test_targets_from_metadata():
    t = pd.DataFrame({"width": ["224", "1024", ""], "height": ["224", "900", ""], "age": ["4", "", "70"],
                      "site": ["k", "k", "n"]})
    assert low_resolution_target(t).tolist() == ["<=256 px", ">256 px", None]
    assert pediatric_target(t).tolist() == ["pediatric", None, "adult"]
    assert pediatric_target(t, ("k",)).tolist() == ["pediatric", "pediatric", "adult"]
    assert low_resolution_target(t.drop(columns=["width"])) is None
    assert probe(np.zeros((3, 2)), pd.Series(["a", "a", "a"]))["skipped"]


def test_model_features_hook_is_released():
    model = create_model("squeezenet1_1", pretrained=False, num_classes=3)
    images = np.random.default_rng(0).integers(0, 255, (5, 64, 64), dtype=np.uint8)
    f = model_features(model, images, np.arange(5), "cpu", batch_size=2)
    assert f.shape == (5, 512) and np.isfinite(f).all()
    head = model.backbone.get_submodule(model.spec.head)
    assert not head._forward_hooks
    with torch.no_grad():  # the model still works normally afterwards
        assert model(torch.rand(1, 1, 64, 64)).shape == (1, 3)
