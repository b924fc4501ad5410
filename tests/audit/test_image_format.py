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


def test_xray_collections_told_apart_by_size_alone_are_flagged_and_explained_for_xrays():
    """The shared X-rays' case: every COVID image from one collection published at varied sizes, the others re-saved
    at 224 x 224, the pixels alike. The audit belongs to X-rays too: it flags this, and says what it means there."""
    from covidscreen.audit.image_format import _section

    rng = np.random.default_rng(1)
    n = 40
    imgs = np.clip(rng.normal(100, 20, (2 * n, 64, 64)), 0, 240).astype(np.uint8)  # same 'anatomy'
    width = np.concatenate([rng.integers(300, 512, n), np.full(n, 224)])
    height = np.concatenate([rng.integers(300, 512, n), np.full(n, 224)])
    table = pd.DataFrame({"label": ["covid"] * n + ["normal"] * n, "group": [f"p{i}" for i in range(2 * n)],
                          "width": width, "height": height, "path": [f"/nonexistent/{i}.png" for i in range(2 * n)]})
    block = format_audit(table, imgs, np.arange(2 * n))
    finding = format_finding(block)
    assert finding is not None and "on chest X-rays" in finding["text"] and "on CT" in finding["text"]
    section = _section(block)
    assert any(isinstance(part, str) and "laterality markers" in part for part in section.blocks)
