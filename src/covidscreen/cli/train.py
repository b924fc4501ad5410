"""``covidscreen quickstart`` and ``covidscreen train``: the options of a training config, handed to one job
(:func:`covidscreen.workflows.train_job.train_job`: a recipe, a resumed run or one fit)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..config import TrainConfig
from .config_options import with_config_options
from .options import DataOpt, DeviceOpt
from .recipes import BudgetOpt, DryRunOpt

app = typer.Typer()


@app.command()
def quickstart(
    output: Annotated[Path, typer.Option("--output", "-o", help="run folder to write")] = Path("runs/quickstart"),
    data: DataOpt = None,
    device: DeviceOpt = "auto",
) -> None:
    """Fine-tune the default model on the shared chest X-rays, evaluate it on a held-out test split, write a report."""
    # imported per command: `covidscreen --help` stays free of PyTorch (benchmarks/bench_cli_import.py)
    from ..workflows.train_job import train_job

    for line in train_job(overrides={"data": data, "output": str(output), "device": device}).lines():
        typer.echo(line)


@app.command()
@with_config_options(TrainConfig)
def train(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML file overriding defaults")] = None,
    full_finetune: Annotated[bool, typer.Option("--full-finetune", help="train every stage (train_stages: null)")]
    = False,
    resume: Annotated[Path | None, typer.Option("--resume", help="continue an interrupted run folder from its last "
                                                "complete epoch, with its own config (only --device may change)")]
    = None,
    recipe: Annotated[str | None, typer.Option("--recipe", help="run a published system's recipe (covidscreen "
                                               "recipes lists them): a grid of runs, cross-validation or ensemble "
                                               "in the folder -o (default runs/recipes/NAME-BUDGET); the other "
                                               "options override the recipe's values")] = None,
    budget: BudgetOpt = None,
    dry_run: DryRunOpt = False,
    overrides: dict | None = None,
) -> None:
    """Fine-tune a model on a data folder and write a run folder (checkpoint, metrics, report).

    Every key of the training config is an option (defaults < --config YAML < options); the lists of choices and
    what each option does: docs/transfer_learning.md and docs/generalisation.md. With --recipe NAME, a published
    system's recipe at --budget (recipe < --config YAML < options): docs/recipes.md.
    """
    # imported per command: `covidscreen --help` stays free of PyTorch (benchmarks/bench_cli_import.py)
    from ..workflows.train_job import train_job

    outcome = train_job(config, overrides, full_finetune=full_finetune, resume=resume, recipe=recipe, budget=budget,
                        dry_run=dry_run)
    for line in outcome.lines():
        typer.echo(line)
