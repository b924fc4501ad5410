"""The experiment runner: a grid of training configurations from one YAML file, each into its own run folder.

``covidscreen experiment GRID.yaml`` expands the grid, checks every configuration before training anything, trains
the runs that are not finished yet (so an interrupted experiment resumes where it stopped), builds the requested
ensembles and writes a comparison table (``comparison.csv``, ``comparison.html`` with a plot) of validation and test
metrics with patient-level bootstrap confidence intervals; within-site AUCs come first when a test split holds a
site with both classes, and a ``seed`` axis adds a per-variant summary over seeds with paired differences to the
baseline (``comparison_by_variant.{csv,md}``; see ``comparison.py``). Running it again on a finished experiment only
rewrites the comparison.

Grid file::

    description: focal loss vs cross-entropy (Bolhassani 2021)   # optional, shown in the report
    output: runs/experiments/focal_vs_ce                         # optional; default runs/experiments/<file name>
    base:                    # TrainConfig keys shared by every run
      max_per_class: 250
      image_size: 128
    grid:                    # the cartesian product of the axes
      loss: [cross_entropy, focal]          # an axis over one TrainConfig key
      imbalance:                            # a named axis: each value sets several keys at once
        weighted_ce: {class_weights: true}
        balanced_sampler: {sampler: balanced, class_weights: false}
    runs:                    # optional extra runs outside the product, in order: a name and the keys it changes
      - {name: no_augment, augment: false}
      - {name: from_no_augment, init_from: "run:no_augment"}   # "run:NAME": a run listed before this one
    ensembles:               # optional: name -> "all" (every run) or a list of run names
      ensemble_of_all: all
    bootstrap: 1000          # optional: bootstrap resamples of the confidence intervals (0 = none)

Run names join the axis values in grid order, each as ``axis=value`` (a named axis too: ``seed=0__variant=baseline``).

Layout: ``<output>/runs/<run name>/`` (run or cross-validation folders), ``<output>/ensembles/<name>/``,
``<output>/grid.yaml`` (a copy of the file), ``<output>/comparison.{csv,html,md,png}``, with a ``seed`` axis
``<output>/comparison_by_variant.{csv,md}``.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import shutil
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..config import DEFAULT_N_BOOT, TrainConfig, apply_overrides, load_yaml
from ..errors import ConfigError, CovidscreenError
from ..reporting.comparison import write_comparison
from ..workflows.ensemble import build_ensemble
from .fit import fit
from .resume import is_finished
from .train import log

GRID_KEYS = ("description", "output", "base", "grid", "runs", "ensembles", "bootstrap")


@dataclass
class PlannedRun:
    """One configuration of the grid."""

    name: str
    params: dict[str, Any]  # axis -> value shown in the table
    cfg: TrainConfig
    from_grid: bool = False  # a combination of the grid's axes (not an extra run)


@dataclass
class ExperimentPlan:
    """Everything an experiment will do, checked before anything runs."""

    source: Path
    output: Path
    runs: list[PlannedRun]
    ensembles: dict[str, list[str]] = field(default_factory=dict)
    description: str = ""
    bootstrap: int = DEFAULT_N_BOOT
    grid_axes: list[str] = field(default_factory=list)  # the axes under 'grid', in file order

    @property
    def axes(self) -> list[str]:
        """Axes whose value differs between runs (the table's parameter columns)."""
        keys: list[str] = []
        for r in self.runs:
            keys += [k for k in r.params if k not in keys]
        return [k for k in keys if len({self.value(r, k) for r in self.runs}) > 1]

    @staticmethod
    def value(run: PlannedRun, axis: str) -> str:
        """What a run has on an axis: its grid value, else its config's value of that key, else ``-``."""
        if axis in run.params:
            return _show(run.params[axis])
        if hasattr(run.cfg, axis):
            return _show(getattr(run.cfg, axis))
        return "-"


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, list | tuple):
        return ",".join(_show(v) for v in value)
    return str(value)


def run_name(params: dict[str, Any]) -> str:
    """Folder-safe name of a run from its axis values, e.g. ``loss=focal__mixup_alpha=0.2``."""
    if not params:
        return "base"
    name = "__".join(f"{k}={_show(v)}" for k, v in params.items())
    return re.sub(r"[^A-Za-z0-9._=,+-]", "_", name)


