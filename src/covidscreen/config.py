"""Typed configuration: a dataclass per job, YAML overrides, and the resolved config saved with every run.

Precedence: dataclass defaults < YAML file (``--config``) < command-line options. Unknown keys, wrong types and
impossible values raise :class:`~covidscreen.errors.ConfigError` naming the key. Configs are data
(``yaml.safe_load``), never code.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

ROI_CHOICES = ("none", "lungs-crop", "lungs-mask", "lungs-crop-mask")
INTENSITY_CHOICES = ("none", "clahe", "histeq", "standardize")
#: what a CT run reads: one lung-window grey channel, or lung, mediastinal, lung windows as three channels (DICOM only)
CT_CHANNEL_CHOICES = ("lung", "lung+mediastinal")
DEFAULT_MEDIASTINAL_WINDOW = (40.0, 400.0)  # (level, width) in HU
LUNG_WINDOW_HU = (-600.0, 1500.0)  # (level, width) in HU: the lung window of every CT slice (data/decode.py)
PREPROCESS_VERSION = 1  # bump when any step below changes its output
DEFAULT_N_BOOT = 1000  # bootstrap replicates of every confidence interval, unless a caller asks for others
MODALITIES = ("cxr", "ct")  # chest X-ray (CR/DX), chest CT slices
LOSSES = ("cross_entropy", "focal")
SAMPLERS = ("random", "balanced")
TASKS = ("multiclass", "binary")
OPTIMIZERS = ("adamw", "adam", "sgd", "rmsprop")
HEADS = ("finetune", "logistic", "gradient-boosting")
# out-of-distribution detectors fitted on a run's training features (covidscreen.ood; docs/safety.md); none: no fit
OOD_DETECTORS = ("mahalanobis", "knn", "vim", "energy", "none")
PRECISIONS = ("auto", "fp32", "bf16")  # training numerics (runtime.resolve_precision)


@dataclass(frozen=True)
class PreprocessConfig:
    """Preprocessing settings of a classification run (stored in its sidecar as ``preprocessing``).

    Attributes:
        roi: ``none``, ``lungs-crop``, ``lungs-mask`` or ``lungs-crop-mask``.
        intensity: ``none``, ``clahe``, ``histeq`` or ``standardize``.
        border_crop: fraction of the height and width removed from every side, in [0, 0.25).
        roi_margin: margin around the lung bounding box, as a fraction of the box's height/width.
        segmentation_model: lung segmentation checkpoint (folder) used by the ``lungs-*`` options.
        segmentation_sha256: sha256 of its weights; part of the cache key, checked when the segmenter is loaded.
        ct_channels: ``lung`` (one grey channel: PNG/JPEG as they are, DICOM CT through the lung window) or
            ``lung+mediastinal`` (DICOM CT only: channels lung window, mediastinal window, lung window again).
        ct_mediastinal_window: (level, width) in HU of the mediastinal channel (with ``lung+mediastinal``).
    """

    roi: str = "none"
    intensity: str = "none"
    border_crop: float = 0.0
    roi_margin: float = 0.1
    segmentation_model: str | None = None
    segmentation_sha256: str | None = None
    ct_channels: str = "lung"
    ct_mediastinal_window: tuple[float, float] = DEFAULT_MEDIASTINAL_WINDOW

    def __post_init__(self) -> None:
        # JSON and YAML give lists: store the window as a tuple of floats, so that equal settings compare equal
        try:
            window = tuple(float(v) for v in self.ct_mediastinal_window)
        except (TypeError, ValueError):
            raise ConfigError(f"ct_mediastinal_window {self.ct_mediastinal_window!r} is invalid: expected "
                              "(level, width) in HU, e.g. 40,400") from None
        object.__setattr__(self, "ct_mediastinal_window", window)

    def validate(self) -> PreprocessConfig:
        if self.roi not in ROI_CHOICES:
            raise ConfigError(f"roi {self.roi!r} is not known; use one of {', '.join(ROI_CHOICES)}")
        if self.intensity not in INTENSITY_CHOICES:
            raise ConfigError(f"intensity {self.intensity!r} is not known; use one of {', '.join(INTENSITY_CHOICES)}")
        if not 0 <= self.border_crop < 0.25:
            raise ConfigError(f"border_crop {self.border_crop!r} is invalid: expected a fraction in [0, 0.25)")
        if not 0 <= self.roi_margin <= 1:
            raise ConfigError(f"roi_margin {self.roi_margin!r} is invalid: expected a fraction in [0, 1]")
        if self.needs_segmentation and not self.segmentation_model:
            raise ConfigError(f"roi {self.roi!r} needs a lung segmenter: set segmentation_model to a folder written "
                              "by 'covidscreen segment train'")
        if self.ct_channels not in CT_CHANNEL_CHOICES:
            raise ConfigError(f"ct_channels {self.ct_channels!r} is not known; use one of "
                              f"{', '.join(CT_CHANNEL_CHOICES)}")
        level, width = (self.ct_mediastinal_window + (float("nan"),) * 2)[:2]
        if len(self.ct_mediastinal_window) != 2 or not (math.isfinite(level) and math.isfinite(width) and width > 0):
            raise ConfigError(f"ct_mediastinal_window {self.ct_mediastinal_window!r} is invalid: expected "
                              "(level, width) in HU with a finite level and a width > 0, e.g. 40,400")
        if self.ct_channels != "lung" and self.needs_segmentation:
            raise ConfigError(f"ct_channels {self.ct_channels} cannot be combined with roi {self.roi}: the lung "
                              "segmenter reads chest radiographs, not CT windows; use roi none")
        return self

    @property
    def needs_segmentation(self) -> bool:
        return self.roi != "none"

    @property
    def crops(self) -> bool:
        return self.roi in ("lungs-crop", "lungs-crop-mask")

    @property
    def masks(self) -> bool:
        return self.roi in ("lungs-mask", "lungs-crop-mask")

    @property
    def ct_windows(self) -> tuple[tuple[float, float], ...] | None:
        """The (level, width) HU window of each input channel, or None for one grey channel (``ct_channels`` lung).

        ``lung+mediastinal`` gives (lung, mediastinal, lung): the lung window fills two of the three channels an
        ImageNet network expects, so the network starts from what a one-channel lung-window model sees (grey input
        is the same image in all three channels) and the mediastinal window enters as the one channel that differs.
        A mean of the two windows as the third channel would add nothing: the first convolution is linear, so it can
        form any mix of the two channels by itself.
        """
        if self.ct_channels == "lung":
            return None
        return LUNG_WINDOW_HU, self.ct_mediastinal_window, LUNG_WINDOW_HU

    @property
    def channels(self) -> int:
        """Channels of the model input: 1 (grey, repeated to RGB by the model) or 3 (CT windows)."""
        return 1 if self.ct_windows is None else len(self.ct_windows)

    @property
    def is_identity(self) -> bool:
        return (self.roi == "none" and self.intensity == "none" and self.border_crop == 0
                and self.ct_channels == "lung")

    def key(self) -> str:
        """What makes two preprocessed caches different (the segmenter by its weights, not its path)."""
        if self.is_identity:
            return ""
        seg = self.segmentation_sha256 if self.needs_segmentation else None
        key = (f"pp{PREPROCESS_VERSION}|roi={self.roi}|margin={self.roi_margin if self.needs_segmentation else 0}"
               f"|int={self.intensity}|border={self.border_crop}|seg={seg}")
        if self.ct_windows is not None:  # absent for one channel: caches of earlier versions stay valid
            key += f"|ct={','.join(f'{lv:g}/{w:g}' for lv, w in self.ct_windows)}"
        return key

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ct_mediastinal_window"] = list(self.ct_mediastinal_window)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> PreprocessConfig:
        """From a sidecar's ``preprocessing`` block (absent in runs that predate it: identity)."""
        if not d:
            return cls()
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known).validate()


