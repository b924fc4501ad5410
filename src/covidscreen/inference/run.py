"""The typed run: what a run folder (or an ensemble folder) says about its model, read once.

Every consumer of a trained model (predict, explain, evaluate, calibrate, ensembles, export, reports, the model card,
verify, the service, the DICOM node) starts from :func:`load_run` and reads typed fields instead of string keys of
the sidecar. Sidecars of every format version load: version 1 (before ``modality`` and the operating points'
validation figures were stored in the sidecar) reads as a chest X-ray run whose figures come from its
``metrics.json``.

This module is the only reader of a run's record (``model.json``, or ``ensemble.json`` for an ensemble) and, through
:func:`update_record`, the only writer that changes an existing one (local calibration, ONNX export); the record is
first written by :func:`covidscreen.inference.checkpoint.save_checkpoint` or :func:`covidscreen.inference.ensemble.
write_manifest`. ``tests/inference/test_run_read_once.py`` fails when another module reads the record itself. A new
record of a run (an OOD model, commissioning) becomes a typed field at the end of :class:`Run`, filled in
:func:`run_from_record`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import MODALITIES, PreprocessConfig
from ..errors import CheckpointError, DataError
from ..models.checkpoint import read_checkpoint_weights, write_json
from ..runtime import read_optional_json, sha256_file
from .checkpoint import FORMAT_VERSION, SIDECAR_FILE, load_model_weights, read_model_sidecar, write_sidecar
from .ensemble import ENSEMBLE_FILE, ensemble_model, is_ensemble, read_manifest

DEFAULT_POINT = "default"


@dataclass(frozen=True)
class SiteFigures:
    """What a point reached on one site's validation images (NaN / None: the site has no such image)."""

    site: str
    n_negative: int
    n_positive: int
    specificity: float = math.nan
    specificity_ci: tuple[float, float] | None = None  # Wilson 95%
    sensitivity: float = math.nan
    sensitivity_ci: tuple[float, float] | None = None

    @classmethod
    def from_dict(cls, site: str, d: dict[str, Any]) -> SiteFigures:
        def num(key: str) -> float:
            v = d.get(key)
            return math.nan if v is None else float(v)

        def ci(key: str) -> tuple[float, float] | None:
            v = d.get(key)
            return (float(v[0]), float(v[1])) if v else None

        return cls(site, int(d.get("n_negative", 0)), int(d.get("n_positive", 0)), num("specificity"),
                   ci("specificity_ci"), num("sensitivity"), ci("sensitivity_ci"))


NO_SITE_FIGURES = ("this run records no per-site validation figures (it was trained before they were stored, or is "
                   "an ensemble or cross-validation): its operating points are pooled over the validation sites, and "
                   "how each holds on a single site is unknown; evaluate it per site (covidscreen evaluate) or "
                   "retrain")


@dataclass(frozen=True)
class OperatingPoint:
    """A named threshold on the positive class's probability, with what it reached on validation (NaN: unknown)."""

    name: str
    threshold: float
    sensitivity: float = math.nan
    specificity: float = math.nan
    temperature: float | None = None  # a locally calibrated point may carry its own temperature
    sites: dict[str, SiteFigures] = field(default_factory=dict)  # per-site validation figures ({}: not recorded)
    weakest_site: str | None = None  # the site with the lowest validation specificity (enough images)
    note: str | None = None  # why the point's rule fell back (None: it did what it states)


@dataclass(frozen=True)
class EnsembleMember:
    """One member run as an ensemble's manifest records it (pinned weights, the input size it was trained at)."""

    path: Path  # absolute
    relpath: str  # as stored, relative to the ensemble folder
    image_size: int
    weights_sha256: str | None = None
    architecture: str | None = None
    split_fingerprint: str | None = None
    seed: int | None = None


@dataclass(frozen=True)
class OnnxExport:
    """What ``covidscreen export`` recorded: the FP32 export and the file that serves (the INT8 model when
    ``export --int8`` accepted it)."""

    file: str
    sha256: str
    serving_file: str
    serving_sha256: str
    precision: str = "fp32"  # of the serving file
    opset: int | None = None
    max_abs_deviation: float | None = None
    int8: dict[str, Any] | None = None  # the INT8 check's record (accepted or why not)


@dataclass(frozen=True)
class OODRecord:
    """The run's out-of-distribution model (``covidscreen.ood``): a safetensors file in the run folder, hashed here."""

    file: str  # a .safetensors file inside the run folder
    sha256: str
    detector: str  # mahalanobis | knn | vim | energy
    threshold: float  # a score above it is flagged: unlike the images the model was validated on
    flag_rate: float  # the share of validation images the threshold was set to flag
    n_fit: int = 0  # training images the detector was fitted on
    n_val: int = 0  # validation images the threshold was set on
    val_flag_rate: float = math.nan  # the share of validation images it flags (near flag_rate)
    created: str | None = None
    orientation: bool = False  # the score also checks that the image is upright (covidscreen.ood.orientation)
    n_orientation_fit: int = 0  # training images the orientation check saw in each turned view


