"""Patient-grouped, label-stratified k-fold cross-validation (``folds: k``).

Fold ``i``'s model tests on fold ``i``, validates (early stopping, threshold) on fold ``i + 1 mod k`` and trains on
the rest, so every patient is tested exactly once, by a model that never saw them. The cross-validation folder
holds ``fold-0`` ... ``fold-<k-1>`` (ordinary run folders) and:

- ``predictions.csv``: the out-of-fold validation and test probabilities of every image, with its ``fold``;
- ``metrics.json``: *pooled* metrics of the out-of-fold test predictions, the threshold chosen on the pooled
  out-of-fold validation predictions; ``val.within_site`` / ``test.within_site`` as in a single run's metrics (per
  site holding both classes: AUC, sensitivity and specificity at that threshold, stratified patient bootstrap CIs),
  so that within-site figures rest on every image of such a site rather than on one split's share; under
  ``cross_validation``: per-fold metrics (each fold with its own threshold), their mean and standard deviation,
  and the patient-level bootstrap 95% CI of the pooled AUC;
- ``folds.csv`` (the per-fold table), ``config.yaml``, ``report.html``;
- ``ensemble.json``: the k fold models as one ensemble (usable by ``predict`` and ``evaluate --data``). Every image
  of the data trained some fold model, so the ensemble has no internal test split: evaluate it on other data only.
"""

from __future__ import annotations

import dataclasses
import html
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from tqdm.auto import tqdm

from ..config import TrainConfig, to_dict
from ..evaluation.metrics import headline_auc
from ..evaluation.within_site import format_within_site, within_site_metrics
from ..inference.ensemble import write_manifest
from ..inference.run import load_run
from ..reporting.report import write_report
from ..runtime import atomic_write_csv, atomic_write_text
from .generalisation import add_within_site
from .resume import is_finished
from .run_metrics import metrics_from_predictions, prob_matrix
from .train import default_run_dir, fit_single, log


def fold_dir(cv_dir: str | Path, fold: int) -> Path:
    return Path(cv_dir) / f"fold-{fold}"


def cross_validate(cfg: TrainConfig, progress: bool = True) -> Path:
    """Train the k fold models (skipping finished ones) and write the pooled results; returns the CV folder."""
    cfg = cfg.validate()
    assert cfg.folds is not None
    out = Path(cfg.output) if cfg.output else default_run_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    for i in tqdm(range(cfg.folds), desc=f"{cfg.folds}-fold cross-validation", unit="fold", disable=not progress):
        fcfg = dataclasses.replace(cfg, fold=i, output=str(fold_dir(out, i)))
        if is_finished(fcfg.output, fcfg):
            log(f"fold {i}: finished earlier, skipped ({fcfg.output})")
            continue
        log(f"fold {i}/{cfg.folds}: test fold {i}, validation fold {(i + 1) % cfg.folds}")
        fit_single(fcfg, progress=progress)
    return summarise_folds(out, cfg)


