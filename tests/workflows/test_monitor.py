"""Drift monitoring against a run's validation baseline: no alarm on a stream drawn from the baseline, an alarm soon
after the stream shifts; the audit-log source; the bad inputs."""

import json

import numpy as np
import pandas as pd
import pytest

from covidscreen.auditlog import AuditLog, PredictionRecord, utc_now
from covidscreen.errors import ConfigError, DataError
from covidscreen.inference.run import load_run
from covidscreen.ood import load_ood
from covidscreen.workflows.monitor import alpha_spent, monitor
from tests.test_cli import assert_clean_error, run_cli


def baseline_values(run_dir):
    preds = pd.read_csv(run_dir / "predictions.csv")
    return preds.loc[preds["split"] == "val", "prob_covid"].to_numpy(), load_ood(run_dir).val_scores


def stream_csv(path, probs, scores):
    pd.DataFrame({"path": [f"{i}.png" for i in range(len(probs))], "prob_covid": probs, "prob_normal": 1 - probs,
                  "prediction": "", "ood_score": scores, "in_distribution": "", "error": ""}).to_csv(path, index=False)
    return path


def test_alpha_spending_sums_to_alpha():
    assert sum(alpha_spent(0.05, k) for k in range(1, 200_000)) == pytest.approx(0.05, rel=1e-4)


def test_in_distribution_stream_then_shift(tiny_run, tmp_path):
    probs, scores = baseline_values(tiny_run)
    rng = np.random.default_rng(0)
    n_in, n_out = 300, 100
    # in distribution: resampled baseline values; then a shifted stream (scores far above, probabilities up)
    p = np.r_[rng.choice(probs, n_in), np.clip(rng.choice(probs, n_out) + 0.4, 0, 1)]
    s = np.r_[rng.choice(scores, n_in), rng.choice(scores, n_out) + 10 * (np.ptp(scores) + 1)]
    rec = monitor(str(stream_csv(tmp_path / "s.csv", p, s)), tiny_run, tmp_path / "out", window=50)
    saved = json.loads((tmp_path / "out" / "drift.json").read_text())
    assert saved["n_windows"] == 8 and len(saved["windows"]) == 8 and (tmp_path / "out" / "drift.png").is_file()
    for w in saved["windows"]:
        assert {"start", "end", "statistic", "p_value", "alarm"} <= set(w)
    assert not any(w["alarm"] for w in rec["windows"][:6])  # in distribution
    assert rec["windows"][6]["alarm"] and rec["first_alarm_window"] == 6  # the first shifted window


def test_audit_log_source_and_bad_inputs(tiny_run, tmp_path):
    run = load_run(tiny_run)
    probs, scores = baseline_values(tiny_run)
    db = tmp_path / "log.sqlite"
    with AuditLog(db) as log:
        log.record_many([PredictionRecord(
            time=utc_now(), request_id=f"r{i}", source="http", input_sha256="a" * 64, model_id=run.model_id,
            weights_sha256=run.weights_sha256, code_version="v", operating_point="youden",
            probabilities={"covid": float(probs[i % len(probs)]), "normal": 1 - float(probs[i % len(probs)])},
            decision="normal", latency_ms=1.0, ood_score=float(scores[i % len(scores)]), file_type="png",
            manufacturer="ACME" if i < 40 else "OTHER") for i in range(80)])
    rec = monitor(str(db), tiny_run, tmp_path / "o1", window=40)
    assert rec["n_windows"] == 2 and "chi2_manufacturer" in rec["windows"][1]["tests"]
    assert rec["windows"][1]["alarm"]  # every image of the second window comes from another manufacturer
    with AuditLog(tmp_path / "other.sqlite") as log:
        log.record(PredictionRecord(time=utc_now(), request_id="x", source="http", input_sha256="a" * 64,
                                    model_id="m", weights_sha256="f" * 64, code_version="v", operating_point="p",
                                    probabilities={"covid": 0.5}, decision="covid", latency_ms=1.0))
    with pytest.raises(DataError, match="another model"):
        monitor(str(tmp_path / "other.sqlite"), tiny_run, tmp_path / "o2", window=20)
    with pytest.raises(ConfigError, match="smaller than the minimum of 20"):
        monitor(str(db), tiny_run, tmp_path / "o3", window=5)
    with pytest.raises(DataError, match="fewer than one window"):
        monitor(str(db), tiny_run, tmp_path / "o4", window=100)
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"path": ["a"], "prob_x": [0.1]}).to_csv(bad, index=False)
    assert_clean_error(run_cli("monitor", str(bad), "--baseline", str(tiny_run), "--output", str(tmp_path / "o5")),
                       "another model")


def test_monitor_job_summary_names_the_first_alarm(tiny_run, tmp_path):
    from covidscreen.workflows.monitor import MonitorOutcome, monitor_job

    probs, scores = baseline_values(tiny_run)
    rng = np.random.default_rng(1)
    outcome = monitor_job(str(stream_csv(tmp_path / "s.csv", rng.choice(probs, 100), rng.choice(scores, 100))),
                          tiny_run, tmp_path / "out", window=50)
    rec = json.loads((tmp_path / "out" / "drift.json").read_text())
    assert outcome.record == rec and rec["first_alarm_window"] is None  # drawn from the baseline (seeded)
    assert outcome.summary() == f"2 window(s) of 50: 0 alarm(s); {tmp_path / 'out' / 'drift.json'}"
    alarm = {"n_windows": 3, "window": 20, "n_alarms": 1, "first_alarm_window": 1,
             "windows": [{"start": 0, "end": 20}, {"start": 20, "end": 40}, {"start": 40, "end": 60}]}
    assert MonitorOutcome(tmp_path, alarm).summary() == (f"3 window(s) of 20: 1 alarm(s), first in window 2 "
                                                         f"(predictions 20-40); {tmp_path / 'drift.json'}")
    with pytest.raises(ConfigError, match="--window 5 is smaller"):
        monitor_job(str(tmp_path / "s.csv"), tiny_run, tmp_path / "o2", window=5)
