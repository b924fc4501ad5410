"""Ensembles: several trained runs used as one model, averaging their class probabilities.

An ensemble folder holds ``ensemble.json`` (the members, as paths relative to the folder, with the sha256 of each
member's weights, plus classes, input size and operating points). :func:`~covidscreen.inference.checkpoint.
load_checkpoint` returns an :class:`EnsembleModel` for such a folder, so ``covidscreen evaluate``, ``predict`` and
anything built on :class:`~covidscreen.inference.predictor.Predictor` use an ensemble exactly like one model.

Operating threshold: when every member was trained on the same split of the same data (equal split fingerprints),
the ensemble's averaged validation probabilities choose it, as for a single run, and the folder also gets
``predictions.csv``, ``metrics.json``, ``split.csv`` and ``report.html`` of that common split. When the members'
splits differ (other seeds, or the k fold models of cross-validation), there is no validation split common to all
of them and no test split that none of them trained on: the threshold is then given by the caller (cross-validation
passes the one chosen on the pooled out-of-fold validation predictions) or is the mean of the members' thresholds,
``threshold_source`` says which, and the ensemble can only be evaluated on other data (``evaluate --data``).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..errors import CheckpointError, ModelError

ENSEMBLE_FILE = "ensemble.json"
FORMAT_VERSION = 1


def is_ensemble(run_dir: str | Path) -> bool:
    return (Path(run_dir) / ENSEMBLE_FILE).is_file()


class EnsembleModel(nn.Module):
    """Averages the softmax outputs of its members.

    ``forward`` returns the *log* of the averaged probabilities: every caller applies ``softmax`` to a model's
    output, and ``softmax(log p) = p`` when ``p`` sums to one, so callers need no special case.
    """

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise CheckpointError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)
        self.num_classes = int(getattr(members[0], "num_classes", 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.stack([torch.softmax(m(x).float(), dim=1) for m in self.members]).mean(0)
        return torch.log(probs.clamp_min(torch.finfo(probs.dtype).tiny))

    @property
    def gradcam_layer(self) -> nn.Module:
        raise ModelError("Grad-CAM of an ensemble is not defined (its members look at different layers); explain "
                         "one member run instead")


def _member_meta(run_dir: Path) -> dict[str, Any]:
    from .checkpoint import read_sidecar

    if is_ensemble(run_dir):
        raise CheckpointError(f"{run_dir} is itself an ensemble; list its member runs instead")
    return read_sidecar(run_dir)


def read_manifest(ens_dir: str | Path) -> dict[str, Any]:
    """Read and check ``ensemble.json``; member paths are returned absolute under ``member_dirs``."""
    ens_dir = Path(ens_dir)
    path = ens_dir / ENSEMBLE_FILE
    from .checkpoint import read_json_record

    meta = read_json_record(path, ("members", "classes", "image_size"), "ensemble folder")
    meta["member_dirs"] = [str((ens_dir / m["path"]).resolve()) for m in meta["members"]]
    return meta


def load_ensemble(ens_dir: str | Path, device: str | torch.device = "cpu") -> tuple[EnsembleModel, dict[str, Any]]:
    """Load every member (sha256-checked) into one :class:`EnsembleModel` (eval mode) plus the manifest.

    Raises:
        CheckpointError: a member is missing, was retrained since the ensemble was built, or does not fit.
    """
    from .checkpoint import load_checkpoint

    meta = read_manifest(ens_dir)
    models = []
    for entry, member in zip(meta["members"], meta["member_dirs"], strict=True):
        if not Path(member).is_dir():
            raise CheckpointError(f"ensemble {ens_dir}: member {entry['path']} ({member}) does not exist")
        model, mmeta = load_checkpoint(member, device)
        if entry.get("weights_sha256") and mmeta.get("weights_sha256") != entry["weights_sha256"]:
            raise CheckpointError(f"ensemble {ens_dir}: member {member} has other weights than when the ensemble "
                                  "was built (retrained?); rebuild the ensemble")
        if mmeta["classes"] != meta["classes"] or int(mmeta["image_size"]) != int(meta["image_size"]):
            raise CheckpointError(f"ensemble {ens_dir}: member {member} has classes {mmeta['classes']} at "
                                  f"{mmeta['image_size']}px; the ensemble expects {meta['classes']} at "
                                  f"{meta['image_size']}px")
        models.append(model)
    return EnsembleModel(models).to(device).eval(), meta


def check_members(member_dirs: list[str | Path]) -> list[dict[str, Any]]:
    """Sidecars of the members after checking that they can be averaged (same classes, positive class, size).

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
    for d, m in zip(dirs[1:], metas[1:], strict=True):
        for key in ("classes", "positive_class", "image_size"):
            if m.get(key) != first.get(key):
                raise CheckpointError(f"ensemble members disagree on {key}: {dirs[0]} has {first.get(key)!r}, {d} "
                                      f"has {m.get(key)!r}; members must share classes, positive class and "
                                      "image size")
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
                "split_fingerprint": m.get("split_fingerprint"), "seed": m.get("seed")}
               for d, m in zip(member_dirs, metas, strict=True)]
    shared = common_split(metas)
    manifest = {
        "format_version": FORMAT_VERSION,
        "architecture": "ensemble",
        "combine": "mean of member softmax probabilities",
        "members": members,
        "classes": first["classes"],
        "positive_class": first.get("positive_class"),
        "image_size": first["image_size"],
        "task": first.get("task", "multiclass"),
        "operating_points": points,
        "threshold": points.get("default"),
        "threshold_source": threshold_source,
        "common_split": shared,
        "data_dir": first.get("data_dir") if shared else None,
        "split_fingerprint": first.get("split_fingerprint") if shared else None,
        **(extra or {}),
    }
    path = ens_dir / ENSEMBLE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=2))
    tmp.replace(path)
    return path


