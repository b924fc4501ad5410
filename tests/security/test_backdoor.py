"""`security/backdoor.py` without training: the detectors and the defences refuse a folder that holds no finished
experiment, naming the command that makes one, and an unknown defence setting (the end-to-end experiment:
test_backdoor_experiment.py)."""

from __future__ import annotations

import json

import pytest

from covidscreen.errors import DataError
from covidscreen.security.backdoor import evaluate_defences, evaluate_detectors, read_experiment
from tests.test_cli import assert_clean_error, run_cli_in_process


def test_no_backdoor_json_is_a_data_error_naming_the_command(tmp_path):
    needle = f"{tmp_path} has no backdoor.json: run 'covidscreen security backdoor CONFIG -o {tmp_path}' first"
    for job in (read_experiment, evaluate_detectors, evaluate_defences):
        with pytest.raises(DataError) as exc:
            job(tmp_path)
        assert str(exc.value) == needle
    (tmp_path / "backdoor.json").write_text(json.dumps({"records": []}))
    assert read_experiment(tmp_path) == {"records": []}


def test_defences_refuse_an_unknown_setting_in_one_line(tmp_path):
    proc = run_cli_in_process("security", "defences", str(tmp_path), "--method", "unlearn", "--set", "unlearn_rate=2")
    assert_clean_error(proc, "--set: unknown key 'unlearn_rate'. Known keys: .*unlearn_random")
