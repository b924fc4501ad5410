"""The comparison table of an experiment: one row per run and ensemble, validation and test metrics with
patient-level bootstrap 95% confidence intervals, sorted by validation AUC, as CSV, HTML and a plot.

Rows are sorted by *validation* AUC, the criterion a researcher may choose by; test columns are for reading. The
pooled COVID-vs-rest AUC of these data is inflated by source (every COVID image comes from one collection), so when
a run's test split holds a site with both classes (a *mixed* site, e.g. cohen), the table's first metric columns are
the AUC *within* that site with its 95% CI, sensitivity/specificity at the run's threshold and the numbers of
positive and negative test images: a site shortcut cannot help there. They are read from ``metrics.json``
(``test.within_site``) when the run wrote them, else computed from ``predictions.csv`` by the same function
(:func:`covidscreen.evaluation.within_site.within_site_metrics`); for a cross-validation folder they rest on the
pooled out-of-fold test predictions, i.e. on every image of the site. When the runs have them, the table also gives
the within-site validation AUC of the selected epoch, the site probe (balanced accuracy of predicting the site from
the features within a label, and its chance level), the number of images whose lungs were not found and the best
epoch.

When the grid has a ``seed`` axis, ``comparison_by_variant.{csv,md}`` aggregate the runs of every variant (the values
of the other grid axes) over seeds: mean (sd) and range, and the paired difference to the baseline variant of the
same seed (the variant named ``baseline``, else the first), in which split-to-split noise cancels.

All intervals come from the package's one bootstrap (:mod:`covidscreen.evaluation.bootstrap`): pooled metrics
resample patients, within-site metrics resample patients stratified by class.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..config import DEFAULT_N_BOOT
from ..evaluation.bootstrap import BinaryTask, bootstrap_tasks, paired_auc_difference, percentile_interval
from ..evaluation.metrics import rank_auc
from ..evaluation.within_site import mixed_sites, sens_spec, within_site_auc, within_site_metrics
from ..inference.ensemble import is_ensemble
from ..inference.run import optional_run
from ..runtime import atomic_write_bytes, atomic_write_csv, atomic_write_text, read_optional_json
from .html import STYLE

#: An experiment grid's plan (:class:`covidscreen.workflows.experiment.ExperimentPlan`): the comparison reads its
#: runs, axes, ensembles and output folder. Typed loosely because the plan is made by a job one floor above.
ExperimentPlan = Any

CI_METRICS = ("val_auc", "test_auc", "test_sensitivity", "test_specificity")
WITHIN_AUC = re.compile(r"^within_(.+)_test_auc$")  # per-site columns: within_<site>_test_auc[_lo|_hi], ...
MIN_PER_CLASS = 5  # test_within_site_auc averages sites with at least this many images of each class


def _nan(v: Any) -> float:
    return math.nan if v is None else float(v)


def _split_metrics(sub: pd.DataFrame, split: str, classes: list[str], pos: str | None, threshold: float | None,
                   n_boot: int, seed: int) -> dict[str, float]:
    """AUC (positive-vs-rest, else macro one-vs-rest) of one split and, on test, sensitivity and specificity at the
    run's threshold; each with patient-level bootstrap bounds ``_lo``/``_hi`` (NaN when ``n_boot`` is 0)."""
    groups = sub["group"].to_numpy() if "group" in sub else None
    row: dict[str, float] = {}
    if pos:
        y = (sub["label"] == pos).to_numpy()
        s = sub[f"prob_{pos}"].to_numpy(dtype=float)
        rates = split == "test" and threshold is not None
        pred = s >= (threshold if rates else 0.5)
        ci = bootstrap_tasks([BinaryTask("t", y, pred, s)], groups, n_boot, seed)["t"]["ci"] if n_boot > 0 else {}
        est = {"auc": rank_auc(y, s)}
        if rates:
            est["sensitivity"], est["specificity"] = sens_spec(y, s, threshold)
        for name, value in est.items():
            lo, hi = ci.get("roc_auc" if name == "auc" else name, [math.nan, math.nan])
            row.update({f"{split}_{name}": value, f"{split}_{name}_lo": lo, f"{split}_{name}_hi": hi})
        return row
    ys = [(sub["label"] == c).to_numpy() for c in classes]
    ps = [sub[f"prob_{c}"].to_numpy(dtype=float) for c in classes]
    aucs = [v for v in (rank_auc(y, p) for y, p in zip(ys, ps, strict=True)) if not math.isnan(v)]
    lo = hi = math.nan
    if n_boot > 0:
        tasks = [BinaryTask(c, y, p >= 0.5, p) for c, y, p in zip(classes, ys, ps, strict=True)]
        reps = bootstrap_tasks(tasks, groups, n_boot, seed)["_replicates"]
        with warnings.catch_warnings():  # a replicate without a class has no AUC for it: NaN, left out
            warnings.simplefilter("ignore", RuntimeWarning)
            macro = np.nanmean(np.stack([reps[c]["roc_auc"] for c in classes]), axis=0)
        lo, hi = percentile_interval(macro)
    return {f"{split}_auc": float(np.mean(aucs)) if aucs else math.nan, f"{split}_auc_lo": lo, f"{split}_auc_hi": hi}


