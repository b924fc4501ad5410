"""Cost of the model scan's patch search: every position optimised for every step (before issue 26) against
successive halving (``security/patches.py``), interleaved in one process, and a second scan served by the cache.

    PYTHONPATH=src python benchmarks/bench_model_scan.py runs/backdoor3/targeted_10 --target normal --repeats 1

Prints CPU seconds (this process) and wall seconds of each variant and the best patch success it finds towards the
target class (one class: the scan does the same for each class).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from covidscreen.inference.predictor import Predictor
from covidscreen.security.patches import patch_search
from covidscreen.security.scan import model_patch_success, split_images


def timed(fn):
    c0, w0 = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.process_time() - c0, time.perf_counter() - w0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("--target", default="normal", help="class the patches aim at")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--cache", action="store_true", help="also time a scan of every class and a second, cached one")
    args = ap.parse_args()
    pred = Predictor(args.run, device="cpu")
    images, labels, _ = split_images(args.run, pred, "val")
    side = max(2, round(0.05 * pred.size))
    t = pred.classes.index(args.target)
    idx = np.random.default_rng(0).permutation(np.flatnonzero((labels != t) & (labels >= 0)))  # as scan_targets
    fit, test = (torch.from_numpy(images[i]).float().div(255.0).unsqueeze(1) for i in (idx[:12], idx[12:36]))
    variants = {"every position, every step": {"prune_after": ()}, "successive halving": {}}
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.repeats):
        for name, kw in variants.items():
            res, c, w = timed(lambda kw=kw: patch_search(pred.model, fit, test, t, side=side, steps=12, seed=t, **kw))
            cpu[name].append(c)
            print(f"{name}: {c:.1f} CPU s, {w:.1f} s wall; best patch towards {args.target}: success "
                  f"{res.success:.2f} at {res.position}", flush=True)
    a, b = (np.median(v) for v in cpu.values())
    print(f"median CPU s: {a:.1f} vs {b:.1f}: successive halving {a / b:.2f}x cheaper")
    if args.cache:
        model_patch_success(args.run)  # fills the cache (or finds it filled)
        _, c, w = timed(lambda: model_patch_success(args.run))
        print(f"second scan of the same weights (cache): {c:.2f} CPU s, {w:.2f} s wall")


if __name__ == "__main__":
    main()
