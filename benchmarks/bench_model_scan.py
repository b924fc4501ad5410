"""Cost of the model scan's patch search (``security/patches.py``), its variants interleaved in one process, and a
second scan served by the cache.

    PYTHONPATH=src python benchmarks/bench_model_scan.py runs/backdoor3/targeted_10 --target normal --repeats 3

Variants (``--variants``, default ``halving,full``):

- ``full``: every position optimised for every step, in passes of 256 images, folded (what the scan runs since
  issue 26's thirteenth session: halving dropped a 97.5% trigger);
- ``one-pass``: successive halving with every position of a step in one pass (``max_batch=4096``, before issue 26's
  passes) and BatchNorm not folded;
- ``passes``: successive halving in passes of at most 256 images and 2**20 pixels (``security/chunks.py``),
  BatchNorm not folded;
- ``halving``: the same passes with the frozen model's BatchNorm folded into its convolutions (what the scan ran
  before).

Each variant fits on 12 images of the other classes and measures on the next ``--n-test`` (default 96, the scan's).

``--other-searches``: also MM-BD's margin search and one reversed trigger (50 steps each, fewer than the scan's 300
and 150), folded against not folded.

Prints CPU seconds (this process) and wall seconds of each run and their medians, and the best patch (success,
position) each finds towards the target class (one class: the scan does the same for each class). Peak memory
cannot be told apart within one process: run one variant under ``/usr/bin/time -v`` (``--variants folded
--repeats 1``) for its maximum resident set size.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from typing import Any

import numpy as np
import torch

from covidscreen.inference.predictor import Predictor
from covidscreen.security import chunks
from covidscreen.security.cleanse import reverse_trigger
from covidscreen.security.mmbd import max_margins
from covidscreen.security.patches import HALVING, patch_search
from covidscreen.security.scan import model_patch_success, split_images

VARIANTS: dict[str, tuple[dict[str, Any], bool]] = {  # name: patch_search's options, BatchNorm folded
    "full": ({}, True),
    "one-pass": ({"max_batch": 4096, "prune_after": HALVING}, False),
    "passes": ({"prune_after": HALVING}, False),
    "halving": ({"prune_after": HALVING}, True),
}


@contextlib.contextmanager
def _unfolded(_model: torch.nn.Module, _example: torch.Tensor):
    yield 0


def timed(fn):
    c0, w0 = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.process_time() - c0, time.perf_counter() - w0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("--target", default="normal", help="class the patches aim at")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--variants", default="halving,full", help=f"comma-separated, of {', '.join(VARIANTS)}")
    ap.add_argument("--n-test", type=int, default=96, help="held-out images the success is measured on")
    ap.add_argument("--cache", action="store_true", help="also time a scan of every class and a second, cached one")
    ap.add_argument("--other-searches", action="store_true", help="also time MM-BD and a reversed trigger")
    args = ap.parse_args()
    names = args.variants.split(",")
    unknown = set(names) - set(VARIANTS)
    if unknown:
        ap.error(f"unknown variant(s) {sorted(unknown)}; use {', '.join(VARIANTS)}")
    pred = Predictor(args.run, device="cpu")
    images, labels, _ = split_images(args.run, pred, "val")
    side = max(2, round(0.05 * pred.size))
    t = pred.classes.index(args.target)
    idx = np.random.default_rng(0).permutation(np.flatnonzero((labels != t) & (labels >= 0)))
    fit, test = (torch.from_numpy(images[i]).float().div(255.0).unsqueeze(1)
                 for i in (idx[:12], idx[12:12 + args.n_test]))
    print(f"{args.run}: {pred.size} px, patch side {side}, {len(test)} test images, torch threads "
          f"{torch.get_num_threads()}", flush=True)
    cpu: dict[str, list[float]] = {k: [] for k in names}
    wall: dict[str, list[float]] = {k: [] for k in names}
    real_fold = chunks.folded_frozen_batchnorm
    for _ in range(args.repeats):
        for name in names:
            kw, fold = VARIANTS[name]
            chunks.folded_frozen_batchnorm = real_fold if fold else _unfolded
            try:
                res, c, w = timed(lambda kw=kw: patch_search(pred.model, fit, test, t, side=side, steps=12, seed=t,
                                                             **kw))
            finally:
                chunks.folded_frozen_batchnorm = real_fold
            cpu[name].append(c)
            wall[name].append(w)
            print(f"{name}: {c:.1f} CPU s, {w:.1f} s wall; best patch towards {args.target}: success "
                  f"{res.success:.4f} at {res.position}", flush=True)
    for name in names:
        print(f"median {name}: {np.median(cpu[name]):.1f} CPU s, {np.median(wall[name]):.1f} s wall")
    if args.other_searches:
        other_searches(pred, fit, t, args.repeats)
    if args.cache:
        model_patch_success(args.run)  # fills the cache (or finds it filled)
        _, c, w = timed(lambda: model_patch_success(args.run))
        print(f"second scan of the same weights (cache): {c:.2f} CPU s, {w:.2f} s wall")


def other_searches(pred: Predictor, images: torch.Tensor, target: int, repeats: int) -> None:
    """MM-BD and one reversed trigger, not folded and folded, interleaved (their results side by side)."""
    searches = {
        "MM-BD, 50 steps": lambda: max_margins(pred.model, (pred.size, pred.size), len(pred.classes), steps=50),
        "reversed trigger, 50 steps": lambda: reverse_trigger(pred.model, images, target, steps=50).mask_l1,
    }
    real_fold = chunks.folded_frozen_batchnorm
    for label, search in searches.items():
        cpu: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(repeats):
            for fold in (False, True):
                chunks.folded_frozen_batchnorm = real_fold if fold else _unfolded
                try:
                    res, c, _ = timed(search)
                finally:
                    chunks.folded_frozen_batchnorm = real_fold
                cpu[fold].append(c)
                print(f"{label}, {'folded' if fold else 'not folded'}: {c:.1f} CPU s; result {np.round(res, 3)}",
                      flush=True)
        print(f"median {label}: not folded {np.median(cpu[False]):.1f}, folded {np.median(cpu[True]):.1f} CPU s")


if __name__ == "__main__":
    main()
