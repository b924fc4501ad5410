"""INT8 variants of a run's ONNX export: decisions changed against FP32, ROC AUC and images/s of each.

For every variant of ``workflows/quantize.py`` (calibration method MinMax, Entropy or Percentile; every node INT8, or
the stem, head and squeeze-excitation nodes kept in float32), calibrated as ``covidscreen export RUN --int8`` does
(training images of every site alike): the share of validation and test decisions at the run's default operating
point that differ from the FP32 export's, the test ROC AUC, and ONNX Runtime images/s at batch 32 (the session of
``OnnxModel``, PyTorch's thread count; FP32 and the variants interleaved, median of ``--rounds``). Which variant
``export --int8`` would serve is decided on validation alone; the test columns are what its guard then checks.

Run::

    PYTHONPATH=src .venv/bin/python benchmarks/bench_int8.py runs/quickstart --calibration-images 128
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from covidscreen.evaluation.metrics import headline_auc, predict_labels
from covidscreen.inference.onnx import ONNX_FILE, export_onnx, session_options
from covidscreen.inference.run import load_run
from covidscreen.workflows.quantize import (
    DEFAULT_VARIANTS,
    calibration_set,
    onnx_probabilities,
    quantize_static_qdq,
    split_images,
)


def images_per_second(session, x: np.ndarray, batch: int = 32) -> float:
    xb = x[:batch].astype(np.float32)[:, None] / 255.0
    session.run(None, {"image": xb})
    t = time.perf_counter()
    session.run(None, {"image": xb})
    return len(xb) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--calibration-images", type=int, default=128)
    ap.add_argument("--selection-images", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    import onnxruntime as ort

    run = load_run(args.run)
    if not (args.run / ONNX_FILE).is_file():
        export_onnx(args.run)
    seed = run.seed or 0
    calib, sites = calibration_set(args.run, args.calibration_images, seed)
    val_x, _ = split_images(args.run, "val", args.selection_images, seed)
    test_x, test_y = split_images(args.run, "test", None, seed)
    threshold, temperature = run.threshold("default"), run.temperature_for("default")
    threads = torch.get_num_threads()
    print(f"{args.run}: {len(calib)} calibration images from sites {sites}; {len(val_x)} val, {len(test_x)} test | "
          f"onnxruntime {ort.__version__}, {threads} threads | load {os.getloadavg()[0]:.1f}", flush=True)

    def session(path: Path):
        return ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])

    def decide(p: np.ndarray) -> np.ndarray:
        return predict_labels(p, run.positive_index, threshold)

    fp32 = session(args.run / ONNX_FILE)
    p32_val, p32_test = (onnx_probabilities(fp32, x, temperature) for x in (val_x, test_x))
    auc32 = headline_auc(test_y, p32_test, list(run.classes), run.positive_class)
    rows, sessions = [], {"FP32": fp32}
    with tempfile.TemporaryDirectory() as tmp:
        for i, variant in enumerate(DEFAULT_VARIANTS):
            path = Path(tmp) / f"v{i}.onnx"
            t = time.perf_counter()
            excluded = quantize_static_qdq(args.run / ONNX_FILE, path, calib, variant.method, variant.keep_fp32)
            secs = time.perf_counter() - t
            s = session(path)
            pv, pt = (onnx_probabilities(s, x, temperature) for x in (val_x, test_x))
            rows.append((variant.name, len(excluded), float(np.mean(decide(pv) != decide(p32_val))),
                         float(np.mean(decide(pt) != decide(p32_test))),
                         headline_auc(test_y, pt, list(run.classes), run.positive_class), secs))
            sessions[variant.name] = s
            print(f"  {variant.name}: val {rows[-1][2]:.2%}, test {rows[-1][3]:.2%} decisions changed | "
                  f"load {os.getloadavg()[0]:.1f}", flush=True)
        speed: dict[str, list[float]] = {k: [] for k in sessions}
        for r in range(args.rounds):
            for name in (list(sessions) if r % 2 == 0 else reversed(list(sessions))):
                speed[name].append(images_per_second(sessions[name], test_x))
    fp32_speed = float(np.median(speed["FP32"]))
    print(f"\nFP32: test ROC AUC {auc32:.4f}, {fp32_speed:.1f} img/s at batch 32\n")
    print("| variant | nodes in fp32 | val decisions changed | test decisions changed | test ROC AUC | img/s (batch 32)"
          " | vs FP32 | calibration s |\n|---|---|---|---|---|---|---|---|")
    for name, n_ex, cv, ct, auc, secs in rows:
        ips = float(np.median(speed[name]))
        print(f"| {name} | {n_ex} | {cv:.2%} | {ct:.2%} | {auc:.4f} | {ips:.1f} | {ips / fp32_speed:.2f}x | "
              f"{secs:.0f} |")


if __name__ == "__main__":
    main()
