"""The near-duplicate detector: multi-index pair search equals brute force; confirmed pairs; the cached search."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from covidscreen.data.cache import ImageCache
from covidscreen.data.duplicates import (
    cached_near_duplicates,
    choose_bands,
    close_pairs,
    hamming_pairs,
    near_duplicate_pairs,
    thumbnails,
)
from tests.synthetic import texture

# bands and distances whose probe count stays small (at most a few hundred masks per band)
BANDS_AND_DISTANCES = st.sampled_from([(None, 0), (None, 3), (None, 10), (None, 16), (4, 10), (6, 10), (11, 10),
                                       (2, 2), (8, 7), (64, 63), (1, 1)])


@st.composite
def clustered_hashes(draw):
    """Hashes near a few centres (many pairs at every distance), plus uniform ones."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n = draw(st.integers(0, 300))
    centres = rng.integers(0, 2**64, size=max(1, n // 20), dtype=np.uint64)
    h = centres[rng.integers(0, len(centres), n)]
    flips = rng.random((n, 64)) < draw(st.sampled_from([0.0, 0.02, 0.08, 0.5]))
    return h ^ np.packbits(flips, axis=1).view(">u8").ravel().astype(np.uint64)


@settings(max_examples=60, deadline=None)
@given(hashes=clustered_hashes(), bands_k=BANDS_AND_DISTANCES)
def test_hamming_pairs_equals_brute_force(hashes, bands_k):
    bands, k = bands_k
    got = hamming_pairs(hashes, k, bands)
    want = close_pairs(hashes, k)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)


def test_hamming_pairs_finds_every_distance_up_to_the_limit_and_none_beyond():
    base = np.uint64(0x0123456789ABCDEF)
    hashes = np.array([base] + [base ^ np.uint64((1 << d) - 1) for d in range(1, 14)], dtype=np.uint64)
    i, j, d = hamming_pairs(hashes, 10)
    first = {int(b): int(dist) for a, b, dist in zip(i, j, d, strict=True) if a == 0}
    assert first == {k: k for k in range(1, 11)}  # distance k from the base for k = 1..10, none for 11..13


def test_choose_bands_and_bad_bands():
    assert choose_bands(100_000, 10) == 4  # 16-bit bands probed within 2 bits
    assert choose_bands(10, 0) == 1
    with pytest.raises(ValueError, match="bands"):
        hamming_pairs(np.arange(5, dtype=np.uint64), 3, bands=65)


def _images(n=12, seed=0):
    rng = np.random.default_rng(seed)
    return [texture(rng, 0, False, "normal") for _ in range(n)]


def test_near_duplicate_pairs_confirm_copies_and_never_pair_invalid_rows():
    imgs = _images()
    copy = np.asarray(Image.fromarray(imgs[2]).resize((70, 70)).resize((96, 96)))  # a resized copy
    stack = np.stack([*imgs, copy, np.zeros_like(imgs[0]), np.zeros_like(imgs[0])])
    pairs = near_duplicate_pairs(thumbnails(stack))
    assert list(zip(pairs.i.tolist(), pairs.j.tolist(), strict=True)) == [(2, 12)]
    assert pairs.correlation[0] > 0.97 and pairs.n_candidates >= 1
    # two blank images (failed decodes) hash alike but are never pairs, whether marked invalid or not
    valid = np.ones(len(stack), bool)
    valid[12] = False
    assert len(near_duplicate_pairs(thumbnails(stack), valid=valid)) == 0
    sub = pairs.subset(np.array([12, 5, 2]))
    assert (sub.i.tolist(), sub.j.tolist()) == ([0], [2])


def test_cached_search_is_read_back_on_a_rerun(tmp_path):
    imgs = _images(6, seed=3)
    paths = []
    for k, arr in enumerate([*imgs, imgs[4]]):
        p = tmp_path / f"img{k}.png"
        Image.fromarray(arr).save(p)
        paths.append(str(p))
    cache = ImageCache(paths, 64, tmp_path / "cache", progress=False)
    first = cached_near_duplicates(cache)
    assert not first.from_cache and list(zip(first.i, first.j, strict=True)) == [(4, 6)]
    again = cached_near_duplicates(ImageCache(paths, 64, tmp_path / "cache", progress=False))
    assert again.from_cache and again.seconds == 0.0
    np.testing.assert_array_equal(again.i, first.i)
    np.testing.assert_array_equal(again.correlation, first.correlation)
