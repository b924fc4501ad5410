"""ONNX export of a run and an onnxruntime session for fast CPU inference (clinical deployments without PyTorch).

The exported graph takes what the Predictor feeds the model: float32 ``(B, 1, S, S)`` in [0, 1]; normalisation
is inside the graph. Export checks the ONNX outputs against PyTorch on random input before it writes anything into
the run folder.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError, CovidscreenError
from ..runtime import atomic_output, sha256_file
from .run import Run, load_run, update_record

ONNX_FILE = "model.onnx"


def export_onnx(run_dir: str | Path, opset: int = 17, tolerance: float = 1e-3) -> Path:
    """Write ``model.onnx`` into the run folder and record it (sha256, max deviation) in the sidecar."""
    try:
        import onnxruntime as ort  # optional dependency: covidscreen[onnx]
    except ImportError:
        raise CovidscreenError("ONNX export needs onnx and onnxruntime: pip install 'covidscreen[onnx]'") from None
    run = load_run(run_dir)
    run_dir = run.path
    if run.kind == "ensemble":
        raise CheckpointError(f"{run_dir} is an ensemble; export each member run instead")
    model = run.load_model("cpu")
    size = run.image_size
    channels = run.preprocess.channels  # 3 for runs reading CT windows
    x = torch.rand(2, channels, size, size, generator=torch.Generator().manual_seed(0))
    out = run_dir / ONNX_FILE
    with atomic_output(out) as tmp:  # renamed into place only when checked; a full disk is a clear error
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer notes
            torch.onnx.export(model, (x,), str(tmp), input_names=["image"], output_names=["logits"],
                              dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, opset_version=opset,
                              dynamo=False)
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        with torch.no_grad():
            ref = model(x).numpy()
        dev = float(np.abs(session.run(None, {"image": x.numpy()})[0] - ref).max())
        if dev > tolerance:
            raise CheckpointError(f"ONNX export of {run.architecture} deviates from PyTorch by {dev:.2e} "
                                  f"(> {tolerance}); not written")
    # a new export replaces the whole record: an INT8 model of earlier weights no longer serves
    update_record(run_dir, replace={"onnx": {"file": ONNX_FILE, "sha256": sha256_file(out), "opset": opset,
                                             "max_abs_deviation": dev}})
    return out


def session_options(threads: int | None = None) -> Any:
    """The ``onnxruntime.SessionOptions`` every covidscreen session uses (``benchmarks/bench_onnx_options.py``
    measures each choice against its alternatives; ``docs/performance.md``).

    - ``ORT_ENABLE_ALL``: constant folding, Conv+BatchNorm+activation fusions and the NCHWc (blocked) layout of the
      CPU provider, done at load (well under a second for these networks, so the optimised graph is not saved).
    - ``threads`` intra-op threads (default: ONNX Runtime's, one per physical core); sequential execution (a CNN is
      a chain: parallel execution of independent nodes has nothing to overlap).
    - Worker threads that sleep instead of spinning while they wait: spinning threads hold the cores that the
      thread they wait for (or decoding, or another process on a shared CPU) needs; on this project's busy 2-core
      machine spinning made batch-1 inference several times slower.
    """
    import onnxruntime as ort  # optional dependency: covidscreen[onnx]

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if threads:
        opts.intra_op_num_threads = threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


class OnnxModel:
    """Callable like the PyTorch model in the Predictor: uint8-derived float batch -> probabilities."""

    def __init__(self, run: Run | str | Path, threads: int | None = None) -> None:
        import onnxruntime as ort  # optional dependency (covidscreen[onnx])

        run = run if isinstance(run, Run) else load_run(run)
        run_dir = run.path
        info = run.onnx if run.kind != "ensemble" else None
        if info is None:
            raise CheckpointError(f"{run_dir} has no ONNX export; run: covidscreen export {run_dir}")
        # the file that serves: the INT8 model when ``export --int8`` accepted it, else the FP32 export
        path = run_dir / Path(info.serving_file).name
        if not path.is_file():
            raise CheckpointError(f"{path} (recorded as the serving ONNX model) is missing; run: covidscreen export "
                                  f"{run_dir}")
        if sha256_file(path) != info.serving_sha256:
            raise CheckpointError(f"{path} does not match the sha256 recorded at export: changed or damaged")
        self.file, self.precision = path.name, info.precision
        self.session = ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        logits = self.session.run(None, {"image": np.ascontiguousarray(x, dtype=np.float32)})[0].astype(np.float64)
        logits -= logits.max(1, keepdims=True)
        e = np.exp(logits)
        return e / e.sum(1, keepdims=True)
