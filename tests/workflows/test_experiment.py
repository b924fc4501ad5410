"""Grid files: expansion, checks before anything runs, resuming."""

import pytest
import yaml

from covidscreen.config import TrainConfig, to_dict
from covidscreen.errors import ConfigError
from covidscreen.workflows.experiment import load_plan
from covidscreen.workflows.resume import is_finished


def _grid(tmp_path, data: dict):
    p = tmp_path / "grid.yaml"
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    return p


def test_grid_expands_to_the_cartesian_product(tmp_path):
    p = _grid(tmp_path, {"base": {"max_per_class": 20, "epochs": 1},
                         "grid": {"loss": ["cross_entropy", "focal"], "mixup_alpha": [0.0, 0.2],
                                  "imbalance": {"weighted": {"class_weights": True},
                                                "balanced": {"sampler": "balanced", "class_weights": False}}},
                         "runs": [{"name": "head only", "train_stages": 0}],
                         "ensembles": {"all_of_them": "all", "pair": ["loss=focal__mixup_alpha=0.2__imbalance=weighted",
                                                                      "head_only"]}})
    plan = load_plan(p, tmp_path / "out")
    assert len(plan.runs) == 2 * 2 * 2 + 1
    names = [r.name for r in plan.runs]
    assert names[0] == "loss=cross_entropy__mixup_alpha=0.0__imbalance=weighted" and names[-1] == "head_only"
    focal_bal = plan.runs[names.index("loss=focal__mixup_alpha=0.2__imbalance=balanced")].cfg
    assert (focal_bal.loss, focal_bal.mixup_alpha, focal_bal.sampler, focal_bal.class_weights) == (
        "focal", 0.2, "balanced", False)
    assert focal_bal.max_per_class == 20 and focal_bal.output == str(tmp_path / "out" / "runs" / names[7])
    assert plan.ensembles["all_of_them"] == names and len(plan.ensembles["pair"]) == 2
    assert plan.axes == ["loss", "mixup_alpha", "imbalance", "train_stages"]
    assert plan.value(plan.runs[0], "train_stages") == "5" and plan.value(plan.runs[-1], "imbalance") == "-"


@pytest.mark.parametrize("data,needle", [
    ({"gird": {}}, "unknown key 'gird'"),
    ({"grid": {"folds": [5, 1]}}, "run 'folds=1': config key 'folds'"),
    ({"grid": {"lossy": ["focal"]}}, "unknown key 'lossy'"),
    ({"grid": {"loss": "focal"}}, "grid axis 'loss' must be a non-empty list"),
    ({"grid": {"mixup_alpha": ["lots"]}}, "key 'mixup_alpha' has value 'lots' of the wrong type"),
    ({"base": {"output": "x"}}, "key 'output' is set per run"),
    ({"base": {"epochs": 0}}, "config key 'epochs'"),
    ({"grid": {"seed": [0, 1]}, "ensembles": {"e": ["seed=0", "seed=7"]}}, "unknown run(s) seed=7"),
    ({"grid": {"seed": [0, 1]}, "ensembles": {"e": ["seed=0"]}}, "at least two"),
    ({"runs": [{"name": "b", "init_from": "run:a"}]}, "names no run listed before it"),
    ({"runs": [{"name": "a"}, {"name": "a"}]}, "occur twice"),
    ({"bootstrap": -1}, "key 'bootstrap'"),
])
def test_bad_grids_are_refused_before_anything_runs(tmp_path, data, needle):
    with pytest.raises(ConfigError) as exc:
        load_plan(_grid(tmp_path, data), tmp_path / "out")
    assert needle in str(exc.value) and "\n" not in str(exc.value)


def test_init_from_an_earlier_run_of_the_experiment(tmp_path):
    p = _grid(tmp_path, {"runs": [{"name": "a", "sites": ["kermany"]}, {"name": "b", "init_from": "run:a"}]})
    plan = load_plan(p, tmp_path / "out")
    assert plan.runs[1].cfg.init_from == str(tmp_path / "out" / "runs" / "a")


def test_shipped_grids_are_valid():
    from pathlib import Path

    grids = sorted((Path(__file__).resolve().parents[2] / "configs" / "experiments").glob("*.yaml"))
    assert len(grids) >= 5
    for g in grids:
        assert load_plan(g).runs


def test_shipped_generalisation_grid_expands_to_seeds_by_variants():
    """The issue-6 grid (formerly run by its own small runner): 3 seeds x the variants, one config each."""
    from pathlib import Path

    from covidscreen.reporting.comparison import seed_variants

    plan = load_plan(Path(__file__).resolve().parents[2] / "configs" / "experiments" / "generalisation.yaml")
    names = [r.name for r in plan.runs]
    variants = {n.split("__variant=")[1] for n in names}
    assert names[0] == "seed=0__variant=baseline" and plan.grid_axes == ["seed", "variant"]
    assert seed_variants(plan) == ["variant"] and all(r.from_grid for r in plan.runs)
    assert {"lung_crop", "lung_mask", "clahe", "site_balanced", "adversarial", "combined"} <= variants
    assert len(names) == 3 * len(variants)
    cfgs = {r.name: r.cfg for r in plan.runs}
    assert cfgs["seed=1__variant=baseline"].preprocess.roi == "none"
    assert cfgs["seed=1__variant=lung_mask"].preprocess.roi == "lungs-mask"
    assert cfgs["seed=2__variant=baseline"].seed == 2
    assert cfgs["seed=0__variant=adversarial"].adversarial_weight > 0
    assert cfgs["seed=0__variant=site_balanced"].site_balanced
    assert all(c.keep_mixed_sites and c.image_size == cfgs["seed=0__variant=baseline"].image_size
               for c in cfgs.values())
    assert len({c.output for c in cfgs.values()}) == len(names)
    assert all(Path(c.output).parent == plan.output / "runs" for c in cfgs.values())


def test_resume_detects_finished_runs_and_refuses_other_configs(tmp_path):
    cfg = TrainConfig(output=str(tmp_path / "r"), epochs=2).validate()
    run = tmp_path / "r"
    assert not is_finished(run, cfg)
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg)))
    (run / "metrics.json").write_text("{}")
    assert not is_finished(run, cfg)  # no checkpoint yet: interrupted, will be redone
    (run / "model.json").write_text("{}")
    assert is_finished(run, cfg)
    from dataclasses import replace

    assert is_finished(run, replace(cfg, device="cpu", output="elsewhere"))  # where/how it runs does not matter
    with pytest.raises(ConfigError, match="epochs: 2 -> 3"):
        is_finished(run, replace(cfg, epochs=3))


def test_experiment_job_dry_run_lists_the_runs_and_trains_nothing(tmp_path):
    from covidscreen.workflows.experiment import experiment_job

    p = _grid(tmp_path, {"grid": {"seed": [0, 1]}, "ensembles": {"both": "all"}})
    outcome = experiment_job(p, tmp_path / "out", dry_run=True)
    assert outcome.plan is not None and not (tmp_path / "out" / "runs").exists()
    assert outcome.lines() == [f"seed=0: {tmp_path / 'out' / 'runs' / 'seed=0'}",
                               f"seed=1: {tmp_path / 'out' / 'runs' / 'seed=1'}", "ensemble both: seed=0, seed=1"]
    with pytest.raises(ConfigError, match="unknown key 'gird'"):
        experiment_job(_grid(tmp_path, {"gird": {}}), tmp_path / "out", dry_run=True)
