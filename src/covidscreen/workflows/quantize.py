"""INT8 export of a run for CPU inference: ONNX Runtime static QDQ quantisation, calibrated on the run's validation
images and accepted only if the run's test images say it keeps the model's accuracy.

Static QDQ quantises every convolution and matrix multiply (weights per channel, activations per tensor with ranges
from the calibration images); dynamic quantisation would touch only the last linear layer of a CNN. The INT8 model
serves (``model.json`` ``onnx.serving``) only if, on the test split, its ROC AUC (positive class vs rest) is at most
``max_auc_drop`` below the FP32 export's and its decisions at the run's default operating point differ for at most
``max_changed`` of the images; otherwise the FP32 export keeps serving and the sidecar says why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..data.preprocess import load_preprocessed
from ..errors import CovidscreenError, DataError, ImageDecodeError
from ..evaluation.metrics import headline_auc, predict_labels
from ..inference.onnx import ONNX_FILE, export_onnx
from ..inference.run import load_run, update_record
from ..runtime import sha256_file
from ..segmentation import load_segmenter_for

INT8_FILE = "model.int8.onnx"


@dataclass
class QuantisationResult:
    """What the exporter decided, and the figures it decided on."""

    accepted: bool
    serving: str  # the file that serves: model.int8.onnx or model.onnx
    checks: dict[str, Any]
    message: str


def split_images(run_dir: Path, split: str, limit: int | None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The run's ``split`` images (``split.csv``), preprocessed as the run's predictions are, and their labels;
    at most ``limit`` of them, drawn at random with ``seed`` (stratified draws are not needed for calibration)."""
    run = load_run(run_dir)
    table_file = run_dir / "split.csv"
    if not table_file.is_file():
        raise DataError(f"{run_dir} has no split.csv: INT8 export needs the run's validation and test images")
    table = pd.read_csv(table_file)
    table = table[table["split"] == split]
    if limit is not None and len(table) > limit:
        table = table.sample(n=limit, random_state=seed)
    data_dir = Path(run.data_dir or ".")
    segmenter = load_segmenter_for(run.preprocess, base_dir=run.path)
    images, labels = [], []
    for _, row in table.iterrows():
        path = Path(row["path"]) if "path" in row and isinstance(row["path"], str) else data_dir / row["image"]
        try:
            images.append(load_preprocessed(path, run.image_size, run.preprocess, segmenter))
        except (ImageDecodeError, FileNotFoundError) as exc:
            raise DataError(f"{split} image {path} of the run can no longer be read ({exc}); INT8 export needs the "
                            "run's data folder as it was at training") from None
        labels.append(list(run.classes).index(row["label"]))
    if not images:
        raise DataError(f"the run's {split} split is empty: INT8 export needs {split} images")
    return np.stack(images), np.asarray(labels)


def _session(path: Path, threads: int | None = None) -> Any:
    import onnxruntime as ort  # optional dependency: covidscreen[onnx]

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def onnx_probabilities(session: Any, images: np.ndarray, temperature: float = 1.0, batch: int = 32) -> np.ndarray:
    """Softmax of ``logits / temperature`` of a uint8 ``(N, S, S)`` array through an ONNX session."""
    out = []
    for start in range(0, len(images), batch):
        x = images[start:start + batch].astype(np.float32)[:, None] / 255.0
        logits = session.run(None, {"image": x})[0].astype(np.float64) / temperature
        logits -= logits.max(1, keepdims=True)
        e = np.exp(logits)
        out.append(e / e.sum(1, keepdims=True))
    return np.concatenate(out)