def _ood_record(meta: dict[str, Any]) -> OODRecord | None:
    raw = meta.get("ood")
    if not isinstance(raw, dict):
        return None
    try:
        return OODRecord(file=str(raw["file"]), sha256=str(raw["sha256"]), detector=str(raw["detector"]),
                         threshold=float(raw["threshold"]), flag_rate=float(raw["flag_rate"]),
                         n_fit=int(raw.get("n_fit", 0)), n_val=int(raw.get("n_val", 0)),
                         val_flag_rate=float(raw.get("val_flag_rate", math.nan)), created=raw.get("created"),
                         orientation=bool(raw.get("orientation", False)),
                         n_orientation_fit=int(raw.get("n_orientation_fit", 0)))
    except (KeyError, TypeError, ValueError):
        raise CheckpointError("the sidecar's 'ood' record is damaged (it needs file, sha256, detector, threshold, "
                              "flag_rate); refit it with: covidscreen ood fit RUN_DIR") from None


@dataclass(frozen=True)
class Commissioning:
    """A site's acceptance test of the run (``covidscreen commission``), stored in the run on ``go``."""

    name: str  # also the name of its operating point
    verdict: str  # go | no-go | insufficient-data
    operating_point: float | None
    data_fingerprint: str | None
    created: str | None
    record: dict[str, Any] = field(default_factory=dict, repr=False)  # figures with their intervals, reason


def _commissioning(meta: dict[str, Any]) -> dict[str, Commissioning]:
    out = {}
    for name, rec in (meta.get("commissioning") or {}).items():
        if isinstance(rec, dict):
            out[name] = Commissioning(name, str(rec.get("verdict", "")), rec.get("operating_point"),
                                      rec.get("data_fingerprint"), rec.get("created"), dict(rec))
    return out


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
    sidecar: dict[str, Any] = field(default_factory=dict, repr=False)  # raw record: for this module only
    created: str | None = None
    split_counts: dict[str, int] | None = None
    init_from: dict[str, Any] | None = None  # the run whose trunk this one started from
    best_epoch: int | None = None
    epochs_run: int | None = None
    onnx: OnnxExport | None = None
    ensemble_members: tuple[EnsembleMember, ...] = ()
    threshold_source: str | None = None  # ensembles: how their threshold was chosen
    common_split: bool | None = None  # ensembles: all members trained on one split
    local_calibration: dict[str, dict[str, Any]] = field(default_factory=dict)  # point name -> calibration record
    ood: OODRecord | None = None  # the out-of-distribution model, when one was fitted
    commissioning: dict[str, Commissioning] = field(default_factory=dict)  # site acceptance tests passed (go)
    sanitized: dict[str, Any] | None = None  # covidscreen sanitize: source run, method, clean set (security/sanitize)
    # how the weights were trained: fp32, bf16 or fp16 (None: a run from before this record, or an ensemble); its
    # predictions are exact float32 whatever this is
    training_precision: str | None = None
    training_precision_record: dict[str, Any] | None = None  # the whole record (requested, resolved, CPU capability)
    frozen_head: dict[str, Any] | None = None  # a frozen-feature head (models/heads.py): its kind and file

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

    @property
    def has_site_figures(self) -> bool:
        """Whether the run's operating points carry per-site validation figures (see :data:`NO_SITE_FIGURES`)."""
        return any(p.sites for p in self.operating_points.values())

    def threshold(self, name: str = DEFAULT_POINT) -> float | None:
        p = self.point(name)
        return None if p is None else p.threshold

    def temperature_for(self, name: str = DEFAULT_POINT) -> float:
        """The temperature the point's threshold was chosen under: its own (local calibration) or the run's."""
        p = self.point(name)
        return float(p.temperature) if p is not None and p.temperature else self.temperature

    @property
    def input_sizes(self) -> tuple[int, ...]:
        """The input sides the model reads, ascending: one, or each size among an ensemble's members."""
        sizes = {m.image_size for m in self.ensemble_members} or {self.image_size}
        return tuple(sorted(sizes))

    @property
    def record_file(self) -> Path:
        """The record this run was read from: ``model.json``, or ``ensemble.json`` for an ensemble."""
        return self.path / (ENSEMBLE_FILE if self.kind == "ensemble" else SIDECAR_FILE)

    def record_sha256(self) -> str:
        """The sha256 of the record file (an ensemble's manifest pins its members' weights, so this names them)."""
        return sha256_file(self.record_file) if self.record_file.is_file() else "unknown"

    def member_runs(self) -> list[Run]:
        """The typed runs of an ensemble's members (none for a single model).

        Raises:
            CheckpointError: a member is missing or is itself an ensemble.
        """
        runs = []
        for entry in self.ensemble_members:
            if not entry.path.is_dir():
                raise CheckpointError(f"ensemble {self.path}: member {entry.relpath} ({entry.path}) does not exist")
            member = load_run(entry.path)
            if member.kind == "ensemble":
                raise CheckpointError(f"{entry.path} is itself an ensemble; list its member runs instead")
            runs.append(member)
        return runs

    def load_model(self, device: str | torch.device = "cpu", expected_sha256: str | None = None) -> torch.nn.Module:
        """The model in eval mode, weights verified (every member's, for an ensemble); ``expected_sha256``: a digest
        the user trusts, which the weights must have too (single-model runs)."""
        if self.kind == "ensemble":
            if expected_sha256:
                raise CheckpointError(f"{self.path} is an ensemble: pin each member run's weights instead")
            return ensemble_model(self, self.member_runs(), device)
        return load_model_weights(self.path, self.sidecar, device, expected_sha256)

    def load_state(self) -> dict[str, torch.Tensor]:
        """The weights' tensors (single-model runs), sha256-checked against the record, for a model built
        elsewhere (finishing a run rebuilds the training-time network)."""
        if self.kind == "ensemble" or not self.weights_file:
            raise CheckpointError(f"{self.path} holds no single model's weights")
        return read_checkpoint_weights(self.path / self.weights_file, {SIDECAR_FILE: self.weights_sha256})


