"""The recipe commands: listing, a dry run, and one-line errors for bad input."""

from typer.testing import CliRunner

from covidscreen.cli import app
from covidscreen.cli.recipes import parse_sets
from tests.test_cli import assert_clean_error, run_cli

runner = CliRunner()


def test_recipes_lists_every_recipe_with_its_title():
    result = runner.invoke(app, ["recipes"])
    assert result.exit_code == 0, result.output
    assert "deep_covid" in result.output and "Minaee" in result.output and "gurpur" in result.output


def test_recipe_dry_run_writes_and_checks_the_grid(tmp_path):
    result = runner.invoke(app, ["recipe", "umair", "--budget", "paper", "--dry-run", "-o", str(tmp_path / "u"),
                                 "--set", "epochs=2"])
    assert result.exit_code == 0, result.output
    assert sum(line.startswith("model=") for line in result.output.splitlines()) == 16  # 4 models x 4 optimisers
    assert "epochs: 2" in (tmp_path / "u" / "grid.yaml").read_text()


def test_parse_sets_reads_yaml_values():
    assert parse_sets(["pretrained=false", "split=[0.5, 0.25, 0.25]", "labels=null"]) == {
        "pretrained": False, "split": [0.5, 0.25, 0.25], "labels": None}


def test_bad_recipe_input_is_one_line(tmp_path):
    assert_clean_error(run_cli("recipe", "nope", "--dry-run"), "no recipe named 'nope'")
    assert_clean_error(run_cli("recipe", "lee", "--set", "epochs", "--dry-run"), "KEY=VALUE")
    assert_clean_error(run_cli("recipe", "lee", "--budget", "huge", "--dry-run", "-o", str(tmp_path / "x")),
                       "budget 'huge'")
