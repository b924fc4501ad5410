"""Near-duplicate images: perceptual hashes, a sub-quadratic pair search, and a cached search over an image cache.

One detector serves both the split (``splits.link_groups`` keeps near-copies together) and the leakage audit
(``audit/leakage.py`` reports them), so the split cannot leak what the audit would report. It works in two stages:

1. *Candidates*: pairs whose 64-bit pHash differs in at most ``MAX_PHASH_DISTANCE`` bits. They are found by
   multi-index hashing (Norouzi, Punjani and Fleet, "Fast search in Hamming space with multi-index hashing", CVPR
   2012): the 64 bits are cut into ``m`` bands; two hashes within ``k`` bits differ in at most ``k // m`` bits in
   at least one band (pigeonhole: otherwise they would differ in at least ``m * (k // m + 1) > k``). So every band
   value is looked up together with its neighbours within ``k // m`` flipped bits in a sorted index of that band,
   and only those candidates get their full distance computed. The result is exactly that of the all-pairs search
   (:func:`close_pairs`, kept as the reference), at a cost that grows with the number of true neighbours instead of
   with ``n**2``. No maintained Python package does a *range* (all pairs within ``k``) search in Hamming space
   without a heavy native dependency (faiss), and the method is 40 lines of numpy here.
2. *Confirmation*: the Pearson correlation of the two standardised 64x64 thumbnails is at least
   ``MIN_CORRELATION``. Chest X-rays of different people look alike at hash resolution (on the shared data about
   500 pairs of *different* images are within 4 bits, 70,000 within 10), while resized and re-encoded copies keep a
   thumbnail correlation above 0.99; different images rarely exceed 0.95. Both thresholds were set by inspecting
   pairs of the shared data by eye.

Perceptual hashes are computed from thumbnails of the decoded, square-resized arrays of the image cache, so a copy
that was resized or re-encoded (JPEG quality, PNG) still hashes alike, and no file is decoded twice:

- ``phash``: 2-D DCT of a 32x32 average-pooled image; bit = low-frequency coefficient above their median (as the
  ``imagehash`` package does);
- ``dhash``: 8x9 average-pooled image; bit = brighter than the left neighbour.

:func:`cached_near_duplicates` stores the confirmed pairs of an :class:`~covidscreen.data.cache.ImageCache` next to
it (same key: paths, sizes, times of every file), so a rerun on unchanged files costs a file read.
"""

from __future__ import annotations

import itertools
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .cache import ImageCache

MAX_PHASH_DISTANCE = 10  # candidate pairs: pHashes within this many bits
MIN_CORRELATION = 0.97  # confirmed pairs: standardised 64x64 thumbnails correlate at least this much
THUMB = 64  # side of the thumbnails
GROUPING_IMAGE_SIZE = 224  # the canonical (unpreprocessed) cached images the split's near-duplicate search reads
PAIRS_VERSION = 1  # bump when the hashes, thumbnails or pairing change
DIRECT_LOOKUP_BITS = 24  # bands up to this wide are indexed by an offsets table (2**24 entries = 128 MiB at most)

_POPCOUNT8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


# --- thumbnails and hashes -------------------------------------------------------------------------------------------

def thumbnail_batch(x: np.ndarray) -> np.ndarray:
    """``(N, 64, 64)`` float32 area-averaged thumbnails of ``(N, H, W)`` uint8 images."""
    with torch.inference_mode():
        return F.adaptive_avg_pool2d(torch.from_numpy(np.ascontiguousarray(x)).unsqueeze(1).float(),
                                     THUMB).squeeze(1).numpy()


def thumbnails(images: np.ndarray, rows: np.ndarray | None = None, batch: int = 512) -> np.ndarray:
    """Thumbnails of ``images[rows]`` (e.g. ``ImageCache.images``; a multi-channel CT cache gives channel 0)."""
    rows = np.arange(len(images)) if rows is None else np.asarray(rows, dtype=np.int64)
    out = np.empty((len(rows), THUMB, THUMB), dtype=np.float32)
    for start in range(0, len(rows), batch):
        x = np.asarray(images[rows[start:start + batch]])
        out[start:start + len(x)] = thumbnail_batch(x if x.ndim == 3 else x[:, 0])
    return out