@dataclass
class TrainConfig:
    """Everything that defines a training run. Defaults are the quickstart's (tuned on validation, CPU-friendly)."""

    data: str | None = None  # data folder; None: $COVIDSCREEN_DATA, else ../shared/data/cxr (ct/ for modality ct)
    output: str | None = None  # run folder; None: runs/<model>-<timestamp>
    model: str = "efficientnet_lite0"  # registry or timm model name (covidscreen models lists them)
    pretrained: bool = True  # start from ImageNet weights (--no-pretrained: random initialisation)
    weights: str | None = None  # local weights file instead of the registry's source
    image_size: int = 224  # square input side in pixels
    modality: str | None = None  # what the model reads: cxr (X-ray, CR/DX) or ct (CT slices); null: from the data
    train_stages: int | None = 5  # fine-tune only the last k trunk stages (+ head); null: all, 0: head only
    head: str = "finetune"  # finetune | logistic | gradient-boosting (scikit-learn on frozen features)
    epochs: int = 4  # number of epochs
    samples_per_epoch: int | None = 2500  # random subset of the training set per epoch (None = all)
    batch_size: int = 32  # training batch size
    lr: float = 1e-3  # peak learning rate (AdamW, warm-up then cosine decay)
    weight_decay: float = 0.01  # AdamW weight decay
    optimizer: str = "adamw"  # adamw | adam | sgd (momentum 0.9, Nesterov) | rmsprop, each with its usual defaults
    warmup_fraction: float = 0.1  # share of all steps spent warming the learning rate up
    class_weights: bool = True  # inverse-frequency weights in the loss (the data is imbalanced)
    augment: bool = True  # X-ray-safe augmentation (small affine, brightness/contrast, no flips)
    patience: int = 3  # early stopping: epochs without validation improvement
    seed: int = 0  # seed of everything random (and of the split, unless split_seed is set)
    split: tuple[float, float, float] = (0.7, 0.15, 0.15)  # train, val, test fractions of the patients
    positive_class: str = "covid"  # the class of the COVID-vs-rest metrics and operating point
    max_per_class: int | None = None  # use at most this many images of each class (quick experiments, tests)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # with precision auto: mixed precision where the device has it (false: float32)
    eval_batch_size: int = 64  # batch size of validation and test predictions
    cache_dir: str | None = None  # decode cache folder; None: $COVIDSCREEN_CACHE, else ~/.cache/covidscreen
    # evaluation and audit
    target_sensitivity: float = 0.95  # operating point "sensitivity_<t>", chosen on validation
    target_specificity: float = 0.95  # operating point "specificity_<t>", chosen on validation
    temperature_scaling: bool = False  # fit a temperature on validation and apply it to every probability
    bootstrap: int = DEFAULT_N_BOOT  # patient-level bootstrap replicates for confidence intervals (0 = none)
    audit: bool = True  # leakage / shortcut / confounding audit at the end of the run (audit.json)
    holdout_site: str | None = None  # leave this site out of train/val/test and evaluate on it at the end
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes stored with the run
    # transfer-learning options of the literature; each is off by default (docs/transfer_learning.md)
    lr_decay: float = 1.0  # discriminative LRs: each stage below the head gets lr * lr_decay**depth (1 = off)
    head_warmup_epochs: int = 0  # train only the head for this many epochs, then unfreeze to train_stages
    loss: str = "cross_entropy"  # cross_entropy | focal
    focal_gamma: float = 2.0  # focal loss focusing parameter (0 = cross-entropy)
    focal_alpha: float | None = None  # focal: weight of positive_class, others 1 - alpha (replaces class_weights)
    sampler: str = "random"  # random | balanced (every class drawn equally often, with replacement)
    mixup_alpha: float = 0.0  # Beta(alpha, alpha) mixup of image pairs and their labels (0 = off)
    cutmix_alpha: float = 0.0  # CutMix with Beta(alpha, alpha) box areas (0 = off; with mixup: one of them per batch)
    task: str = "multiclass"  # multiclass (every label) | binary (positive_class vs non_<positive_class>)
    init_from: str | None = None  # run folder whose trunk weights start this run (sequential fine-tuning)
    sites: list[str] | None = None  # keep only images of these sites (after the split, so splits stay the same)
    labels: list[str] | None = None  # keep only images with these labels (after the split)
    split_seed: int | None = None  # seed of the split (None = seed): ensembles of seeds share one split
    train_fraction: float = 1.0  # use this share of the training patients (learning curves; nested across values)
    folds: int | None = None  # patient-grouped stratified k-fold cross-validation (None = one train/val/test split)
    fold: int | None = None  # with folds: train only this fold's model (test = this fold, val = the next one)
    # generalisation to unseen sites (docs/generalisation.md); mechanisms in data/preprocess.py and
    # workflows/generalisation.py. Preprocessing: YAML ``preprocess: {roi: ...}`` or the flat keys (``roi: ...``)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    select_on: str = "auc"  # epoch selection: auc (pooled) | within_site_auc (sites with both classes)
    site_balanced: bool = False  # sample each label's sites equally (and the labels equally)
    adversarial_weight: float = 0.0  # > 0: site classifier behind a gradient-reversal layer (Ganin & Lempitsky)
    adversarial_conditional: bool = True  # the site head also sees the label: remove site beyond the label only
    keep_mixed_sites: bool = False  # with max_per_class: keep every image of sites that hold both classes
    site_probe: bool = False  # measure how well a linear probe predicts site from the features (val+test)
    within_site_rank_weight: float = 0.0  # > 0: + w * ranking loss over same-site (positive, other) pairs
    # the split (data/splits.py, data/duplicates.py)
    group_near_duplicates: bool = True  # keep near-duplicate images (and so their patients) in one split
    split_file: str | None = None  # CSV image,split (train|val|test|unused): this split, as given (then audited)
    ood_detector: str = "vim"  # out-of-distribution detector on training features (mahalanobis where vim cannot)
    ood_flag_rate: float = 0.05  # share of validation images the out-of-distribution flag is set to flag
    ood_orientation: bool = True  # the out-of-distribution score also checks that the image is upright (not turned)
    # training numerics (runtime.resolve_precision; docs/performance.md): final predictions are float32 whatever it is
    precision: str = "auto"  # auto (bf16 autocast on CUDA and on CPUs with AMX, else fp32) | fp32 | bf16

    def validate(self) -> TrainConfig:
        """Check values that types cannot express; raise :class:`ConfigError` naming the first bad key."""
        checks = [
            ("image_size", 32 <= self.image_size <= 1024, "an integer from 32 to 1024"),
            ("modality", self.modality is None or self.modality in MODALITIES,
             f"null (from the data: modality or view column, DICOM Modality) or one of {', '.join(MODALITIES)}"),
            ("epochs", self.epochs >= 1, "at least 1"),
            ("batch_size", self.batch_size >= 2, "at least 2"),
            ("lr", self.lr > 0, "positive"),
            ("weight_decay", self.weight_decay >= 0, "non-negative"),
            ("warmup_fraction", 0 <= self.warmup_fraction < 1, "in [0, 1)"),
            ("patience", self.patience >= 1, "at least 1"),
            ("train_stages", self.train_stages is None or self.train_stages >= 0, "null or >= 0"),
            ("samples_per_epoch", self.samples_per_epoch is None or self.samples_per_epoch >= self.batch_size,
             "null or at least batch_size"),
            ("max_per_class", self.max_per_class is None or self.max_per_class >= 4, "null or at least 4"),
            ("split", len(self.split) == 3 and abs(sum(self.split) - 1) < 1e-6 and min(self.split) >= 0
             and self.split[1] > 0, "three fractions train,val,test summing to 1 with val > 0"),
            ("target_sensitivity", 0 < self.target_sensitivity < 1, "a number strictly between 0 and 1"),
            ("target_specificity", 0 < self.target_specificity < 1, "a number strictly between 0 and 1"),
            ("bootstrap", self.bootstrap >= 0, "0 (no intervals) or a number of replicates"),
            ("lr_decay", 0 < self.lr_decay <= 1, "in (0, 1] (1 = one learning rate for every stage)"),
            ("head_warmup_epochs", 0 <= self.head_warmup_epochs < self.epochs, "from 0 to epochs - 1"),
            ("loss", self.loss in LOSSES, f"one of {', '.join(LOSSES)}"),
            ("focal_gamma", self.focal_gamma >= 0, "non-negative"),
            ("focal_alpha", self.focal_alpha is None or 0 < self.focal_alpha < 1, "null or in (0, 1)"),
            ("focal_alpha", self.focal_alpha is None or self.loss == "focal", "null unless loss is focal"),
            ("focal_alpha", self.focal_alpha is None or not self.class_weights,
             "null while class_weights is true (both weight the classes; set class_weights: false)"),
            ("sampler", self.sampler in SAMPLERS, f"one of {', '.join(SAMPLERS)}"),
            ("sampler", self.sampler != "balanced" or not self.class_weights,
             "'random' while class_weights is true (balanced sampling and class weights would correct twice; "
             "set class_weights: false)"),
            ("mixup_alpha", self.mixup_alpha >= 0, "non-negative (0 = off)"),
            ("cutmix_alpha", self.cutmix_alpha >= 0, "non-negative (0 = off)"),
            ("task", self.task in TASKS, f"one of {', '.join(TASKS)}"),
            ("optimizer", self.optimizer in OPTIMIZERS, f"one of {', '.join(OPTIMIZERS)}"),
            ("head", self.head in HEADS, f"one of {', '.join(HEADS)}"),
            ("sites", self.sites is None or len(self.sites) > 0, "null or a non-empty list of site names"),
            ("labels", self.labels is None or len(self.labels) >= 2, "null or a list of at least two labels"),
            ("train_fraction", 0 < self.train_fraction <= 1, "in (0, 1]"),
            ("folds", self.folds is None or self.folds >= 3,
             "null or at least 3 (one fold tests, the next validates, the others train)"),
            ("fold", self.fold is None or (self.folds is not None and 0 <= self.fold < self.folds),
             "null, or from 0 to folds - 1 when folds is set"),
        ]
        checks += [
            ("select_on", self.select_on in ("auc", "within_site_auc"), "auc or within_site_auc"),
            ("adversarial_weight", self.adversarial_weight >= 0, "non-negative"),
            ("adversarial_weight", self.adversarial_weight == 0 or (self.mixup_alpha == 0 and self.cutmix_alpha == 0),
             "0 while mixup_alpha or cutmix_alpha is set (the adversarial epoch does not mix images)"),
            ("within_site_rank_weight", self.within_site_rank_weight >= 0, "non-negative"),
            ("within_site_rank_weight", self.within_site_rank_weight == 0 or (
                self.mixup_alpha == 0 and self.cutmix_alpha == 0 and self.adversarial_weight == 0),
             "0 while mixup_alpha, cutmix_alpha or adversarial_weight is set (pairs need hard labels and the plain "
             "epoch)"),
            ("precision", self.precision in PRECISIONS, f"one of {', '.join(PRECISIONS)}"),
            ("site_balanced", not (self.site_balanced and self.sampler == "balanced"),
             "false while sampler is 'balanced' (two samplers)"),
            ("split_file", self.split_file is None or self.folds is None,
             "null while folds is set (k-fold cross-validation makes its own folds)"),
            ("ood_detector", self.ood_detector in OOD_DETECTORS, f"one of {', '.join(OOD_DETECTORS)}"),
            ("ood_flag_rate", 0 < self.ood_flag_rate < 0.5, "a share strictly between 0 and 0.5"),
        ]
        for key, ok, expected in checks:
            if not ok:
                raise ConfigError(f"config key '{key}' = {getattr(self, key)!r} is invalid: expected {expected}")
        self.preprocess.validate()
        return self


