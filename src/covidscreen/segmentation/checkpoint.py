"""Segmentation checkpoints: ``lung_seg.safetensors`` (weights only) + ``lung_seg.json`` (how to rebuild and use them).

Same rules as classification checkpoints (:mod:`covidscreen.inference.checkpoint`): no pickles, a JSON sidecar with
the architecture, input size and preprocessing, the held-out Dice, library versions and the weights' sha256, which is
verified on load.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ..config import PreprocessConfig
from ..errors import CheckpointError, CovidscreenError
from ..models.checkpoint import read_checkpoint_weights, read_json_record, write_checkpoint
from ..runtime import sha256_file
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
    write_checkpoint(out_dir, model.state_dict(), {**meta, **model.describe(), "kind": "lung_segmentation"},
                     WEIGHTS_FILE, SIDECAR_FILE, FORMAT_VERSION)
    return Path(out_dir) / WEIGHTS_FILE


def load_segmenter(path: str | Path, device: str | torch.device = "cpu",
                   expected_sha256: str | None = None) -> tuple[LungSegNet, dict[str, Any]]:
    """Load a segmentation checkpoint (eval mode), verifying the weights' sha256.

    Args:
        path: the checkpoint folder, its weights file or its sidecar.
        expected_sha256: when given (e.g. recorded by a classification run), the weights must have this digest.

    Raises:
        CheckpointError: missing, damaged or changed files.
    """
    weights, sidecar = resolve_segmenter_files(path)
    meta = read_json_record(sidecar, ("encoder", "decoder_channels", "image_size"), "lung segmentation checkpoint")
    if meta.get("kind") != "lung_segmentation":
        raise CheckpointError(f"{sidecar} is not a lung segmentation sidecar (kind {meta.get('kind')!r})")
    state = read_checkpoint_weights(weights, {SIDECAR_FILE: meta.get("weights_sha256"),
                                              "the classification run": expected_sha256})
    try:
        model = LungSegNet(meta["encoder"], pretrained=False, decoder_channels=tuple(meta["decoder_channels"]),
                           image_size=int(meta["image_size"]), equalize=bool(meta.get("equalize", True)))
        model.load_state_dict(state)
    except CovidscreenError:
        raise
    except Exception as exc:
        raise CheckpointError(
            f"{weights} could not be loaded as a {meta.get('encoder')} lung segmenter: {exc}") from None
    return model.to(device).eval(), meta


def bind_segmenter(cfg: PreprocessConfig, path: str | Path | None) -> PreprocessConfig:
    """A copy of ``cfg`` naming the segmentation checkpoint ``path`` and its weights' sha256."""
    if path is None or not cfg.needs_segmentation:
        return replace(cfg, segmentation_model=None, segmentation_sha256=None)
    weights, _ = resolve_segmenter_files(path)
    return replace(cfg, segmentation_model=str(path), segmentation_sha256=sha256_file(weights))
