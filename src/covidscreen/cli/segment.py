"""``covidscreen segment train``: the lung segmenter behind the ``--roi`` options."""

from __future__ import annotations

import typer

from ..config import SegmentConfig, apply_overrides
from .config_options import with_config_options

app = typer.Typer(no_args_is_help=True, help="Lung segmentation (used by the --roi preprocessing options).")


@app.command("train")
@with_config_options(SegmentConfig)
def segment_train(overrides: dict | None = None) -> None:
    """Train the lung segmenter on the images with a lung_mask (patient-grouped split) and report held-out Dice."""
    # imported per command: `covidscreen --help` stays free of PyTorch (benchmarks/bench_cli_import.py)
    from ..workflows.segment import train_segmenter

    cfg = apply_overrides(SegmentConfig(), overrides or {}, source="command line")
    out = train_segmenter(cfg)
    typer.echo(f"segmentation checkpoint: {out}")
