"""Command-line interface: a thin typer app assembled from one sub-app per concern.

Each module here parses options, calls one library function and prints where the results are; nothing here computes.
A new command goes into the module of its concern (or a new module with its own ``app``), added below with one line.
Errors caused by input (``CovidscreenError``) print one line ``error: ...`` and exit with code 2.
"""

from __future__ import annotations

import sys

import typer

from ..errors import CovidscreenError
from . import evaluate, experiment, predict, security, segment, train

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="COVID-19 / pneumonia screening on chest X-rays by transfer learning, evaluated honestly.")
app.add_typer(train.app)
app.add_typer(evaluate.app)
app.add_typer(predict.app)
app.add_typer(experiment.app)
app.add_typer(segment.app, name="segment")
app.add_typer(security.app)
app.add_typer(security.security_app, name="security")


def main() -> None:
    try:
        app(standalone_mode=True)
    except CovidscreenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