def within_site_columns(metrics: dict[str, Any], test: pd.DataFrame, n_boot: int = DEFAULT_N_BOOT,
                        seed: int = 0) -> dict[str, Any]:
    """The within-site columns of one run from its ``metrics.json`` and its test predictions.

    The per-site block is ``metrics["test"]["within_site"]`` when the run wrote it; otherwise (runs made before it
    existed, cross-validation folders pooled before it existed, ensembles) it is computed from the predictions at
    the run's threshold.

    Returns:
        For every mixed site ``within_<site>_test_auc`` (with ``_lo``/``_hi``), ``..._sensitivity``,
        ``..._specificity``, ``..._n_pos``, ``..._n_neg``; and ``test_within_site_auc`` (mean over sites with at least
        :data:`MIN_PER_CLASS` images of each class) with ``within_site_sites`` (every mixed site and its counts).
    """
    pos = metrics.get("positive_class")
    if not pos or "site" not in test or f"prob_{pos}" not in test:
        return {}
    block = (metrics.get("test") or {}).get("within_site")
    if block is None and mixed_sites(test, pos):
        block = within_site_metrics(test, metrics["classes"], pos, metrics.get("threshold"), n_boot=n_boot,
                                    seed=seed)
    row: dict[str, Any] = {}
    described = []
    for site, m in (block or {}).get("sites", {}).items():
        key = f"within_{site}_test"
        lo, hi = m.get("roc_auc_ci") or [None, None]
        row.update({f"{key}_auc": _nan(m["roc_auc"]), f"{key}_auc_lo": _nan(lo), f"{key}_auc_hi": _nan(hi),
                    f"{key}_sensitivity": _nan(m["sensitivity"]), f"{key}_specificity": _nan(m["specificity"]),
                    f"{key}_n_pos": int(m["n_positive"]), f"{key}_n_neg": int(m["n_negative"])})
        enough = min(m["n_positive"], m["n_negative"]) >= MIN_PER_CLASS
        described.append(f"{site} ({m['n_positive']}+/{m['n_negative']}-{'' if enough else ', too few'})")
    row["test_within_site_auc"] = within_site_auc((test["label"] == pos).to_numpy(), test[f"prob_{pos}"].to_numpy(),
                                                  test["site"].to_numpy(), min_per_class=MIN_PER_CLASS)
    row["within_site_sites"] = "; ".join(described)
    return row


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _best_epoch(run_dir: Path) -> int | None:
    run = optional_run(run_dir)
    return None if run is None else run.best_epoch


def _val_within_site(run_dir: Path, val: pd.DataFrame, pos: str | None) -> float:
    """Within-site validation AUC of the selected epoch: ``history.csv`` at the sidecar's ``best_epoch`` (what
    ``select_on: within_site_auc`` compared), else (cross-validation, ensembles, older runs) the same mean over
    mixed sites computed on the validation predictions, which are those of the selected epoch(s)."""
    best = _best_epoch(run_dir)
    hist = run_dir / "history.csv"
    if best is not None and hist.is_file():
        h = pd.read_csv(hist)
        if "val_within_site_auc" in h:
            at = h.loc[h["epoch"] == best, "val_within_site_auc"]
            if len(at) and np.isfinite(at.iloc[0]):
                return float(at.iloc[0])
    if not pos or val.empty or "site" not in val:
        return math.nan
    return within_site_auc((val["label"] == pos).to_numpy(), val[f"prob_{pos}"].to_numpy(), val["site"].to_numpy())


