"""The recipe commands: `covidscreen train --recipe NAME` (and its alias `covidscreen recipe NAME`), listing, dry
runs, options that override the recipe, running from another folder, and one-line errors for bad input."""

from typer.testing import CliRunner

from covidscreen.cli import app
from covidscreen.cli.recipes import parse_sets
from covidscreen.errors import ConfigError
from tests.test_cli import assert_clean_error, run_cli_in_process

runner = CliRunner()


def test_recipes_lists_every_recipe_with_its_title():
    result = runner.invoke(app, ["recipes"])
    assert result.exit_code == 0, result.output
    assert "deep_covid" in result.output and "Minaee" in result.output and "gurpur" in result.output


def test_train_recipe_dry_run_writes_and_checks_the_grid(tmp_path):
    result = runner.invoke(app, ["train", "--recipe", "umair", "--budget", "paper", "--dry-run",
                                 "-o", str(tmp_path / "u"), "--epochs", "2"])
    assert result.exit_code == 0, result.output
    assert sum(line.startswith("model=") for line in result.output.splitlines()) == 16  # 4 models x 4 optimisers
    assert "epochs: 2" in (tmp_path / "u" / "grid.yaml").read_text()


def test_train_options_override_the_recipe_and_its_grid(tmp_path):
    (tmp_path / "c.yaml").write_text("lr: 0.05\nepochs: 9\n")
    result = runner.invoke(app, ["train", "--recipe", "lee", "--budget", "paper", "--dry-run", "-o",
                                 str(tmp_path / "l"), "--model", "vgg19", "--full-finetune", "-c",
                                 str(tmp_path / "c.yaml"), "--epochs", "3"])
    assert result.exit_code == 0, result.output
    runs = [line for line in result.output.splitlines() if line.startswith("model=")]
    name = "model=vgg19__train_stages=null"
    assert runs == [f"{name}: vgg19, {tmp_path / 'l' / 'runs' / name}"]
    grid = (tmp_path / "l" / "grid.yaml").read_text()
    assert "lr: 0.05" in grid and "epochs: 3" in grid  # the YAML file's keys, then the options'


def test_recipe_alias_still_runs_recipes_with_set(tmp_path):
    result = runner.invoke(app, ["recipe", "nguon", "--budget", "tiny", "--dry-run", "-o", str(tmp_path / "n"),
                                 "--set", "labels=null", "--set", "positive_class=dog"])
    assert result.exit_code == 0, result.output
    grid = (tmp_path / "n" / "grid.yaml").read_text()
    assert "labels: null" in grid and "positive_class: dog" in grid


def test_parse_sets_reads_yaml_values():
    assert parse_sets(["pretrained=false", "split=[0.5, 0.25, 0.25]", "labels=null"]) == {
        "pretrained": False, "split": [0.5, 0.25, 0.25], "labels": None}


def test_recipes_run_from_any_working_directory(tmp_path, monkeypatch):
    """The recipe files ship inside the package: a user elsewhere (or with a pip-installed package) finds them.
    Through main() in this process, run from an empty folder (train's subprocess runs: test_cli.py, test_config.py)."""
    monkeypatch.delenv("COVIDSCREEN_RECIPES", raising=False)
    proc = run_cli_in_process("train", "--recipe", "lee", "--budget", "tiny", "--dry-run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "runs" / "recipes" / "lee-tiny" / "grid.yaml").is_file()
    assert "model=vgg19__train_stages=1" in proc.stdout


def test_bad_recipe_input_is_one_line(tmp_path):
    out = str(tmp_path / "x")
    # through main() in process (train's subprocess runs: the test above, test_cli.py)
    assert_clean_error(run_cli_in_process("train", "--recipe", "nope", "--dry-run", "-o", out),
                       "no recipe named 'nope'; recipes: bolhassani, castiglioni, .*deep_covid")
    assert_clean_error(run_cli_in_process("train", "--budget", "tiny"), "--budget needs --recipe")
    for args, message in [(["recipe", "nope", "--dry-run"], "no recipe named 'nope'"),
                          (["recipe", "lee", "--set", "epochs", "--dry-run"], "KEY=VALUE"),
                          (["train", "--recipe", "lee", "--budget", "huge", "--dry-run", "-o", out], "budget 'huge'"),
                          (["train", "--dry-run"], "--dry-run needs --recipe"),
                          (["train", "--recipe", "lee", "--resume", out], "same covidscreen train --recipe lee")]:
        result = runner.invoke(app, args)  # in process: the ConfigError that main() prints as one line, exit 2
        assert isinstance(result.exception, ConfigError) and message in str(result.exception), (args, result.output)
