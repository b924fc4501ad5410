"""Recipes: one YAML file per published system (``configs/recipes/NAME.yaml``), run by the experiment grid runner.

A recipe is an experiment grid file (:mod:`covidscreen.workflows.experiment`: ``base``, ``grid``, ``runs``,
``ensembles``) whose header comment cites the paper and says what is faithful and what differs, plus a ``budget``
section: ``tiny`` (seconds, for tests), ``laptop`` (a CPU in tens of minutes) and ``paper`` (the paper's settings).
A budget's keys override ``base``; its ``grid``, ``runs`` or ``ensembles`` replace the recipe's (a smaller grid or
fewer folds); its ``bootstrap`` sets the replicates of the runs' and of the comparison's confidence intervals.
``run_recipe`` writes the resolved grid into the output folder as ``grid.yaml`` (so the folder says exactly what
ran) and runs it; a finished recipe resumes or only rewrites its comparison, as any experiment does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..config import load_yaml
from ..errors import ConfigError
from .experiment import load_plan, run_experiment

BUDGETS = ("tiny", "laptop", "paper")
DEFAULT_BUDGET = "laptop"
#: budget keys that replace the recipe's own instead of overriding ``base``
REPLACED = ("grid", "runs", "ensembles")


def recipe_dir() -> Path:
    """``$COVIDSCREEN_RECIPES``, else ``configs/recipes`` of the checkout this package runs from."""
    env = os.environ.get("COVIDSCREEN_RECIPES")
    return Path(env) if env else Path(__file__).resolve().parents[3] / "configs" / "recipes"


@dataclass(frozen=True)
class Recipe:
    """A recipe file: its name (the file stem), path, one-line title and full header comment."""

    name: str
    path: Path
    title: str
    header: str


def _header(path: Path) -> str:
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[1:].removeprefix(" "))
    return "\n".join(lines)


def list_recipes(directory: str | Path | None = None) -> list[Recipe]:
    """Every ``*.yaml`` recipe of ``directory`` (default :func:`recipe_dir`), sorted by name."""
    folder = Path(directory) if directory else recipe_dir()
    if not folder.is_dir():
        raise ConfigError(f"recipe folder {folder} does not exist (set $COVIDSCREEN_RECIPES to a folder of recipes)")
    out = []
    for path in sorted(folder.glob("*.yaml")):
        header = _header(path)
        out.append(Recipe(path.stem, path, (header.splitlines() or [""])[0], header))
    return out


def find_recipe(name: str, directory: str | Path | None = None) -> Recipe:
    recipes = list_recipes(directory)
    for r in recipes:
        if r.name == name:
            return r
    raise ConfigError(f"no recipe named {name!r}; recipes: {', '.join(r.name for r in recipes)}")


def resolve_recipe(recipe: Recipe, budget: str = DEFAULT_BUDGET, overrides: dict[str, Any] | None = None,
                   output: str | Path | None = None) -> dict[str, Any]:
    """The experiment grid of ``recipe`` at ``budget``: base < budget < ``overrides`` (training config keys)."""
    if budget not in BUDGETS:
        raise ConfigError(f"budget {budget!r} is not known; use one of {', '.join(BUDGETS)}")
    data = load_yaml(recipe.path)
    budgets = data.pop("budget", None) or {}
    if not isinstance(budgets, dict) or budget not in budgets:
        raise ConfigError(f"{recipe.path}: no '{budget}' section under 'budget' (budgets: "
                          f"{', '.join(budgets) if isinstance(budgets, dict) else 'none'})")
    chosen = dict(budgets[budget] or {})
    for key in REPLACED:
        if key in chosen:
            data[key] = chosen.pop(key)
    if "bootstrap" in chosen:  # the runs' confidence intervals and the comparison table's alike
        data["bootstrap"] = chosen["bootstrap"]
    data["base"] = {**(data.get("base") or {}), **chosen, **(overrides or {})}
    data["output"] = str(output or Path("runs") / "recipes" / f"{recipe.name}-{budget}")
    data["description"] = f"recipe {recipe.name} ({budget} budget): {recipe.title}"
    return data


def write_recipe_grid(recipe: Recipe, budget: str = DEFAULT_BUDGET, overrides: dict[str, Any] | None = None,
                      output: str | Path | None = None) -> Path:
    """Resolve the recipe, check every run's config, and write it as ``<output>/grid.yaml``; returns that path."""
    data = resolve_recipe(recipe, budget, overrides, output)
    out = Path(data["output"])
    out.mkdir(parents=True, exist_ok=True)
    grid = out / "grid.yaml"
    comment = "".join(f"# {line}".rstrip() + "\n" for line in recipe.header.splitlines())
    grid.write_text(f"# resolved from {recipe.path} at budget '{budget}'\n{comment}"
                    + yaml.safe_dump(data, sort_keys=False))
    try:
        load_plan(grid)  # every configuration is checked before anything trains
    except ConfigError:
        grid.unlink()
        raise
    return grid


def run_recipe(name: str, budget: str = DEFAULT_BUDGET, overrides: dict[str, Any] | None = None,
               output: str | Path | None = None, progress: bool = True, directory: str | Path | None = None) -> Path:
    """Run (or resume) recipe ``name`` at ``budget``; returns the experiment folder (``comparison.*``, ``runs/``,
    ``ensembles/``)."""
    grid = write_recipe_grid(find_recipe(name, directory), budget, overrides, output)
    return run_experiment(grid, progress=progress)