def _fold_row(fold: int, metrics: dict[str, Any], preds: pd.DataFrame, classes: list[str], pos: str | None) -> dict:
    row: dict[str, Any] = {"fold": fold}
    for split in ("val", "test"):
        sub = preds[preds["split"] == split]
        y = sub["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
        row[f"n_{split}"] = len(sub)
        row[f"{split}_auc"] = headline_auc(y, prob_matrix(sub, classes), classes, pos)
    cv = metrics.get("covid_vs_rest") or {}
    row["test_sensitivity"] = cv.get("sensitivity", math.nan)
    row["test_specificity"] = cv.get("specificity", math.nan)
    row["threshold"] = metrics.get("threshold", math.nan)
    if pos:  # the fold's own within-site AUCs (few negatives each: the pooled block is the figure to read)
        test = preds[preds["split"] == "test"]
        block = (metrics.get("test") or {}).get("within_site") or (
            within_site_metrics(test, classes, pos, n_boot=0) if "site" in test else {})
        for site, m in (block.get("sites") or {}).items():
            row[f"within_{site}_test_auc"] = m["roc_auc"]
    return row


def summarise_folds(cv_dir: str | Path, cfg: TrainConfig) -> Path:
    """Pool the fold runs of ``cv_dir`` into its predictions, metrics, report and ensemble manifest."""
    cv_dir = Path(cv_dir)
    k = int(cfg.folds or 0)
    frames, rows, members = [], [], []
    for i in range(k):
        d = fold_dir(cv_dir, i)
        metrics = json.loads((d / "metrics.json").read_text())
        preds = pd.read_csv(d / "predictions.csv", keep_default_na=False).assign(fold=i)
        members.append(load_run(d))
        classes, pos = metrics["classes"], metrics.get("positive_class")
        rows.append(_fold_row(i, metrics, preds, classes, pos))
        frames.append(preds)
    classes, pos = list(members[0].classes), members[0].positive_class
    pooled_preds = pd.concat(frames, ignore_index=True)
    metrics = metrics_from_predictions(
        pooled_preds, classes, pos,
        threshold_source="pooled out-of-fold validation predictions of the fold models")
    # within-site metrics of the pooled out-of-fold predictions, at the pooled validation threshold (same function
    # as a single run's): every image of a mixed site is tested once, so these rest on all of its images
    add_within_site(metrics, pooled_preds, classes, pos, metrics["threshold"], cfg.seed, log)
    folds = pd.DataFrame(rows)
    summary = {c: {"mean": float(folds[c].mean()), "sd": float(folds[c].std(ddof=1))}
               for c in ("val_auc", "test_auc", "test_sensitivity", "test_specificity", *[
                   c for c in folds.columns if c.startswith("within_")])}
    test = pooled_preds[pooled_preds["split"] == "test"]
    ci: dict[str, Any] = {}
    pooled = metrics.get("covid_vs_rest") or {}
    if pos and "ci" in pooled:  # the reference patient-level bootstrap of metrics_from_predictions
        lo, hi = pooled["ci"]["roc_auc"]
        boot = metrics["test"]["bootstrap"]
        ci = {"roc_auc": pooled["roc_auc"], "low": lo, "high": hi, "level": boot["level"],
              "method": "patient-level percentile bootstrap", "n_boot": boot["n_boot"]}
    metrics["cross_validation"] = {"folds": k, "per_fold": rows, "mean_sd": summary, "pooled_test_auc_ci": ci,
                                   "note": "each patient is tested once, by the fold model that did not train on it"}
    atomic_write_csv(cv_dir / "predictions.csv", pooled_preds)
    atomic_write_csv(cv_dir / "folds.csv", folds)
    atomic_write_text(cv_dir / "metrics.json", json.dumps(metrics, indent=2, allow_nan=True))
    atomic_write_text(cv_dir / "config.yaml",
                      yaml.safe_dump(to_dict(dataclasses.replace(cfg, fold=None)), sort_keys=False))
    write_manifest(cv_dir, members, metrics["operating_points"],
                   metrics["threshold_source"], extra={"kind": "cross-validation fold models"})
    report = write_report(cv_dir, title=f"covidscreen {k}-fold cross-validation (pooled out-of-fold predictions)")
    within = (metrics.get("test") or {}).get("within_site")
    atomic_write_text(report, report.read_text().replace("</body>", _cv_section(folds, summary, ci, test, within)
                                                         + "</body>"))
    return cv_dir


def _cv_section(folds: pd.DataFrame, summary: dict, ci: dict, test: pd.DataFrame, within: dict | None = None) -> str:
    lines = ["<h2>Cross-validation: per fold</h2>",
             "<p class='small'>Each fold model is scored on its own test fold at its own threshold (chosen on its "
             "validation fold). The pooled results above concatenate the out-of-fold test predictions.</p>",
             folds.to_html(index=False, float_format=lambda v: f"{v:.3f}", na_rep="-"),
             "<p>" + "; ".join(f"{k} {v['mean']:.3f} &plusmn; {v['sd']:.3f} (mean &plusmn; sd over folds)"
                               for k, v in summary.items()) + "</p>"]
    if ci:
        lines.append(f"<p>Pooled out-of-fold test ROC AUC {ci['roc_auc']:.3f} (95% CI {ci['low']:.3f} to "
                     f"{ci['high']:.3f}, {html.escape(ci['method'])}, {ci['n_boot']} resamples)</p>")
    if within and within.get("sites"):
        lines.append("<h3>Within sites holding both classes (pooled out-of-fold test predictions)</h3><p>"
                     + "<br>".join(html.escape(line) for line in format_within_site(within))
                     + f"</p><p class='small'>95% CIs: {html.escape(within['ci_method'])}, {within['n_boot']} "
                     "resamples. A site shortcut cannot raise these; the per-fold columns within_&lt;site&gt; above "
                     "rest on one fold's images each.</p>")
    comp = test.groupby(["fold", "label"]).size().unstack(fill_value=0)
    lines.append("<h3>Test images by fold and label (patient-disjoint folds)</h3>" + comp.to_html())
    return "\n".join(lines)