def _training_columns(run_dir: Path, metrics: dict[str, Any], fold_dirs: list[Path] | None) -> dict[str, Any]:
    """Site probe, lungs not found and best epoch, of the run or (cross-validation) of its fold runs."""
    sources = [_read_json(d / "metrics.json") for d in fold_dirs] if fold_dirs else [metrics]
    row: dict[str, Any] = {}
    probes = [(m["site_probe"]["mean_balanced_accuracy"], m["site_probe"]["mean_chance"])
              for m in sources if m.get("site_probe")]
    row["site_probe_source"] = "training (site_probe)" if probes else ""
    if not probes:  # else the audit's within-label probe on the model's features, when the run was audited
        audits = [read_optional_json(d / "audit.json") for d in (fold_dirs or [run_dir])]
        within = [a.get("shortcut", {}).get("model_features", {}).get("site_within_label", {}) for a in audits]
        probes = [(w["balanced_accuracy"], w["chance"]) for w in within if "balanced_accuracy" in w]
        row["site_probe_source"] = "audit" if probes else ""
    if probes:  # mean over the folds of a cross-validation
        row["site_probe_balanced_accuracy"] = float(np.mean([b for b, _ in probes]))
        row["site_probe_chance"] = float(np.mean([ch for _, ch in probes]))
    stats = [m["preprocessing_stats"] for m in sources if "preprocessing_stats" in m]
    if stats:  # the folds preprocess the same images: the largest count is the number of images
        row["lungs_not_found"] = int(max(s.get("roi_fallback", 0) for s in stats))
    epochs = [_best_epoch(d) for d in (fold_dirs or [run_dir])]
    if fold_dirs and all(e is not None for e in epochs):
        row["best_epoch"] = "/".join(str(e) for e in epochs)  # one per fold
    elif not fold_dirs and epochs[0] is not None:
        row["best_epoch"] = int(epochs[0])
    return row


def holdout_columns(metrics: dict[str, Any]) -> dict[str, Any]:
    """Leave-one-site-out figures of a run trained with ``holdout_site`` (``metrics.json`` ``holdout_site``).

    ``holdout_specificity``: the positive-vs-rest specificity on the unseen site at the run's validation threshold
    (1 - the share of its non-positive images called positive: "calls normals from a new hospital COVID");
    ``holdout_<class>_auc``: the one-vs-rest AUC of every class at the unseen site (does the signal transfer?).
    Each with its 95% CI as stored by the held-out evaluation.
    """
    block = metrics.get("holdout_site") or {}
    row: dict[str, Any] = {}
    if not block.get("comparison"):
        return row
    row["holdout"] = block.get("site")
    row["holdout_n"] = block.get("n_images")
    for r in block["comparison"]:
        name = r["metric"]
        if name == "specificity":
            key = "holdout_specificity"
        elif name.endswith(": roc_auc"):
            key = f"holdout_{name.split(':')[0]}_auc"
        else:
            continue
        ci = r.get("external_ci") or [math.nan, math.nan]
        row[key], row[f"{key}_lo"], row[f"{key}_hi"] = _nan(r.get("external")), _nan(ci[0]), _nan(ci[1])
    return row


def summarise_run(run_dir: str | Path, n_boot: int = DEFAULT_N_BOOT, seed: int = 0) -> dict[str, Any]:
    """Metrics of one finished run, cross-validation or ensemble folder, with bootstrap CIs."""
    run_dir = Path(run_dir)
    row: dict[str, Any] = {}
    metrics = _read_json(run_dir / "metrics.json")
    if not metrics:
        return row
    classes, pos = metrics["classes"], metrics.get("positive_class")
    preds = pd.read_csv(run_dir / "predictions.csv", keep_default_na=False)
    for split in ("val", "test"):
        sub = preds[preds["split"] == split].reset_index(drop=True)
        if sub.empty:
            continue
        row.update(_split_metrics(sub, split, classes, pos, metrics.get("threshold"), n_boot, seed))
        if split == "test":
            row.update(within_site_columns(metrics, sub, n_boot, seed))
            row["test_accuracy"] = metrics.get("test", {}).get("accuracy", math.nan)
            row["n_test"] = len(sub)
    row["val_within_site_auc"] = _val_within_site(run_dir, preds[preds["split"] == "val"], pos)
    row["n_train"] = (metrics.get("split_counts") or {}).get("train", math.nan)
    cv = metrics.get("cross_validation")
    folds = [run_dir / f"fold-{i}" for i in range(cv["folds"])] if cv else [run_dir]
    if cv:  # pooled out-of-fold rows; training sets differ per fold
        row["n_train"] = _mean_train_size(folds)
        row["cv_test_auc_mean_sd"] = f"{cv['mean_sd']['test_auc']['mean']:.3f} ± {cv['mean_sd']['test_auc']['sd']:.3f}"
    row.update(_training_columns(run_dir, metrics, folds if cv else None))
    row.update(holdout_columns(metrics))
    hists = [pd.read_csv(d / "history.csv") for d in folds if (d / "history.csv").is_file()]
    if hists:  # training time (epochs incl. validation), summed over the folds of a cross-validation
        row["epochs_run"] = float(np.mean([len(h) for h in hists]))
        row["minutes"] = float(sum(h["seconds"].sum() for h in hists) / 60)
    return row


