"""``covidscreen explain RUN IMAGE... --feature-maps LAYER``: one PNG grid of the layer's activations per image, for
the input the run's model sees (its own preprocessing and size)."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..data.preprocess import load_preprocessed
from ..errors import CovidscreenError, ImageDecodeError
from ..explain.feature_maps import feature_grid, feature_maps, grid_png
from ..inference.predictor import Predictor, expand_inputs
from ..runtime import to_input


def feature_map_files(run_dir: str | Path, inputs: list[str], output: str | Path, layer: str,
                      device: str = "auto", max_channels: int = 64) -> list[Path]:
    """Write ``<output>/<image stem>_<layer>.png`` for every readable image; returns the PNGs written."""
    predictor = Predictor(run_dir, device=device)
    if predictor.run.kind == "ensemble":
        raise CovidscreenError("feature maps need a single model; give one member's run folder")
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    safe_layer = re.sub(r"[^A-Za-z0-9_.-]", "_", layer)
    written = []
    for f in expand_inputs(inputs):
        try:
            img = load_preprocessed(f, predictor.size, predictor.preprocess, predictor.segmenter)
        except ImageDecodeError as exc:
            print(f"skipped {f}: {exc}")
            continue
        x = to_input(torch.from_numpy(img[None]), predictor.device)
        maps = feature_maps(predictor.model, x, layer)
        path = out / f"{f.stem}_{safe_layer}.png"
        path.write_bytes(grid_png(feature_grid(maps, max_channels)))
        written.append(path)
    return written
