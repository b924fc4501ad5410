"""``covidscreen ood ...``: the out-of-distribution model of a run (docs/safety.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .options import DeviceOpt

app = typer.Typer(no_args_is_help=True, help="Out-of-distribution score and flag of a run (docs/safety.md).")


@app.command("fit")
def fit(
    run_dir: Annotated[Path, typer.Argument(help="run or ensemble folder")],
    data: Annotated[Path | None, typer.Option("--data", help="the data folder the run was trained on (default: the "
                                              "one it records)")] = None,
    detector: Annotated[str | None, typer.Option("--detector", help="mahalanobis, knn, vim or energy (default: the "
                                                 "run's ood_detector, else the default of training)")] = None,
    flag_rate: Annotated[float, typer.Option("--flag-rate", min=0.001, max=0.5, help="share of validation images "
                                             "to flag")] = 0.05,
    orientation: Annotated[bool | None, typer.Option("--orientation/--no-orientation", help="also check that "
                                                     "the image is upright, not turned (default: the run's "
                                                     "ood_orientation, else on)")] = None,
    device: DeviceOpt = "auto",
) -> None:
    """Fit the OOD detector on the run's training split; set its threshold on the validation split."""
    # imported per command: `covidscreen --help` stays free of PyTorch (benchmarks/bench_cli_import.py)
    from ..workflows.ood import ood_fit_job

    outcome = ood_fit_job(run_dir, data=data, detector=detector, flag_rate=flag_rate, device=device,
                          orientation=orientation, log=lambda m: typer.echo(m, err=True))
    typer.echo(outcome.summary())