def pooled(thumbs: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Thumbnails area-averaged further down to ``shape``."""
    with torch.inference_mode():
        x = torch.from_numpy(np.ascontiguousarray(thumbs)).unsqueeze(1)
        return F.adaptive_avg_pool2d(x, shape).squeeze(1).numpy()


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
    """``(phash, dhash)``, each ``(N,)`` uint64, of ``(N, h, w)`` thumbnails."""
    return phash_from_pooled(pooled(thumbs, (32, 32))), dhash_from_pooled(pooled(thumbs, (8, 9)))


def popcount(x: np.ndarray) -> np.ndarray:
    """Number of set bits of each uint64."""
    if hasattr(np, "bitwise_count"):  # numpy >= 2
        return np.bitwise_count(x)
    return _POPCOUNT8[x.view(np.uint8)].reshape(*x.shape, 8).sum(-1)


# --- pair search -----------------------------------------------------------------------------------------------------

def _empty_pairs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    empty = np.zeros(0, dtype=np.int64)
    return empty, empty.copy(), empty.copy()


def close_pairs(hashes: np.ndarray, max_distance: int, chunk: int = 512) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs ``i < j`` whose hashes differ in at most ``max_distance`` bits, by comparing every pair (``n**2``;
    the reference for :func:`hamming_pairs`).

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
        return _empty_pairs()
    return np.concatenate(out_i).astype(np.int64), np.concatenate(out_j).astype(np.int64), np.concatenate(out_d)


def _flip_masks(width: int, radius: int) -> np.ndarray:
    """Every ``width``-bit mask with at most ``radius`` bits set."""
    masks = [sum(1 << b for b in bits) for r in range(radius + 1) for bits in itertools.combinations(range(width), r)]
    return np.array(masks, dtype=np.uint64)


def _band_widths(m: int, bits: int = 64) -> list[int]:
    return [bits // m + (1 if b < bits % m else 0) for b in range(m)]


def choose_bands(n: int, max_distance: int) -> int:
    """The number of bands with the fewest expected lookups and candidates for ``n`` hashes (uniform bits assumed):
    ``m`` bands of about ``64 / m`` bits, each probed with every mask of at most ``max_distance // m`` bits."""
    def cost(m: int) -> float:
        r = max_distance // m
        return sum(sum(math.comb(w, e) for e in range(r + 1)) * (1 + n / 2.0 ** w) for w in _band_widths(m))
    return min(range(1, min(64, max_distance + 1) + 1), key=cost)


def hamming_pairs(hashes: np.ndarray, max_distance: int, bands: int | None = None,
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs ``i < j`` of 64-bit hashes within ``max_distance`` bits, by multi-index hashing (module docstring):
    the same pairs as :func:`close_pairs`, sorted by ``(i, j)``.

    Args:
        hashes: ``(N,)`` uint64.
        max_distance: largest Hamming distance of a pair.
        bands: number of bands (default: :func:`choose_bands`).

    Returns:
        ``(i, j, distance)`` int64 arrays.
    """
    hashes = np.asarray(hashes, dtype=np.uint64)
    n = len(hashes)
    if n < 2 or max_distance < 0:
        return _empty_pairs()
    m = bands or choose_bands(n, max_distance)
    if not 1 <= m <= 64:
        raise ValueError(f"bands must be from 1 to 64, got {m}")
    radius = max_distance // m  # pigeonhole: some band differs in at most this many bits
    found: list[np.ndarray] = []
    shift = 64
    for width in _band_widths(m):
        shift -= width
        band = (hashes >> np.uint64(shift)) & np.uint64((1 << width) - 1)
        order = np.argsort(band, kind="stable")
        sorted_band = band[order]
        # narrow bands: bucket offsets by direct lookup (one gather per probe instead of two binary searches)
        offsets = (np.concatenate([[0], np.cumsum(np.bincount(band.astype(np.int64), minlength=1 << width))])
                   if width <= DIRECT_LOOKUP_BITS else None)
        for mask in _flip_masks(width, radius):
            key = band ^ mask
            if offsets is not None:
                k = key.astype(np.int64)
                lo, hi = offsets[k], offsets[k + 1]
            else:
                lo = np.searchsorted(sorted_band, key, side="left")
                hi = np.searchsorted(sorted_band, key, side="right")
            count = hi - lo
            if not count.any():
                continue
            q = np.repeat(np.arange(n, dtype=np.int64), count)  # each hash against every hash of its probed bucket
            starts = np.repeat(lo - np.cumsum(count) + count, count)
            t = order[starts + np.arange(len(q))]
            keep = q < t
            q, t = q[keep], t[keep]
            close = popcount(hashes[q] ^ hashes[t]) <= max_distance
            found.append(q[close] * n + t[close])
    if not found:
        return _empty_pairs()
    codes = np.unique(np.concatenate(found))  # a pair close in several bands is found once per band
    i, j = codes // n, codes % n
    return i, j, popcount(hashes[i] ^ hashes[j]).astype(np.int64)


def standardise(thumbs: np.ndarray) -> np.ndarray:
    """Rows of zero mean and unit root-mean-square (flattened thumbnails)."""
    x = thumbs.reshape(len(thumbs), -1).astype(np.float32)
    x = x - x.mean(1, keepdims=True)
    return x / (np.sqrt((x ** 2).mean(1, keepdims=True)) + 1e-6)


def pair_correlation(z: np.ndarray, i: np.ndarray, j: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Pearson correlation of standardised rows ``z[i]`` and ``z[j]``, in chunks (70,000 candidate pairs of 4,096
    values would otherwise need gigabytes)."""
    out = np.empty(len(i), dtype=np.float64)
    for s in range(0, len(i), chunk):
        out[s:s + chunk] = np.einsum("ij,ij->i", z[i[s:s + chunk]], z[j[s:s + chunk]]) / z.shape[1]
    return out


@dataclass
class NearDuplicatePairs:
    """Confirmed near-duplicate pairs ``(i[k], j[k])``, ``i < j``, as row numbers of the thumbnails searched."""

    i: np.ndarray
    j: np.ndarray
    phash_distance: np.ndarray
    correlation: np.ndarray
    n_candidates: int = 0  # pairs within the pHash distance, before confirmation
    seconds: float = 0.0  # time of the search (0 when read from the cache)
    from_cache: bool = False

    def __len__(self) -> int:
        return len(self.i)

    def subset(self, rows: np.ndarray) -> NearDuplicatePairs:
        """The pairs among ``rows`` (row numbers of the search), renumbered as positions in ``rows``."""
        pos = np.full(int(max(self.i.max(initial=-1), self.j.max(initial=-1), np.max(rows, initial=-1))) + 1, -1,
                      dtype=np.int64)
        pos[np.asarray(rows, dtype=np.int64)] = np.arange(len(rows))
        a, b = pos[self.i], pos[self.j]
        keep = (a >= 0) & (b >= 0)
        a, b = a[keep], b[keep]
        return NearDuplicatePairs(np.minimum(a, b), np.maximum(a, b), self.phash_distance[keep],
                                  self.correlation[keep], self.n_candidates, self.seconds, self.from_cache)


def near_duplicate_pairs(thumbs: np.ndarray, max_phash: int = MAX_PHASH_DISTANCE,
                         min_correlation: float = MIN_CORRELATION, valid: np.ndarray | None = None,
                         ) -> NearDuplicatePairs:
    """Confirmed near-duplicate pairs among ``(N, 64, 64)`` thumbnails (module docstring).

    Args:
        valid: ``(N,)`` bool; rows that are False (images that failed to decode) are never paired.
    """
    t0 = time.perf_counter()
    ph = phash_from_pooled(pooled(thumbs, (32, 32))) if len(thumbs) else np.zeros(0, np.uint64)
    i, j, dist = hamming_pairs(ph, max_phash)
    if valid is not None:
        keep = np.asarray(valid)[i] & np.asarray(valid)[j]
        i, j, dist = i[keep], j[keep], dist[keep]
    corr = pair_correlation(standardise(thumbs), i, j)
    keep = corr >= min_correlation
    return NearDuplicatePairs(i[keep], j[keep], dist[keep], corr[keep], n_candidates=int(len(i)),
                              seconds=time.perf_counter() - t0)


def cached_near_duplicates(cache: ImageCache, max_phash: int = MAX_PHASH_DISTANCE,
                           min_correlation: float = MIN_CORRELATION) -> NearDuplicatePairs:
    """Near-duplicate pairs among every image of an :class:`~covidscreen.data.cache.ImageCache` (row numbers of the
    cache), stored beside the cache file under the same key, so a rerun on unchanged files reads them back."""
    cache_file = Path(cache.file)
    file = cache_file.with_name(f"{cache_file.stem}.pairs-v{PAIRS_VERSION}-p{max_phash}-c{min_correlation:g}.npz")
    if file.is_file():
        try:
            with np.load(file) as z:
                return NearDuplicatePairs(z["i"], z["j"], z["phash_distance"], z["correlation"],
                                          int(z["n_candidates"]), 0.0, True)
        except (OSError, ValueError, KeyError):
            pass  # damaged: searched again and rewritten below
    pairs = near_duplicate_pairs(thumbnails(cache.images), max_phash, min_correlation, valid=cache.ok)
    tmp = file.with_name(f"{file.stem}.tmp{os.getpid()}.npz")
    np.savez(tmp, i=pairs.i, j=pairs.j, phash_distance=pairs.phash_distance, correlation=pairs.correlation,
             n_candidates=pairs.n_candidates)
    tmp.replace(file)
    return pairs
