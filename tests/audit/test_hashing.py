"""Perceptual hashes and pair search."""

import io

import numpy as np
from PIL import Image

from covidscreen.audit.hashing import close_pairs, dct_matrix, file_sha256, perceptual_hashes, popcount
from covidscreen.audit.imagestats import image_stats
from covidscreen.data.decode import resize_square
from tests.synthetic import texture


def test_dct_is_orthonormal_and_popcount_is_right():
    d = dct_matrix(32)
    np.testing.assert_allclose(d @ d.T, np.eye(32), atol=1e-12)
    x = np.array([0, 1, 2**63 + 5, 2**64 - 1], dtype=np.uint64)
    assert popcount(x).tolist() == [0, 1, 3, 64]


def _reencoded(arr):
    buf = io.BytesIO()
    Image.fromarray(arr).resize((70, 70), Image.Resampling.BILINEAR).save(buf, format="JPEG", quality=60)
    return np.asarray(Image.open(buf).convert("L"))


def test_hash_survives_resize_and_jpeg_but_separates_other_images():
    rng = np.random.default_rng(0)
    imgs = [texture(rng, 0, False, "normal") for _ in range(30)]
    copy = _reencoded(imgs[0])
    stack = np.stack([resize_square(a, 64) for a in [*imgs, copy]])
    ph, dh = perceptual_hashes(image_stats(stack).thumbs)
    d_copy = int(popcount(ph[0] ^ ph[-1]))
    d_others = popcount(ph[1:30] ^ ph[0])
    assert d_copy <= 4 < d_others.min()
    assert int(popcount(dh[0] ^ dh[-1])) <= 6


def test_close_pairs_equals_brute_force():
    rng = np.random.default_rng(1)
    h = rng.integers(0, 2**63, size=300, dtype=np.uint64)
    h[7] = h[3] ^ np.uint64(0b101)  # distance 2
    i, j, d = close_pairs(h, 20, chunk=64)
    brute = {(a, b) for a in range(300) for b in range(a + 1, 300) if bin(int(h[a] ^ h[b])).count("1") <= 20}
    assert set(zip(i.tolist(), j.tolist(), strict=True)) == brute
    assert (3, 7) in brute


def test_file_sha256(tmp_path):
    (tmp_path / "a").write_bytes(b"abc")
    assert file_sha256([str(tmp_path / "a")]) == ["ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"]
