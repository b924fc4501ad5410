"""Ensembles: several trained runs used as one model, averaging their class probabilities.

An ensemble folder holds ``ensemble.json`` (the members, as paths relative to the folder, with the sha256 of each
member's weights, plus classes, input size and operating points). :func:`~covidscreen.inference.run.
load_run` reads such a folder as a :class:`~covidscreen.inference.run.Run` of kind ``ensemble`` whose model is an
:class:`EnsembleModel`, so ``covidscreen evaluate``, ``predict`` and
anything built on :class:`~covidscreen.inference.predictor.Predictor` use an ensemble exactly like one model.

Members may read different input sizes (EfficientNet-Lite0 at 224 px with Lite2 at 260 px): the ensemble's input
size is the largest, images are prepared once at that size, and each smaller member gets them resized to its own size
(bilinear, antialiased) inside :class:`EnsembleModel`. Such a member sees an image resized twice (to the largest size,
then to its own) instead of once, so its probabilities differ slightly from its own run's; the ensemble folder's
``predictions.csv`` and operating point, computed from the members' stored predictions, use each member as trained.

Operating threshold: when every member was trained on the same split of the same data (equal split fingerprints),
the ensemble's averaged validation probabilities choose it, as for a single run, and the folder also gets
``predictions.csv``, ``metrics.json``, ``split.csv`` and ``report.html`` of that common split. When the members'
splits differ (other seeds, or the k fold models of cross-validation), there is no validation split common to all
of them and no test split that none of them trained on: the threshold is then given by the caller (cross-validation
passes the one chosen on the pooled out-of-fold validation predictions) or is the mean of the members' thresholds,
``threshold_source`` says which, and the ensemble can only be evaluated on other data (``evaluate --data``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import PreprocessConfig
from ..errors import CheckpointError, ModelError
from ..models.checkpoint import read_json_record, write_json
from .checkpoint import load_model_weights, read_model_sidecar

ENSEMBLE_FILE = "ensemble.json"
FORMAT_VERSION = 1


def is_ensemble(run_dir: str | Path) -> bool:
    return (Path(run_dir) / ENSEMBLE_FILE).is_file()


class EnsembleModel(nn.Module):
    """Averages the softmax outputs of its members.

    ``forward`` returns the *log* of the averaged probabilities: every caller applies ``softmax`` to a model's
    output, and ``softmax(log p) = p`` when ``p`` sums to one, so callers need no special case.
    """

    def __init__(self, members: list[nn.Module], sizes: list[int | None] | None = None) -> None:
        """``sizes``: each member's square input side; ``None`` (or a ``None`` entry) takes the input as it comes."""
        super().__init__()
        if not members:
            raise CheckpointError("an ensemble needs at least one member")
        if sizes is not None and len(sizes) != len(members):
            raise CheckpointError(f"an ensemble of {len(members)} members got {len(sizes)} input sizes")
        self.members = nn.ModuleList(members)
        self.sizes = list(sizes) if sizes is not None else [None] * len(members)
        self.num_classes = int(getattr(members[0], "num_classes", 0))

    @staticmethod
    def _resized(x: torch.Tensor, size: int | None) -> torch.Tensor:
        if size is None or tuple(x.shape[-2:]) == (size, size):
            return x
        return nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.stack([torch.softmax(m(self._resized(x, s)).float(), dim=1)
                             for m, s in zip(self.members, self.sizes, strict=True)]).mean(0)
        return torch.log(probs.clamp_min(torch.finfo(probs.dtype).tiny))

    @property
    def gradcam_layer(self) -> nn.Module:
        raise ModelError("Grad-CAM of an ensemble is not defined (its members look at different layers); explain "
                         "one member run instead")


def _member_meta(run_dir: Path) -> dict[str, Any]:
    if not run_dir.is_dir():
        raise CheckpointError(f"run folder {run_dir} does not exist; give folders written by covidscreen train")
    if is_ensemble(run_dir):
        raise CheckpointError(f"{run_dir} is itself an ensemble; list its member runs instead")
    return read_model_sidecar(run_dir)


def read_manifest(ens_dir: str | Path) -> dict[str, Any]:
    """Read and check ``ensemble.json``; member paths are returned absolute under ``member_dirs``."""
    ens_dir = Path(ens_dir)
    path = ens_dir / ENSEMBLE_FILE
    meta = read_json_record(path, ("members", "classes", "image_size"), "ensemble folder")
    meta["member_dirs"] = [str((ens_dir / m["path"]).resolve()) for m in meta["members"]]
    return meta


