"""``covidscreen ensemble``, ``ensemble-cv``, ``experiment`` and ``models``: several runs at once, and the
registry."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .options import DataOpt, DeviceOpt

app = typer.Typer()


@app.command()
def ensemble(
    run_dirs: Annotated[list[Path], typer.Argument(
        help="finished run folders (same classes, modality and preprocessing; input sizes may differ)")],
    output: Annotated[Path, typer.Option("--output", "-o", help="ensemble folder to write")],
    show_test: Annotated[bool, typer.Option(
        "--show-test/--no-show-test", help="print the test-split figures too (--no-show-test while choosing among "
        "candidates: choose on validation, read test once)")] = True,
) -> None:
    """Average the probabilities of several runs; the folder is then used like one run (evaluate, predict)."""
    # imported per command: `covidscreen --help` stays free of PyTorch (benchmarks/bench_cli_import.py)
    from ..workflows.ensemble import ensemble_job

    for line in ensemble_job(run_dirs, output, show_test=show_test).lines():
        typer.echo(line)


@app.command("ensemble-cv")
def ensemble_cv(
    members: Annotated[list[str], typer.Argument(help="members: YAML training configs, or model names (trained "
                                                 "with --config and the options)")],
    output: Annotated[Path, typer.Option("--output", "-o", help="folder for the members' folds, the fold "
                                         "ensembles and the table")],
    folds: Annotated[int, typer.Option("--folds", help="patient-grouped folds")] = 5,
    config: Annotated[Path | None, typer.Option("--config", help="YAML of training keys shared by the members "
                                                "given as model names")] = None,
    data: DataOpt = None,
    device: DeviceOpt = "auto",
) -> None:
    """Cross-validate an ensemble: each member on the same patient-grouped folds, the ensemble refit per fold, one
    table of pooled out-of-fold results with 95% CIs (members and ensemble)."""
    # imported per command: `covidscreen --help` stays free of PyTorch (benchmarks/bench_cli_import.py)
    from ..workflows.ensemble_cv import ensemble_cv_job

    for line in ensemble_cv_job(members, folds, output, config, data=data, device=device).lines():
        typer.echo(line)


@app.command()
def experiment(
    grid: Annotated[Path, typer.Argument(help="grid YAML file (see configs/)")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="experiment folder (default from the file)")
                      ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="check the grid and list its runs, train nothing")] = False,
) -> None:
    """Run a grid of training configurations (resumable) and write a comparison table with confidence intervals."""
    # imported per command: `covidscreen --help` stays free of PyTorch (benchmarks/bench_cli_import.py)
    from ..workflows.experiment import experiment_job

    for line in experiment_job(grid, output, dry_run).lines():
        typer.echo(line)


@app.command("models")
def list_models_cmd() -> None:
    """List the registry's models with their native input size and pretrained-weight sources."""
    # imported per command: `covidscreen --help` stays free of PyTorch (benchmarks/bench_cli_import.py)
    from ..models.registry import MODEL_SPECS

    for name, spec in sorted(MODEL_SPECS.items()):
        typer.echo(f"{name:22s} {spec.input_size:4d} px  weights: {spec.weights:56s} gradcam: {spec.gradcam_layer}")
