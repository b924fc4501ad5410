"""Time the near-duplicate search of the split and the audit (``data/duplicates.py``), and check it is exact.

    PYTHONPATH=src python benchmarks/bench_duplicates.py [DATA_DIR] [--synthetic 100000] [--sample 4000]

1. On a data folder (default: the shared chest X-rays, 9,259 images): the plain 224 px image cache (built first if
   missing, not timed), thumbnails, pHashes, candidate pairs by multi-index hashing and by the all-pairs reference
   (same pairs asserted), the thumbnail-correlation check on the candidates, and the cached rerun.
2. On a synthetic index of ``--synthetic`` random 64-bit hashes, with planted near-copies at every distance up to
   the limit: the multi-index search, and on a random ``--sample`` of it the all-pairs search, which must find
   exactly the same pairs (the all-pairs search of the whole index is timed from the sample, since it grows with
   ``n**2``).

Prints seconds (wall and CPU of this process); no assertion on time.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from covidscreen.data.cache import ImageCache
from covidscreen.data.duplicates import (
    GROUPING_IMAGE_SIZE,
    MAX_PHASH_DISTANCE,
    cached_near_duplicates,
    close_pairs,
    hamming_pairs,
    near_duplicate_pairs,
    phash_from_pooled,
    pooled,
    thumbnails,
)
from covidscreen.data.locate import resolve_data_dir
from covidscreen.data.table import load_table


class Clock:
    def __init__(self, what: str) -> None:
        self.what = what

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *_: object) -> None:
        self.seconds = time.perf_counter() - self.wall
        self.cpu_seconds = time.process_time() - self.cpu
        print(f"{self.what:<58} {self.seconds:8.2f} s wall {self.cpu_seconds:8.2f} s CPU", flush=True)


def same_pairs(a: tuple[np.ndarray, ...], b: tuple[np.ndarray, ...]) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def on_data(data: str | None) -> None:
    table = load_table(resolve_data_dir(data))
    cache = ImageCache(table["path"].tolist(), GROUPING_IMAGE_SIZE)
    print(f"{len(table)} images of {table.attrs['root']} at {GROUPING_IMAGE_SIZE} px; pHash distance <= "
          f"{MAX_PHASH_DISTANCE}")
    with Clock("thumbnails (64 x 64) of the cached images"):
        thumbs = thumbnails(cache.images)
    with Clock("pHashes"):
        ph = phash_from_pooled(pooled(thumbs, (32, 32)))
    with Clock("candidate pairs, multi-index hashing") as fast:
        mih = hamming_pairs(ph, MAX_PHASH_DISTANCE)
    with Clock("candidate pairs, all pairs (reference)") as slow:
        ref = close_pairs(ph, MAX_PHASH_DISTANCE)
    assert same_pairs(mih, ref), "multi-index hashing and the all-pairs search disagree"
    print(f"  {len(mih[0]):,} candidate pairs, identical in both; CPU time all-pairs / multi-index: "
          f"{slow.cpu_seconds / max(fast.cpu_seconds, 1e-9):.1f}x")
    with Clock("whole search (candidates + thumbnail correlation)"):
        pairs = near_duplicate_pairs(thumbs, valid=cache.ok)
    print(f"  {len(pairs)} confirmed near-duplicate pairs")
    for p in cache.file.parent.glob(f"{cache.file.stem}.pairs-*.npz"):
        os.remove(p)  # time a first search, then the rerun that reads it back
    with Clock("cached search, first run (thumbnails + search + write)"):
        cached_near_duplicates(cache)
    with Clock("cached search, rerun (read back)"):
        again = cached_near_duplicates(cache)
    assert again.from_cache and len(again) == len(pairs)


def synthetic(n: int, sample: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, 2**64, size=n, dtype=np.uint64, endpoint=False)
    # plant near-copies: n // 100 hashes get a copy with d random bits flipped, d = 0..MAX_PHASH_DISTANCE + 2
    n_planted = n // 100
    sources = rng.choice(n, size=2 * n_planted, replace=False)
    src, dst = sources[:n_planted], sources[n_planted:]
    dist = np.arange(n_planted) % (MAX_PHASH_DISTANCE + 3)
    for s, t, d in zip(src, dst, dist, strict=True):
        bits = rng.choice(64, size=int(d), replace=False)
        hashes[t] = hashes[s] ^ np.uint64(sum(1 << int(b) for b in bits))
    print(f"\nsynthetic index: {n:,} random 64-bit hashes, {n_planted:,} planted copies at 0-"
          f"{MAX_PHASH_DISTANCE + 2} bits")
    with Clock(f"multi-index hashing, all {n:,}") as fast:
        i, j, _ = hamming_pairs(hashes, MAX_PHASH_DISTANCE)
    found = set(zip(i.tolist(), j.tolist(), strict=True))
    planted = {(min(s, t), max(s, t)) for s, t, d in zip(src.tolist(), dst.tolist(), dist, strict=True)
               if d <= MAX_PHASH_DISTANCE}
    assert planted <= found, "a planted copy within the distance was missed"
    print(f"  {len(i):,} pairs within {MAX_PHASH_DISTANCE} bits, every one of the {len(planted):,} planted copies "
          "within the distance among them")
    # a sample holding planted pairs (both ends) and random others, searched both ways
    others = np.setdiff1d(np.arange(n), sources)
    k = min(sample // 4, n_planted)
    pick = np.sort(np.concatenate([src[:k], dst[:k], rng.choice(others, size=min(sample - 2 * k, len(others)),
                                                                  replace=False)]))
    with Clock(f"multi-index hashing, sample of {len(pick):,}"):
        a = hamming_pairs(hashes[pick], MAX_PHASH_DISTANCE)
    with Clock(f"all pairs (reference), sample of {len(pick):,}") as slow:
        b = close_pairs(hashes[pick], MAX_PHASH_DISTANCE)
    assert same_pairs(a, b), "multi-index hashing and the all-pairs search disagree on the sample"
    print(f"  sample: {len(a[0]):,} pairs, identical in both")
    # the whole index's pairs restricted to the sample must be the sample's pairs too
    pos = np.full(n, -1)
    pos[pick] = np.arange(len(pick))
    inside = (pos[i] >= 0) & (pos[j] >= 0)
    assert set(zip(pos[i][inside].tolist(), pos[j][inside].tolist(), strict=True)) == set(
        zip(b[0].tolist(), b[1].tolist(), strict=True))
    est = slow.cpu_seconds * (n / len(pick)) ** 2
    print(f"  all pairs of {n:,} estimated from the sample (grows with n**2): {est:.0f} s CPU, "
          f"{est / fast.cpu_seconds:.1f}x the multi-index search's CPU time")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", nargs="?", default=None)
    ap.add_argument("--synthetic", type=int, default=100_000, help="size of the synthetic hash index")
    ap.add_argument("--sample", type=int, default=4000, help="sample checked against the all-pairs search")
    ap.add_argument("--skip-data", action="store_true", help="only the synthetic index")
    args = ap.parse_args()
    print(f"load: {os.getloadavg()[0]:.1f} (1-min average) on {os.cpu_count()} CPUs")
    if not args.skip_data:
        on_data(args.data)
    synthetic(args.synthetic, args.sample)


if __name__ == "__main__":
    main()
