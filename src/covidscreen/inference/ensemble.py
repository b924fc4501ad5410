"""Ensembles: several trained runs used as one model, averaging their class probabilities.

An ensemble folder holds ``ensemble.json`` (the members, as paths relative to the folder, with the sha256 of each
member's weights, plus classes, input size and operating points). :func:`~covidscreen.inference.run.
load_run` reads such a folder as a :class:`~covidscreen.inference.run.Run` of kind ``ensemble`` whose model is an
:class:`EnsembleModel`, so ``covidscreen evaluate``, ``predict`` and
anything built on :class:`~covidscreen.inference.predictor.Predictor` use an ensemble exactly like one model.

Members may read different input sizes (EfficientNet-Lite0 at 224 px with Lite2 at 260 px): the ensemble's input
size is the largest. The :class:`~covidscreen.inference.predictor.Predictor` decodes each file once and resizes it
once to each member size (:func:`~covidscreen.data.preprocess.load_preprocessed_sizes`), and
:class:`EnsembleModel` gives each member the input of its own size, so a member sees what its own run would prepare
(evaluation caches one copy per size). Given a single tensor at the largest size (the service's micro-batches),
smaller members get it resized to their size (bilinear, antialiased): an image resized twice, whose probabilities
differ slightly from the member's own. The ensemble folder's ``predictions.csv`` and operating point, computed from
the members' stored predictions, use each member as trained.

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
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError, ModelError
from ..models.checkpoint import read_json_record, write_json

if TYPE_CHECKING:  # run.py builds on this module (it types the manifests written here)
    from .run import Run

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

    def forward(self, x: torch.Tensor | dict[int, torch.Tensor]) -> torch.Tensor:
        """``x``: one batch at the largest size, or ``{size: batch}`` with a batch of each member's own size."""
        if isinstance(x, dict):
            largest = x[max(x)]
            inputs = [x.get(s, largest) if s is not None else largest for s in self.sizes]
        else:
            inputs = [x] * len(self.members)
        probs = torch.stack([torch.softmax(m(self._resized(xi, s)).float(), dim=1)
                             for m, s, xi in zip(self.members, self.sizes, inputs, strict=True)]).mean(0)
        return torch.log(probs.clamp_min(torch.finfo(probs.dtype).tiny))

    @property
    def gradcam_layer(self) -> nn.Module:
        raise ModelError("Grad-CAM of an ensemble is not defined (its members look at different layers); explain "
                         "one member run instead")


def read_manifest(ens_dir: str | Path) -> dict[str, Any]:
    """Read and check ``ensemble.json``; member paths are returned absolute under ``member_dirs`` (for
    :func:`covidscreen.inference.run.load_run`, which types it)."""
    ens_dir = Path(ens_dir)
    path = ens_dir / ENSEMBLE_FILE
    meta = read_json_record(path, ("members", "classes", "image_size"), "ensemble folder")
    meta["member_dirs"] = [str((ens_dir / m["path"]).resolve()) for m in meta["members"]]
    return meta


def ensemble_model(ens: Run, members: list[Run], device: str | torch.device = "cpu") -> EnsembleModel:
    """Load every member (sha256-checked) into one :class:`EnsembleModel` (eval mode).

    Args:
        ens: the ensemble's typed run; ``members``: its members' (``ens.member_runs()``), in manifest order.

    Raises:
        CheckpointError: a member was retrained since the ensemble was built, or does not fit.
    """
    models, sizes = [], []
    for entry, member in zip(ens.ensemble_members, members, strict=True):
        if entry.weights_sha256 and member.weights_sha256 != entry.weights_sha256:
            raise CheckpointError(f"ensemble {ens.path}: member {member.path} has other weights than when the "
                                  "ensemble was built (retrained?); rebuild the ensemble")
        if member.classes != ens.classes or member.image_size != entry.image_size:
            raise CheckpointError(f"ensemble {ens.path}: member {member.path} has classes {list(member.classes)} at "
                                  f"{member.image_size}px; the ensemble expects {list(ens.classes)} at "
                                  f"{entry.image_size}px")
        if entry.image_size > ens.image_size:
            raise CheckpointError(f"ensemble {ens.path}: member {member.path} reads {entry.image_size}px, more than "
                                  f"the ensemble's {ens.image_size}px; rebuild the ensemble")
        models.append(member.load_model(device))
        sizes.append(entry.image_size)
    return EnsembleModel(models, sizes).to(device).eval()


