"""Every recipe resolves at every budget and runs end to end at the tiny budget, so that none rots."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from covidscreen.errors import ConfigError
from covidscreen.workflows.experiment import load_plan
from covidscreen.workflows.recipes import BUDGETS, find_recipe, list_recipes, run_recipe, write_recipe_grid

RECIPES = [r.name for r in list_recipes()]
PUBLISHED = {"deep_covid", "castiglioni", "bolhassani", "zhao", "lee", "umair", "polat", "chen_ct", "nguon", "gurpur"}


def test_one_recipe_per_published_system_each_with_an_honest_header():
    assert PUBLISHED <= set(RECIPES)
    for r in list_recipes():
        for part in ("Paper:", "Faithful:", "Differs:", f"covidscreen recipe {r.name}"):
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
def test_every_recipe_runs_at_the_tiny_budget(tmp_path, shared_data, name):
    overrides = {"device": "cpu", "data": str(shared_data / ("ct" if name == "chen_ct" else "cxr"))}
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
