"""``covidscreen predict-series``: score chest CT series (folders or zips of DICOM slices) with a CT run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import CovidscreenError
from .options import DeviceOpt

app = typer.Typer()


def parse_window(text: str | None) -> tuple[float, float] | None:
    """``LEVEL,WIDTH`` in HU (e.g. ``-600,1500``); None stays None (the run's windows)."""
    if text is None:
        return None
    try:
        level, width = (float(v) for v in text.split(","))
    except ValueError:
        raise CovidscreenError(f"--window {text!r}: give LEVEL,WIDTH in HU, e.g. -600,1500 (lung)") from None
    return level, width


@app.command("predict-series")
def predict_series(
    run_dir: Annotated[Path, typer.Argument(help="run folder of a model trained on CT slices")],
    series: Annotated[list[Path], typer.Argument(help="CT series: folders of DICOM slices or zips of them")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="write .json (everything) or .csv (one "
                                                "row per series)")] = None,
    window: Annotated[str | None, typer.Option("--window", help="LEVEL,WIDTH in HU of a one-channel run (default: "
                                               "the lung window, -600,1500); runs that read several windows use "
                                               "the ones in their sidecar")] = None,
    device: DeviceOpt = "auto",
) -> None:
    """Per-slice and per-series COVID probability of CT series, naming the slices that drove each decision."""
    # imported per command: `covidscreen --help` stays free of PyTorch (benchmarks/bench_cli_import.py)
    from ..workflows.predict import predict_series_job

    typer.echo(predict_series_job(run_dir, [str(s) for s in series], output, parse_window(window), device=device))
