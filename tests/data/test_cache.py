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


def test_files_changed_or_vanished_after_caching_are_detected_and_re_read(tmp_path):
    import os

    from covidscreen.data.cache import ImageCache
    from tests.conftest import make_image_folder

    root = make_image_folder(tmp_path / "d", n_per_class=3, size=24)
    paths = sorted(str(p) for p in (root / "images").glob("*.png"))
    cache = ImageCache(paths, 16, tmp_path / "c", progress=False)
    assert cache.changed() == {}
    replaced, gone = paths[0], paths[1]
    st = os.stat(replaced)
    # a sync job replaces the file by a copy of the same size and restores its modification time: only the status
    # change time tells (the pixels could differ; they are re-read, not trusted)
    copy = replaced + ".tmp"
    with open(replaced, "rb") as fh:
        data = fh.read()
    with open(copy, "wb") as fh:
        fh.write(data)
    os.replace(copy, replaced)
    os.utime(replaced, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(replaced).st_size == st.st_size and os.stat(replaced).st_mtime_ns == st.st_mtime_ns
    os.remove(gone)
    changed = cache.changed()
    assert set(changed) == {replaced, gone} and "vanished" in changed[gone]
    again = ImageCache(paths, 16, tmp_path / "c", progress=False)  # not trusted: a new cache reads them again
    assert again.file != cache.file
    assert (again.images[0] == cache.images[0]).all()
    assert not again.ok[1] and "not found" in again.errors[gone]