def quantize_static_qdq(fp32: Path, out: Path, calibration: np.ndarray) -> None:
    """ONNX Runtime static quantisation in QDQ format: int8 weights per channel, uint8 activations whose ranges
    come from ``calibration`` (uint8 images as the model's input takes them)."""
    # optional dependency: covidscreen[onnx]
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([calibration[i:i + 8].astype(np.float32)[:, None] / 255.0
                                 for i in range(0, len(calibration), 8)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self.batches, None)
            return None if x is None else {"image": x}

    prepared = out.with_suffix(".prep.onnx")
    try:
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    finally:
        prepared.unlink(missing_ok=True)


def export_int8(run_dir: str | Path, calibration_images: int = 128, max_auc_drop: float = 0.005,
                max_changed: float = 0.01, max_test_images: int | None = None) -> QuantisationResult:
    """Quantise a run's ONNX export (made first if missing) to INT8 and serve it if the test split allows.

    Args:
        calibration_images: validation images whose activations set the quantisation ranges.
        max_auc_drop: largest accepted fall of the test ROC AUC (positive class vs rest; macro one-vs-rest without
            a positive class).
        max_changed: largest accepted share of test images whose decision at the default operating point changes.
        max_test_images: check on at most this many test images (default: all).
    """
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise CovidscreenError("INT8 export needs onnx and onnxruntime: pip install 'covidscreen[onnx]'") from None
    run_dir = Path(run_dir)
    run = load_run(run_dir)
    if run.onnx is None or not (run_dir / ONNX_FILE).is_file():
        export_onnx(run_dir)
        run = load_run(run_dir)
    calib, _ = split_images(run_dir, "val", calibration_images, seed=run.seed or 0)
    test_x, test_y = split_images(run_dir, "test", max_test_images, seed=run.seed or 0)
    out = run_dir / INT8_FILE
    tmp = run_dir / "model.int8.tmp.onnx"
    quantize_static_qdq(run_dir / ONNX_FILE, tmp, calib)

    point = run.point("default")
    threshold = None if point is None else point.threshold
    temperature = run.temperature_for("default")
    p32 = onnx_probabilities(_session(run_dir / ONNX_FILE), test_x, temperature)
    p8 = onnx_probabilities(_session(tmp), test_x, temperature)
    classes, pos = list(run.classes), run.positive_class
    auc32, auc8 = headline_auc(test_y, p32, classes, pos), headline_auc(test_y, p8, classes, pos)
    d32, d8 = (predict_labels(p, run.positive_index, threshold) for p in (p32, p8))
    changed = float(np.mean(d32 != d8))
    drop = auc32 - auc8 if math.isfinite(auc32) and math.isfinite(auc8) else math.nan
    checks = {"test_images": int(len(test_y)), "calibration_images": int(len(calib)), "roc_auc_fp32": auc32,
              "roc_auc_int8": auc8, "roc_auc_drop": drop, "max_roc_auc_drop": max_auc_drop,
              "decisions_changed": changed, "max_decisions_changed": max_changed,
              "max_abs_probability_difference": float(np.abs(p32 - p8).max())}
    failures = []
    if not (math.isfinite(drop) and drop <= max_auc_drop):
        failures.append(f"test ROC AUC {auc32:.4f} -> {auc8:.4f} (drop {drop:.4f} > {max_auc_drop})")
    if changed > max_changed:
        failures.append(f"{changed:.1%} of {len(test_y)} test decisions changed (> {max_changed:.1%})")
    info: dict = {}
    if failures:
        tmp.unlink(missing_ok=True)
        out.unlink(missing_ok=True)
        info["int8"] = {"accepted": False, "reasons": failures, "checks": checks}
        info["serving"] = {"file": ONNX_FILE, "sha256": run.onnx.sha256, "precision": "fp32"}
        message = "INT8 rejected, FP32 keeps serving: " + "; ".join(failures)
    else:
        tmp.replace(out)
        info["int8"] = {"accepted": True, "file": INT8_FILE, "sha256": sha256_file(out), "checks": checks,
                        "method": "onnxruntime static QDQ, weights int8 per channel, activations uint8"}
        info["serving"] = {"file": INT8_FILE, "sha256": info["int8"]["sha256"], "precision": "int8"}
        message = (f"INT8 serves: test ROC AUC {auc32:.4f} -> {auc8:.4f}, {changed:.1%} of {len(test_y)} decisions "
                   "changed")
    update_record(run_dir, merge={"onnx": info})
    return QuantisationResult(not failures, info["serving"]["file"], checks, message)
