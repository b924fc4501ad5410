"""INT8 variants of a run's ONNX export: decisions changed against FP32, ROC AUC and images/s of each.

Every rung of the ladder that ``covidscreen export RUN --int8`` climbs (``workflows/quantize.py``
``DEFAULT_VARIANTS``: every node INT8; the stem; the stem and head; squeeze-excitation too; the float32 region at
the input grown by 2, 4 and 8 compute nodes; MinMax ranges), then the calibration methods compared on the all-INT8
model and on the stem+head rung (Percentile at 99.999, onnxruntime's default, and at 99.99; Entropy with
``--entropy``, a histogram pass of minutes). All calibrated as the export does (training images of every site
alike). For each: the share of validation and test decisions at the run's default operating point that differ from
the FP32 export's, the mean absolute difference of the validation probabilities, the test ROC AUC, and ONNX Runtime
images/s at batch 32 (the product's session options, PyTorch's thread count; FP32 and every variant interleaved in
one process, the order reversed every other round, median of ``--rounds``). The rung ``export --int8`` takes is
decided on validation alone (the first with at most half the guard's share changed); the test columns are what its
guard then checks.

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
    Int8Variant,
    QdqQuantiser,
    calibration_set,
    onnx_probabilities,
    split_images,
)


def images_per_second(session, x: np.ndarray, batch: int = 32) -> float:
    xb = x[:batch].astype(np.float32)[:, None] / 255.0
    t = time.perf_counter()
    session.run(None, {"image": xb})
    return len(xb) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--calibration-images", type=int, default=128)
    ap.add_argument("--selection-images", type=int, default=None, help="validation images (default: all)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--max-changed", type=float, default=0.01, help="the export's guard (its selection: half)")
    ap.add_argument("--entropy", action="store_true", help="also Entropy calibration (minutes)")
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
    stem_head = ("stem", "head")
    # (label, calibration options, variant): the export's ladder, then the calibration methods compared
    plan = [("", {}, v) for v in DEFAULT_VARIANTS]
    for pct in (99.999, 99.99):
        plan += [(f" {pct}", {"CalibPercentile": pct}, Int8Variant("percentile", kept)) for kept in ((), stem_head)]
    if args.entropy:
        plan += [("", {}, Int8Variant("entropy", kept)) for kept in ((), stem_head)]
    rows, sessions, seen = [], {"FP32": fp32}, set()
    with tempfile.TemporaryDirectory() as tmp:
        quantisers: dict[str, QdqQuantiser] = {}
        for i, (label, options, variant) in enumerate(plan):
            key = f"{variant.method}{label}"
            if key not in quantisers:
                work = Path(tmp) / f"q{len(quantisers)}"
                work.mkdir()
                quantisers[key] = QdqQuantiser(args.run / ONNX_FILE, calib, work, options)
            quantiser = quantisers[key]
            name = variant.name.replace(variant.method, key, 1)
            excluded = quantiser.fp32_nodes(variant)
            if (key, tuple(excluded)) in seen:
                print(f"  {name}: same float32 nodes as an earlier rung, skipped", flush=True)
                continue
            seen.add((key, tuple(excluded)))
            path = Path(tmp) / f"v{i}.onnx"
            t = time.perf_counter()
            quantiser.quantize(variant, path)
            secs = time.perf_counter() - t
            s = session(path)
            pv, pt = (onnx_probabilities(s, x, temperature) for x in (val_x, test_x))
            rows.append((name, len(excluded), float(np.mean(decide(pv) != decide(p32_val))),
                         float(np.abs(pv - p32_val).mean()), float(np.mean(decide(pt) != decide(p32_test))),
                         headline_auc(test_y, pt, list(run.classes), run.positive_class), secs, label == "" and
                         variant in DEFAULT_VARIANTS))
            sessions[name] = s
            print(f"  {name}: val {rows[-1][2]:.2%}, test {rows[-1][4]:.2%} decisions changed ({secs:.0f} s) | "
                  f"load {os.getloadavg()[0]:.1f}", flush=True)
        for s in sessions.values():  # warm-up
            images_per_second(s, test_x)
        speed: dict[str, list[float]] = {k: [] for k in sessions}
        for r in range(args.rounds):
            for name in (list(sessions) if r % 2 == 0 else reversed(list(sessions))):
                speed[name].append(images_per_second(sessions[name], test_x))
    fp32_speed = float(np.median(speed["FP32"]))
    chosen = next((r[0] for r in rows if r[7] and r[2] <= args.max_changed / 2), None)
    print(f"\nFP32: test ROC AUC {auc32:.4f}, {fp32_speed:.1f} img/s at batch 32 (median of {args.rounds}); "
          f"export --int8 would take: {chosen or 'the ladder rung that changed fewest validation decisions'} | "
          f"load {os.getloadavg()[0]:.1f}\n")
    print(f"| variant | nodes in fp32 | val decisions changed ({len(val_x)}) | val mean abs prob. diff | "
          f"test decisions changed ({len(test_x)}) | test ROC AUC (FP32 {auc32:.4f}) | img/s (batch 32) | vs FP32 | "
          "quantise s |\n"
          "|---|---|---|---|---|---|---|---|---|")
    for name, n_ex, cv, dv, ct, auc, secs, _ in rows:
        ips = float(np.median(speed[name]))
        mark = " **(chosen)**" if name == chosen else ""
        print(f"| {name}{mark} | {n_ex} | {cv:.2%} | {dv:.4f} | {ct:.2%} | {auc:.4f} | {ips:.1f} | "
              f"{ips / fp32_speed:.2f}x | {secs:.0f} |")


if __name__ == "__main__":
    main()
