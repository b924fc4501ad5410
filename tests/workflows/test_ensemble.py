"""`workflows/ensemble.py` `ensemble_job`: `covidscreen ensemble`'s figures read back from the folder it built,
validation first, test only when asked, and the line for members that share no split."""

import json
from pathlib import Path

from covidscreen.workflows.ensemble import EnsembleOutcome, ensemble_job
from tests.inference.test_ensemble import _member


def test_the_job_reads_the_common_split_figures_back(tmp_path):
    (a, _), (b, _) = _member(tmp_path, "a", 0), _member(tmp_path, "b", 1)
    outcome = ensemble_job([a, b], tmp_path / "ens")
    m = json.loads((tmp_path / "ens" / "metrics.json").read_text())
    assert outcome.common_split and outcome.n_members == 2
    assert outcome.val == m["val"]["covid_vs_rest"] and outcome.test == m["covid_vs_rest"]
    lines = outcome.lines()
    assert lines[0].startswith("ensemble of 2 on the members' common validation split: ROC AUC")
    assert "common test split" in lines[1] and lines[2] == f"report: {tmp_path / 'ens' / 'report.html'}"
    hidden = ensemble_job([a, b], tmp_path / "ens2", show_test=False).lines()
    assert len(hidden) == 2 and "test split:" not in "\n".join(hidden) and "report.html shows" in hidden[1]


def test_members_split_differently_say_so():
    tmp = Path("ens")
    outcome = EnsembleOutcome(tmp, 3, common_split=False)
    assert outcome.lines() == [f"ensemble of 3 written to {tmp} (members were split differently: no common test "
                               "split; evaluate it with --data)"]
