"""Options shared by several commands."""

from __future__ import annotations

from typing import Annotated

import typer

DataOpt = Annotated[str | None, typer.Option("--data", help="data folder (metadata.csv or <label>/ tree)")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N")]
AllowFlaggedOpt = Annotated[bool, typer.Option(
    "--allow-flagged-model", help="start even though the model's last backdoor scan (covidscreen scan) flagged it")]