def check_members(members: list[Run]) -> None:
    """Check that the member runs can be averaged (same classes, positive class, modality and preprocessing; input
    sizes may differ, see the module docstring).

    Raises:
        CheckpointError: fewer than two members, a duplicate, an ensemble among them, or members that disagree (the
            message says how).
    """
    dirs = [m.path.resolve() for m in members]
    if len(dirs) < 2:
        raise CheckpointError(f"an ensemble needs at least two runs, got {len(dirs)}")
    if len(set(dirs)) < len(dirs):
        raise CheckpointError("the same run is listed twice; list each member once")
    for m in members:
        if m.kind == "ensemble":
            raise CheckpointError(f"{m.path} is itself an ensemble; list its member runs instead")
    first = members[0]
    for m in members[1:]:
        for key in ("classes", "positive_class", "modality"):
            if getattr(m, key) != getattr(first, key):
                raise CheckpointError(f"ensemble members disagree on {key}: {first.path} has "
                                      f"{_shown(getattr(first, key))!r}, {m.path} has {_shown(getattr(m, key))!r}; "
                                      "members must share classes, positive class and modality")
        # one preprocessing for all: the ensemble prepares each image once (an ensemble of histeq runs read plain
        # images before the manifest carried it)
        if m.preprocess != first.preprocess:
            raise CheckpointError(f"ensemble members disagree on preprocessing: {first.path} has {first.preprocess}, "
                                  f"{m.path} has {m.preprocess}; members must prepare images the same way")


def _shown(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def common_split(members: list[Run]) -> bool:
    """True when all members were trained and validated on the same split of the same data."""
    keys = {(m.split_fingerprint, m.data_dir) for m in members}
    return len(keys) == 1 and None not in next(iter(keys))


def mean_operating_points(members: list[Run]) -> dict[str, float]:
    names = set.intersection(*[set(m.thresholds) for m in members])
    return {n: float(np.mean([m.thresholds[n] for m in members])) for n in sorted(names)}


def write_manifest(ens_dir: str | Path, members: list[Run], points: dict[str, float], threshold_source: str,
                   extra: dict[str, Any] | None = None) -> Path:
    """Write ``ensemble.json`` for the member runs; returns its path."""
    ens_dir = Path(ens_dir)
    ens_dir.mkdir(parents=True, exist_ok=True)
    first = members[0]
    entries = [{"path": os.path.relpath(m.path.resolve(), ens_dir.resolve()),
                "architecture": m.architecture, "weights_sha256": m.weights_sha256,
                "split_fingerprint": m.split_fingerprint, "seed": m.seed, "image_size": m.image_size}
               for m in members]
    shared = common_split(members)
    manifest = {
        "format_version": FORMAT_VERSION,
        "architecture": "ensemble",
        "combine": "mean of member softmax probabilities",
        "members": entries,
        "classes": list(first.classes),
        "positive_class": first.positive_class,
        "image_size": max(m.image_size for m in members),  # the largest; smaller members resize (docstring)
        "modality": first.modality,
        "preprocessing": first.preprocess.to_dict(),
        "task": first.task,
        "operating_points": points,
        "threshold": points.get("default"),
        "threshold_source": threshold_source,
        "common_split": shared,
        "data_dir": first.data_dir if shared else None,
        "split_fingerprint": first.split_fingerprint if shared else None,
        **(extra or {}),
    }
    return write_json(ens_dir / ENSEMBLE_FILE, manifest)
