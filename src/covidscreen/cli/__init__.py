"""Command-line interface: a thin typer app assembled from one sub-app per concern.

Each module here parses options, calls one job and prints what its outcome says; nothing here computes or decides
(docs/architecture.md, "Commands and their jobs").
A new command goes into the module of its concern (or a new module with its own ``app``), added below with one line.
Errors caused by input (``CovidscreenError``) print one line ``error: ...`` and exit with code 2.
"""

from __future__ import annotations

import sys
import warnings

import typer

from ..errors import CovidscreenError, Interrupted
from . import ct, dicomnet, evaluate, experiment, finish, ood, predict, recipes, safety, security, segment, serve, train

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="COVID-19 / pneumonia screening on chest X-rays by transfer learning, evaluated honestly.")
app.add_typer(train.app)
app.add_typer(finish.app)
app.add_typer(evaluate.app)
app.add_typer(predict.app)
app.add_typer(ct.app)
app.add_typer(experiment.app)
app.add_typer(recipes.app)
app.add_typer(segment.app, name="segment")
app.add_typer(serve.app)
app.add_typer(dicomnet.app)
app.add_typer(security.app)
app.add_typer(security.security_app, name="security")
app.add_typer(ood.app, name="ood")
app.add_typer(safety.app)


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings meant for the user (modality not checkable, ...) as one ``warning: ...`` line, not a source line."""
    print(f"warning: {message}", file=file or sys.stderr)


def main() -> None:
    warnings.showwarning = _one_line_warning
    try:
        app(standalone_mode=True)
    except Interrupted as exc:  # Ctrl-C during training: what was kept and the command that continues
        print(f"\ninterrupted: {exc}", file=sys.stderr)
        sys.exit(130)
    except CovidscreenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)