def _mean_train_size(fold_dirs: list[Path]) -> float:
    sizes = []
    for d in fold_dirs:
        f = d / "metrics.json"
        if f.is_file():
            sizes.append((json.loads(f.read_text()).get("split_counts") or {}).get("train", math.nan))
    return float(np.mean(sizes)) if sizes else math.nan


def _split_scores(run_dir: Path, site: str | None, split: str = "test") -> pd.DataFrame | None:
    """Rows of one split (and site; None: every site) from a run's ``predictions.csv``: image, truth, positive
    score, patient (or None)."""
    metrics = _read_json(run_dir / "metrics.json")
    pos = metrics.get("positive_class")
    f = run_dir / "predictions.csv"
    if not pos or not f.is_file():
        return None
    p = pd.read_csv(f, keep_default_na=False)
    p = p[p["split"] == split]
    if site is not None:
        p = p[p["site"].astype(str) == site]
    if p.empty or f"prob_{pos}" not in p:
        return None
    return pd.DataFrame({"image": p["image"].astype(str), "y": p["label"].astype(str) == pos,
                         "score": p[f"prob_{pos}"].astype(float),
                         "group": p["group"].astype(str) if "group" in p else p["image"].astype(str)})


def _same_other_axes(run: Any, baseline: Any) -> bool:
    """Whether ``run`` has ``baseline``'s values on every axis where the baseline's value is not ``baseline``."""
    return all(str(run.params.get(k)) == str(v) for k, v in baseline.params.items() if str(v) != "baseline")


def paired_baseline_columns(plan: ExperimentPlan, sites: list[str], n_boot: int = DEFAULT_N_BOOT,
                            seed: int = 0) -> dict[str, dict[str, Any]]:
    """Per run: the pooled validation and test AUC and the within-site test AUC minus those of a ``baseline`` run
    evaluated on exactly the same images.

    A run is a baseline when one of its grid values is ``baseline``. Each other run is paired with the baseline run
    that has its values on every other axis (with a ``seed`` axis: the baseline of the same seed) and whose images
    of the split (and site) are the same (same split or the same cross-validation folds); the difference gets a
    paired, patient-level, class-stratified
    bootstrap interval (:func:`covidscreen.evaluation.bootstrap.paired_auc_difference`). Runs without such a
    baseline get nothing. Columns: ``val_auc_minus_baseline``, ``test_auc_minus_baseline`` (pooled COVID vs rest)
    and ``within_<site>_test_auc_minus_baseline``, each with ``_lo`` and ``_hi``. Returns
    ``{run name: {column: value}}``.
    """
    baselines = [r for r in plan.runs if "baseline" in {str(v) for v in r.params.values()}]
    out: dict[str, dict[str, Any]] = {}
    parts = [(split, None, f"{split}_auc_minus_baseline") for split in ("val", "test")] + \
        [("test", site, f"within_{site}_test_auc_minus_baseline") for site in sites]
    for split, site, key in parts:
        base_scores = [(b, _split_scores(Path(b.cfg.output), site, split)) for b in baselines]
        base_scores = [(b, s) for b, s in base_scores if s is not None]
        for run in plan.runs:
            if run in baselines:
                continue
            mine = _split_scores(Path(run.cfg.output), site, split)
            if mine is None:
                continue
            for b, base in base_scores:
                if not _same_other_axes(run, b):  # e.g. another seed's baseline, tested on the same split
                    continue
                if set(zip(base["image"], base["group"])) != set(zip(mine["image"], mine["group"])) or \
                        len(base) != len(mine):
                    continue
                m = mine.merge(base[["image", "group", "score"]], on=["image", "group"], suffixes=("", "_base"))
                if m["y"].nunique() < 2:
                    break
                res = paired_auc_difference(m["y"].to_numpy(), m["score_base"].to_numpy(), m["score"].to_numpy(),
                                            m["group"].to_numpy(), n_boot=n_boot, seed=seed)
                out.setdefault(run.name, {}).update({key: res["difference"], f"{key}_lo": res["ci"][0],
                                                     f"{key}_hi": res["ci"][1]})
                break
    return out


