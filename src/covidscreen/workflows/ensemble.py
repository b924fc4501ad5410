"""Building an ensemble folder from finished runs (``covidscreen ensemble RUN_DIR... -o ENSEMBLE_DIR``).

The ensemble model itself (:class:`~covidscreen.inference.ensemble.EnsembleModel`) and its manifest live in
``inference/ensemble.py``; this job scores the members' stored predictions and writes the folder's report.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import CheckpointError
from ..inference.ensemble import check_members, common_split, mean_operating_points, write_manifest
from ..inference.run import load_run
from ..reporting.report import write_report
from ..runtime import atomic_write_csv, atomic_write_text
from .run_metrics import metrics_from_predictions


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
    ens_dir = Path(ens_dir)
    member_dirs = [Path(m).resolve() for m in member_dirs]
    if ens_dir.resolve() in member_dirs:
        raise CheckpointError(f"the ensemble folder {ens_dir} cannot be one of its members")
    members = [load_run(d) for d in member_dirs]
    check_members(members)
    classes, pos = list(members[0].classes), members[0].positive_class
    for stale in ("predictions.csv", "metrics.json", "split.csv", "report.html"):
        (ens_dir / stale).unlink(missing_ok=True)
    if not common_split(members):
        points = mean_operating_points(members)
        return write_manifest(ens_dir, members, points,
                              "mean of the members' own validation thresholds (the members were validated on "
                              "different splits, so no split is common to all of them)").parent
    preds = averaged_predictions(member_dirs, classes)
    metrics = metrics_from_predictions(preds, classes, pos,
                                       threshold_source="the ensemble's validation split")
    ens_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_csv(ens_dir / "predictions.csv", preds)
    metrics["members"] = [str(m) for m in member_dirs]
    atomic_write_text(ens_dir / "metrics.json", json.dumps(metrics, indent=2, allow_nan=True))
    shutil.copyfile(member_dirs[0] / "split.csv", ens_dir / "split.csv")
    write_manifest(ens_dir, members, metrics["operating_points"], metrics["threshold_source"])
    write_report(ens_dir, title=f"covidscreen ensemble of {len(member_dirs)} runs")
    return ens_dir


@dataclass(frozen=True)
class EnsembleOutcome:
    """What ``covidscreen ensemble`` built: the folder, the number of members and, when the members share their
    split, the ensemble's positive-vs-rest figures on it (``val``, ``test``; None without a common split)."""

    output: Path
    n_members: int
    val: dict[str, Any] | None = None
    test: dict[str, Any] | None = None
    common_split: bool = True
    show_test: bool = True  # False while choosing among candidates: choose on validation, read test once

    def lines(self) -> list[str]:
        """What the command prints: validation first (the figure to choose on), test only when asked."""
        n = self.n_members
        if not self.common_split:
            return [f"ensemble of {n} written to {self.output} (members were split differently: no common test "
                    "split; evaluate it with --data)"]
        lines = []
        if self.val:
            lines.append(f"ensemble of {n} on the members' common validation split: ROC AUC "
                         f"{self.val['roc_auc']:.4f} (the figure to choose on)")
        if self.test and self.show_test:
            lines.append(f"ensemble of {n} on the members' common test split: ROC AUC {self.test['roc_auc']:.4f}, "
                         f"sensitivity {self.test['sensitivity']:.3f}, specificity {self.test['specificity']:.3f}")
        lines.append(f"report: {self.output / 'report.html'}" if self.show_test else
                     f"written to {self.output} (its report.html shows the test split)")
        return lines


def ensemble_job(member_dirs: list[str | Path], ens_dir: str | Path, show_test: bool = True) -> EnsembleOutcome:
    """``covidscreen ensemble``: build the ensemble folder (:func:`build_ensemble`) and read back its figures on the
    members' common split (none when they were split differently)."""
    out = build_ensemble(member_dirs, ens_dir)
    metrics = out / "metrics.json"
    if not metrics.is_file():
        return EnsembleOutcome(out, len(member_dirs), common_split=False, show_test=show_test)
    m = json.loads(metrics.read_text())
    return EnsembleOutcome(out, len(member_dirs), (m.get("val") or {}).get("covid_vs_rest"), m.get("covid_vs_rest"),
                           show_test=show_test)

