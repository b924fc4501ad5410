"""The typed run: what a run folder (or an ensemble folder) says about its model, read once.

Every consumer of a trained model (predict, explain, evaluate, calibrate, ensembles, the service, the DICOM node)
starts from :func:`load_run` and reads typed fields instead of string keys of the sidecar. Sidecars of every
format version load: version 1 (before ``modality`` and the operating points' validation figures were stored in the
sidecar) reads as a chest X-ray run whose figures come from its ``metrics.json``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import MODALITIES, PreprocessConfig
from ..errors import CheckpointError, DataError
from ..models.checkpoint import write_json
from ..runtime import read_optional_json
from .checkpoint import FORMAT_VERSION, load_model_weights, read_model_sidecar, write_sidecar
from .ensemble import ENSEMBLE_FILE, is_ensemble, load_ensemble, read_manifest

DEFAULT_POINT = "default"


@dataclass(frozen=True)
class OperatingPoint:
    """A named threshold on the positive class's probability, with what it reached on validation (NaN: unknown)."""

    name: str
    threshold: float
    sensitivity: float = math.nan
    specificity: float = math.nan
    temperature: float | None = None  # a locally calibrated point may carry its own temperature


@dataclass(frozen=True)
class Run:
    """A trained model's folder, typed. ``sidecar`` keeps the raw record for fields no consumer types yet."""

    path: Path
    kind: str  # "model" or "ensemble"
    format_version: int
    architecture: str  # registry name, or "ensemble"
    classes: tuple[str, ...]
    positive_class: str | None
    modality: str  # "cxr" or "ct"
    image_size: int
    preprocess: PreprocessConfig
    operating_points: dict[str, OperatingPoint]
    default_point: str  # the name of the point that "default" stands for (e.g. "youden")
    temperature: float  # fitted on validation (1: none)
    task: str = "multiclass"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    weights_file: str | None = None
    weights_sha256: str | None = None
    split_fingerprint: str | None = None
    seed: int | None = None
    data_dir: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    members: tuple[Path, ...] = ()  # ensemble members
    sidecar: dict[str, Any] = field(default_factory=dict, repr=False)
    # how the weights were trained: fp32, bf16 or fp16 (None: a run from before this record, or an ensemble); its
    # predictions are exact float32 whatever this is
    training_precision: str | None = None

    @property
    def positive_index(self) -> int | None:
        return self.classes.index(self.positive_class) if self.positive_class in self.classes else None

    @property
    def thresholds(self) -> dict[str, float]:
        """``{point name: threshold}``, in the sidecar's order."""
        return {name: p.threshold for name, p in self.operating_points.items()}

    @property
    def model_id(self) -> str:
        """A short, stable name of the model: the folder name and the first 12 hex digits of its weights."""
        digest = (self.weights_sha256 or "")[:12]
        return f"{self.path.name}@{digest}" if digest else self.path.name

    def point(self, name: str = DEFAULT_POINT) -> OperatingPoint | None:
        """The operating point ``name`` ("default": the run's default); None when the run has no threshold at all.

        Raises:
            DataError: ``name`` is not one of the run's points (the message lists them).
        """
        if name == DEFAULT_POINT:
            return self.operating_points.get(DEFAULT_POINT)
        if name not in self.operating_points:
            raise DataError(f"operating point {name!r} is not in this run; available: "
                            f"{', '.join(self.operating_points) or 'none'}")
        return self.operating_points[name]

    def threshold(self, name: str = DEFAULT_POINT) -> float | None:
        p = self.point(name)
        return None if p is None else p.threshold

    def temperature_for(self, name: str = DEFAULT_POINT) -> float:
        """The temperature the point's threshold was chosen under: its own (local calibration) or the run's."""
        p = self.point(name)
        return float(p.temperature) if p is not None and p.temperature else self.temperature

    def load_model(self, device: str | torch.device = "cpu", expected_sha256: str | None = None) -> torch.nn.Module:
        """The model in eval mode, weights verified (every member's, for an ensemble); ``expected_sha256``: a digest
        the user trusts, which the weights must have too (single-model runs)."""
        if self.kind == "ensemble":
            if expected_sha256:
                raise CheckpointError(f"{self.path} is an ensemble: pin each member run's weights instead")
            return load_ensemble(self.path, device)[0]
        return load_model_weights(self.path, self.sidecar, device, expected_sha256)


def _figures(meta: dict[str, Any], run_dir: Path) -> dict[str, dict[str, float]]:
    """Validation sensitivity/specificity per point: in the sidecar from version 2, else in metrics.json."""
    if meta.get("operating_point_figures"):
        return meta["operating_point_figures"]
    return read_optional_json(run_dir / "metrics.json").get("operating_points_val") or {}