def _mapping(value: Any, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a mapping of keys to values, not {type(value).__name__}")
    return value


def _axis_values(path: Path, axis: str, values: Any, known: set[str]) -> list[tuple[Any, dict[str, Any]]]:
    """``[(shown value, overrides)]`` of one grid axis."""
    where = f"{path}: grid axis '{axis}'"
    if isinstance(values, dict):  # named axis: value name -> overrides
        if not values:
            raise ConfigError(f"{where} has no values")
        return [(name, _mapping(ov, f"{where}, value '{name}'")) for name, ov in values.items()]
    if axis not in known:
        raise ConfigError(f"{where}: unknown key '{axis}'. An axis is a training config key "
                          f"({', '.join(sorted(known))}) with a list of values, or a name with a mapping of value "
                          "names to key/value mappings")
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{where} must be a non-empty list of values, got {values!r}")
    return [(v, {axis: v}) for v in values]


def _make_config(path: Path, name: str, overrides: dict[str, Any], output: Path,
                 earlier: list[str] | None = None) -> TrainConfig:
    if "output" in overrides:
        raise ConfigError(f"{path}, run '{name}': key 'output' is set per run by the experiment runner; use the "
                          "top-level 'output' of the grid file")
    init = overrides.get("init_from")
    if isinstance(init, str) and init.startswith("run:"):  # another run of this experiment, trained before
        ref = init[4:]
        if ref not in (earlier or []):
            raise ConfigError(f"{path}, run '{name}': key 'init_from' = {init!r} names no run listed before it "
                              f"(runs so far: {', '.join(earlier or []) or 'none'})")
        overrides = {**overrides, "init_from": str(output / "runs" / ref)}
    cfg = apply_overrides(TrainConfig(), overrides, source=f"{path}, run '{name}'")
    cfg = dataclasses.replace(cfg, output=str(output / "runs" / name))
    try:
        return cfg.validate()
    except ConfigError as exc:
        raise ConfigError(f"{path}, run '{name}': {exc}") from None


def load_plan(path: str | Path, output: str | Path | None = None) -> ExperimentPlan:
    """Read a grid file and check every configuration in it.

    Raises:
        ConfigError: unknown or malformed keys, a configuration that :meth:`TrainConfig.validate` rejects, duplicate
            run names or ensembles of unknown runs; the message names the file, the run and the key.
    """
    path = Path(path)
    data = load_yaml(path)
    for key in data:
        if key not in GRID_KEYS:
            raise ConfigError(f"{path}: unknown key '{key}'. Known keys: {', '.join(GRID_KEYS)}")
    out = Path(output or data.get("output") or Path("runs") / "experiments" / path.stem)
    base = _mapping(data.get("base"), f"{path}: 'base'")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    axes = [(axis, _axis_values(path, axis, values, known))
            for axis, values in _mapping(data.get("grid"), f"{path}: 'grid'").items()]
    runs: list[PlannedRun] = []
    for combo in itertools.product(*[values for _, values in axes]) if axes else []:
        params = {axis: shown for (axis, _), (shown, _) in zip(axes, combo, strict=True)}
        overrides = dict(base)
        for _, ov in combo:
            overrides.update(ov)
        name = run_name(params)
        runs.append(PlannedRun(name, params, _make_config(path, name, overrides, out), from_grid=True))
    extra = data.get("runs") or []
    if not isinstance(extra, list):
        raise ConfigError(f"{path}: 'runs' must be a list of mappings, each with a 'name'")
    for i, item in enumerate(extra):
        item = dict(_mapping(item, f"{path}: runs[{i}]"))
        name = item.pop("name", None)
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{path}: runs[{i}] needs a 'name' (a string)")
        safe = re.sub(r"[^A-Za-z0-9._=,+-]", "_", name)
        runs.append(PlannedRun(safe, dict(item), _make_config(path, safe, {**base, **item}, out,
                                                              [r.name for r in runs])))
    if not axes and not extra:
        runs.append(PlannedRun("base", {}, _make_config(path, "base", base, out)))
    names = [r.name for r in runs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"{path}: run name(s) {', '.join(dupes)} occur twice; give the extra runs other names")
    ensembles: dict[str, list[str]] = {}
    for ens, members in _mapping(data.get("ensembles"), f"{path}: 'ensembles'").items():
        members = names if members == "all" else members
        if not isinstance(members, list) or len(members) < 2:
            raise ConfigError(f"{path}: ensemble '{ens}' needs 'all' or a list of at least two run names")
        unknown = [m for m in members if m not in names]
        if unknown:
            raise ConfigError(f"{path}: ensemble '{ens}' lists unknown run(s) {', '.join(map(str, unknown))}; runs: "
                              f"{', '.join(names)}")
        ensembles[str(ens)] = list(members)
    boot = data.get("bootstrap", DEFAULT_N_BOOT)
    if not isinstance(boot, int) or isinstance(boot, bool) or boot < 0:
        raise ConfigError(f"{path}: key 'bootstrap' = {boot!r} is invalid: expected an integer >= 0")
    return ExperimentPlan(path, out, runs, ensembles, str(data.get("description") or ""), boot,
                          [axis for axis, _ in axes])


def run_experiment(path: str | Path, output: str | Path | None = None, progress: bool = True,
                   n_boot: int | None = None) -> Path:
    """Run (or resume) the experiment of a grid file and write its comparison; returns the experiment folder.

    A run that fails (e.g. diverging loss) is reported in the table as failed; the others still run.
    """
    plan = load_plan(path, output)
    plan.output.mkdir(parents=True, exist_ok=True)
    if plan.source.resolve() != (plan.output / "grid.yaml").resolve():
        shutil.copyfile(plan.source, plan.output / "grid.yaml")
    status: dict[str, str] = {}
    bar = tqdm(total=len(plan.runs) + len(plan.ensembles), desc=f"experiment {plan.source.stem}", unit="run",
               disable=not progress, position=0)
    for run in plan.runs:
        bar.set_postfix_str(run.name)
        if is_finished(run.cfg.output, run.cfg):
            status[run.name] = "finished earlier"
            log(f"[experiment] {run.name}: finished earlier, skipped")
        else:
            log(f"[experiment] {run.name}: training into {run.cfg.output}")
            t0 = time.time()
            try:
                fit(run.cfg, progress=progress)
                status[run.name] = f"trained in {(time.time() - t0) / 60:.1f} min"
            except (CovidscreenError, FloatingPointError, RuntimeError) as exc:
                status[run.name] = f"failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                log(f"[experiment] {run.name} failed:\n{traceback.format_exc()}")
        bar.update()
    run_dirs = {r.name: Path(r.cfg.output) for r in plan.runs}
    for ens, members in plan.ensembles.items():
        bar.set_postfix_str(ens)
        failed = [m for m in members if status.get(m, "").startswith("failed")]
        if failed:
            status[f"ensemble:{ens}"] = f"not built: member(s) {', '.join(failed)} failed"
        else:
            build_ensemble([run_dirs[m] for m in members], plan.output / "ensembles" / ens)
            status[f"ensemble:{ens}"] = f"built from {len(members)} runs"
        bar.update()
    bar.close()
    write_comparison(plan, status, n_boot=plan.bootstrap if n_boot is None else n_boot)
    return plan.output


@dataclass(frozen=True)
class ExperimentOutcome:
    """What ``covidscreen experiment`` did: the experiment folder, and for a dry run the checked plan (nothing
    trained)."""

    output: Path
    plan: ExperimentPlan | None = None  # a dry run

    def lines(self) -> list[str]:
        """What the command prints: the planned runs and ensembles of a dry run, else where the comparison is."""
        if self.plan is not None:
            return plan_lines(self.plan, models=False)
        return [f"comparison: {self.output / 'comparison.html'} ({self.output / 'comparison.csv'})"]


def plan_lines(plan: ExperimentPlan, models: bool = False) -> list[str]:
    """One line per planned run (its folder, after its model with ``models``) and one per ensemble."""
    lines = [f"{r.name}: {f'{r.cfg.model}, ' if models else ''}{r.cfg.output}" for r in plan.runs]
    return lines + [f"ensemble {name}: {', '.join(members)}" for name, members in plan.ensembles.items()]


def experiment_job(grid: str | Path, output: str | Path | None = None, dry_run: bool = False,
                   progress: bool = True) -> ExperimentOutcome:
    """``covidscreen experiment``: check the grid file and list its runs (``dry_run``), or run (resume) it.

    Raises:
        ConfigError: a grid file with a bad key or value (before anything trains).
    """
    plan = load_plan(grid, output)
    if dry_run:
        return ExperimentOutcome(plan.output, plan)
    return ExperimentOutcome(run_experiment(grid, output, progress=progress))