def averaged_predictions(member_dirs: list[str | Path], classes: list[str]) -> pd.DataFrame:
    """Mean of the members' ``predictions.csv`` probabilities, row by row (members must share their split)."""
    cols = [f"prob_{c}" for c in classes]
    frames = []
    for d in member_dirs:
        f = Path(d) / "predictions.csv"
        if not f.is_file():
            raise CheckpointError(f"{d} has no predictions.csv; it is not a finished run")
        frames.append(pd.read_csv(f, keep_default_na=False))
    base = frames[0].drop(columns=cols)
    for d, fr in zip(member_dirs[1:], frames[1:], strict=True):
        if not (fr["image"].tolist() == base["image"].tolist() and fr["split"].tolist() == base["split"].tolist()):
            raise CheckpointError(f"{d}: predictions.csv lists other images than {member_dirs[0]} although the "
                                  "split fingerprints agree; rerun the member")
    mean = np.mean([fr[cols].to_numpy(dtype=float) for fr in frames], axis=0)
    return pd.concat([base, pd.DataFrame(mean, columns=cols)], axis=1)


def build_ensemble(member_dirs: list[str | Path], ens_dir: str | Path) -> Path:
    """Make an ensemble folder from finished runs (``covidscreen ensemble RUN_DIR... -o ENSEMBLE_DIR``).

    No model is run: with a common split the ensemble's validation and test probabilities are the mean of the
    members' stored ones (which is what :class:`EnsembleModel` computes), and its threshold is chosen on its own
    validation probabilities. See the module docstring for members with different splits.

    Returns:
        The ensemble folder.
    """
    from ..evaluation.report import write_report
    from ..training.run_metrics import metrics_from_predictions

    ens_dir = Path(ens_dir)
    member_dirs = [Path(m).resolve() for m in member_dirs]
    if ens_dir.resolve() in member_dirs:
        raise CheckpointError(f"the ensemble folder {ens_dir} cannot be one of its members")
    metas = check_members(member_dirs)
    classes, pos = metas[0]["classes"], metas[0].get("positive_class")
    for stale in ("predictions.csv", "metrics.json", "split.csv", "report.html"):
        (ens_dir / stale).unlink(missing_ok=True)
    if not common_split(metas):
        points = mean_operating_points(metas)
        return write_manifest(ens_dir, member_dirs, metas, points,
                              "mean of the members' own validation thresholds (the members were validated on "
                              "different splits, so no split is common to all of them)").parent
    preds = averaged_predictions(member_dirs, classes)
    metrics = metrics_from_predictions(preds, classes, pos,
                                       threshold_source="the ensemble's validation split (max Youden J)")
    ens_dir.mkdir(parents=True, exist_ok=True)
    preds.to_csv(ens_dir / "predictions.csv", index=False)
    metrics["members"] = [str(m) for m in member_dirs]
    (ens_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, allow_nan=True))
    shutil.copyfile(member_dirs[0] / "split.csv", ens_dir / "split.csv")
    write_manifest(ens_dir, member_dirs, metas, metrics["operating_points"], metrics["threshold_source"])
    write_report(ens_dir, title=f"covidscreen ensemble of {len(member_dirs)} runs")
    return ens_dir
