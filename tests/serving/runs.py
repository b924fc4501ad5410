"""A tiny trained-looking run folder for service tests: an untrained SqueezeNet at 64 px with the sidecar, metrics
and audit files a real run has (seconds to build; the service cannot tell the weights are random)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ["covid", "normal", "pneumonia"]
POINTS = {"youden": 0.4, "sensitivity_0.95": 0.2, "specificity_0.95": 0.7}


def make_run(run_dir: Path, size: int = 64, onnx: bool = False, temperature: float | None = None) -> Path:
    import torch

    from covidscreen.inference.checkpoint import save_checkpoint
    from covidscreen.models import create_model

    torch.manual_seed(0)
    model = create_model("squeezenet1_1", pretrained=False, num_classes=3)
    points = {**POINTS, "default": POINTS["youden"]}
    sidecar = {"classes": CLASSES, "positive_class": "covid", "image_size": size, "operating_points": points,
               "threshold": points["default"], "seed": 0, "split_fingerprint": "f" * 16}
    if temperature:
        sidecar["temperature"] = temperature
    save_checkpoint(run_dir, model, sidecar)
    val = {name: {"threshold": t, "sensitivity": 0.9 - t / 2, "specificity": 0.5 + t / 2} for name, t in points.items()}
    (run_dir / "metrics.json").write_text(json.dumps({"operating_points_val": val,
                                                      "split_counts": {"train": 70, "val": 15, "test": 15}}))
    (run_dir / "audit.json").write_text(json.dumps({"findings": [
        {"severity": "high", "text": "Every COVID image comes from one site: the model may recognise the site."}]}))
    if onnx:
        from covidscreen.inference.onnx import export_onnx

        export_onnx(run_dir)
    return run_dir


def xray_png(path: Path, side: int = 300, seed: int = 0, mode: str = "L") -> Path:
    """A chest-X-ray-sized greyscale PNG with some structure (not blank)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side] / side
    arr = 120 + 80 * np.sin(6 * x) * np.cos(4 * y) + rng.normal(0, 10, (side, side))
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).convert(mode).save(path)
    return path
