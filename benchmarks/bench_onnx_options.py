"""Why ONNX Runtime FP32 is (or is not) faster than PyTorch at batch 1: the same network under ONNX Runtime session
options and under PyTorch settings, interleaved in one process, best of several rounds.

Variants (each an ONNX Runtime session or a PyTorch setting; the thread count is the same for every variant unless
the name says otherwise):

- ``torch eager``: NCHW under ``torch.inference_mode`` (the baseline of ``bench_inference.py``);
  ``torch eager no_grad``: ``torch.no_grad`` instead; ``torch channels_last``.
- ``ort product``: the session ``covidscreen`` builds (:func:`covidscreen.inference.onnx.session_options`):
  ``ORT_ENABLE_ALL`` (NCHWc layout, Conv+BN+activation fusions), worker threads that sleep instead of spinning.
  Every other ``ort`` variant changes one thing of it:
- ``ort spinning``: ONNX Runtime's default, worker threads spin while they wait.
- ``ort extended``: ``ORT_ENABLE_EXTENDED`` (fusions without the NCHWc layout transformation).
- ``ort basic``: ``ORT_ENABLE_BASIC`` (constant folding, no fusions).
- ``ort saved-optimized``: the ``ORT_ENABLE_ALL``-optimised graph saved to a file and loaded with optimisations off.
- ``ort parallel``: ``ORT_PARALLEL`` execution mode with 2 inter-op threads.
- ``ort 1 thread`` / ``torch eager 1 thread``: one intra-op thread.

Run::

    PYTHONPATH=src .venv/bin/python benchmarks/bench_onnx_options.py [--batches 1 32] [--images 32] [--rounds 3]
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

from covidscreen.config import TrainConfig
from covidscreen.inference.onnx import session_options
from covidscreen.models import create_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=TrainConfig.model)
    ap.add_argument("--image-size", type=int, default=TrainConfig.image_size)
    ap.add_argument("--images", type=int, default=32, help="images per timed round and variant")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batches", type=int, nargs="+", default=[1])
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    import onnxruntime as ort

    size, threads = args.image_size, args.threads
    torch.set_num_threads(threads)
    model = create_model(args.model, pretrained=True, num_classes=3).eval()
    model_cl = create_model(args.model, pretrained=False, num_classes=3)
    model_cl.load_state_dict(model.state_dict())
    model_cl = model_cl.eval().to(memory_format=torch.channels_last)
    print(f"torch {torch.__version__}, onnxruntime {ort.__version__} | {os.cpu_count()} CPUs, {threads} threads | "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(default)')} | load {os.getloadavg()[0]:.1f}",
          flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        fp32, optimized = Path(tmp) / "model.onnx", Path(tmp) / "model.opt.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (torch.rand(2, 1, size, size),), str(fp32), input_names=["image"],
                              output_names=["logits"], dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
                              opset_version=17, dynamo=False)

        def session(level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL, spin: bool = False, n: int = threads,
                    parallel: bool = False, path: Path = fp32, save: Path | None = None) -> ort.InferenceSession:
            opts = session_options(n)  # the product's, then one change
            opts.graph_optimization_level = level
            if spin:
                opts.add_session_config_entry("session.intra_op.allow_spinning", "1")
            if parallel:
                opts.execution_mode = ort.ExecutionMode.ORT_PARALLEL
                opts.inter_op_num_threads = 2
            if save is not None:
                opts.optimized_model_filepath = str(save)
            return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

        session(save=optimized)  # writes the ORT_ENABLE_ALL graph
        sessions = {
            "ort product": session(),
            "ort spinning": session(spin=True),
            "ort extended": session(ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED),
            "ort basic": session(ort.GraphOptimizationLevel.ORT_ENABLE_BASIC),
            "ort saved-optimized": session(ort.GraphOptimizationLevel.ORT_DISABLE_ALL, path=optimized),
            "ort parallel": session(parallel=True),
            "ort 1 thread": session(n=1),
        }

        def torch_path(m: torch.nn.Module, cl: bool = False, grad_ctx=torch.inference_mode, n: int = threads):
            def run(x: np.ndarray) -> None:
                torch.set_num_threads(n)
                t = torch.from_numpy(x)
                with grad_ctx():
                    m(t.contiguous(memory_format=torch.channels_last) if cl else t)
                torch.set_num_threads(threads)
            return run

        paths = {"torch eager": torch_path(model), "torch eager no_grad": torch_path(model, grad_ctx=torch.no_grad),
                 "torch channels_last": torch_path(model_cl, cl=True),
                 "torch eager 1 thread": torch_path(model, n=1)}
        paths.update({name: (lambda x, s=s: s.run(None, {"image": x})) for name, s in sessions.items()})
        images = np.random.default_rng(0).random((args.images, 1, size, size), dtype=np.float32)
        best: dict[tuple[str, int], float] = {}
        for r in range(args.rounds):
            names = list(paths) if r % 2 == 0 else list(reversed(paths))
            for batch in args.batches:
                for name in names:
                    fn = paths[name]
                    fn(images[:batch])
                    fn(images[:batch])  # warm-up
                    t = time.perf_counter()
                    for start in range(0, args.images, batch):
                        fn(images[start:start + batch])
                    best[name, batch] = max(best.get((name, batch), 0.0), args.images / (time.perf_counter() - t))
            print(f"  round {r + 1}/{args.rounds} done | load {os.getloadavg()[0]:.1f}", flush=True)
    print("\n| variant | batch | images/s (best round) | vs torch eager |\n|---|---|---|---|")
    for batch in args.batches:
        for name in paths:
            rate = best[name, batch]
            print(f"| {name} | {batch} | {rate:.1f} | {rate / best['torch eager', batch]:.2f}x |")


if __name__ == "__main__":
    main()
