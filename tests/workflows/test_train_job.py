"""`workflows/train_job.py`: `covidscreen train`'s choice between a recipe, a resumed run and one fit, and the
combinations of options each mode refuses (ConfigError, before anything trains)."""

from pathlib import Path

import pytest

from covidscreen.errors import ConfigError
from covidscreen.workflows import train_job as job
from covidscreen.workflows.train_job import TrainOutcome, check_resume_options, train_job


@pytest.fixture
def calls(monkeypatch):
    """Record what the job hands to fit and to resume_training instead of training."""
    seen = {}

    def fake_fit(cfg, progress=True):
        seen["fit"] = cfg
        return Path(cfg.output)

    def fake_resume(run_dir, device=None, progress=True):
        seen["resume"] = (run_dir, device)
        return Path(run_dir)

    monkeypatch.setattr(job, "fit", fake_fit)
    monkeypatch.setattr(job, "resume_training", fake_resume)
    return seen


@pytest.mark.parametrize("kwargs,needle", [
    ({"recipe": "lee", "resume": Path("r")}, "same covidscreen train --recipe lee command again"),
    ({"dry_run": True}, "--dry-run needs --recipe NAME"),
    ({"budget": "tiny"}, "--budget needs --recipe NAME"),
    ({"resume": Path("r"), "overrides": {"epochs": 3, "device": "cpu"}}, "drop --epochs (only --device may change)"),
    ({"resume": Path("r"), "full_finetune": True, "config": "c.yaml"}, "drop --config, --full-finetune"),
])
def test_combinations_no_mode_takes_are_config_errors(calls, kwargs, needle):
    with pytest.raises(ConfigError) as exc:
        train_job(**kwargs)
    assert needle in str(exc.value) and "\n" not in str(exc.value)
    assert not calls  # refused before anything trained


def test_check_resume_options_lets_the_device_change(tmp_path):
    check_resume_options(tmp_path, None, False, {"device": "cpu"})
    with pytest.raises(ConfigError, match=f"--resume continues {tmp_path} .* drop --lr, --model"):
        check_resume_options(tmp_path, None, False, {"model": "x", "lr": 0.1})


def test_fit_gets_defaults_yaml_then_options_and_full_finetune(calls, tmp_path):
    (tmp_path / "c.yaml").write_text("lr: 0.05\nepochs: 9\n")
    outcome = train_job(tmp_path / "c.yaml", {"epochs": 3, "output": str(tmp_path / "run"), "data": None},
                        full_finetune=True)
    cfg = calls["fit"]
    assert (cfg.lr, cfg.epochs, cfg.train_stages) == (0.05, 3, None)
    assert outcome == TrainOutcome(run=tmp_path / "run")
    assert outcome.lines() == [f"report: {tmp_path / 'run' / 'report.html'}"]


def test_resume_continues_the_run_on_the_given_device(calls, tmp_path):
    outcome = train_job(overrides={"device": "cpu"}, resume=tmp_path)
    assert calls == {"resume": (tmp_path, "cpu")} and outcome.run == tmp_path


def test_a_recipe_dry_run_plans_with_the_users_keys_and_trains_nothing(calls, tmp_path):
    outcome = train_job(overrides={"model": "vgg19", "output": str(tmp_path / "l")}, full_finetune=True,
                        recipe="lee", budget="paper", dry_run=True)
    assert not calls and outcome.run is None and outcome.recipe.plan is not None
    name = "model=vgg19__train_stages=null"
    assert outcome.lines() == [f"{name}: vgg19, {tmp_path / 'l' / 'runs' / name}",
                               f"grid: {tmp_path / 'l' / 'grid.yaml'}"]
