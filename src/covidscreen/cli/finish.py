"""``covidscreen finish``: redo what follows training for a run folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer()


@app.command()
def finish(
    run_dir: Annotated[Path, typer.Argument(help="run folder whose training ended")],
    device: Annotated[str | None, typer.Option("--device", help="auto, cpu, cuda or cuda:N")] = None,
) -> None:
    """Redo what follows training for a run folder (evaluation, audit, explanations, report, model card), e.g.
    after a crash, a full disk or data that vanished at the end of a run."""
    # imported per command: `covidscreen --help` stays free of PyTorch (benchmarks/bench_cli_import.py)
    from ..workflows.finish import finish as finish_run_folder

    run = finish_run_folder(run_dir, device=device)
    typer.echo(f"report: {run / 'report.html'}")
