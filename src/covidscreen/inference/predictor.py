"""Prediction on files: expand folders, decode (PNG/JPEG/DICOM), batch, and report one row per file.

A file that cannot be read gets a row with an ``error`` and empty probabilities; it never stops the batch. So does a
file of the other modality (a CT slice sent to an X-ray model or the reverse, told by its DICOM ``Modality``); files
whose modality cannot be told (PNG/JPEG) are predicted, and one warning for the batch says so
(``DataFrame.attrs["warnings"]`` and a Python warning).

With an out-of-distribution scorer attached (:attr:`Predictor.ood`, set by :func:`covidscreen.ood.attach_ood`) each
row also gets ``ood_score`` (higher: less like the training images) and ``in_distribution``, both from the same
forward pass as the probabilities (the head's input features are captured on the way); with ``ood_policy="abstain"``
a flagged image's ``prediction`` is ``abstain`` and its probabilities are empty.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data.decode import IMAGE_SUFFIXES
from ..data.preprocess import load_preprocessed, load_preprocessed_sizes
from ..errors import DataError, ImageDecodeError, ModalityError
from ..evaluation.calibration import apply_temperature
from ..evaluation.metrics import predict_labels
from ..runtime import amp_dtype, prediction_precision, resolve_device, to_input
from ..segmentation import load_segmenter_for
from .ensemble import EnsembleModel
from .modality import ModalityWarning, check_input_modality, summarise_warnings
from .onnx import OnnxModel
from .run import Run, load_run

# a model input: one array, or one per input size (an ensemble of members trained at different sizes)
Prepared = np.ndarray | dict[int, np.ndarray]


def expand_inputs(inputs: list[str | Path]) -> list[Path]:
    """Files as given, and image files (by suffix) found recursively in folders, sorted."""
    files: list[Path] = []
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise DataError(f"folder {p} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
            files += found
        elif p.exists():
            files.append(p)
        else:
            raise DataError(f"{p} does not exist; give image files (PNG, JPEG, DICOM) or folders of them")
    return files


OOD_POLICIES = ("flag", "abstain")
ABSTAIN = "abstain"


class OutlierScorer(Protocol):
    """What the Predictor needs of an out-of-distribution model (:class:`covidscreen.ood.OODModel`)."""

    threshold: float

    def score(self, features: np.ndarray, logits: np.ndarray) -> np.ndarray:
        """One score per image, higher = less like the training images."""
        ...


@contextmanager
def head_inputs(model: torch.nn.Module) -> Iterator[list[torch.Tensor | None]]:
    """Capture the features that feed the classification head of ``model`` (of each member of an ensemble, in
    member order) on the next forward pass; maps (a convolutional head) are average-pooled to vectors."""
    members = list(model.members) if isinstance(model, EnsembleModel) else [model]
    captured: list[torch.Tensor | None] = [None] * len(members)
    handles = []

    def hook_for(i: int):
        def hook(_module: torch.nn.Module, args: tuple) -> None:
            x = args[0]
            captured[i] = (F.adaptive_avg_pool2d(x, 1).flatten(1) if x.ndim == 4 else x.flatten(1)).float()
        return hook

    for i, m in enumerate(members):
        handles.append(m.backbone.get_submodule(m.spec.head).register_forward_pre_hook(hook_for(i)))
    try:
        yield captured
    finally:
        for h in handles:
            h.remove()


class Predictor:
    """A trained run, ready to predict: ``Predictor(run_dir).predict_files(paths)``."""

    def __init__(self, run_dir: str | Path | Run, device: str = "auto", operating_point: str = "default",
                 backend: str = "torch", mixed_precision: bool = False, expected_sha256: str | None = None) -> None:
        """By default a GPU computes in exact float32 (no autocast, no TF32), so that predictions, evaluations and
        local calibrations agree across devices: on an H100, bfloat16 autocast moved COVID probabilities by up to
        0.08 against the CPU and changed 3 of 204 decisions; exact float32 stayed within 3e-6 and changed none.
        ``mixed_precision=True`` turns autocast on (faster on large batches; decoding dominates small ones).
        ``expected_sha256``: refuse the model unless its weights have this digest (a value the user trusts)."""
        if backend not in ("torch", "onnx"):
            raise DataError(f"backend {backend!r} is unknown; use torch or onnx")
        self.run = run_dir if isinstance(run_dir, Run) else load_run(run_dir)
        self.operating_point = operating_point
        point = self.run.point(operating_point)  # fails early, listing the run's points, on an unknown name
        self.device = resolve_device(device if backend == "torch" else "cpu")
        self.model = self.run.load_model(self.device, expected_sha256).to(memory_format=torch.channels_last)
        self.onnx = OnnxModel(self.run) if backend == "onnx" else None
        self.backend = backend
        self.amp = amp_dtype(self.device, enabled=mixed_precision)
        self.classes: list[str] = list(self.run.classes)
        self.size = self.run.image_size
        # an ensemble of members trained at different sizes gets each file decoded once, resized once per size
        self.sizes: tuple[int, ...] = self.run.input_sizes
        self.modality = self.run.modality
        self.last_warnings: list[str] = []  # of the last predict_files / iter_predictions
        self.positive_index = self.run.positive_index
        self.threshold = None if point is None else point.threshold
        # the run's preprocessing (lung ROI, intensity, border crop), applied exactly as in training
        self.preprocess = self.run.preprocess
        self.segmenter = load_segmenter_for(self.preprocess, base_dir=self.run.path)
        # thresholds were chosen on probabilities scaled by this temperature (1 = none): a locally calibrated point
        # may carry its own, otherwise the run's, fitted on validation
        self.temperature = self.run.temperature_for(operating_point)
        # an out-of-distribution scorer and what to do with a flagged image (covidscreen.ood.attach_ood sets them)
        self.ood: OutlierScorer | None = None
        self.ood_policy = "flag"

    def prepare(self, path: str | Path) -> Prepared:
        """One file as the model reads it: a ``(size, size)`` uint8 array (``(C, size, size)`` for runs reading CT
        windows), or ``{size: array}`` for an ensemble of members at different sizes (decoded once).

        Raises:
            ImageDecodeError: the file cannot be read.
        """
        if len(self.sizes) == 1:
            return load_preprocessed(path, self.size, self.preprocess, self.segmenter)
        images = load_preprocessed_sizes(path, list(self.sizes), self.preprocess, self.segmenter)
        return dict(zip(self.sizes, images, strict=True))

    @staticmethod
    def stack(images: list[Prepared]) -> Prepared:
        """A batch of :meth:`prepare` outputs, for :meth:`predict_arrays`."""
        if images and isinstance(images[0], dict):
            return {size: np.stack([img[size] for img in images]) for size in images[0]}
        return np.stack(images)

    @torch.inference_mode()
    def predict_arrays(self, images: Prepared) -> np.ndarray:
        """Probabilities for a ``(B, size, size)`` uint8 batch (``(B, C, size, size)`` for runs reading CT windows),
        or ``{size: batch}`` (:meth:`stack` of :meth:`prepare` outputs) for an ensemble of several sizes."""
        if isinstance(images, dict):
            x = {size: to_input(torch.from_numpy(np.ascontiguousarray(b)), self.device) for size, b in images.items()}
            with prediction_precision(self.device, self.amp):
                logits = self.model(x)
            return torch.softmax(logits.float() / self.temperature, 1).cpu().numpy().astype(np.float64)
        if self.onnx is not None:
            x = np.ascontiguousarray(images, dtype=np.float32) / 255.0
            probs = self.onnx.probabilities(x[:, None] if x.ndim == 3 else x)
            # the same probabilities as the PyTorch path, which divides its logits by the temperature
            return probs if self.temperature == 1.0 else apply_temperature(probs, self.temperature)
        x = to_input(torch.from_numpy(np.ascontiguousarray(images)), self.device)
        with prediction_precision(self.device, self.amp):
            logits = self.model(x)
        return torch.softmax(logits.float() / self.temperature, 1).cpu().numpy().astype(np.float64)

    @torch.inference_mode()
    def embed_arrays(self, images: Prepared) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Probabilities, head-input features ``(B, D)`` (the members' side by side for an ensemble) and raw logits
        (before the temperature) of a batch, from one forward pass.

        Raises:
            DataError: the ONNX backend, which does not give features.
        """
        if self.onnx is not None:
            raise DataError("the out-of-distribution score needs the model's features, which the ONNX backend does "
                            "not give; use --backend torch")
        if isinstance(images, dict):  # an ensemble of members at several input sizes: {size: batch}
            x = {size: to_input(torch.from_numpy(np.ascontiguousarray(b)), self.device) for size, b in images.items()}
        else:
            x = to_input(torch.from_numpy(np.ascontiguousarray(images)), self.device)
        with head_inputs(self.model) as captured, prediction_precision(self.device, self.amp):
            logits = self.model(x).float()
        features = torch.cat([c for c in captured if c is not None], 1).cpu().numpy()
        probs = torch.softmax(logits / self.temperature, 1).cpu().numpy().astype(np.float64)
        return probs, features, logits.cpu().numpy()

    def features(self, images: np.ndarray, batch_size: int = 64, progress: bool = False,
                 desc: str = "features") -> tuple[np.ndarray, np.ndarray]:
        """Head-input features and raw logits of many images, in batches."""
        feats, logits = [], []
        for start in tqdm(range(0, len(images), batch_size), desc=desc, unit="batch", disable=not progress):
            _, f, lg = self.embed_arrays(images[start:start + batch_size])
            feats.append(f)
            logits.append(lg)
        if not feats:
            return np.zeros((0, 0), np.float32), np.zeros((0, len(self.classes)), np.float32)
        return np.concatenate(feats), np.concatenate(logits)

    def score_arrays(self, images: Prepared) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities and out-of-distribution scores of a batch (scores ``None`` without a scorer, or with the
        ONNX backend): one forward pass either way."""
        if self.ood is None or self.onnx is not None:
            return self.predict_arrays(images), None
        probs, feats, logits = self.embed_arrays(images)
        return probs, np.asarray(self.ood.score(feats, logits), dtype=np.float64)

    def in_distribution(self, scores: np.ndarray) -> np.ndarray:
        """True where a score is at or below the OOD threshold (a NaN score, e.g. a blank image, is flagged)."""
        assert self.ood is not None
        return np.asarray(scores) <= self.ood.threshold

    def check_modality(self, path: str | Path) -> str | None:
        """Refuse a file of the other modality (:class:`~covidscreen.errors.ModalityError`); a warning (or None)
        for one that cannot be checked. Every file-based interface calls this before decoding."""
        return check_input_modality(path, self.modality)

    def decide(self, probs: np.ndarray) -> list[str]:
        return [self.classes[i] for i in predict_labels(probs, self.positive_index, self.threshold)]

    def predict_files(self, inputs: list[str | Path], batch_size: int = 32, progress: bool = True) -> pd.DataFrame:
        """One row per file (see :meth:`iter_predictions`); ``attrs["warnings"]`` holds the modality warning of
        files whose modality could not be checked (PNG/JPEG), which is also issued as a ``ModalityWarning``."""
        rows = self.iter_predictions(expand_inputs(inputs), batch_size=batch_size, progress=progress)
        out = pd.DataFrame(list(rows), columns=self.columns)
        out.attrs["warnings"] = list(self.last_warnings)
        return out

    @property
    def columns(self) -> list[str]:
        """Columns of a prediction row: ``path``, ``prob_<class>``..., ``prediction``, ``ood_score``,
        ``in_distribution`` (both empty without an out-of-distribution model), ``error``."""
        return ["path", *[f"prob_{c}" for c in self.classes], "prediction", "ood_score", "in_distribution", "error"]

    def iter_predictions(self, files: list[Path], batch_size: int = 32, progress: bool = True) -> Iterator[dict]:
        """One row per file, in order, yielded as each batch is done (memory stays bounded for any number of
        files; an unreadable file, or a DICOM of the other modality, gets its ``error`` and empty probabilities).
        When all rows are out, :attr:`last_warnings` holds the summary of files whose modality could not be
        checked, also issued as a ``ModalityWarning``."""
        rows: list[dict] = []
        unchecked: list[str] = []
        self.last_warnings = []
        batch: list[tuple[int, Prepared]] = []

        def flush() -> None:
            if not batch:
                return
            probs, scores = self.score_arrays(self.stack([img for _, img in batch]))
            inside = self.in_distribution(scores) if scores is not None else None
            for k, ((i, _), p, label) in enumerate(zip(batch, probs, self.decide(probs))):
                if scores is not None:
                    rows[i]["ood_score"] = float(scores[k])
                    rows[i]["in_distribution"] = bool(inside[k])
                    if not inside[k] and self.ood_policy == ABSTAIN:  # no answer for an image unlike the training's
                        rows[i]["prediction"] = ABSTAIN
                        continue
                rows[i].update({f"prob_{c}": float(v) for c, v in zip(self.classes, p)})
                rows[i]["prediction"] = label
            batch.clear()

        unchecked: list[str] = []

        def load(f: Path) -> Prepared | str:
            try:
                note = self.check_modality(f)
                if note:
                    unchecked.append(note)
                return self.prepare(f)
            except (ImageDecodeError, ModalityError) as exc:
                return str(exc)

        # decoding (PIL, pydicom) releases the GIL for the heavy parts: overlap it with inference, a bounded
        # chunk at a time so that a folder of any size never sits decoded in memory at once
        bar = tqdm(total=len(files), desc="predict", unit="img", disable=not progress)
        chunk = max(batch_size, 1) * 4
        with ThreadPoolExecutor(max_workers=2) as pool:
            for start in range(0, len(files), chunk):
                part = files[start:start + chunk]
                for f, img in zip(part, pool.map(load, part)):
                    rows.append({"path": str(f), **{f"prob_{c}": np.nan for c in self.classes}, "prediction": "",
                                 "ood_score": np.nan, "in_distribution": None, "error": ""})
                    if isinstance(img, str):
                        rows[-1]["error"] = img
                    else:
                        batch.append((len(rows) - 1, img))
                    if len(batch) >= batch_size:
                        flush()
                    bar.update()
                flush()  # a chunk's rows are complete: hand them out
                yield from rows
                rows.clear()
        bar.close()
        summary = summarise_warnings(unchecked, self.modality)
        if summary:
            self.last_warnings = [summary]
            warnings.warn(summary, ModalityWarning, stacklevel=2)