@dataclass
class SegmentConfig:
    """Everything that defines a lung segmentation training run (``covidscreen segment train``)."""

    data: str | None = None  # data folder with metadata.csv and a lung_mask column; None: ../shared/data/cxr
    output: str = "runs/lung-seg"  # folder for the segmentation checkpoint
    encoder: str = "mobilenet_v2_035"  # registry encoder: mobilenet_v2_035 or efficientnet_lite0
    pretrained: bool = True  # ImageNet weights for the encoder
    image_size: int = 160  # square side, a multiple of 32
    equalize: bool = True  # histogram-equalise inputs (robust to exposure differences between sites)
    epochs: int = 30  # number of epochs
    batch_size: int = 16  # training batch size
    lr: float = 2e-3  # peak learning rate (AdamW)
    weight_decay: float = 1e-4  # AdamW weight decay
    split: tuple[float, float, float] = (0.7, 0.15, 0.15)  # train, val, test fractions of the patients
    seed: int = 0  # seed of the split and the training
    max_minutes: float | None = None  # stop after this much training time (the best epoch so far is kept)
    max_images: int | None = None  # use at most this many masked images (tests, quick runs)
    device: str = "auto"  # auto | cpu | cuda | cuda:N

    def validate(self) -> SegmentConfig:
        checks = [
            ("image_size", self.image_size % 32 == 0 and 64 <= self.image_size <= 1024, "a multiple of 32, 64..1024"),
            ("epochs", self.epochs >= 1, "at least 1"),
            ("batch_size", self.batch_size >= 2, "at least 2"),
            ("lr", self.lr > 0, "positive"),
            ("split", len(self.split) == 3 and abs(sum(self.split) - 1) < 1e-6 and min(self.split) > 0,
             "three positive fractions train,val,test summing to 1"),
            ("max_images", self.max_images is None or self.max_images >= 6, "null or at least 6"),
        ]
        for key, ok, expected in checks:
            if not ok:
                raise ConfigError(f"segmentation option {key} = {getattr(self, key)!r} is invalid: expected {expected}")
        return self


