"""Per-node sensitivity of a run's INT8 export: which single node, kept in float32, takes most of the error away.

For each compute node (Conv, Gemm, MatMul) in the graph's order, with the activation (Clip, Relu, ...) that directly
follows it unless ``--node-only``: the INT8 model with that node also in float32, and its output error, the mean
squared difference of its logits from the FP32 export's on ``--images`` validation images, against the error of
the base (``--base none``: every node INT8; ``--base stem``: the stem in float32). MinMax ranges from the
calibration images the export uses, computed once. ``--no-optimization`` runs the INT8 sessions with ONNX Runtime's
graph optimisations off (the QDQ graph as written, every DequantizeLinear computed in float32), to tell the
rounding itself from what the optimised graph does with a float32 node between quantised ones.

Run::

    PYTHONPATH=src .venv/bin/python benchmarks/bench_int8_sensitivity.py runs/quickstart --images 384
    PYTHONPATH=src .venv/bin/python benchmarks/bench_int8_sensitivity.py runs/quickstart --images 384 --base stem
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from covidscreen.inference.onnx import ONNX_FILE, export_onnx, session_options
from covidscreen.inference.run import load_run
from covidscreen.workflows.quantize import (
    COMPUTE_OPS,
    Int8Variant,
    QdqQuantiser,
    calibration_set,
    following_activation,
    split_images,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--calibration-images", type=int, default=128)
    ap.add_argument("--images", type=int, default=384, help="validation images the error is measured on")
    ap.add_argument("--base", choices=("none", "stem"), default="none", help="what is float32 before the sweep")
    ap.add_argument("--node-only", action="store_true", help="without the activation that follows each node")
    ap.add_argument("--no-optimization", action="store_true", help="INT8 sessions with graph optimisations off")
    args = ap.parse_args()
    import onnxruntime as ort

    run = load_run(args.run)
    if not (args.run / ONNX_FILE).is_file():
        export_onnx(args.run)
    seed = run.seed or 0
    calib, _ = calibration_set(args.run, args.calibration_images, seed)
    x, _ = split_images(args.run, "val", args.images, seed)
    xf = x.astype(np.float32)[:, None] / 255.0
    threads = torch.get_num_threads()

    def logits(path: Path, optimise: bool = True) -> np.ndarray:
        opts = session_options(threads)
        if not optimise:
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        s = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        return np.concatenate([s.run(None, {"image": xf[i:i + 32]})[0] for i in range(0, len(xf), 32)])

    ref = logits(args.run / ONNX_FILE)
    base = Int8Variant(keep_fp32=("stem",) if args.base == "stem" else ())
    with tempfile.TemporaryDirectory() as tmp:
        quantiser = QdqQuantiser(args.run / ONNX_FILE, calib, Path(tmp))
        nodes = list(quantiser.model.graph.node)
        out = Path(tmp) / "variant.onnx"

        def error(extra: tuple[str, ...] = ()) -> float:
            quantiser.quantize(base, out, extra)
            return float(np.mean((logits(out, not args.no_optimization) - ref) ** 2))

        base_nodes = set(quantiser.fp32_nodes(base))
        base_error = error()
        print(f"{args.run}: {len(x)} validation images, base '{base.name}' logit MSE {base_error:.5f} | "
              f"graph optimisations {'off' if args.no_optimization else 'on'} | load {os.getloadavg()[0]:.1f}\n",
              flush=True)
        print("| # | node (kept in float32, with the activation after it) | logit MSE | vs base |\n|---|---|---|---|")
        for k, node in enumerate(n for n in nodes if n.op_type in COMPUTE_OPS):
            if node.name in base_nodes:
                continue
            group = [node.name]
            activation = None if args.node_only else following_activation(nodes, node)
            if activation is not None:
                group.append(activation.name)
            err = error(tuple(group))
            print(f"| {k} | {node.name} | {err:.5f} | {err / base_error:.2f}x |", flush=True)
        print(f"\nload {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