def _points(meta: dict[str, Any], run_dir: Path) -> tuple[dict[str, OperatingPoint], str]:
    raw = dict(meta.get("operating_points") or {})
    if "default" not in raw and meta.get("threshold") is not None:
        raw["default"] = meta["threshold"]
    figures = _figures(meta, run_dir)
    local = meta.get("local_calibration") or {}
    points = {}
    for name, thr in raw.items():
        if thr is None:
            continue
        fig = figures.get(name) or {}
        cal = local.get(name) or {}
        sens = fig.get("sensitivity", math.nan)
        spec = fig.get("specificity", math.nan)
        if cal:  # a local point's expected figures come from its calibration sample
            spec = (cal.get("expected") or {}).get("specificity", spec)
            sens = (cal.get("expected") or {}).get("sensitivity", sens)
        points[name] = OperatingPoint(name, float(thr), float(sens if sens is not None else math.nan),
                                      float(spec if spec is not None else math.nan), cal.get("temperature"))
    # "default" is the Youden point wherever points were chosen on validation (evaluation/thresholds.py)
    return points, "youden" if "youden" in points else DEFAULT_POINT


def run_from_record(run_dir: Path, meta: dict[str, Any], kind: str) -> Run:
    """Type a sidecar (or an ensemble manifest) read from ``run_dir``."""
    version = int(meta.get("format_version", 1))
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{run_dir} was written by a newer covidscreen (sidecar format {version}; this version "
                              f"reads up to {FORMAT_VERSION}); upgrade covidscreen to use it")
    modality = meta.get("modality", "cxr")
    if modality not in MODALITIES:
        raise CheckpointError(f"{run_dir}: modality {modality!r} is unknown; expected one of {', '.join(MODALITIES)}")
    points, default_name = _points(meta, run_dir)
    norm = meta.get("normalisation") or {}
    return Run(
        path=run_dir,
        kind=kind,
        format_version=version,
        architecture=str(meta.get("architecture", kind)),
        classes=tuple(meta["classes"]),
        positive_class=meta.get("positive_class"),
        modality=modality,
        image_size=int(meta["image_size"]),
        preprocess=PreprocessConfig.from_dict(meta.get("preprocessing")),
        operating_points=points,
        default_point=default_name,
        temperature=float(meta.get("temperature") or 1.0),
        task=meta.get("task", "multiclass"),
        mean=tuple(norm["mean"]) if "mean" in norm else None,
        std=tuple(norm["std"]) if "std" in norm else None,
        weights_file=meta.get("weights_file"),
        weights_sha256=meta.get("weights_sha256"),
        split_fingerprint=meta.get("split_fingerprint"),
        seed=meta.get("seed"),
        data_dir=meta.get("data_dir"),
        config=dict(meta.get("config") or {}),
        versions=dict(meta.get("versions") or {}),
        members=tuple(Path(m) for m in meta.get("member_dirs", ())),
        sidecar=meta,
        training_precision=(meta.get("training_precision") or {}).get("resolved"),
    )


def read_sidecar(run_dir: str | Path) -> dict[str, Any]:
    """The raw record of a run folder: ``model.json``, or ``ensemble.json`` for an ensemble (for writers that update
    it, such as local calibration; readers use :func:`load_run`)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run folder {run_dir} does not exist; give a folder written by covidscreen train")
    return read_manifest(run_dir) if is_ensemble(run_dir) else read_model_sidecar(run_dir)


def write_record(run_dir: str | Path, meta: dict[str, Any]) -> None:
    """Write back a record read by :func:`read_sidecar` (``model.json``, or ``ensemble.json`` for an ensemble)."""
    run_dir = Path(run_dir)
    if is_ensemble(run_dir):
        write_json(run_dir / ENSEMBLE_FILE, {k: v for k, v in meta.items() if k != "member_dirs"})
    else:
        write_sidecar(run_dir, meta)


def load_run(run_dir: str | Path) -> Run:
    """The typed run of a run folder or an ensemble folder.

    Raises:
        CheckpointError: the folder is missing, not a run folder, damaged, or from a newer covidscreen.
    """
    run_dir = Path(run_dir)
    meta = read_sidecar(run_dir)
    return run_from_record(run_dir, meta, "ensemble" if is_ensemble(run_dir) else "model")


def load_checkpoint(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, Run]:
    """The run and its model (eval mode, weights verified) in one call."""
    run = load_run(run_dir)
    return run.load_model(device), run
