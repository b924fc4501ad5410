"""``covidscreen evaluate``, ``audit`` and ``calibrate``: judge a run, a data folder, a local operating point."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ..errors import CovidscreenError
from .options import DataOpt, DeviceOpt

app = typer.Typer()


@app.command()
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="run folder written by train")],
    data: DataOpt = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="folder for this evaluation")] = None,
    device: DeviceOpt = "auto",
    robustness: Annotated[bool, typer.Option("--robustness", help="also re-score the images under scale, translation, "
                                             "rotation, crop, brightness/contrast, JPEG and noise changes")] = False,
    readers: Annotated[Path | None, typer.Option("--readers", help="CSV: column image + one column of decisions per "
                                                 "human reader; compared with the model (McNemar)")] = None,
) -> None:
    """Metrics of a trained run on its test split, or on another data folder (external validation).

    Under ``torchrun`` the ranks share the scoring of the images and rank 0 writes the evaluation.
    """
    # imported per command: `covidscreen --help` stays free of PyTorch (benchmarks/bench_cli_import.py)
    from ..runtime import resolve_device
    from ..training import distributed
    from ..workflows.evaluate import evaluate_run

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
        # imported per command: `covidscreen --help` stays free of PyTorch (benchmarks/bench_cli_import.py)
        from ..workflows.evaluate_extras import add_extras

        for line in add_extras(run_dir, out, robustness=robustness, readers=readers, device=device):
            typer.echo(line)
    # imported per command: `covidscreen --help` stays free of PyTorch (benchmarks/bench_cli_import.py)
    from ..evaluation.external import drop_summary

    m = json.loads((out / "metrics.json").read_text())
    if "covid_vs_rest" in m:
        cv = m["covid_vs_rest"]
        ci = cv.get("ci", {})
        fmt = lambda k: f"{cv[k]:.3f}" + (f" (95% CI {ci[k][0]:.3f}-{ci[k][1]:.3f})" if k in ci else "")  # noqa: E731
        typer.echo(f"{m['n_test']} images: {m['positive_class']}-vs-rest ROC AUC {fmt('roc_auc')}, sensitivity "
                   f"{fmt('sensitivity')}, specificity {fmt('specificity')}")
    comparison = (m.get("internal_vs_external") or {}).get("comparison", [])
    for metric in ("roc_auc", "sensitivity", "specificity", "multi-class accuracy", "macro_roc_auc"):
        line = drop_summary(comparison, metric)
        if line:
            typer.echo(line)
    for line in near_copy_lines(m.get("near_copies")):
        typer.echo(line)
    typer.echo(f"report: {out / 'report.html'}")


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


@app.command()
def audit(
    data_dir: Annotated[str, typer.Argument(help="data folder to audit (metadata.csv or <label>/ tree)")],
    run_dir: Annotated[Path | None, typer.Argument(help="run folder: audit its split and its model's features")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="folder for audit.json/audit.html "
                                                "(default: RUN_DIR, else ./audit-<data folder name>)")] = None,
    image_size: Annotated[int | None, typer.Option(
        "--image-size", help="side of the cached images (default: the run's input size, else 224)")] = None,
    pediatric_site: Annotated[list[str] | None, typer.Option(
        "--pediatric-site", help="a site whose images are all pediatric (repeatable), for the age probe")] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    device: DeviceOpt = "auto",
) -> None:
    """Leakage (patients across splits, duplicates, near-duplicates), shortcut probe and label/site confounding."""
    # imported per command: `covidscreen --help` stays free of PyTorch (benchmarks/bench_cli_import.py)
    from ..reporting.audit_page import read_audit
    from ..workflows.audit import audit_data_dir

    if image_size is not None and not 32 <= image_size <= 1024:
        raise CovidscreenError(f"--image-size {image_size}: use an integer from 32 to 1024")
    out = audit_data_dir(data_dir, run_dir, output, image_size=image_size, pediatric_sites=tuple(pediatric_site or ()),
                         device=device, seed=seed)
    for f in (read_audit(out) or {}).get("findings", []):
        typer.echo(f"[{f['severity']}] {f['text']}")
    typer.echo(f"audit: {out / 'audit.json'} | {out / 'audit.html'}")


@app.command()
def calibrate(
    run_dir: Annotated[Path, typer.Argument(help="run folder written by train")],
    data: Annotated[str, typer.Option("--data", help="labelled local sample (metadata.csv or <label>/ folders)")],
    target_specificity: Annotated[float, typer.Option("--target-specificity", help="wanted local specificity")] = 0.9,
    name: Annotated[str, typer.Option("--name", help="name of the operating point to store")] = "local",
    temperature: Annotated[bool, typer.Option("--temperature", help="also fit a temperature (needs positives)")]
    = False,
    device: DeviceOpt = "auto",
) -> None:
    """Fit the operating threshold on a small labelled sample of your own site and store it in the run."""
    # imported per command: `covidscreen --help` stays free of PyTorch (benchmarks/bench_cli_import.py)
    from ..workflows.calibrate import calibrate_run, describe_calibration

    record = calibrate_run(run_dir, data, target_specificity=target_specificity, name=name, temperature=temperature,
                           device=device)
    for line in describe_calibration(record, name):
        typer.echo(line)
