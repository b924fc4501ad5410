"""``covidscreen recipes`` (list) and ``covidscreen recipe NAME`` (run): published systems as one command each."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import ConfigError
from .options import DataOpt, DeviceOpt

app = typer.Typer()


def parse_sets(items: list[str]) -> dict:
    """``KEY=VALUE`` strings as training-config overrides, each value read as YAML (``false``, ``3``, ``[a, b]``)."""
    import yaml

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
    """List the recipes (configs/recipes): one per published system, each run by `covidscreen recipe NAME`."""
    from ..workflows.recipes import list_recipes

    for r in list_recipes():
        typer.echo(f"{r.name:14s} {r.title}")


@app.command()
def recipe(
    name: Annotated[str, typer.Argument(help="recipe name (covidscreen recipes lists them)")],
    budget: Annotated[str, typer.Option("--budget", help="tiny (seconds, a smoke test), laptop (a CPU, minutes to "
                                        "an hour) or paper (the paper's settings)")] = "laptop",
    data: DataOpt = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="experiment folder (default "
                                                "runs/recipes/NAME-BUDGET)")] = None,
    device: DeviceOpt = "auto",
    sets: Annotated[list[str] | None, typer.Option("--set", help="KEY=VALUE training-config override, repeatable "
                                                   "(e.g. --set pretrained=false)")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="write and check the resolved grid, train nothing")]
    = False,
) -> None:
    """Run a published system's recipe (a grid of runs, cross-validation or ensemble) at a compute budget."""
    from ..workflows.experiment import load_plan
    from ..workflows.recipes import find_recipe, run_recipe, write_recipe_grid

    overrides = {**parse_sets(sets or []), "device": device, **({"data": data} if data else {})}
    if dry_run:
        grid = write_recipe_grid(find_recipe(name), budget, overrides, output)
        plan = load_plan(grid)
        for r in plan.runs:
            typer.echo(f"{r.name}: {r.cfg.model}, {r.cfg.output}")
        for ens, members in plan.ensembles.items():
            typer.echo(f"ensemble {ens}: {', '.join(members)}")
        typer.echo(f"grid: {grid}")
        return
    out = run_recipe(name, budget, overrides, output)
    typer.echo(f"comparison: {out / 'comparison.html'} ({out / 'comparison.csv'})")
