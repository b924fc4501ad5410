"""The optional parts of ``covidscreen evaluate``: robustness and the reader comparison, added to an evaluation folder
and its report."""

from __future__ import annotations

import json
from pathlib import Path

from ..reporting.report import write_report
from .readers import compare_with_readers
from .robustness import evaluate_robustness


def add_extras(run_dir: str | Path, evaluation_dir: str | Path, robustness: bool = False,
               readers: str | Path | None = None, device: str = "auto", progress: bool = True) -> list[str]:
    """Run the requested extras, rewrite the evaluation's ``report.html``; returns one summary line per result."""
    out = Path(evaluation_dir)
    lines = []
    if robustness:
        table = evaluate_robustness(run_dir, out, device=device, progress=progress)
        worst = table.loc[table["auc"].idxmin()] if table["auc"].notna().any() else None
        lines.append(f"robustness: {len(table)} settings (robustness.csv, robustness.png)"
                     + (f"; lowest AUC {worst['auc']:.3f} under {worst['perturbation']} {worst['strength']:g}"
                        if worst is not None else ""))
    if readers is not None:
        result = compare_with_readers(out, readers)
        for name, r in result["readers"].items():
            lines.append(f"reader {name}: sensitivity {r['sensitivity']:.3f}, specificity {r['specificity']:.3f}, "
                         f"McNemar vs model p = {r['mcnemar']['p_value']:.3g}")
    split = json.loads((out / "metrics.json").read_text())
    name = "test" if "test" in split else "external"
    write_report(out, split_name=name, title=f"covidscreen evaluation ({name}) of {Path(run_dir).name}")
    return lines
