"""The shortcut probe detects a visible site and stays at chance for an invisible one; within each label it is not
fooled by a site that the label explains."""

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
    site_probe,
    site_within_label,
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


def test_site_probe_finds_site_information_within_a_label():
    rng = np.random.default_rng(0)
    n = 120
    labels = np.repeat(["normal", "pneumonia"], n // 2)
    sites = np.tile(["a", "b"], n // 2)
    informative = rng.normal(0, 1, (n, 6))
    informative[:, 0] += np.where(sites == "a", 2.5, -2.5)
    noise = rng.normal(0, 1, (n, 6))
    hi = site_probe(informative, sites, labels)
    lo = site_probe(noise, sites, labels)
    assert set(hi["per_label"]) == {"normal", "pneumonia"}
    assert hi["mean_balanced_accuracy"] > 0.9 and hi["mean_chance"] == 0.5
    assert abs(lo["mean_balanced_accuracy"] - 0.5) < 0.15
    one_site = site_probe(noise, np.full(n, "a"), labels)
    assert one_site["per_label"] == {} and np.isnan(one_site["mean_balanced_accuracy"])


def _aligned_table(n_per: int = 40, seed: int = 0) -> pd.DataFrame:
    """Site aligned with the label as in the shared data: covid only at "c"; normal and pneumonia at "k" and "r"."""
    rows = [("covid", "c")] * (2 * n_per) + [(lab, s) for lab in ("normal", "pneumonia") for s in ("k", "r")
                                             for _ in range(n_per)]
    t = pd.DataFrame(rows, columns=["label", "site"])
    t["group"] = [f"p{i}" for i in range(len(t))]
    return t.sample(frac=1, random_state=seed).reset_index(drop=True)


def test_within_label_probe_is_not_fooled_by_a_site_that_the_label_explains():
    t = _aligned_table()
    rng = np.random.default_rng(1)
    label_only = rng.normal(0, 1, (len(t), 5))  # features that encode the disease and nothing about the source
    label_only[:, 0] += 3 * (t["label"] == "covid").to_numpy() - 3 * (t["label"] == "normal").to_numpy()
    plain = probe(label_only, t["site"], t["group"].to_numpy())
    within = site_within_label(label_only, t)
    # the plain probe reads the covid site off the label (c is recalled perfectly) ...
    assert plain["recall_per_class"]["c"] > 0.95 and plain["balanced_accuracy"] > 0.5
    # ... within a label, k and r cannot be told apart: chance (covid has one site and is left out)
    assert set(within["per_label"]) == {"normal", "pneumonia"} and within["chance"] == 0.5
    assert abs(within["balanced_accuracy"] - 0.5) < 0.15 and within["n"] == 160
    source = label_only.copy()
    source[:, 1] += 3 * (t["site"] == "k").to_numpy()  # now the source is visible too
    assert site_within_label(source, t)["balanced_accuracy"] > 0.9
    assert "skipped" in site_within_label(label_only, t.drop(columns=["label"]))
    assert "skipped" in site_within_label(label_only, t.assign(site="c"))
