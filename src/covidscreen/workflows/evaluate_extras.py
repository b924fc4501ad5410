"""``covidscreen evaluate`` as one job (:func:`evaluate_job`), and its optional parts: robustness and the reader
comparison, added to an evaluation folder and its report."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from ..errors import CovidscreenError
from ..evaluation.external import drop_summary
from ..reporting.report import write_report
from ..runtime import resolve_device
from ..training import distributed
from .evaluate import evaluate_run
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


def evaluate_job(run_dir: str | Path, data: str | None = None, output: str | Path | None = None,
                 device: str = "auto", robustness: bool = False, readers: str | Path | None = None
                 ) -> Iterator[str]:
    """``covidscreen evaluate``: the evaluation (under ``torchrun`` the ranks share the scoring and rank 0 writes
    it), then the optional parts; yields the lines to print as they come (none on ranks other than 0).

    Raises:
        CovidscreenError: ``--robustness`` under torchrun (it re-scores the images in one process).
    """
    world = distributed.start()  # under torchrun each rank scores its share of the images; rank 0 writes the rest
    if world.distributed and robustness:
        distributed.stop(world)
        raise CovidscreenError("--robustness re-scores the images in one process; run it without torchrun")
    if world.distributed:
        device = str(world.local_device(resolve_device(device)))
    try:
        out = evaluate_run(run_dir, data=data, output=output, device=device, world=world)
    finally:
        distributed.stop(world)
    if out is None:  # not rank 0
        return
    if robustness or readers:
        yield from add_extras(run_dir, out, robustness=robustness, readers=readers, device=device)
    m = json.loads((out / "metrics.json").read_text())
    if "covid_vs_rest" in m:
        cv = m["covid_vs_rest"]
        ci = cv.get("ci", {})

        def fmt(k: str) -> str:
            return f"{cv[k]:.3f}" + (f" (95% CI {ci[k][0]:.3f}-{ci[k][1]:.3f})" if k in ci else "")

        yield (f"{m['n_test']} images: {m['positive_class']}-vs-rest ROC AUC {fmt('roc_auc')}, sensitivity "
               f"{fmt('sensitivity')}, specificity {fmt('specificity')}")
    comparison = (m.get("internal_vs_external") or {}).get("comparison", [])
    for metric in ("roc_auc", "sensitivity", "specificity", "multi-class accuracy", "macro_roc_auc"):
        line = drop_summary(comparison, metric)
        if line:
            yield line
    yield from near_copy_lines(m.get("near_copies"))
    yield f"report: {out / 'report.html'}"


def near_copy_lines(block: dict | None) -> list[str]:
    """What ``evaluate`` prints about test images with a near-copy in the training split (``near_copies``)."""
    if not block:
        return []
    lines = [f"{block['n_with_copy']} of {block['n_test']} test images have a near-copy in the training split "
             f"({block['n_pairs']} pair(s); {block['method']})"]
    for r in block.get("comparison", []):
        if r["metric"] in ("roc_auc", "sensitivity", "specificity", "multi-class accuracy", "macro_roc_auc"):
            lines.append(f"  {r['metric']}: all test images {r['internal']:.3f}, without those with a near-copy "
                         f"{r['external']:.3f}")
    within = ((block.get("without") or {}).get("within_site") or {}).get("sites", {})
    for site, w in within.items():
        lines.append(f"  within {site}, without near-copies: AUC {w['roc_auc']:.3f} ({w['n']} images)")
    return lines
