import os

import numpy as np
from PIL import Image

from covidscreen.data.cache import ImageCache
from covidscreen.data.decode import load_resized
from tests.conftest import make_image_folder


def test_cache_matches_decoder_reports_failures_and_is_reused(tmp_path):
    root = make_image_folder(tmp_path / "d", n_per_class=3)
    paths = sorted(str(p) for p in (root / "images").iterdir())
    bad = root / "images" / "broken.png"
    bad.write_bytes(b"not a png")
    paths.append(str(bad))
    cache = ImageCache(paths, 32, cache_dir=tmp_path / "c", progress=False)
    assert cache.images.shape == (7, 32, 32)
    assert cache.ok.tolist() == [True] * 6 + [False]
    assert str(bad) in cache.errors and "not a readable image" in cache.errors[str(bad)]
    np.testing.assert_array_equal(cache.images[0], load_resized(paths[0], 32))
    again = ImageCache(paths, 32, cache_dir=tmp_path / "c", progress=False)
    assert again.file == cache.file
    assert len(list((tmp_path / "c").glob("*.npy"))) == 1
    # another size or a changed file gives another cache
    assert ImageCache(paths, 16, cache_dir=tmp_path / "c", progress=False).file != cache.file
    Image.fromarray(np.full((48, 48), 7, np.uint8)).save(paths[0])
    os.utime(paths[0], ns=(1, 10**9 * 12345))
    changed = ImageCache(paths, 32, cache_dir=tmp_path / "c", progress=False)
    assert changed.file != cache.file and (changed.images[0] == 7).all()
