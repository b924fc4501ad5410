"""``covidscreen train`` and ``covidscreen quickstart`` as one job: which of the three modes runs (a published
system's recipe, continuing an interrupted run, or one fit of a config from defaults < YAML < options), and the
options that each mode refuses, so that the command line only parses and prints.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import resolve_train_config
from ..errors import ConfigError
from .finish import resume_training
from .fit import fit
from .recipes import RecipeOutcome, recipe_job


@dataclass(frozen=True)
class TrainOutcome:
    """What :func:`train_job` did: the run folder it trained (or continued), or the recipe it ran or planned."""

    run: Path | None = None
    recipe: RecipeOutcome | None = None

    def lines(self) -> list[str]:
        """What the command prints: the recipe's lines, else where the run's report is."""
        if self.recipe is not None:
            return self.recipe.lines()
        return [f"report: {self.run / 'report.html'}"]


def check_resume_options(run_dir: Path, config: str | Path | None, full_finetune: bool,
                         overrides: dict[str, Any]) -> None:
    """Refuse options that would change a resumed run: it continues with the config it was started with, and only
    the device may differ.

    Raises:
        ConfigError: naming the options to drop.
    """
    others = sorted(k for k in overrides if k != "device") + (["config"] if config else []) + (
        ["full_finetune"] if full_finetune else [])
    if others:
        raise ConfigError(f"--resume continues {run_dir} with the config it was started with; drop "
                          f"{', '.join('--' + k.replace('_', '-') for k in others)} (only --device may change)")


def train_job(config: str | Path | None = None, overrides: dict[str, Any] | None = None, full_finetune: bool = False,
              resume: Path | None = None, recipe: str | None = None, budget: str | None = None,
              dry_run: bool = False, progress: bool = True) -> TrainOutcome:
    """``covidscreen train``: with ``recipe``, run (or, with ``dry_run``, plan) that recipe at ``budget``, the other
    keys overriding the recipe's; with ``resume``, continue that run folder from its last complete epoch; else fit
    the config of defaults < ``config`` YAML < ``overrides`` (``full_finetune``: every stage trains).

    Raises:
        ConfigError: a combination of options that no mode takes (``--resume`` with a recipe, ``--budget`` or
            ``--dry-run`` without one, a resumed run given other options than ``--device``), or a bad key or value.
    """
    overrides = dict(overrides or {})
    if recipe is not None:
        if resume is not None:
            raise ConfigError("--resume continues one run; a recipe resumes by running the same "
                              f"covidscreen train --recipe {recipe} command again")
        keys = {**overrides, **({"train_stages": None} if full_finetune else {})}
        return TrainOutcome(recipe=recipe_job(recipe, budget, config, keys, dry_run, progress=progress))
    if dry_run or budget is not None:
        raise ConfigError(f"{'--dry-run' if dry_run else '--budget'} needs --recipe NAME (covidscreen recipes lists "
                          "them)")
    if resume is not None:
        check_resume_options(resume, config, full_finetune, overrides)
        return TrainOutcome(run=resume_training(resume, device=overrides.get("device"), progress=progress))
    cfg = resolve_train_config(config, **overrides)
    if full_finetune:
        cfg = dataclasses.replace(cfg, train_stages=None)
    return TrainOutcome(run=fit(cfg, progress=progress))
