"""Recipes: one YAML file per published system (``covidscreen/recipes/NAME.yaml``, shipped with the package), run by
the experiment grid runner (``covidscreen train --recipe NAME``).

A recipe is an experiment grid file (:mod:`covidscreen.workflows.experiment`: ``base``, ``grid``, ``runs``,
``ensembles``) whose header comment cites the paper and says what is faithful and what differs, plus a ``budget``
section: ``tiny`` (seconds, for tests), ``laptop`` (a CPU in tens of minutes) and ``paper`` (the paper's settings).
A budget's keys override ``base``; its ``grid``, ``runs`` or ``ensembles`` replace the recipe's (a smaller grid or
fewer folds); its ``bootstrap`` sets the replicates of the runs' and of the comparison's confidence intervals.
Training-config keys given by the user (a ``--config`` YAML file, then command-line options) override the recipe
everywhere: ``base``, a grid axis of that key (which shrinks to the one value given) and the runs' own keys.
``run_recipe`` writes the resolved grid into the output folder as ``grid.yaml`` (so the folder says exactly what
ran) and runs it; a finished recipe resumes or only rewrites its comparison, as any experiment does.

The recipe files are package data, found with :mod:`importlib.resources` wherever the package is installed and
whatever the working directory; ``$COVIDSCREEN_RECIPES`` points at another folder of recipes instead.

Paths in a recipe never depend on the working directory (:func:`anchor_paths`): a relative ``data`` names a dataset
folder of the data root (``data: ct`` is ``../shared/data/ct``, or ``$COVIDSCREEN_DATA/ct``); other relative paths
(``weights``, ``segmentation_model``, ``init_from`` other than ``run:NAME``) are relative to the recipe file's folder.
Paths the user gives (options, ``--config``) keep their usual meaning.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

from ..config import load_yaml
from ..data.locate import data_roots
from ..errors import ConfigError
from .experiment import ExperimentPlan, load_plan, plan_lines, run_experiment

BUDGETS = ("tiny", "laptop", "paper")
DEFAULT_BUDGET = "laptop"
#: budget keys that replace the recipe's own instead of overriding ``base``
REPLACED = ("grid", "runs", "ensembles")


def recipe_dir() -> Path:
    """``$COVIDSCREEN_RECIPES``, else the package's own ``covidscreen/recipes`` folder (independent of the working
    directory; an installed package carries it as package data)."""
    env = os.environ.get("COVIDSCREEN_RECIPES")
    return Path(env).expanduser() if env else Path(str(files("covidscreen") / "recipes"))


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
    raise ConfigError(f"no recipe named {name!r}; recipes: {', '.join(r.name for r in recipes)} "
                      "(covidscreen recipes lists them)")


#: training-config keys whose values are paths (``preprocess.`` ones may also be given flat)
FILE_KEYS = ("weights", "segmentation_model", "init_from")


def _data_folder(value: str, recipe: Path) -> str:
    for root in data_roots():
        if (root / value).is_dir():
            return str((root / value).resolve())
    raise ConfigError(f"{recipe}: data {value!r} is not a folder of the data root ({', '.join(map(str, data_roots()))}"
                      "); a recipe names a dataset of the data root (e.g. data: ct) or an absolute folder")


def anchor_paths(values: Any, recipe: Path) -> Any:
    """``values`` (a recipe's ``base``, a budget, a grid axis or run, nested) with its relative paths made absolute:
    ``data`` under the data root, the other path keys (:data:`FILE_KEYS`) under the recipe file's folder."""
    if isinstance(values, list):
        return [anchor_paths(v, recipe) for v in values]
    if not isinstance(values, dict):
        return values
    out = {}
    for key, value in values.items():
        name = key.rsplit(".", 1)[-1]
        if isinstance(value, str) and value and not Path(value).expanduser().is_absolute() and not value.startswith(
                ("run:", "~")) and name in ("data", *FILE_KEYS):
            value = _data_folder(value, recipe) if name == "data" else str((recipe.parent / value).resolve())
        elif isinstance(value, list) and name in ("data", *FILE_KEYS):  # a grid axis of paths
            value = [anchor_paths({key: v}, recipe)[key] for v in value]
        else:
            value = anchor_paths(value, recipe)
        out[key] = value
    return out


def _user_wins(data: dict[str, Any], overrides: dict[str, Any]) -> None:
    """Make the user's keys win over the recipe's own beyond ``base``: a grid axis of that key shrinks to the value
    given, and named-axis values and extra runs that set the key get the user's value."""
    grid = data.get("grid")
    if isinstance(grid, dict):
        for axis, values in list(grid.items()):
            if axis in overrides and not isinstance(values, dict):
                grid[axis] = [overrides[axis]]
            elif isinstance(values, dict):
                for value in values.values():
                    if isinstance(value, dict):
                        value.update({k: v for k, v in overrides.items() if k in value})
    runs = data.get("runs")
    if isinstance(runs, list):
        for item in runs:
            if isinstance(item, dict):
                item.update({k: v for k, v in overrides.items() if k in item and k != "name"})


def user_overrides(config: str | Path | None = None, overrides: dict[str, Any] | None = None
                   ) -> tuple[dict[str, Any], str | None]:
    """The training-config keys a user gives to a recipe: a ``--config`` YAML file's, then the command line's.
    Returns ``(keys, output)``: ``output`` (the experiment folder) is taken out of the keys, since each run's own
    folder is set by the experiment runner."""
    merged = {**(load_yaml(config) if config is not None else {}), **(overrides or {})}
    output = merged.pop("output", None)
    return merged, (str(output) if output is not None else None)


def resolve_recipe(recipe: Recipe, budget: str = DEFAULT_BUDGET, overrides: dict[str, Any] | None = None,
                   output: str | Path | None = None) -> dict[str, Any]:
    """The experiment grid of ``recipe`` at ``budget``: base < budget < ``overrides`` (training config keys, which
    also replace grid axes and runs' keys of the same name)."""
    if budget not in BUDGETS:
        raise ConfigError(f"budget {budget!r} is not known; use one of {', '.join(BUDGETS)}")
    data = anchor_paths(load_yaml(recipe.path), recipe.path)  # the recipe's own paths only, not the user's
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
    _user_wins(data, overrides or {})
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


@dataclass(frozen=True)
class RecipeOutcome:
    """What a recipe command did: its experiment folder, its resolved ``grid.yaml`` and, for a dry run, the checked
    plan (nothing trained)."""

    output: Path
    grid: Path
    plan: ExperimentPlan | None = None  # a dry run

    def lines(self) -> list[str]:
        """What the command prints: the planned runs, ensembles and grid file of a dry run, else the comparison."""
        if self.plan is not None:
            return [*plan_lines(self.plan, models=True), f"grid: {self.grid}"]
        return [f"comparison: {self.output / 'comparison.html'} ({self.output / 'comparison.csv'})"]


def recipe_job(name: str, budget: str | None = None, config: str | Path | None = None,
               overrides: dict[str, Any] | None = None, dry_run: bool = False, progress: bool = True,
               directory: str | Path | None = None) -> RecipeOutcome:
    """``covidscreen train --recipe NAME`` (and ``covidscreen recipe NAME``): resolve the recipe at ``budget``
    (default :data:`DEFAULT_BUDGET`) with the user's keys (``config`` YAML < ``overrides``), then write and check
    its grid and list its runs (``dry_run``), or run (resume) it.

    Raises:
        ConfigError: an unknown recipe or budget, or a key or value that a run's config refuses.
    """
    keys, output = user_overrides(config, overrides)
    budget = budget or DEFAULT_BUDGET
    if dry_run:
        grid = write_recipe_grid(find_recipe(name, directory), budget, keys, output)
        return RecipeOutcome(grid.parent, grid, load_plan(grid))
    out = run_recipe(name, budget, keys, output, progress=progress, directory=directory)
    return RecipeOutcome(out, out / "grid.yaml")