def _type_ok(value: Any, annotation: Any) -> tuple[bool, Any]:
    """Check (and lightly coerce: int->float, list->tuple) a YAML value against a type hint."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        for arm in typing.get_args(annotation):
            ok, v = _type_ok(value, arm)
            if ok:
                return True, v
        return False, value
    if annotation is type(None):
        return value is None, value
    if annotation is bool:
        return isinstance(value, bool), value
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if annotation is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return True, float(value)
        return False, value
    if annotation is str:
        return isinstance(value, str), value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            return False, value
        args = typing.get_args(annotation)
        if len(args) == 2 and args[1] is Ellipsis:  # tuple[X, ...]: any length, every item an X
            args = (args[0],) * len(value)
        if len(args) != len(value):
            return False, value
        out = []
        for v, a in zip(value, args, strict=True):
            ok, v2 = _type_ok(v, a)
            if not ok:
                return False, value
            out.append(v2)
        return True, tuple(out)
    if origin is dict or annotation is dict:
        return isinstance(value, dict), value
    if origin is list:
        if not isinstance(value, list | tuple):
            return False, value
        (arm,) = typing.get_args(annotation) or (Any,)
        out = []
        for v in value:
            ok, v2 = _type_ok(v, arm)
            if not ok:
                return False, value
            out.append(v2)
        return True, out
    return True, value


#: keys of a nested config that may also be given at the top level (the YAML files and runs written before the
#: preprocessing settings were grouped): ``roi: lungs-crop`` means ``preprocess: {roi: lungs-crop}``
FLAT_ALIASES = {"preprocess": ("roi", "roi_margin", "intensity", "border_crop", "segmentation_model", "ct_channels",
                              "ct_mediastinal_window")}


def nest_flat_keys(overrides: dict[str, Any], names: set[str]) -> dict[str, Any]:
    """Move flat keys of nested configs (:data:`FLAT_ALIASES`) and dotted keys (``preprocess.roi``) into their
    nested mappings, for a config whose fields are ``names``."""
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        parent = next((p for p, keys in FLAT_ALIASES.items() if key in keys and p in names), None)
        if "." in key:
            parent, key = key.split(".", 1)
        if parent is None:
            out[key] = value
            continue
        nested = out.setdefault(parent, {})
        if not isinstance(nested, dict):
            raise ConfigError(f"'{parent}' must be a mapping of keys to values, not {nested!r}")
        nested[key] = value
    for parent, nested in list(out.items()):
        if parent in FLAT_ALIASES and isinstance(overrides.get(parent), dict):
            out[parent] = {**overrides[parent], **nested}
    return out


def apply_overrides(cfg: Any, overrides: dict[str, Any], source: str = "config") -> Any:
    """Return a copy of dataclass ``cfg`` with ``overrides`` applied after type checks (nested configs take a
    mapping, a dotted key or, for :data:`FLAT_ALIASES`, the plain key)."""
    hints = typing.get_type_hints(type(cfg))
    names = {f.name for f in fields(cfg)}
    changes = {}
    for key, value in nest_flat_keys(overrides, names).items():
        if key not in names:
            raise ConfigError(f"{source}: unknown key '{key}'. Known keys: {', '.join(sorted(names))}")
        if dataclasses.is_dataclass(hints[key]):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: key '{key}' must be a mapping of its keys to values, not {value!r}")
            changes[key] = apply_overrides(getattr(cfg, key), value, source=f"{source}: {key}")
            continue
        ok, coerced = _type_ok(value, hints[key])
        if not ok:
            raise ConfigError(f"{source}: key '{key}' has value {value!r} of the wrong type; expected {hints[key]}")
        changes[key] = coerced
    return dataclasses.replace(cfg, **changes)


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values, not {type(data).__name__}")
    return data


def resolve_train_config(config_file: str | Path | None = None, **cli: Any) -> TrainConfig:
    """Defaults < YAML < CLI options (CLI options that are None are not set)."""
    cfg = TrainConfig()
    if config_file is not None:
        cfg = apply_overrides(cfg, load_yaml(config_file), source=str(config_file))
    cfg = apply_overrides(cfg, {k: v for k, v in cli.items() if v is not None}, source="command line")
    return cfg.validate()


def to_dict(cfg: Any) -> dict[str, Any]:
    """A config as plain YAML/JSON data (tuples as lists, nested configs as mappings)."""
    def plain(v: Any) -> Any:
        if isinstance(v, tuple | list):
            return [plain(x) for x in v]
        return {k: plain(x) for k, x in v.items()} if isinstance(v, dict) else v

    return {k: plain(v) for k, v in dataclasses.asdict(cfg).items()}


def from_dict(cls: type, data: dict[str, Any], source: str = "stored config") -> Any:
    """A config of type ``cls`` from :func:`to_dict` output (or an older run's flat one); unknown keys are errors."""
    return apply_overrides(cls(), data, source=source)