def comparison_table(plan: ExperimentPlan, status: dict[str, str], n_boot: int = DEFAULT_N_BOOT) -> pd.DataFrame:
    """One row per run and ensemble of ``plan`` (finished or not), sorted by validation AUC."""
    rows = []
    axes = plan.axes
    for run in plan.runs:
        d = Path(run.cfg.output)
        kind = "cross-validation" if run.cfg.folds and run.cfg.fold is None else "run"
        row = {"name": run.name, "kind": kind, **{a: plan.value(run, a) for a in axes},
               "status": status.get(run.name, "")}
        row.update(summarise_run(d, n_boot))
        rows.append(row)
    for ens, members in plan.ensembles.items():
        d = plan.output / "ensembles" / ens
        row = {"name": ens, "kind": f"ensemble of {len(members)}", **{a: "-" for a in axes},
               "status": status.get(f"ensemble:{ens}", "")}
        if is_ensemble(d) and not (d / "metrics.json").is_file():
            row["status"] += " (members' splits differ: no common test split; evaluate with --data)"
        row.update(summarise_run(d, n_boot))
        rows.append(row)
    table = pd.DataFrame(rows)
    paired = paired_baseline_columns(plan, table_sites(table), n_boot) if n_boot else {}
    for name, cols in paired.items():  # paired difference to the baseline on the same test images
        for col, v in cols.items():
            table.loc[table["name"] == name, col] = v
    if "val_auc" in table:
        table = table.sort_values(["val_auc", "name"], ascending=[False, True], na_position="last", kind="stable")
    return table.reset_index(drop=True)


def table_sites(table: pd.DataFrame) -> list[str]:
    """Mixed sites that have within-site columns in the table, in order of appearance."""
    return [m.group(1) for c in table.columns if (m := WITHIN_AUC.match(c))]


def _is_missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _with_ci(row: pd.Series, key: str) -> str:
    v = row.get(key, math.nan)
    if _is_missing(v):
        return "-"
    lo, hi = row.get(f"{key}_lo", math.nan), row.get(f"{key}_hi", math.nan)
    if _is_missing(lo) or _is_missing(hi):
        return f"{v:.3f}"
    return f"{v:.3f} [{lo:.3f}, {hi:.3f}]"


def _fmt(v: Any, fmt: str) -> str:
    if isinstance(v, str):
        return v or "-"
    return "-" if _is_missing(v) else fmt.format(v)


def _paired_column(table: pd.DataFrame, col: str) -> list[str]:
    """A paired difference column as people read it: ``+0.012 [-0.010, +0.034]``, ``-`` where missing."""
    return ["-" if _is_missing(r.get(col)) else f"{r[col]:+.3f} [{r[f'{col}_lo']:+.3f}, {r[f'{col}_hi']:+.3f}]"
            for _, r in table.iterrows()]


