"""Image fingerprints for duplicate search: file sha256 (exact copies) and perceptual hashes of decoded pixels.

Perceptual hashes are computed from thumbnails of the decoded, square-resized arrays of the image cache, so a copy
that was resized or re-encoded (JPEG quality, PNG) still hashes alike, and no file is decoded twice:

- ``phash``: 2-D DCT of a 32x32 average-pooled image; bit = low-frequency coefficient above their median (as the
  ``imagehash`` package does);
- ``dhash``: 8x9 average-pooled image; bit = brighter than the left neighbour.

Both are 64-bit integers; similarity is the Hamming distance. Pairs are found by a chunked all-pairs XOR/popcount,
which for 10,000 images takes about a second.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..runtime import sha256_file
from .imagestats import pooled

_POPCOUNT8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def file_sha256(paths: Sequence[str]) -> list[str]:
    """sha256 of each file's bytes."""
    return [sha256_file(p) for p in paths]


def try_file_sha256(paths: Sequence[str]) -> tuple[list[str | None], dict[str, str]]:
    """sha256 of each file's bytes (None where the file cannot be read), and ``{path: why}`` for those."""
    digests: list[str | None] = []
    errors: dict[str, str] = {}
    for p in paths:
        try:
            digests.append(sha256_file(p))
        except OSError as exc:
            digests.append(None)
            errors[p] = f"{p}: could not be read for the audit ({exc.strerror or exc})"
    return digests, errors


def _pack(bits: np.ndarray) -> np.ndarray:
    """``(N, 64)`` booleans -> ``(N,)`` uint64."""
    return np.packbits(bits.astype(np.uint8), axis=1).view(">u8").ravel().astype(np.uint64)


def dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix ``D`` (``D @ x`` is the DCT of a length-``n`` vector)."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    d = np.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2 / n)
    d[0] /= math.sqrt(2)
    return d


def phash_from_pooled(pooled32: np.ndarray) -> np.ndarray:
    """pHash of ``(N, 32, 32)`` pooled images."""
    d = dct_matrix(pooled32.shape[1]).astype(np.float64)
    coeffs = (d[:8] @ pooled32.astype(np.float64) @ d[:8].T).reshape(len(pooled32), 64)  # low 8x8 frequencies
    return _pack(coeffs > np.median(coeffs, axis=1, keepdims=True))


def dhash_from_pooled(pooled8x9: np.ndarray) -> np.ndarray:
    """dHash of ``(N, 8, 9)`` pooled images."""
    return _pack((pooled8x9[:, :, 1:] > pooled8x9[:, :, :-1]).reshape(len(pooled8x9), 64))


def perceptual_hashes(thumbs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(phash, dhash)``, each ``(N,)`` uint64, of ``(N, h, w)`` thumbnails (see :mod:`.imagestats`)."""
    return phash_from_pooled(pooled(thumbs, (32, 32))), dhash_from_pooled(pooled(thumbs, (8, 9)))


def popcount(x: np.ndarray) -> np.ndarray:
    """Number of set bits of each uint64."""
    if hasattr(np, "bitwise_count"):  # numpy >= 2
        return np.bitwise_count(x)
    return _POPCOUNT8[x.view(np.uint8)].reshape(*x.shape, 8).sum(-1)


def close_pairs(hashes: np.ndarray, max_distance: int, chunk: int = 512) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs ``i < j`` whose hashes differ in at most ``max_distance`` bits.

    Returns:
        ``(i, j, distance)`` arrays.
    """
    hashes = np.asarray(hashes, dtype=np.uint64)
    n = len(hashes)
    out_i, out_j, out_d = [], [], []
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        dist = popcount(hashes[start:stop, None] ^ hashes[None, :])
        cand = (dist <= max_distance) & (np.arange(n)[None, :] > np.arange(start, stop)[:, None])
        ii, jj = np.nonzero(cand)
        out_i.append(ii + start)
        out_j.append(jj)
        out_d.append(dist[ii, jj].astype(np.int64))
    if not out_i:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    return np.concatenate(out_i).astype(np.int64), np.concatenate(out_j).astype(np.int64), np.concatenate(out_d)
