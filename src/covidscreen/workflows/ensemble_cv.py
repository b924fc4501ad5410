"""Cross-validation of an ensemble (``covidscreen ensemble-cv MEMBER... --folds K -o DIR``).

Each member (a training config: a YAML file, or a registry model name on the shared options) is cross-validated
with the same patient-grouped, label-stratified folds (:mod:`covidscreen.workflows.crossval`: same data, seed and
split keys give the same folds, checked by the fold runs' split fingerprints). In every fold the ensemble is refit
from that fold's member runs (:func:`~covidscreen.workflows.ensemble.build_ensemble`: their averaged validation
probabilities choose its threshold; no model is run again), so the ensemble, like each member, is tested on every
patient exactly once by models that never saw them.

The folder holds ``members/<name>/`` (each member's cross-validation folder), ``folds/fold-<i>/`` (the fold's
ensemble), ``predictions.csv`` (the ensembles' out-of-fold validation and test predictions, with ``fold``),
``metrics.json`` (the ensemble's pooled metrics, as for one cross-validated run) and ``ensemble_cv.csv`` / ``.md``:
one table, a row per member and one for the ensemble, with the pooled out-of-fold test ROC AUC, sensitivity and
specificity at the pooled validation threshold (95% patient-level bootstrap CIs) and the mean and standard deviation
of the per-fold test AUCs. Rerunning the command resumes: finished fold runs are skipped.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..config import TrainConfig, resolve_train_config
from ..errors import ConfigError, DataError
from ..evaluation.metrics import headline_auc
from ..inference.run import load_run
from ..models.registry import list_models
from ..runtime import atomic_write_csv, atomic_write_text
from .crossval import cross_validate, fold_dir
from .ensemble import build_ensemble
from .run_metrics import metrics_from_predictions, prob_matrix
from .train import log

# keys that decide the folds: members must agree on them to be refit into one ensemble per fold
SPLIT_KEYS = ("data", "seed", "split", "holdout_site", "max_per_class", "labels", "positive_class", "task", "modality")


@dataclasses.dataclass
class Member:
    """One member of the cross-validated ensemble: its name (folder under ``members/``) and training config."""

    name: str
    cfg: TrainConfig


def members_from_specs(specs: list[str], config: str | Path | None = None, **options: Any) -> list[Member]:
    """Members from the command line: each spec is a YAML training config, or a registry model name trained with
    ``config`` (a YAML of shared keys) and ``options``; the options apply to every member.

    Raises:
        ConfigError: fewer than two members, a spec that is neither a file nor a model, or duplicate names.
    """
    if len(specs) < 2:
        raise ConfigError(f"an ensemble needs at least two members, got {len(specs)}; give YAML configs or model "
                          "names")
    members = []
    for spec in specs:
        path = Path(spec)
        if path.suffix.lower() in (".yaml", ".yml"):
            if not path.is_file():
                raise ConfigError(f"member config {path} does not exist")
            cfg, name = resolve_train_config(path, **options), path.stem
        elif spec in list_models():
            cfg, name = resolve_train_config(config, **{**options, "model": spec}), spec
        else:
            raise ConfigError(f"member {spec!r} is neither a YAML config file nor a model of the registry "
                              "(covidscreen models lists them)")
        members.append(Member(name, cfg))
    names = [m.name for m in members]
    if len(set(names)) < len(names):
        raise ConfigError(f"members must have different names, got {', '.join(names)}; rename the config files")
    return members


def _check_same_folds(members: list[Member]) -> None:
    first = members[0]
    for m in members[1:]:
        for key in SPLIT_KEYS:
            if getattr(m.cfg, key) != getattr(first.cfg, key):
                raise ConfigError(f"members {first.name} and {m.name} differ in '{key}' ({getattr(first.cfg, key)!r} "
                                  f"vs {getattr(m.cfg, key)!r}): members of one cross-validated ensemble must share "
                                  f"the keys that decide the folds ({', '.join(SPLIT_KEYS)})")


def _ci(block: dict[str, Any], key: str) -> tuple[float, float, float]:
    value = block.get(key, math.nan)
    lo, hi = (block.get("ci") or {}).get(key, (math.nan, math.nan))
    return float(value), float(lo), float(hi)


def _row(name: str, kind: str, metrics: dict[str, Any], fold_aucs: list[float]) -> dict[str, Any]:
    block = metrics.get("covid_vs_rest") or {}
    row: dict[str, Any] = {"name": name, "kind": kind}
    for key in ("roc_auc", "sensitivity", "specificity"):
        row[key], row[f"{key}_low"], row[f"{key}_high"] = _ci(block, key)
    row["fold_auc_mean"] = float(np.mean(fold_aucs)) if fold_aucs else math.nan
    row["fold_auc_sd"] = float(np.std(fold_aucs, ddof=1)) if len(fold_aucs) > 1 else math.nan
    row["threshold"] = metrics.get("threshold", math.nan)
    return row


def _fold_aucs(preds: pd.DataFrame, classes: list[str], pos: str | None) -> list[float]:
    out = []
    for _, part in preds[preds["split"] == "test"].groupby("fold"):
        y = part["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
        out.append(headline_auc(y, prob_matrix(part, classes), classes, pos))
    return out


def ensemble_cross_validate(members: list[Member], folds: int, output: str | Path, progress: bool = True) -> Path:
    """Cross-validate each member with the same folds, refit the ensemble in each fold, write the one table.

    Returns:
        The output folder.

    Raises:
        ConfigError: members that would not share folds, or fewer than 2 folds.
        DataError: the fold runs' splits differ after all (the message names the fold).
    """
    if folds < 2:
        raise ConfigError(f"--folds {folds}: cross-validation needs at least 2 folds")
    _check_same_folds(members)
    out = Path(output)
    (out / "members").mkdir(parents=True, exist_ok=True)
    rows = []
    for m in members:
        log(f"member {m.name}: {folds}-fold cross-validation")
        cv_dir = cross_validate(dataclasses.replace(m.cfg, folds=folds, output=str(out / "members" / m.name)),
                                progress=progress)
        member_preds = pd.read_csv(cv_dir / "predictions.csv", keep_default_na=False)
        member_metrics = json.loads((cv_dir / "metrics.json").read_text())
        classes, pos = member_metrics["classes"], member_metrics.get("positive_class")
        rows.append(_row(m.name, "member", member_metrics, _fold_aucs(member_preds, classes, pos)))
    frames = []
    for i in range(folds):
        runs = [fold_dir(out / "members" / m.name, i) for m in members]
        prints = {load_run(r).split_fingerprint for r in runs}
        if len(prints) != 1:
            raise DataError(f"fold {i}: the members were trained on different splits ({len(prints)} fingerprints); "
                            "they must share the data and the keys that decide the folds")
        ens = build_ensemble(runs, out / "folds" / f"fold-{i}")
        frames.append(pd.read_csv(ens / "predictions.csv", keep_default_na=False).assign(fold=i))
    pooled = pd.concat(frames, ignore_index=True)
    first = load_run(fold_dir(out / "members" / members[0].name, 0))
    classes, pos = list(first.classes), first.positive_class
    metrics = metrics_from_predictions(
        pooled, classes, pos, cfg=members[0].cfg,
        threshold_source="pooled out-of-fold validation predictions of the fold ensembles (max Youden J)")
    rows.append(_row("ensemble", "ensemble of " + " + ".join(m.name for m in members), metrics,
                     _fold_aucs(pooled, classes, pos)))
    table = pd.DataFrame(rows)
    metrics["ensemble_cv"] = {"folds": folds, "members": [m.name for m in members], "table": rows,
                              "note": "pooled out-of-fold test predictions; each patient tested once per model"}
    atomic_write_csv(out / "predictions.csv", pooled)
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2, allow_nan=True))
    atomic_write_csv(out / "ensemble_cv.csv", table)
    atomic_write_text(out / "ensemble_cv.md", "\n".join(format_table(table)) + "\n")
    return out


def format_table(table: pd.DataFrame) -> list[str]:
    """The table as Markdown lines (also what the command prints)."""
    def ci(r: pd.Series, key: str) -> str:
        return f"{r[key]:.3f} [{r[key + '_low']:.3f}, {r[key + '_high']:.3f}]"

    lines = ["| model | test ROC AUC [95% CI] | sensitivity [95% CI] | specificity [95% CI] | fold AUC mean ± sd |",
             "|---|---|---|---|---|"]
    for _, r in table.iterrows():
        lines.append(f"| {r['name']} | {ci(r, 'roc_auc')} | {ci(r, 'sensitivity')} | {ci(r, 'specificity')} | "
                     f"{r['fold_auc_mean']:.3f} ± {r['fold_auc_sd']:.3f} |")
    lines.append("")
    lines.append("Pooled out-of-fold test predictions (each patient tested once per model); sensitivity and "
                 "specificity at the threshold chosen on the pooled out-of-fold validation predictions; 95% "
                 "patient-level bootstrap CIs.")
    return lines


@dataclasses.dataclass(frozen=True)
class EnsembleCVOutcome:
    """What ``covidscreen ensemble-cv`` wrote: its folder and the table (Markdown lines)."""

    output: Path
    table: list[str]

    def lines(self) -> list[str]:
        """What the command prints: the table, then where it is."""
        return [*self.table, f"table: {self.output / 'ensemble_cv.md'}"]


def ensemble_cv_job(specs: list[str], folds: int, output: str | Path, config: str | Path | None = None,
                    progress: bool = True, **options: Any) -> EnsembleCVOutcome:
    """``covidscreen ensemble-cv``: the members from the command line (:func:`members_from_specs`, ``options`` apply
    to every member), cross-validated with the ensemble refit per fold (:func:`ensemble_cross_validate`).

    Raises:
        ConfigError: see :func:`members_from_specs` and :func:`ensemble_cross_validate`.
        DataError: the fold runs' splits differ after all.
    """
    out = ensemble_cross_validate(members_from_specs(specs, config, **options), folds, output, progress=progress)
    return EnsembleCVOutcome(out, (out / "ensemble_cv.md").read_text().splitlines())