def _figures(meta: dict[str, Any], run_dir: Path) -> dict[str, dict[str, float]]:
    """Validation sensitivity/specificity per point: in the sidecar from version 2, else in metrics.json."""
    if meta.get("operating_point_figures"):
        return meta["operating_point_figures"]
    return read_optional_json(run_dir / "metrics.json").get("operating_points_val") or {}


def _site_records(meta: dict[str, Any], run_dir: Path) -> dict[str, dict[str, Any]]:
    """Per-site validation figures per point: the sidecar's ``operating_point_sites``, else metrics.json's; absent
    in runs trained before they were stored (those load with empty ``sites``)."""
    if meta.get("operating_point_sites"):
        return meta["operating_point_sites"]
    return read_optional_json(run_dir / "metrics.json").get("operating_points_val_sites") or {}


def _points(meta: dict[str, Any], run_dir: Path) -> tuple[dict[str, OperatingPoint], str]:
    raw = dict(meta.get("operating_points") or {})
    if "default" not in raw and meta.get("threshold") is not None:
        raw["default"] = meta["threshold"]
    figures = _figures(meta, run_dir)
    site_records = _site_records(meta, run_dir)
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
        rec = site_records.get(name) or {}
        sites = {site: SiteFigures.from_dict(site, d) for site, d in (rec.get("sites") or {}).items()}
        points[name] = OperatingPoint(name, float(thr), float(sens if sens is not None else math.nan),
                                      float(spec if spec is not None else math.nan), cal.get("temperature"),
                                      sites, rec.get("weakest_site"), rec.get("note"))
    # the sidecar names the point "default" stands for; before it did, that was the Youden point wherever points were
    # chosen on validation (evaluation/thresholds.py)
    named = meta.get("default_operating_point") or read_optional_json(run_dir / "metrics.json").get(
        "default_operating_point")  # ensembles and cross-validation keep it in their metrics.json
    if named in points:
        return points, named
    default = points.get(DEFAULT_POINT)
    same = [n for n, p in points.items() if n != DEFAULT_POINT and default is not None
            and p.threshold == default.threshold]  # e.g. an ensemble of members' mean thresholds
    if "youden" in same or (not same and "youden" in points):
        return points, "youden"
    return points, same[0] if same else DEFAULT_POINT


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
    size = int(meta["image_size"])
    return Run(
        path=run_dir,
        kind=kind,
        format_version=version,
        architecture=str(meta.get("architecture", kind)),
        classes=tuple(meta["classes"]),
        positive_class=meta.get("positive_class"),
        modality=modality,
        image_size=size,
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
        created=meta.get("created"),
        split_counts=meta.get("split_counts"),
        init_from=meta.get("init_from"),
        best_epoch=None if meta.get("best_epoch") is None else int(meta["best_epoch"]),
        epochs_run=None if meta.get("epochs_run") is None else int(meta["epochs_run"]),
        onnx=_onnx(meta.get("onnx")),
        ensemble_members=tuple(
            EnsembleMember(Path(d), str(m.get("path", d)), int(m.get("image_size", size)),  # older manifests: one size
                           m.get("weights_sha256"), m.get("architecture"), m.get("split_fingerprint"), m.get("seed"))
            for m, d in zip(meta.get("members", ()), meta.get("member_dirs", ()), strict=False)
            if isinstance(m, dict)),
        threshold_source=meta.get("threshold_source"),
        common_split=meta.get("common_split"),
        local_calibration=dict(meta.get("local_calibration") or {}),
        ood=_ood_record(meta),
        commissioning=_commissioning(meta),
        training_precision=(meta.get("training_precision") or {}).get("resolved"),
        training_precision_record=meta.get("training_precision"),
        frozen_head=meta.get("frozen_head"),
        sanitized=meta.get("sanitized"),
    )


