"""Every recipe resolves at every budget and runs end to end at the tiny budget, so that none rots; the recipe files
are found whatever the working directory; the user's keys win over the recipe's."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import covidscreen
from covidscreen.errors import ConfigError
from covidscreen.workflows.experiment import load_plan
from covidscreen.workflows.recipes import (
    BUDGETS,
    find_recipe,
    list_recipes,
    recipe_dir,
    resolve_recipe,
    run_recipe,
    user_overrides,
    write_recipe_grid,
)

RECIPES = [r.name for r in list_recipes()]
PUBLISHED = {"deep_covid", "castiglioni", "bolhassani", "zhao", "lee", "umair", "polat", "chen_ct", "nguon", "gurpur"}


def test_one_recipe_per_published_system_each_with_an_honest_header():
    assert PUBLISHED <= set(RECIPES)
    for r in list_recipes():
        for part in ("Paper:", "Faithful:", "Differs:", f"covidscreen train --recipe {r.name}"):
            assert part in r.header, f"{r.path} header lacks {part!r}"


@pytest.mark.parametrize("budget", BUDGETS)
def test_every_recipe_resolves_and_validates_at_every_budget(tmp_path, budget):
    for name in RECIPES:
        grid = write_recipe_grid(find_recipe(name), budget, {"device": "cpu"}, tmp_path / name)
        plan = load_plan(grid)
        assert plan.runs and all(r.cfg.output.startswith(str(tmp_path / name)) for r in plan.runs)
        if budget == "tiny":  # tiny really is tiny
            assert all(r.cfg.epochs == 1 and r.cfg.image_size <= 64 and not r.cfg.pretrained and r.cfg.bootstrap == 0
                       and not r.cfg.audit for r in plan.runs)
            assert plan.bootstrap == 0


def test_unknown_recipe_budget_or_key_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="deep_covid"):
        find_recipe("deep_covit")
    with pytest.raises(ConfigError, match="tiny, laptop, paper"):
        write_recipe_grid(find_recipe("lee"), "huge", {}, tmp_path / "a")
    with pytest.raises(ConfigError, match="unknown key 'optimiser'"):
        write_recipe_grid(find_recipe("lee"), "tiny", {"optimiser": "sgd"}, tmp_path / "b")


def test_recipes_are_package_data_found_from_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("COVIDSCREEN_RECIPES", raising=False)
    monkeypatch.chdir(tmp_path)  # no configs/ or recipes/ here
    assert recipe_dir() == Path(covidscreen.__file__).parent / "recipes"
    assert PUBLISHED <= {r.name for r in list_recipes()}
    grid = write_recipe_grid(find_recipe("lee"), "tiny", {"device": "cpu"}, "out")
    assert grid == Path("out") / "grid.yaml" and load_plan(grid).runs
    monkeypatch.setenv("COVIDSCREEN_RECIPES", str(tmp_path / "mine"))  # a folder of one's own recipes instead
    with pytest.raises(ConfigError, match="COVIDSCREEN_RECIPES"):
        list_recipes()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "x.yaml").write_text("# X: mine\nbase: {}\nbudget: {laptop: {}}\n")
    assert [r.name for r in list_recipes()] == ["x"]


def test_paths_in_a_recipe_resolve_against_the_data_root_and_the_recipe_not_the_working_directory(tmp_path,
                                                                                                   monkeypatch):
    root, mine, elsewhere = tmp_path / "data", tmp_path / "mine", tmp_path / "elsewhere"
    for folder in (root / "ct", mine / "seg", elsewhere):
        folder.mkdir(parents=True)
    (mine / "r.yaml").write_text(
        "# R: mine\nbase: {data: ct, weights: w/lite0.safetensors, segmentation_model: seg}\n"
        "grid: {preprocess.segmentation_model: [seg, /abs/seg]}\n"
        "runs: [{name: a, init_from: 'run:b'}, {name: c, init_from: ../runs/x}]\nbudget: {laptop: {}}\n")
    monkeypatch.setenv("COVIDSCREEN_RECIPES", str(mine))
    monkeypatch.setenv("COVIDSCREEN_DATA", str(root))
    monkeypatch.chdir(elsewhere)  # nothing here: the working directory must not matter
    data = resolve_recipe(find_recipe("r"), "laptop", {"cache_dir": "mycache"})
    base = data["base"]
    assert base["data"] == str(root / "ct") and base["weights"] == str(mine / "w" / "lite0.safetensors")
    assert base["segmentation_model"] == str(mine / "seg") and base["cache_dir"] == "mycache"  # the user's: as given
    assert data["grid"]["preprocess.segmentation_model"] == [str(mine / "seg"), "/abs/seg"]
    assert [r["init_from"] for r in data["runs"]] == ["run:b", str(tmp_path / "runs" / "x")]
    (mine / "bad.yaml").write_text("# Bad\nbase: {data: nowhere}\nbudget: {laptop: {}}\n")
    with pytest.raises(ConfigError, match="data 'nowhere' is not a folder of the data root"):
        resolve_recipe(find_recipe("bad"), "laptop")


def test_user_keys_win_over_base_grid_axes_and_runs():
    lee = resolve_recipe(find_recipe("lee"), "laptop", {"model": "vgg19", "epochs": 1})
    assert lee["grid"] == {"model": ["vgg19"], "train_stages": [0, 1, 2, 3, None]} and lee["base"]["epochs"] == 1
    bol = resolve_recipe(find_recipe("bolhassani"), "paper", {"loss": "focal", "model": "resnet18"})
    assert all(run["loss"] == "focal" for run in bol["runs"] if "loss" in run) and bol["base"]["model"] == "resnet18"
    assert [run["name"] for run in bol["runs"]][0] == "xray_pretraining"  # names are not keys
    untouched = resolve_recipe(find_recipe("lee"), "laptop", {})
    assert untouched["grid"]["model"] == ["vgg16", "vgg19"]


def test_lee_recipe_offers_vgg16_and_vgg19(tmp_path):
    plan = load_plan(write_recipe_grid(find_recipe("lee"), "paper", {"device": "cpu"}, tmp_path / "lee"))
    assert {r.cfg.model for r in plan.runs} == {"vgg16", "vgg19"}
    assert sorted({r.cfg.train_stages for r in plan.runs}, key=str) == [0, 1, 2, 3, None]


def test_user_overrides_read_a_config_file_below_the_options(tmp_path):
    (tmp_path / "c.yaml").write_text("epochs: 7\nlr: 0.01\noutput: from_yaml\n")
    keys, output = user_overrides(tmp_path / "c.yaml", {"lr": 0.1})
    assert keys == {"epochs": 7, "lr": 0.1} and output == "from_yaml"
    assert user_overrides(None, {"output": "o", "seed": 1}) == ({"seed": 1}, "o")


def _label_tree(root, labels=("cat", "dog"), n=8, size=40):
    """An image-folder tree outside chest imaging: DIR/<label>/*.png."""
    rng = np.random.default_rng(0)
    for i, label in enumerate(labels):
        (root / label).mkdir(parents=True)
        for k in range(n):
            arr = (rng.random((size, size, 3)) * 80 + 60 * i + 40).astype(np.uint8)
            Image.fromarray(arr).save(root / label / f"{k}.png")
    return root


@pytest.mark.slow
@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_runs_at_the_tiny_budget(tmp_path, shared_data, monkeypatch, name):
    overrides = {"device": "cpu", "data": str(shared_data / "cxr")}
    if name == "chen_ct":  # no data given: modality ct picks the data root's ct/ folder
        monkeypatch.setenv("COVIDSCREEN_DATA", str(shared_data))
        overrides = {"device": "cpu"}
    if name == "nguon":  # any two-class <label>/ tree, not only chest X-rays
        overrides = {"device": "cpu", "data": str(_label_tree(tmp_path / "pets")), "labels": None,
                     "positive_class": "dog"}
    out = run_recipe(name, "tiny", overrides, tmp_path / "out", progress=False)
    table = pd.read_csv(out / "comparison.csv")
    failed = table[table["status"].astype(str).str.startswith(("failed", "not built"))]
    assert failed.empty, failed[["status"]].to_string()
    plan = load_plan(out / "grid.yaml")
    for run in plan.runs:
        assert (tmp_path / "out" / "runs" / run.name).is_dir()
    assert (out / "comparison.html").is_file()


def test_recipe_job_dry_run_writes_the_grid_and_lists_its_runs(tmp_path):
    from covidscreen.workflows.recipes import recipe_job

    outcome = recipe_job("nguon", "tiny", None, {"device": "cpu", "output": str(tmp_path / "n")}, dry_run=True)
    assert outcome.grid == tmp_path / "n" / "grid.yaml" and outcome.grid.is_file()
    lines = outcome.lines()
    assert lines[-1] == f"grid: {outcome.grid}" and len(lines) == len(outcome.plan.runs) + len(
        outcome.plan.ensembles) + 1
    assert all(str(tmp_path / "n" / "runs") in line for line in lines[:len(outcome.plan.runs)])
    with pytest.raises(ConfigError, match="budget 'huge'"):
        recipe_job("nguon", "huge", None, {"output": str(tmp_path / "h")}, dry_run=True)
