"""Time each stage of the audit on a data folder (default: the shared chest X-rays, 9,259 images).

    PYTHONPATH=src python benchmarks/audit_speed.py [DATA_DIR] [--size 224]

Prints seconds per stage; the image cache is built first if it does not exist yet (not timed).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from covidscreen.audit.confounding import confounding_audit
from covidscreen.audit.hashing import file_sha256
from covidscreen.audit.imagestats import image_stats
from covidscreen.audit.leakage import leakage_audit
from covidscreen.audit.shortcut import shortcut_probes
from covidscreen.data.cache import ImageCache
from covidscreen.data.locate import resolve_data_dir
from covidscreen.data.splits import patient_grouped_split
from covidscreen.data.table import load_table


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data", nargs="?", default=None)
    ap.add_argument("--size", type=int, default=224)
    args = ap.parse_args()
    table = load_table(resolve_data_dir(args.data))
    table["split"] = patient_grouped_split(table).to_numpy()
    cache = ImageCache(table["path"].tolist(), args.size)
    rows = cache.rows(table["path"].tolist())
    print(f"{len(table)} images at {args.size} px")
    t = time.perf_counter()
    stats = image_stats(cache.images, rows)
    print(f"image stats (thumbnails, histograms, sharpness): {time.perf_counter() - t:6.1f} s")
    t = time.perf_counter()
    sha = file_sha256(table["path"].tolist())
    print(f"file sha256:                                     {time.perf_counter() - t:6.1f} s")
    t = time.perf_counter()
    block, pairs = leakage_audit(table, stats.thumbs, sha)
    print(f"leakage (patients, exact, near-duplicates):      {time.perf_counter() - t:6.1f} s  "
          f"({len(pairs)} near-duplicate pairs, {block['near_duplicates']['n_cross_split']} across splits)")
    t = time.perf_counter()
    confounding_audit(table)
    print(f"confounding:                                     {time.perf_counter() - t:6.1f} s")
    t = time.perf_counter()
    probes = shortcut_probes(table, stats, ("kermany",))
    site = probes["pixels"]["site"]
    print(f"shortcut probes (3 targets, 5-fold LR):          {time.perf_counter() - t:6.1f} s  "
          f"(site balanced accuracy {site.get('balanced_accuracy', np.nan):.3f})")


if __name__ == "__main__":
    main()