def _onnx(info: dict[str, Any] | None) -> OnnxExport | None:
    if not info:
        return None
    serving = info.get("serving") or {"file": info.get("file", "model.onnx"), "sha256": info["sha256"],
                                      "precision": "fp32"}
    return OnnxExport(file=str(info.get("file", "model.onnx")), sha256=str(info["sha256"]),
                      serving_file=str(serving["file"]), serving_sha256=str(serving["sha256"]),
                      precision=str(serving.get("precision", "fp32")), opset=info.get("opset"),
                      max_abs_deviation=info.get("max_abs_deviation"), int8=info.get("int8"))


def read_sidecar(run_dir: str | Path) -> dict[str, Any]:
    """The raw record of a run folder: ``model.json``, or ``ensemble.json`` for an ensemble. For this module and for
    tests that inspect what was written; code reads :func:`load_run` and writes through :func:`update_record`."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run folder {run_dir} does not exist; give a folder written by covidscreen train")
    return read_manifest(run_dir) if is_ensemble(run_dir) else read_model_sidecar(run_dir)


def is_run_folder(path: str | Path) -> bool:
    """True when ``path`` holds a run's record (``model.json``, or an ensemble's ``ensemble.json``); its content is
    not checked (:func:`load_run` does that)."""
    path = Path(path)
    return (path / SIDECAR_FILE).is_file() or is_ensemble(path)


def update_record(run_dir: str | Path, replace: dict[str, Any] | None = None, merge: dict[str, dict[str, Any]] | None
                  = None) -> Run:
    """Change an existing run's record, atomically, and return the run as now recorded: the one writer of
    records after training (local calibration, ONNX and INT8 export).

    Args:
        replace: top-level keys set to these values (``{"onnx": {...}}`` after a new export).
        merge: top-level mappings updated key by key (``{"operating_points": {"local": 0.4}}`` adds one point and
            keeps the others); each value inside is replaced whole.
    """
    run_dir = Path(run_dir)
    meta = read_sidecar(run_dir)
    meta.update(replace or {})
    for key, entries in (merge or {}).items():
        meta[key] = {**(meta.get(key) or {}), **entries}
    if is_ensemble(run_dir):
        write_json(run_dir / ENSEMBLE_FILE, {k: v for k, v in meta.items() if k != "member_dirs"})
    else:
        write_sidecar(run_dir, meta)
    return load_run(run_dir)


def derived_record(run: Run, drop: tuple[str, ...] = (), update: dict[str, Any] | None = None) -> dict[str, Any]:
    """The record of a new run made from ``run`` (``covidscreen sanitize``: same classes, preprocessing and operating
    points, new weights): ``run``'s record without the keys ``drop``, with ``update``; the new run's checkpoint writer
    adds its weights' entries."""
    meta = {k: v for k, v in run.sidecar.items() if k not in drop}
    meta.update(update or {})
    return meta


def load_run(run_dir: str | Path) -> Run:
    """The typed run of a run folder or an ensemble folder.

    Raises:
        CheckpointError: the folder is missing, not a run folder, damaged, or from a newer covidscreen.
    """
    run_dir = Path(run_dir)
    meta = read_sidecar(run_dir)
    return run_from_record(run_dir, meta, "ensemble" if is_ensemble(run_dir) else "model")


def optional_run(path: str | Path) -> Run | None:
    """The run in ``path``, or None where there is none or it cannot be read (pages and tables that show what a
    folder holds: an evaluation folder, an experiment cell that failed)."""
    try:
        return load_run(path) if is_run_folder(path) else None
    except CheckpointError:
        return None


def load_checkpoint(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, Run]:
    """The run and its model (eval mode, weights verified) in one call."""
    run = load_run(run_dir)
    return run.load_model(device), run
