import numpy as np
import pandas as pd

from covidscreen.audit.image_format import FEATURES, format_audit, format_features, format_finding


def _data(n=40, confounded=True, seed=0):
    """Same 'anatomy' for both labels; with ``confounded`` the covid images are paper figures: a white frame,
    saturated white text near the edge and another size."""
    rng = np.random.default_rng(seed)
    imgs = np.clip(rng.normal(100, 20, (2 * n, 64, 64)), 0, 240).astype(np.uint8)
    labels = ["covid"] * n + ["non_covid"] * n
    width = np.full(2 * n, 512)
    if confounded:
        imgs[:n, :4, :] = 255
        imgs[:n, -4:, :] = 255
        imgs[:n, 6:9, 8:40:4] = 255  # 'text'
        width[:n] = 380
    table = pd.DataFrame({"label": labels, "group": [f"p{i // 2}" for i in range(2 * n)], "width": width,
                          "height": 300, "path": [f"/nonexistent/{i}.png" for i in range(2 * n)]})
    return table, imgs


def test_features_by_hand():
    img = np.zeros((1, 20, 20), np.uint8)
    img[0, 0, :] = 255  # the top row: saturated, in the frame
    f = format_features(img, np.array([0]), np.array([[400.0, 200.0]]))
    assert list(f.columns) == list(FEATURES)
    assert f["aspect"].iloc[0] == 2.0 and np.isclose(f["log_width"].iloc[0], np.log(400))
    assert f["white"].iloc[0] == 20 / 400 and f["black"].iloc[0] == 380 / 400
    frame = 400 - 18 * 18  # outer 1-pixel frame of a 20 px image (5%)
    assert np.isclose(f["border_mean"].iloc[0], 20 * 255 / frame)


def test_confounded_format_is_found_and_worded():
    table, imgs = _data()
    block = format_audit(table, imgs, np.arange(len(table)))
    assert block["label_from_format"]["roc_auc"] > 0.95 and block["label_from_format"]["grouped"]
    assert block["by_label"]["covid"]["width"] == 380 and block["by_label"]["non_covid"]["white"] == 0
    finding = format_finding(block)
    assert finding["severity"] == "high"
    assert finding["text"].startswith("Source confounding in the image format")
    assert "'covid': median 380x300 px" in finding["text"]


def test_unconfounded_format_gives_no_finding():
    table, imgs = _data(confounded=False)
    block = format_audit(table, imgs, np.arange(len(table)))
    assert block["label_from_format"]["roc_auc"] < 0.75
    assert format_finding(block) is None
