"""Screening off costs nothing: the normal prediction path with and without the security layer in front of it.

Compares, on the same files and model, (a) ``Predictor.predict_files`` as before, (b) ``predict_screened`` with STRIP
off (what ``covidscreen predict`` runs), and (c) model loading with the hash computed from the loaded bytes against
hashing the file and loading it again (the former way). Prints medians of repeated, interleaved runs; STRIP on is
timed once for scale. Run: ``PYTHONPATH=src python benchmarks/bench_screening_overhead.py [--images 64] [--repeats 7]``
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--model", default="mobilenet_v2_035")
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()

    from safetensors.torch import load_file

    from covidscreen.inference.checkpoint import load_checkpoint, save_checkpoint
    from covidscreen.inference.predictor import Predictor
    from covidscreen.models import create_model
    from covidscreen.models.weights import sha256_file
    from covidscreen.security.scan import predict_screened

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = create_model(args.model, pretrained=False, num_classes=3)
        save_checkpoint(tmp / "run", model, {"classes": ["covid", "normal", "pneumonia"], "image_size": args.size,
                                             "positive_class": "covid", "threshold": 0.5})
        rng = np.random.default_rng(0)
        files = []
        for i in range(args.images):
            path = tmp / f"img{i}.png"
            Image.fromarray(rng.integers(0, 255, (512, 512), dtype=np.uint8)).save(path)
            files.append(path)
        predictor = Predictor(tmp / "run", device="cpu")
        predictor.predict_files(files[:8], progress=False)  # warm-up
        plain, screened = [], []
        for _ in range(args.repeats):  # interleaved, so drifting load affects both alike
            t = time.perf_counter()
            predictor.predict_files(files, progress=False)
            plain.append(time.perf_counter() - t)
            t = time.perf_counter()
            predict_screened(predictor, tmp / "run", files, strip=False, progress=False)
            screened.append(time.perf_counter() - t)
        a, b = statistics.median(plain), statistics.median(screened)
        print(f"predict {args.images} images ({args.model}, {args.size} px, CPU): plain {a:.3f} s, through the "
              f"security layer with STRIP off {b:.3f} s: {100 * (b / a - 1):+.1f}% (limit +5%)")
        old_load, new_load = [], []
        weights = tmp / "run" / "model.safetensors"
        for _ in range(args.repeats):
            t = time.perf_counter()
            sha256_file(weights)
            m = create_model(args.model, pretrained=False, num_classes=3)
            m.backbone.load_state_dict(load_file(str(weights)))
            old_load.append(time.perf_counter() - t)
            t = time.perf_counter()
            load_checkpoint(tmp / "run")
            new_load.append(time.perf_counter() - t)
        a, b = statistics.median(old_load), statistics.median(new_load)
        print(f"load checkpoint: hash file then load it {a:.3f} s, hash and parse the same bytes {b:.3f} s: "
              f"{100 * (b / a - 1):+.1f}%")
        # STRIP on, for scale: calibrate on 20 images, screen 8
        from covidscreen.security.strip import StripDetector

        pool = np.stack([np.asarray(Image.open(f).resize((args.size, args.size))) for f in files[:20]])
        t = time.perf_counter()
        det, _ = StripDetector.calibrate(predictor.predict_arrays, pool, frr=0.05, n_perturb=32)
        det.flags(pool[:8])
        per_image = (time.perf_counter() - t) / 28
        print(f"STRIP on (32 perturbations): {per_image * 1000:.0f} ms per screened image")


if __name__ == "__main__":
    main()
