"""``covidscreen quickstart`` and ``covidscreen train``: a config from defaults, YAML and options, then fit."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer

from ..config import TrainConfig
from .config_options import with_config_options
from .options import DataOpt, DeviceOpt
from .recipes import BudgetOpt, DryRunOpt, run_recipe_command

app = typer.Typer()


@app.command()
def quickstart(
    output: Annotated[Path, typer.Option("--output", "-o", help="run folder to write")] = Path("runs/quickstart"),
    data: DataOpt = None,
    device: DeviceOpt = "auto",
) -> None:
    """Fine-tune the default model on the shared chest X-rays, evaluate it on a held-out test split, write a report."""
    # imported per command: `covidscreen --help` stays free of PyTorch (benchmarks/bench_cli_import.py)
    from ..config import resolve_train_config
    from ..workflows.fit import fit

    cfg = resolve_train_config(None, data=data, output=str(output), device=device)
    run = fit(cfg)
    typer.echo(f"report: {run / 'report.html'}")


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
    from ..config import resolve_train_config
    from ..errors import ConfigError
    from ..workflows.fit import fit

    if recipe is not None:
        if resume is not None:
            raise ConfigError("--resume continues one run; a recipe resumes by running the same "
                              f"covidscreen train --recipe {recipe} command again")
        run_recipe_command(recipe, budget, config,
                           {**(overrides or {}), **({"train_stages": None} if full_finetune else {})}, dry_run)
        return
    if dry_run or budget is not None:
        raise ConfigError(f"{'--dry-run' if dry_run else '--budget'} needs --recipe NAME (covidscreen recipes lists "
                          "them)")
    if resume is not None:
        run = resume_run(resume, config, full_finetune, overrides or {})
        typer.echo(f"report: {run / 'report.html'}")
        return
    cfg = resolve_train_config(config, **(overrides or {}))
    if full_finetune:
        cfg = dataclasses.replace(cfg, train_stages=None)
    run = fit(cfg)
    typer.echo(f"report: {run / 'report.html'}")


def resume_run(run_dir: Path, config: Path | None, full_finetune: bool, overrides: dict) -> Path:
    # imported per command: `covidscreen --help` stays free of PyTorch (benchmarks/bench_cli_import.py)
    from ..errors import ConfigError
    from ..workflows.finish import resume_training

    others = sorted(k for k in overrides if k != "device") + (["config"] if config else []) + (
        ["full_finetune"] if full_finetune else [])
    if others:
        raise ConfigError(f"--resume continues {run_dir} with the config it was started with; drop "
                          f"{', '.join('--' + k.replace('_', '-') for k in others)} (only --device may change)")
    return resume_training(run_dir, device=overrides.get("device"))