def display_table(table: pd.DataFrame, axes: list[str]) -> pd.DataFrame:
    """The table as people read it: one column per metric with its CI in brackets, within-site columns first."""
    out = table[["name", "kind", *[a for a in axes if a in table]]].copy()
    sites = table_sites(table)
    for site in sites:
        key = f"within_{site}_test"
        out[f"{site} test AUC [95% CI]"] = [_with_ci(r, f"{key}_auc") for _, r in table.iterrows()]
        out[f"{site} sens/spec"] = [
            "-" if _is_missing(r.get(f"{key}_sensitivity")) and _is_missing(r.get(f"{key}_specificity"))
            else f"{_fmt(r.get(f'{key}_sensitivity'), '{:.2f}')}/{_fmt(r.get(f'{key}_specificity'), '{:.2f}')}"
            for _, r in table.iterrows()]
        if f"{key}_auc_minus_baseline" in table:
            out[f"{site} AUC minus baseline, paired [95% CI]"] = _paired_column(table, f"{key}_auc_minus_baseline")
        out[f"{site} test n (pos/neg)"] = [
            "-" if _is_missing(r.get(f"{key}_n_pos")) else f"{r[f'{key}_n_pos']:.0f}/{r[f'{key}_n_neg']:.0f}"
            for _, r in table.iterrows()]
    for key in CI_METRICS:
        out[key.replace("_", " ")] = [_with_ci(r, key) for _, r in table.iterrows()]
        d = f"{key}_minus_baseline"
        if d in table and table[d].notna().any():
            out[f"{key.replace('_', ' ')} minus baseline, paired [95% CI]"] = _paired_column(table, d)
    if "val_within_site_auc" in table and table["val_within_site_auc"].notna().any():
        out["val within-site AUC (selected epoch)"] = [_fmt(v, "{:.3f}") for v in table["val_within_site_auc"]]
    if "holdout" in table and table["holdout"].notna().any():  # leave-one-site-out runs
        out["held-out site (images)"] = ["-" if _is_missing(s) else f"{s} ({_fmt(n, '{:.0f}')})"
                                         for s, n in zip(table["holdout"], table["holdout_n"], strict=True)]
        keys = ["holdout_specificity"] + sorted(c for c in table if c.startswith("holdout_") and c.endswith("_auc"))
        for key in keys:
            label = "held-out site: COVID-vs-rest specificity" if key == "holdout_specificity" else \
                f"held-out site: {key[8:-4]} AUC"
            out[f"{label} [95% CI]"] = [_with_ci(r, key) for _, r in table.iterrows()]
    if "site_probe_balanced_accuracy" in table:
        out["site probe bal. acc. (chance)"] = [
            "-" if _is_missing(b) else f"{b:.3f} ({c:.2f})"
            for b, c in zip(table["site_probe_balanced_accuracy"], table["site_probe_chance"], strict=True)]
    numbers = [("lungs_not_found", "{:.0f}"), ("best_epoch", "{:.0f}"), ("test_accuracy", "{:.3f}"),
               ("n_train", "{:.0f}"), ("n_test", "{:.0f}"), ("epochs_run", "{:.0f}"), ("minutes", "{:.1f}")]
    if not sites:  # without per-site columns, the mean over sites with enough images of both classes (if any)
        numbers.insert(0, ("test_within_site_auc", "{:.3f}"))
    for key, fmt in numbers:
        if key in table:
            out[key.replace("_", " ")] = [_fmt(v, fmt) for v in table[key]]
    for key in ("cv_test_auc_mean_sd", *(() if sites else ("within_site_sites",)), "status"):
        if key in table:
            out[key.replace("_", " ")] = table[key].fillna("").astype(str)
    return out


def seed_variants(plan: ExperimentPlan, seed_axis: str = "seed") -> list[str] | None:
    """The grid axes that make a variant when the grid has a ``seed`` axis over several values, else None."""
    if seed_axis not in plan.grid_axes or seed_axis not in plan.axes:
        return None
    return [a for a in plan.grid_axes if a != seed_axis and a in plan.axes]


def aggregate_over_seeds(table: pd.DataFrame, variant_axes: list[str], seed_axis: str = "seed",
                         metrics: list[str] | None = None) -> tuple[pd.DataFrame, str]:
    """Mean, standard deviation and range over seeds of every variant, and paired differences to a baseline.

    Args:
        table: one row per run of the grid, in grid order, with the ``seed_axis`` and ``variant_axes`` columns and
            numeric metric columns.
        variant_axes: the axes whose values name a variant (none: all runs are one variant, ``base``).
        metrics: the metric columns (default: per-site within-site test AUCs, pooled test AUC, site probe).

    Returns:
        ``(aggregate, baseline)``: one row per variant in grid order with ``variant``, ``seeds`` (runs with a result)
        and per metric ``<m>_mean``, ``<m>_sd`` (NaN from one seed), ``<m>_min``, ``<m>_max``; for the other variants
        ``<m>_delta_mean``, ``<m>_delta_min``, ``<m>_delta_max`` and ``<m>_pairs``, differences to the baseline run of
        the same seed (same subsample and split, so split-to-split noise cancels). The baseline is the variant
        named ``baseline``, else the first.
    """
    if metrics is None:
        metrics = [f"within_{s}_test_auc" for s in table_sites(table)] + [
            c for c in ("val_auc", "test_auc", "site_probe_balanced_accuracy") if c in table]
    t = table.copy()
    if len(variant_axes) == 1:
        t["_variant"] = t[variant_axes[0]].astype(str)
    elif variant_axes:
        t["_variant"] = ["__".join(f"{a}={r[a]}" for a in variant_axes) for _, r in t.iterrows()]
    else:
        t["_variant"] = "base"
    order = list(dict.fromkeys(t["_variant"]))
    baseline = "baseline" if "baseline" in order else (order[0] if order else "")
    base = t[t["_variant"] == baseline].drop_duplicates(seed_axis).set_index(seed_axis)
    rows = []
    for v in order:
        g = t[t["_variant"] == v]
        done = g[metrics].notna().any(axis=1) if metrics else pd.Series(False, index=g.index)
        row: dict[str, Any] = {"variant": v, "seeds": int(done.sum())}
        for m in metrics:
            vals = g[m].dropna().to_numpy(dtype=float)
            row.update({f"{m}_mean": vals.mean() if len(vals) else math.nan,
                        f"{m}_sd": vals.std(ddof=1) if len(vals) > 1 else math.nan,
                        f"{m}_min": vals.min() if len(vals) else math.nan,
                        f"{m}_max": vals.max() if len(vals) else math.nan})
            if v == baseline:
                continue
            deltas = np.array([x - base[m].get(sd, math.nan) for x, sd in zip(g[m], g[seed_axis], strict=True)],
                              dtype=float)
            deltas = deltas[np.isfinite(deltas)]
            row.update({f"{m}_delta_mean": deltas.mean() if len(deltas) else math.nan,
                        f"{m}_delta_min": deltas.min() if len(deltas) else math.nan,
                        f"{m}_delta_max": deltas.max() if len(deltas) else math.nan,
                        f"{m}_pairs": len(deltas)})
        rows.append(row)
    return pd.DataFrame(rows), baseline


