"""Per-image summaries against plain numpy."""

import numpy as np

from covidscreen.audit.imagestats import image_stats, pooled


def test_stats_match_numpy():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 64, 64), dtype=np.uint8)
    s = image_stats(images, np.array([4, 0, 2]), batch=2)
    for k, r in enumerate([4, 0, 2]):
        ref, _ = np.histogram(images[r], bins=32, range=(0, 256))
        np.testing.assert_allclose(s.hist[k], ref / images[r].size, atol=1e-7)
        x = images[r].astype(float)
        np.testing.assert_allclose(s.edge[k], [np.abs(np.diff(x, axis=0)).mean(), np.abs(np.diff(x, axis=1)).mean()],
                                   rtol=1e-5)
        np.testing.assert_allclose(s.thumbs[k], x, atol=1e-4)  # 64 -> 64: unchanged
    block_mean = images[4].astype(float).reshape(32, 2, 32, 2).mean((1, 3))
    np.testing.assert_allclose(pooled(s.thumbs, (32, 32))[0], block_mean, atol=1e-4)
