"""``covidscreen commission`` and ``covidscreen monitor``: a site's acceptance test, and drift in production
(docs/safety.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .options import DeviceOpt

app = typer.Typer()


@app.command()
def commission(
    run_dir: Annotated[Path, typer.Argument(help="run or ensemble folder")],
    data: Annotated[Path, typer.Option("--data", help="labelled local sample (metadata.csv or <label>/ folders); "
                                       "normals alone are enough")],
    output: Annotated[Path, typer.Option("--output", "-o", help="folder for commission.json and commission.html")],
    target_specificity: Annotated[float, typer.Option("--target-specificity")] = 0.90,
    target_sensitivity: Annotated[float, typer.Option("--target-sensitivity", help="used where the sample holds "
                                                      "COVID images")] = 0.90,
    confidence: Annotated[float, typer.Option("--confidence", help="level of the intervals")] = 0.95,
    name: Annotated[str, typer.Option("--name", help="name of the operating point and record stored on go")] = "site",
    seed: Annotated[int, typer.Option("--seed", help="seed of the patient-grouped split")] = 0,
    device: DeviceOpt = "auto",
) -> None:
    """Acceptance test at a site: local operating point, figures with intervals, and a go / no-go verdict."""
    # imported per command: `covidscreen --help` stays free of PyTorch (benchmarks/bench_cli_import.py)
    from ..workflows.commission import commission_job

    outcome = commission_job(run_dir, data, output, target_specificity=target_specificity,
                             target_sensitivity=target_sensitivity, confidence=confidence, name=name, seed=seed,
                             device=device)
    for line in outcome.lines():
        typer.echo(line)


@app.command()
def monitor(
    source: Annotated[str, typer.Argument(help="audit log (database URL, SQLite file or run folder) or a predictions "
                                          "CSV of covidscreen predict, rows in time order")],
    baseline: Annotated[Path, typer.Option("--baseline", help="run folder (its validation split) or commissioning "
                                           "folder (its local sample)")],
    output: Annotated[Path, typer.Option("--output", "-o", help="folder for drift.json and drift.png")],
    window: Annotated[int, typer.Option("--window", help="predictions per window (at least 20)")] = 50,
    alpha: Annotated[float, typer.Option("--alpha", help="chance of any false alarm over the whole stream")] = 0.05,
) -> None:
    """Drift: two-sample tests per window against the baseline, false alarms controlled over all windows."""
    # imported per command: `covidscreen --help` stays free of PyTorch (benchmarks/bench_cli_import.py)
    from ..workflows.monitor import monitor_job

    typer.echo(monitor_job(source, baseline, output, window=window, alpha=alpha).summary())