def load_ensemble(ens_dir: str | Path, device: str | torch.device = "cpu") -> tuple[EnsembleModel, dict[str, Any]]:
    """Load every member (sha256-checked) into one :class:`EnsembleModel` (eval mode) plus the manifest.

    Raises:
        CheckpointError: a member is missing, was retrained since the ensemble was built, or does not fit.
    """
    meta = read_manifest(ens_dir)
    models, sizes = [], []
    for entry, member in zip(meta["members"], meta["member_dirs"], strict=True):
        if not Path(member).is_dir():
            raise CheckpointError(f"ensemble {ens_dir}: member {entry['path']} ({member}) does not exist")
        mmeta = _member_meta(Path(member))
        model = load_model_weights(Path(member), mmeta, device)
        if entry.get("weights_sha256") and mmeta.get("weights_sha256") != entry["weights_sha256"]:
            raise CheckpointError(f"ensemble {ens_dir}: member {member} has other weights than when the ensemble "
                                  "was built (retrained?); rebuild the ensemble")
        # manifests from before mixed sizes have one image_size for all members
        size = int(entry.get("image_size", meta["image_size"]))
        if mmeta["classes"] != meta["classes"] or int(mmeta["image_size"]) != size:
            raise CheckpointError(f"ensemble {ens_dir}: member {member} has classes {mmeta['classes']} at "
                                  f"{mmeta['image_size']}px; the ensemble expects {meta['classes']} at "
                                  f"{size}px")
        if size > int(meta["image_size"]):
            raise CheckpointError(f"ensemble {ens_dir}: member {member} reads {size}px, more than the ensemble's "
                                  f"{meta['image_size']}px; rebuild the ensemble")
        models.append(model)
        sizes.append(size)
    return EnsembleModel(models, sizes).to(device).eval(), meta


def check_members(member_dirs: list[str | Path]) -> list[dict[str, Any]]:
    """Sidecars of the members after checking that they can be averaged (same classes, positive class, modality and
    preprocessing; input sizes may differ, see the module docstring).

    Raises:
        CheckpointError: fewer than two members, a duplicate, or members that disagree (the message says how).
    """
    dirs = [Path(m).resolve() for m in member_dirs]
    if len(dirs) < 2:
        raise CheckpointError(f"an ensemble needs at least two runs, got {len(dirs)}")
    if len(set(dirs)) < len(dirs):
        raise CheckpointError("the same run is listed twice; list each member once")
    metas = [_member_meta(d) for d in dirs]
    first = metas[0]
    for m in metas:  # runs that predate the modality key read chest radiographs
        m.setdefault("modality", "cxr")
    for d, m in zip(dirs[1:], metas[1:], strict=True):
        for key in ("classes", "positive_class", "modality"):
            if m.get(key) != first.get(key):
                raise CheckpointError(f"ensemble members disagree on {key}: {dirs[0]} has {first.get(key)!r}, {d} "
                                      f"has {m.get(key)!r}; members must share classes, positive class and "
                                      "modality")
        # one preprocessing for all: the ensemble prepares each image once (an ensemble of histeq runs read plain
        # images before the manifest carried it)
        if PreprocessConfig.from_dict(m.get("preprocessing")) != PreprocessConfig.from_dict(first.get("preprocessing")):
            raise CheckpointError(f"ensemble members disagree on preprocessing: {dirs[0]} has "
                                  f"{PreprocessConfig.from_dict(first.get('preprocessing'))}, {d} has "
                                  f"{PreprocessConfig.from_dict(m.get('preprocessing'))}; members must prepare "
                                  "images the same way")
    return metas


def common_split(metas: list[dict[str, Any]]) -> bool:
    """True when all members were trained and validated on the same split of the same data."""
    keys = {(m.get("split_fingerprint"), m.get("data_dir")) for m in metas}
    return len(keys) == 1 and None not in next(iter(keys))


def mean_operating_points(metas: list[dict[str, Any]]) -> dict[str, float]:
    names = set.intersection(*[set(m.get("operating_points") or {}) for m in metas])
    return {n: float(np.mean([m["operating_points"][n] for m in metas])) for n in sorted(names)}


def write_manifest(ens_dir: str | Path, member_dirs: list[str | Path], metas: list[dict[str, Any]],
                   points: dict[str, float], threshold_source: str, extra: dict[str, Any] | None = None) -> Path:
    """Write ``ensemble.json``; returns its path."""
    ens_dir = Path(ens_dir)
    ens_dir.mkdir(parents=True, exist_ok=True)
    first = metas[0]
    members = [{"path": os.path.relpath(Path(d).resolve(), ens_dir.resolve()),
                "architecture": m.get("architecture"), "weights_sha256": m.get("weights_sha256"),
                "split_fingerprint": m.get("split_fingerprint"), "seed": m.get("seed"),
                "image_size": int(m["image_size"])}
               for d, m in zip(member_dirs, metas, strict=True)]
    shared = common_split(metas)
    manifest = {
        "format_version": FORMAT_VERSION,
        "architecture": "ensemble",
        "combine": "mean of member softmax probabilities",
        "members": members,
        "classes": first["classes"],
        "positive_class": first.get("positive_class"),
        "image_size": max(int(m["image_size"]) for m in metas),  # the largest; smaller members resize (docstring)
        "modality": first.get("modality", "cxr"),
        "preprocessing": PreprocessConfig.from_dict(first.get("preprocessing")).to_dict(),
        "task": first.get("task", "multiclass"),
        "operating_points": points,
        "threshold": points.get("default"),
        "threshold_source": threshold_source,
        "common_split": shared,
        "data_dir": first.get("data_dir") if shared else None,
        "split_fingerprint": first.get("split_fingerprint") if shared else None,
        **(extra or {}),
    }
    return write_json(ens_dir / ENSEMBLE_FILE, manifest)
