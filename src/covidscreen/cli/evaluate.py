"""``covidscreen evaluate``, ``audit`` and ``calibrate``: judge a run, a data folder, a local operating point."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

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
    from ..workflows.evaluate_extras import evaluate_job

    for line in evaluate_job(run_dir, data=data, output=output, device=device, robustness=robustness,
                             readers=readers):
        typer.echo(line)


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
    from ..workflows.audit import audit_job

    outcome = audit_job(data_dir, run_dir, output, image_size=image_size, pediatric_sites=tuple(pediatric_site or ()),
                        device=device, seed=seed)
    for line in outcome.lines():
        typer.echo(line)


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
    from ..workflows.calibrate import calibrate_job

    outcome = calibrate_job(run_dir, data, target_specificity=target_specificity, name=name, temperature=temperature,
                            device=device)
    for line in outcome.lines():
        typer.echo(line)
