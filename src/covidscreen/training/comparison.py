"""The comparison table of an experiment: one row per run and ensemble, validation and test metrics with
patient-level bootstrap 95% confidence intervals, sorted by validation AUC, as CSV, HTML and a plot.

Rows are sorted by *validation* AUC, the criterion a researcher may choose by; test columns are for reading. The
pooled COVID-vs-rest AUC of these data is inflated by source (every COVID image comes from one collection), so the
table also gives the AUC *within* the test images of each site that has both classes, where a site shortcut cannot
help.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .bootstrap_ci import auc_stat, fast_auc, grouped_bootstrap_ci, rate_stat

if TYPE_CHECKING:
    from .experiment import ExperimentPlan

CI_METRICS = ("val_auc", "test_auc", "test_sensitivity", "test_specificity")


def _headline_stat(sub: pd.DataFrame, classes: list[str], pos: str | None):
    """AUC statistic of a predictions subset: positive-vs-rest, or the macro one-vs-rest AUC without one."""
    if pos:
        return auc_stat((sub["label"] == pos).to_numpy(), sub[f"prob_{pos}"].to_numpy())
    ys = [(sub["label"] == c).to_numpy() for c in classes]
    ps = [sub[f"prob_{c}"].to_numpy() for c in classes]

    def stat(idx: np.ndarray) -> float:
        vals = [fast_auc(y[idx], p[idx]) for y, p in zip(ys, ps, strict=True)]
        vals = [v for v in vals if not math.isnan(v)]
        return float(np.mean(vals)) if vals else math.nan

    return stat


def within_site_auc(test: pd.DataFrame, pos: str | None, min_per_class: int = 5) -> tuple[float, str]:
    """Mean over sites of the positive-vs-rest AUC within each site, and the sites with their counts.

    Only sites with at least ``min_per_class`` positive and negative test images count: an AUC from one or two
    images of a class says nothing. Sites with both classes but fewer images are listed as too few.
    """
    if not pos or "site" not in test:
        return math.nan, ""
    vals, sites = [], []
    for site, g in test.groupby("site"):
        n_pos = int((g["label"] == pos).sum())
        n_neg = len(g) - n_pos
        if n_pos and n_neg:
            enough = min(n_pos, n_neg) >= min_per_class
            sites.append(f"{site} ({n_pos}+/{n_neg}-{'' if enough else ', too few'})")
            if enough:
                vals.append(fast_auc((g["label"] == pos).to_numpy(), g[f"prob_{pos}"].to_numpy()))
    return (float(np.mean(vals)) if vals else math.nan), "; ".join(sites)


def summarise_run(run_dir: str | Path, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Metrics of one finished run, cross-validation or ensemble folder, with bootstrap CIs."""
    run_dir = Path(run_dir)
    row: dict[str, Any] = {}
    mfile = run_dir / "metrics.json"
    if not mfile.is_file():
        return row
    metrics = json.loads(mfile.read_text())
    classes, pos = metrics["classes"], metrics.get("positive_class")
    preds = pd.read_csv(run_dir / "predictions.csv", keep_default_na=False)
    for split in ("val", "test"):
        sub = preds[preds["split"] == split].reset_index(drop=True)
        if sub.empty:
            continue
        est, lo, hi = grouped_bootstrap_ci(_headline_stat(sub, classes, pos), sub["group"], n_boot, seed=seed)
        row.update({f"{split}_auc": est, f"{split}_auc_lo": lo, f"{split}_auc_hi": hi})
        if split == "test" and pos and metrics.get("threshold") is not None:
            y = (sub["label"] == pos).to_numpy()
            hit = sub[f"prob_{pos}"].to_numpy() >= metrics["threshold"]
            for name, stat in (("sensitivity", rate_stat(hit, y)), ("specificity", rate_stat(~hit, ~y))):
                est, lo, hi = grouped_bootstrap_ci(stat, sub["group"], n_boot, seed=seed)
                row.update({f"test_{name}": est, f"test_{name}_lo": lo, f"test_{name}_hi": hi})
        if split == "test":
            row["test_within_site_auc"], row["within_site_sites"] = within_site_auc(sub, pos)
            row["test_accuracy"] = metrics.get("test", {}).get("accuracy", math.nan)
            row["n_test"] = len(sub)
    row["n_train"] = (metrics.get("split_counts") or {}).get("train", math.nan)
    cv = metrics.get("cross_validation")
    folds = [run_dir / f"fold-{i}" for i in range(cv["folds"])] if cv else [run_dir]
    if cv:  # pooled out-of-fold rows; training sets differ per fold
        row["n_train"] = _mean_train_size(folds)
        row["cv_test_auc_mean_sd"] = f"{cv['mean_sd']['test_auc']['mean']:.3f} ± {cv['mean_sd']['test_auc']['sd']:.3f}"
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


def comparison_table(plan: ExperimentPlan, status: dict[str, str], n_boot: int = 1000) -> pd.DataFrame:
    """One row per run and ensemble of ``plan`` (finished or not), sorted by validation AUC."""
    from ..inference.ensemble import is_ensemble

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
    if "val_auc" in table:
        table = table.sort_values(["val_auc", "name"], ascending=[False, True], na_position="last", kind="stable")
    return table.reset_index(drop=True)


def _with_ci(row: pd.Series, key: str) -> str:
    v = row.get(key, math.nan)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    lo, hi = row.get(f"{key}_lo", math.nan), row.get(f"{key}_hi", math.nan)
    if isinstance(lo, float) and math.isnan(lo):
        return f"{v:.3f}"
    return f"{v:.3f} [{lo:.3f}, {hi:.3f}]"


