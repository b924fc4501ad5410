"""Segmentation checkpoints: ``lung_seg.safetensors`` (weights only) + ``lung_seg.json`` (how to rebuild and use them).

Same rules as classification checkpoints (:mod:`covidscreen.inference.checkpoint`): no pickles, a JSON sidecar with
the architecture, input size and preprocessing, the held-out Dice, library versions and the weights' sha256, which is
verified on load.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, CovidscreenError
from .model import LungSegNet

WEIGHTS_FILE = "lung_seg.safetensors"
SIDECAR_FILE = "lung_seg.json"
FORMAT_VERSION = 1


def resolve_segmenter_files(path: str | Path) -> tuple[Path, Path]:
    """Weights and sidecar of a segmentation checkpoint given as its folder, its weights file or its sidecar."""
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"{path} is not a lung segmentation checkpoint: it does not exist (give the folder "
                              "written by covidscreen segment train)")
    folder = path if path.is_dir() else path.parent
    weights, sidecar = folder / WEIGHTS_FILE, folder / SIDECAR_FILE
    if not weights.is_file() or not sidecar.is_file():
        raise CheckpointError(f"{path} is not a lung segmentation checkpoint: expected {WEIGHTS_FILE} and "
                              f"{SIDECAR_FILE} (written by covidscreen segment train) in {folder}")
    return weights, sidecar


def save_segmenter(out_dir: str | Path, model: LungSegNet, meta: dict[str, Any]) -> Path:
    """Write weights and sidecar into ``out_dir``; returns the weights path."""
    from safetensors.torch import save_file

    from ..inference.checkpoint import library_versions
    from ..models.weights import sha256_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / WEIGHTS_FILE
    tmp = weights.with_suffix(".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp))
    tmp.replace(weights)
    sidecar = {**meta, **model.describe(), "format_version": FORMAT_VERSION, "kind": "lung_segmentation",
               "weights_file": WEIGHTS_FILE, "weights_sha256": sha256_file(weights), "versions": library_versions()}
    tmp = out_dir / (SIDECAR_FILE + ".tmp")
    tmp.write_text(json.dumps(sidecar, indent=2))
    tmp.replace(out_dir / SIDECAR_FILE)
    return weights


def load_segmenter(path: str | Path, device: str | torch.device = "cpu",
                   expected_sha256: str | None = None) -> tuple[LungSegNet, dict[str, Any]]:
    """Load a segmentation checkpoint (eval mode), verifying the weights' sha256.

    Args:
        path: the checkpoint folder, its weights file or its sidecar.
        expected_sha256: when given (e.g. recorded by a classification run), the weights must have this digest.

    Raises:
        CheckpointError: missing, damaged or changed files.
    """
    from safetensors.torch import load_file

    from ..models.weights import sha256_file

    weights, sidecar = resolve_segmenter_files(path)
    try:
        meta = json.loads(sidecar.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{sidecar} is not valid JSON ({exc.msg}); the checkpoint is damaged") from None
    if meta.get("kind") != "lung_segmentation":
        raise CheckpointError(f"{sidecar} is not a lung segmentation sidecar (kind {meta.get('kind')!r})")
    digest = sha256_file(weights)
    for want, what in ((meta.get("weights_sha256"), SIDECAR_FILE), (expected_sha256, "the classification run")):
        if want and digest != want:
            raise CheckpointError(f"{weights} has sha256 {digest[:12]}..., but {what} expects {want[:12]}...: the "
                                  "segmentation weights were changed or replaced")
    try:
        model = LungSegNet(meta["encoder"], pretrained=False, decoder_channels=tuple(meta["decoder_channels"]),
                           image_size=int(meta["image_size"]), equalize=bool(meta.get("equalize", True)))
        model.load_state_dict(load_file(str(weights)))
    except CovidscreenError:
        raise
    except Exception as exc:
        raise CheckpointError(
            f"{weights} could not be loaded as a {meta.get('encoder')} lung segmenter: {exc}") from None
    return model.to(device).eval(), meta
