"""Speed of one Grad-CAM on the default model (efficientnet_lite0) at 224 px on this machine's CPU.

Prints the median and best of repeated calls for: a plain forward pass (reference), one map of an image already at
224 px (hooks registered once), one full explanation of a file (decode, map, resize back to the file's geometry),
and the one-call ``explain()`` (which also registers and releases the hooks). The machine is shared, so the load
average is printed too; compare numbers only under similar load.

Usage: PYTHONPATH=src python benchmarks/bench_explain.py [--repeats 20] [--threads N] [--method gradcam]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from covidscreen.data.decode import load_resized
from covidscreen.explain import Explainer, explain
from covidscreen.models import create_model

SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "samples" / "nih_00000001_000.png"


def timed(fn, repeats: int) -> tuple[float, float]:
    for _ in range(3):  # warm-up
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--method", default="gradcam")
    ap.add_argument("--size", type=int, default=224)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    # random weights: speed does not depend on their values, and the benchmark needs no download
    model = create_model("efficientnet_lite0", pretrained=False, num_classes=3).eval()
    if SAMPLE.is_file():
        source: Path | np.ndarray = SAMPLE
        square = load_resized(SAMPLE, args.size)
    else:
        source = square = (np.random.default_rng(0).random((args.size, args.size)) * 255).astype(np.uint8)
    x = torch.from_numpy(np.array(square)).float().div(255)[None, None]

    print(f"efficientnet_lite0, {args.method} at {args.size} px, torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s), {os.cpu_count()} CPU(s), load average "
          f"{' '.join(f'{v:.1f}' for v in os.getloadavg())}, {args.repeats} repeats")
    rows = []
    with torch.no_grad():
        rows.append(("forward pass only (reference)", *timed(lambda: model(x), args.repeats)))
    with Explainer(model, method=args.method, image_size=args.size) as ex:
        rows.append(("one map, image already at input size", *timed(lambda: ex.maps(square[None], 0), args.repeats)))
        name = f"one explanation of {SAMPLE.name if SAMPLE.is_file() else 'an array'} (decode + map + resize back)"
        rows.append((name, *timed(lambda: ex.explain(source, target=0), args.repeats)))
    rows.append(("explain() one call (hooks registered + released)",
                 *timed(lambda: explain(model, source, target=0, method=args.method, image_size=args.size),
                        args.repeats)))
    for what, med, best in rows:
        print(f"  {what:70s} median {med * 1000:7.1f} ms   best {best * 1000:7.1f} ms")


if __name__ == "__main__":
    main()