def display_table(table: pd.DataFrame, axes: list[str]) -> pd.DataFrame:
    """The table as people read it: one column per metric with its CI in brackets."""
    out = table[["name", "kind", *[a for a in axes if a in table]]].copy()
    for key in CI_METRICS:
        out[key.replace("_", " ")] = [_with_ci(r, key) for _, r in table.iterrows()]
    for key, fmt in (("test_within_site_auc", "{:.3f}"), ("test_accuracy", "{:.3f}"), ("n_train", "{:.0f}"),
                     ("n_test", "{:.0f}"), ("epochs_run", "{:.0f}"), ("minutes", "{:.1f}")):
        if key in table:
            out[key.replace("_", " ")] = [fmt.format(v) if isinstance(v, int | float) and not math.isnan(v) else "-"
                                          for v in table[key]]
    for key in ("cv_test_auc_mean_sd", "within_site_sites", "status"):
        if key in table:
            out[key.replace("_", " ")] = table[key].fillna("").astype(str)
    return out


def comparison_plot(table: pd.DataFrame, plan: ExperimentPlan) -> bytes:
    """Test AUC with its CI per run (and validation AUC); a line over the axis when one numeric axis varies."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = table[table.get("test_auc", pd.Series(dtype=float)).notna()] if "test_auc" in table else table.iloc[:0]
    axes = plan.axes
    numeric = len(axes) == 1 and all(_is_number(v) for v in t.get(axes[0], [])) and t["kind"].eq("run").all()
    if numeric and len(t):
        t = t.assign(_x=(t["n_train"] if axes[0] == "train_fraction" else t[axes[0]].astype(float))).sort_values("_x")
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        err = np.vstack([t["test_auc"] - t["test_auc_lo"], t["test_auc_hi"] - t["test_auc"]])
        ax.errorbar(t["_x"], t["test_auc"], yerr=np.nan_to_num(err), fmt="o-", capsize=4, label="test AUC (95% CI)")
        ax.plot(t["_x"], t["val_auc"], "s--", alpha=0.7, label="validation AUC")
        if t["test_within_site_auc"].notna().any():
            ax.plot(t["_x"], t["test_within_site_auc"], "^:", label="test AUC within site")
        xlabel = "training images" if axes[0] == "train_fraction" else axes[0]
        if axes[0] == "train_fraction":
            ax.set_xscale("log")
        ax.set(xlabel=xlabel, ylabel="ROC AUC", title=f"{plan.source.stem}: AUC vs {xlabel}")
    else:
        fig, ax = plt.subplots(figsize=(7.5, 0.45 * max(len(t), 2) + 1.4))
        t = t.iloc[::-1]
        ypos = np.arange(len(t))
        if len(t):
            err = np.vstack([t["test_auc"] - t["test_auc_lo"], t["test_auc_hi"] - t["test_auc"]])
            ax.errorbar(t["test_auc"], ypos, xerr=np.nan_to_num(err), fmt="o", capsize=4, label="test AUC (95% CI)")
            ax.plot(t["val_auc"], ypos, "s", alpha=0.7, label="validation AUC")
            if "test_within_site_auc" in t and t["test_within_site_auc"].notna().any():
                ax.plot(t["test_within_site_auc"], ypos, "^", label="test AUC within site")
        ax.set_yticks(ypos, list(t["name"]), fontsize=8)
        ax.set(xlabel="ROC AUC", title=f"{plan.source.stem} (sorted by validation AUC)")
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


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
        lines.append("| " + " | ".join(str(r[c]).replace("|", "/") for c in cols) + " |")
    return "\n".join(lines) + "\n"


def write_comparison(plan: ExperimentPlan, status: dict[str, str], n_boot: int = 1000) -> pd.DataFrame:
    """Write ``comparison.csv`` (raw numbers), ``comparison.html`` (readable, with the plot), ``comparison.md`` and
    ``comparison.png``."""
    from ..evaluation.html import STYLE

    table = comparison_table(plan, status, n_boot)
    out = plan.output
    table.to_csv(out / "comparison.csv", index=False)
    png = comparison_plot(table, plan)
    (out / "comparison.png").write_bytes(png)
    shown = display_table(table, plan.axes)
    (out / "comparison.md").write_text(markdown_table(shown))
    parts = [f"<html><head><meta charset='utf-8'><title>covidscreen experiment</title><style>{STYLE}</style></head>"
             f"<body><h1>Experiment {html.escape(plan.source.stem)}</h1>",
             f"<p>{html.escape(plan.description)}</p>" if plan.description else "",
             f"<p class='small'>{html.escape(str(out.resolve()))}; grid file copied to grid.yaml</p>",
             "<div class='warn'>Rows are sorted by validation AUC (the selection criterion); test columns are for "
             "reading, not for choosing. Intervals: 95% patient-level percentile bootstrap "
             f"({n_boot} resamples). The pooled COVID-vs-rest AUC is inflated by source on confounded data (all COVID"
             " images from one collection): compare it with the AUC within sites that have both classes.</div>",
             shown.to_html(index=False, escape=True),
             f'<img alt="comparison plot" src="data:image/png;base64,{base64.b64encode(png).decode()}">',
             "</body></html>"]
    (out / "comparison.html").write_text("\n".join(parts))
    return table