def _metric_label(col: str) -> str:
    m = WITHIN_AUC.match(col)
    if m:
        return f"within-{m.group(1)} test AUC"
    return {"val_auc": "pooled validation AUC", "test_auc": "pooled test AUC",
            "site_probe_balanced_accuracy": "site probe bal. acc."}.get(col, col)


def display_by_variant(agg: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """The seed aggregate as people read it: ``mean (sd)``, ``min-max`` and ``paired: mean [min, max]``."""
    out = agg[["variant", "seeds"]].copy()
    for col in [c[:-5] for c in agg.columns if c.endswith("_mean") and not c.endswith("_delta_mean")]:
        label = _metric_label(col)
        out[f"{label} mean (sd)"] = [
            "-" if _is_missing(r[f"{col}_mean"]) else
            f"{r[f'{col}_mean']:.3f} ({'-' if _is_missing(r[f'{col}_sd']) else format(r[f'{col}_sd'], '.3f')})"
            for _, r in agg.iterrows()]
        out[f"{label} range"] = ["-" if _is_missing(r[f"{col}_min"]) else f"{r[f'{col}_min']:.3f}-{r[f'{col}_max']:.3f}"
                                 for _, r in agg.iterrows()]
        if f"{col}_delta_mean" in agg:
            out[f"{label} - {baseline}, paired: mean [min, max]"] = [
                "" if _is_missing(r.get(f"{col}_delta_mean")) else
                f"{r[f'{col}_delta_mean']:+.3f} [{r[f'{col}_delta_min']:+.3f}, {r[f'{col}_delta_max']:+.3f}]"
                for _, r in agg.iterrows()]
    return out


def comparison_plot(table: pd.DataFrame, plan: ExperimentPlan) -> bytes:
    """Test AUC with its CI per run, the within-site test AUC of each mixed site with its CI, and the validation
    AUC; a line over the axis when one numeric axis varies."""
    import matplotlib  # matplotlib (0.3 CPU s) loads when the figure is drawn, not when an experiment starts

    matplotlib.use("Agg")
    # matplotlib (0.3 CPU s) loads when the figure is drawn, not when an experiment starts
    import matplotlib.pyplot as plt

    # the figure helper imports matplotlib too: loaded here for the same reason
    from ..explain.figures import figure_png

    t = table[table.get("test_auc", pd.Series(dtype=float)).notna()] if "test_auc" in table else table.iloc[:0]
    axes = plan.axes
    sites = [s for s in table_sites(t) if t[f"within_{s}_test_auc"].notna().any()]

    def err(col: str) -> np.ndarray:
        return np.nan_to_num(np.vstack([t[col] - t[f"{col}_lo"], t[f"{col}_hi"] - t[col]]))

    numeric = len(axes) == 1 and all(_is_number(v) for v in t.get(axes[0], [])) and t["kind"].eq("run").all()
    if numeric and len(t):
        t = t.assign(_x=(t["n_train"] if axes[0] == "train_fraction" else t[axes[0]].astype(float))).sort_values("_x")
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for site in sites:
            col = f"within_{site}_test_auc"
            ax.errorbar(t["_x"], t[col], yerr=err(col), fmt="^-", capsize=4, label=f"test AUC within {site} (95% CI)")
        ax.errorbar(t["_x"], t["test_auc"], yerr=err("test_auc"), fmt="o-", capsize=4,
                    label="pooled test AUC (95% CI)")
        ax.plot(t["_x"], t["val_auc"], "s--", alpha=0.7, label="validation AUC")
        xlabel = "training images" if axes[0] == "train_fraction" else axes[0]
        if axes[0] == "train_fraction":
            ax.set_xscale("log")
        ax.set(xlabel=xlabel, ylabel="ROC AUC", title=f"{plan.source.stem}: AUC vs {xlabel}")
    else:
        fig, ax = plt.subplots(figsize=(7.5, 0.45 * max(len(t), 2) * (1 + 0.5 * len(sites)) + 1.4))
        t = t.iloc[::-1]
        ypos = np.arange(len(t)) * (1 + 0.5 * len(sites))
        if len(t):
            for k, site in enumerate(sites):
                col = f"within_{site}_test_auc"
                ax.errorbar(t[col], ypos + 0.4 * (k + 1), xerr=err(col), fmt="^", capsize=3,
                            label=f"test AUC within {site} (95% CI)")
            ax.errorbar(t["test_auc"], ypos, xerr=err("test_auc"), fmt="o", capsize=4, label="pooled test AUC (95% CI)")
            ax.plot(t["val_auc"], ypos, "s", alpha=0.7, label="validation AUC")
        ax.set_yticks(ypos, list(t["name"]), fontsize=8)
        ax.set(xlabel="ROC AUC", title=f"{plan.source.stem} (sorted by validation AUC)")
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    return figure_png(fig, dpi=110)


def _is_number(v: Any) -> bool:
    try:
        float(v)
        return v not in ("null", "-")
    except (TypeError, ValueError):
        return False


def markdown_table(shown: pd.DataFrame) -> str:
    """A pipe table of the displayed comparison (for notes and docs)."""
    cols = list(shown.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in shown.iterrows():
        lines.append("| " + " | ".join("" if _is_missing(r[c]) else str(r[c]).replace("|", "/") for c in cols)
                     + " |")
    return "\n".join(lines) + "\n"


def write_comparison(plan: ExperimentPlan, status: dict[str, str], n_boot: int = DEFAULT_N_BOOT) -> pd.DataFrame:
    """Write ``comparison.csv`` (raw numbers), ``comparison.html`` (readable, with the plot), ``comparison.md`` and
    ``comparison.png``; with a ``seed`` axis also ``comparison_by_variant.csv`` (raw) and ``.md``."""
    table = comparison_table(plan, status, n_boot)
    out = plan.output
    atomic_write_csv(out / "comparison.csv", table)
    png = comparison_plot(table, plan)
    atomic_write_bytes(out / "comparison.png", png)
    shown = display_table(table, plan.axes)
    atomic_write_text(out / "comparison.md", markdown_table(shown))
    by_variant = ""
    variant_axes = seed_variants(plan)
    if variant_axes is not None:
        runs = table[~table["kind"].str.startswith("ensemble")].set_index("name")
        in_order = runs.loc[[r.name for r in plan.runs if r.from_grid]].reset_index()  # grid order, not sorted
        agg, baseline = aggregate_over_seeds(in_order, variant_axes)
        atomic_write_csv(out / "comparison_by_variant.csv", agg)
        shown_agg = display_by_variant(agg, baseline)
        atomic_write_text(out / "comparison_by_variant.md", markdown_table(shown_agg))
        by_variant = (f"<h2>Over seeds, per variant</h2><p class='small'>Paired: minus the {html.escape(baseline)} "
                      "run of the same seed (same subsample and split), so split-to-split noise cancels; sd over "
                      "seeds.</p>" + shown_agg.to_html(index=False, escape=True))
    parts = [f"<html><head><meta charset='utf-8'><title>covidscreen experiment</title><style>{STYLE}</style></head>"
             f"<body><h1>Experiment {html.escape(plan.source.stem)}</h1>",
             f"<p>{html.escape(plan.description)}</p>" if plan.description else "",
             f"<p class='small'>{html.escape(str(out.resolve()))}; grid file copied to grid.yaml</p>",
             "<div class='warn'>Rows are sorted by validation AUC (the selection criterion); test columns are for "
             "reading, not for choosing. Intervals: 95% patient-level percentile bootstrap "
             f"({n_boot} resamples; within a site: stratified by class, as stored in the run's metrics.json). "
             "The pooled COVID-vs-rest AUC ('test auc') is inflated by source on confounded data (all COVID images "
             "from one collection): read the AUC within each site that has both classes (the first columns, when a "
             "test split has such a site).</div>",
             shown.to_html(index=False, escape=True),
             f'<img alt="comparison plot" src="data:image/png;base64,{base64.b64encode(png).decode()}">',
             by_variant, "</body></html>"]
    atomic_write_text(out / "comparison.html", "\n".join(parts))
    return table
