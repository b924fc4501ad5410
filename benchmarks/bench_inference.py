"""Inference images/s on this CPU: PyTorch eager, PyTorch channels_last, ONNX Runtime FP32 and ONNX Runtime INT8
(static QDQ, as ``covidscreen export --int8`` makes it), at batch 1 and 32, and each as a share of this machine's
limit for the model.

The limit: the model's FLOPs per image (``torch.utils.flop_counter``, a multiply-add counted as 2) divided into the
measured FP32 peak of a large matrix multiply on this CPU (``--matmul`` square, best of several). INT8 with VNNI can
pass 1.0 of that limit, which is an FP32 figure.

The machine this was written on is shared by several sessions: every path is timed in several interleaved rounds
and its best round is kept (the round least disturbed by others); compare ratios from one run.

Run::

    PYTHONPATH=src .venv/bin/python benchmarks/bench_inference.py [--run RUN_DIR] [--image-size 224]

Without ``--run`` a fresh ImageNet-initialised network of ``--model`` is used (speed does not depend on training) and
INT8 is calibrated on shared chest X-rays.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from covidscreen.config import TrainConfig
from covidscreen.data.decode import load_resized
from covidscreen.data.locate import resolve_data_dir
from covidscreen.data.table import load_table
from covidscreen.inference.onnx import session_options
from covidscreen.models import create_model
from covidscreen.runtime import cpu_flags
from covidscreen.workflows.quantize import quantize_static_qdq


def matmul_peak(n: int, repeats: int = 5, dtype: torch.dtype = torch.float32) -> float:
    """Best FLOP/s of an ``n x n`` matrix product in ``dtype`` (float32: the roof of the FP32 paths here)."""
    a, b = torch.rand(n, n).to(dtype), torch.rand(n, n).to(dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


def model_flops(model: torch.nn.Module, size: int) -> float:
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(torch.rand(1, 1, size, size))
    return float(counter.get_total_flops())


def export(model: torch.nn.Module, size: int, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.rand(2, 1, size, size),), str(path), input_names=["image"],
                          output_names=["logits"], dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
                          opset_version=17, dynamo=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, help="a run folder (its model and validation images)")
    ap.add_argument("--model", default=TrainConfig.model)
    ap.add_argument("--image-size", type=int, default=TrainConfig.image_size)
    ap.add_argument("--calibration-images", type=int, default=64)
    ap.add_argument("--images", type=int, default=64, help="images per timed round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--matmul", type=int, default=2048)
    args = ap.parse_args()
    import onnxruntime as ort

    threads = torch.get_num_threads()
    flags = cpu_flags()
    vnni = sorted(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})
    if args.run:
        from covidscreen.inference.predictor import Predictor
        from covidscreen.workflows.quantize import split_images

        predictor = Predictor(args.run, device="cpu")
        model, size = predictor.model.to(memory_format=torch.contiguous_format), predictor.size
        calib, _ = split_images(args.run, "val", args.calibration_images)
    else:
        model, size = create_model(args.model, pretrained=True, num_classes=3), args.image_size
        table = load_table(resolve_data_dir(None)).sample(n=args.calibration_images, random_state=0)
        calib = np.stack([load_resized(p, size) for p in table["path"]])
    model.eval()
    flops = model_flops(model, size)
    peak = matmul_peak(args.matmul)
    limit = peak / flops
    print(f"torch {torch.__version__}, onnxruntime {ort.__version__} | {os.cpu_count()} CPUs, {threads} threads | "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(default)')} | VNNI: {', '.join(vnni) or 'none'} | "
          f"load {os.getloadavg()[0]:.1f}\nmodel {args.run or args.model} at {size}px: {flops / 1e9:.3f} GFLOP/image; "
          f"FP32 matmul peak {peak / 1e9:.1f} GFLOP/s ({args.matmul}^2) -> limit {limit:.1f} images/s", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        fp32, int8 = Path(tmp) / "model.onnx", Path(tmp) / "model.int8.onnx"
        export(model, size, fp32)
        quantize_static_qdq(fp32, int8, calib)
        opts = session_options(threads)  # the product's session (OnnxModel), with PyTorch's thread count
        sessions = {p.name: ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"])
                    for p in (fp32, int8)}
        model_cl = create_model(args.model, pretrained=False, num_classes=3) if not args.run else None
        if model_cl is not None:
            model_cl.load_state_dict(model.state_dict())
        else:
            model_cl = Predictor(args.run, device="cpu").model
        model_cl = model_cl.eval().to(memory_format=torch.channels_last)
        images = np.random.default_rng(0).random((args.images, 1, size, size), dtype=np.float32)

        def eager(x: np.ndarray) -> None:
            with torch.inference_mode():
                model(torch.from_numpy(x))

        def channels_last(x: np.ndarray) -> None:
            with torch.inference_mode():
                model_cl(torch.from_numpy(x).contiguous(memory_format=torch.channels_last))

        paths = {"PyTorch eager": eager, "PyTorch channels_last": channels_last,
                 "ONNX Runtime FP32": lambda x: sessions["model.onnx"].run(None, {"image": x}),
                 "ONNX Runtime INT8 (static QDQ)": lambda x: sessions["model.int8.onnx"].run(None, {"image": x})}
        best: dict[tuple[str, int], float] = {}
        for r in range(args.rounds):
            for batch in (1, 32):
                for name, fn in paths.items():
                    fn(images[:batch])  # warm-up (first-call allocations, oneDNN primitive creation)
                    t = time.perf_counter()
                    for start in range(0, args.images, batch):
                        fn(images[start:start + batch])
                    rate = args.images / (time.perf_counter() - t)
                    best[name, batch] = max(best.get((name, batch), 0.0), rate)
            peak = max(peak, matmul_peak(args.matmul))  # the limit, too, from the least disturbed measurement
            print(f"  round {r + 1}/{args.rounds} done | load {os.getloadavg()[0]:.1f}", flush=True)

    limit = peak / flops
    print(f"\nbest FP32 matmul peak {peak / 1e9:.1f} GFLOP/s -> limit {limit:.1f} images/s")
    print("\n| path | batch | images/s | vs eager | share of the limit |\n|---|---|---|---|---|")
    for batch in (1, 32):
        base = best["PyTorch eager", batch]
        for name in paths:
            rate = best[name, batch]
            print(f"| {name} | {batch} | {rate:.1f} | {rate / base:.2f}x | {rate / limit:.2f} |")


if __name__ == "__main__":
    main()
