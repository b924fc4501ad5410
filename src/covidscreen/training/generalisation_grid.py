"""Run the generalisation grid (``configs/experiments/generalisation.yaml``) and tabulate within-site results.

A deliberately small runner for a subset of the ``covidscreen experiment`` grid format: ``base`` plus axes under
``grid`` (a list of values for one key, or named variants that set several keys), expanded as a cartesian product.
Finished runs (with ``metrics.json``) are skipped, so an interrupted grid resumes. The table puts the within-site
test AUC with its confidence interval first, then the pooled AUC, the within-site validation AUC, the site probe
and the number of images whose lungs were not found.

Usage::

    python -m covidscreen.training.generalisation_grid configs/experiments/generalisation.yaml [--only a,b]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from ..config import TrainConfig, apply_overrides, load_yaml
from ..errors import ConfigError


def expand_grid(grid_file: str | Path) -> tuple[Path, list[tuple[str, TrainConfig]]]:
    """``(output folder, [(run name, config)])`` of a grid file; every config is validated before any run."""
    spec = load_yaml(grid_file)
    base = spec.get("base") or {}
    axes = []
    for axis, values in (spec.get("grid") or {}).items():
        if isinstance(values, dict):
            axes.append([(str(name), dict(v or {})) for name, v in values.items()])
        elif isinstance(values, list):
            axes.append([(f"{axis}={v}", {axis: v}) for v in values])
        else:
            raise ConfigError(f"{grid_file}: grid axis {axis!r} must be a list of values or a mapping of named "
                              "variants")
    output = Path(spec.get("output") or Path("runs/experiments") / Path(grid_file).stem)
    runs = []
    for combo in itertools.product(*axes) if axes else [()]:
        name = "__".join(n for n, _ in combo) or "base"
        overrides = dict(base)
        for _, o in combo:
            overrides.update(o)
        overrides["output"] = str(output / "runs" / name)
        cfg = apply_overrides(TrainConfig(), overrides, source=f"{grid_file} ({name})").validate()
        runs.append((name, cfg))
    return output, runs


def _ci(block: dict, key: str) -> str:
    v, ci = block.get(key, math.nan), block.get(f"{key}_ci", [math.nan, math.nan])
    return "n/a" if v is None or math.isnan(v) else f"{v:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def summary_row(name: str, run_dir: Path) -> dict[str, Any]:
    """One table row from a finished run folder."""
    m = json.loads((run_dir / "metrics.json").read_text())
    history = pd.read_csv(run_dir / "history.csv")
    meta = json.loads((run_dir / "model.json").read_text())
    row: dict[str, Any] = {"variant": name}
    sites = (m.get("test", {}).get("within_site") or {}).get("sites", {})
    for site, b in sites.items():
        row[f"{site} test AUC [95% CI]"] = _ci(b, "roc_auc")
        row[f"_auc_{site}"] = b["roc_auc"]
        row[f"{site} sens/spec"] = f"{b['sensitivity']:.2f}/{b['specificity']:.2f}"
        row[f"{site} test n (pos/neg)"] = f"{b['n_positive']}/{b['n_negative']}"
    cv = m.get("covid_vs_rest", {})
    row["pooled test AUC"] = f"{cv.get('roc_auc', math.nan):.3f}"
    row["_auc_pooled"] = cv.get("roc_auc", math.nan)
    best = history[history["epoch"] == meta.get("best_epoch")]
    if "val_within_site_auc" in history and len(best):
        row["val within-site AUC (selected epoch)"] = f"{float(best['val_within_site_auc'].iloc[0]):.3f}"
    probe = m.get("site_probe")
    if probe:
        row["site probe bal. acc. (chance)"] = f"{probe['mean_balanced_accuracy']:.3f} ({probe['mean_chance']:.2f})"
        row["_probe"] = probe["mean_balanced_accuracy"]
    if "preprocessing_stats" in m:
        row["lungs not found"] = str(int(m["preprocessing_stats"].get("roi_fallback", 0)))
    row["best epoch"] = meta.get("best_epoch")
    return row


def run_grid(grid_file: str | Path, only: list[str] | None = None, progress: bool = True) -> pd.DataFrame:
    """Train every unfinished run of the grid, then write ``summary.csv`` and ``summary.md`` into its output."""
    from .trainer import fit

    output, runs = expand_grid(grid_file)
    if only:
        unknown = sorted(set(only) - {n for n, _ in runs})
        if unknown:
            raise ConfigError(f"--only: no run named {', '.join(unknown)}; runs: {', '.join(n for n, _ in runs)}")
        runs = [(n, c) for n, c in runs if n in only]
    output.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, cfg in runs:
        run_dir = Path(cfg.output)
        if not (run_dir / "metrics.json").is_file():
            print(f"=== {name} ===", flush=True)
            fit(cfg, progress=progress)
        rows.append(summary_row(name, run_dir))
    table = pd.DataFrame(rows)
    table.to_csv(output / "summary.csv", index=False)
    shown = table[[c for c in table.columns if not c.startswith("_")]]
    (output / "summary.md").write_text(markdown_table(shown))
    if table["variant"].str.contains("__").any():
        agg = aggregate_over_seeds(table)
        agg.to_csv(output / "summary_by_variant.csv", index=False)
        (output / "summary_by_variant.md").write_text(markdown_table(agg))
    return shown


def aggregate_over_seeds(table: pd.DataFrame) -> pd.DataFrame:
    """Mean, standard deviation and range over the ``seed=...`` runs of every variant (run names ``seed=k__v``).

    With a ``baseline`` variant, also the paired difference to the baseline of the same seed (same subsample and
    split): split-to-split noise, which dominates single runs here, cancels out of it.
    """
    t = table.copy()
    t["_variant"] = [n.split("__", 1)[1] if n.startswith("seed=") else n for n in t["variant"]]
    t["_seed"] = [n.split("__", 1)[0] if n.startswith("seed=") else "" for n in t["variant"]]
    metric_cols = [c for c in t.columns if c.startswith("_auc_") or c == "_probe"]
    base = t[t["_variant"] == "baseline"].set_index("_seed")
    for col in metric_cols if len(base) else []:
        t[f"_delta{col}"] = [v - base[col].get(sd, float("nan")) for v, sd in zip(t[col], t["_seed"], strict=True)]
    order = list(dict.fromkeys(t["_variant"]))
    rows = []
    for v in order:
        g = t[t["_variant"] == v]
        row: dict[str, Any] = {"variant": v, "seeds": len(g)}
        for col in [c for c in t.columns if c.startswith(("_auc_", "_probe", "_delta_"))]:
            vals = g[col].dropna().to_numpy(dtype=float)
            if col.startswith("_delta_"):
                if v == "baseline" or not len(vals):
                    continue
                inner = "site probe" if col == "_delta_probe" else f"{col[11:]} AUC"
                row[f"{inner} - baseline, paired: mean [min, max]"] = \
                    f"{vals.mean():+.3f} [{vals.min():+.3f}, {vals.max():+.3f}]"
                continue
            name = "site probe bal. acc." if col == "_probe" else f"{col[5:]} test AUC"
            row[f"{name} mean (sd)"] = f"{vals.mean():.3f} ({vals.std(ddof=1) if len(vals) > 1 else 0:.3f})" \
                if len(vals) else "n/a"
            row[f"{name} range"] = f"{vals.min():.3f}-{vals.max():.3f}" if len(vals) else "n/a"
        rows.append(row)
    return pd.DataFrame(rows)


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub-flavoured markdown table (pandas' ``to_markdown`` needs the optional tabulate package)."""
    cells = [[str(c) for c in df.columns]] + [["" if pd.isna(v) else str(v) for v in r] for r in df.itertuples(
        index=False)]
    lines = ["| " + " | ".join(r) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("---" for _ in df.columns) + "|")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("grid_file")
    parser.add_argument("--only", default="", help="comma-separated run names")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    table = run_grid(args.grid_file, [s for s in args.only.split(",") if s], progress=not args.no_progress)
    print(table.to_string(index=False))


if __name__ == "__main__":
    main()
