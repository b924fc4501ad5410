"""``covidscreen recipes`` (list them) and the options of ``covidscreen train --recipe NAME`` (its job:
:func:`covidscreen.workflows.recipes.recipe_job`).

``covidscreen recipe NAME`` is kept as an alias of ``covidscreen train --recipe NAME`` (for commands written before
``train`` took recipes), with ``--set KEY=VALUE`` for values that no option can express (``labels=null``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import ConfigError
from .options import DataOpt, DeviceOpt

app = typer.Typer()

BudgetOpt = Annotated[str | None, typer.Option("--budget", help="with --recipe: tiny (seconds, a smoke test), laptop "
                                               "(a CPU, minutes to an hour; the default) or paper (the paper's "
                                               "settings)")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="with --recipe: write and check the resolved grid, list "
                                         "its runs, train nothing")]


def parse_sets(items: list[str]) -> dict:
    """``KEY=VALUE`` strings as training-config overrides, each value read as YAML (``false``, ``3``, ``[a, b]``)."""
    import yaml  # imported per command: `covidscreen --help` stays free of PyTorch (benchmarks/bench_cli_import.py)

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set pretrained=false")
        try:
            out[key.strip().replace("-", "_")] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML") from None
    return out


@app.command("recipes")
def list_recipes_cmd() -> None:
    """List the recipes: one per published system, each run by `covidscreen train --recipe NAME`."""
    # imported per command: `covidscreen --help` stays free of PyTorch (benchmarks/bench_cli_import.py)
    from ..workflows.recipes import list_recipes

    for r in list_recipes():
        typer.echo(f"{r.name:14s} {r.title}")


@app.command()
def recipe(
    name: Annotated[str, typer.Argument(help="recipe name (covidscreen recipes lists them)")],
    budget: BudgetOpt = None,
    data: DataOpt = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="experiment folder (default "
                                                "runs/recipes/NAME-BUDGET)")] = None,
    device: DeviceOpt = "auto",
    sets: Annotated[list[str] | None, typer.Option("--set", help="KEY=VALUE training-config override, repeatable "
                                                   "(e.g. --set labels=null)")] = None,
    dry_run: DryRunOpt = False,
) -> None:
    """Alias of `covidscreen train --recipe NAME` (which takes every training option), with --set KEY=VALUE."""
    overrides = {**parse_sets(sets or []), "device": device, **({"data": data} if data else {}),
                 **({"output": str(output)} if output else {})}
    # imported per command: `covidscreen --help` stays free of PyTorch (benchmarks/bench_cli_import.py)
    from ..workflows.recipes import recipe_job

    for line in recipe_job(name, budget, None, overrides, dry_run).lines():
        typer.echo(line)
