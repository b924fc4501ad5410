"""Fault injection on small real runs: a killed or interrupted training continues with the same result, images that
vanish or break during a run are left out and listed, a full disk while the epoch checkpoint is written keeps the
previous one. Each run: a tiny network at 32 px on two dozen synthetic images, 3 epochs."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

import covidscreen.runtime as runtime
import covidscreen.workflows.train as train_module
from covidscreen.config import resolve_train_config
from covidscreen.errors import CheckpointError, DiskFullError
from covidscreen.training.checkpointing import load_state, read_state_record
from covidscreen.training.testhook import PAUSE_AFTER_EPOCH, PAUSE_DIR
from covidscreen.workflows.finish import finish, resume_training
from covidscreen.workflows.fit import fit
from tests.conftest import LIVENESS_S, REPO, make_image_folder
from tests.test_cli import run_cli_in_process

pytestmark = pytest.mark.slow

SETTINGS = dict(model="mobilenet_v2_035", pretrained=False, image_size=32, epochs=3, batch_size=4,
                samples_per_epoch=None, split=[0.5, 0.25, 0.25], train_stages=None, mixup_alpha=0.2, patience=5)
TIMINGS = ("seconds",)  # keys that measure time, not results


def _config_file(folder: Path, root: Path) -> Path:
    """The settings as a YAML file (options given as None would leave the defaults in place)."""
    path = folder / "train.yaml"
    path.write_text(yaml.safe_dump({**SETTINGS, "data": str(root)}))
    return path


def _cfg(root: Path, out: Path):
    """The config `covidscreen train --config train.yaml --output OUT` runs."""
    return resolve_train_config(_config_file(out.parent, root), output=str(out))


def _without_timings(obj):
    if isinstance(obj, dict):
        return {k: _without_timings(v) for k, v in obj.items() if k not in TIMINGS}
    if isinstance(obj, list):
        return [_without_timings(v) for v in obj]
    return obj


def _same_results(a: Path, b: Path) -> None:
    """metrics.json identical (timings aside) to the last digit, predictions.csv byte for byte."""
    ma, mb = (json.loads((r / "metrics.json").read_text()) for r in (a, b))
    assert _without_timings(ma) == _without_timings(mb)
    assert (a / "predictions.csv").read_bytes() == (b / "predictions.csv").read_bytes()
    ha, hb = (pd.read_csv(r / "history.csv").drop(columns=["seconds"]) for r in (a, b))
    pd.testing.assert_frame_equal(ha, hb, check_exact=True)


def _env(cache: Path) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "COVIDSCREEN_CACHE": str(cache)}
    return env


def _start(args: list[str], cache: Path, hold: Path) -> subprocess.Popen:
    """Start training, held after epoch 1 by the test hook (training/testhook.py) until the test signals it; the
    child sees Ctrl-C even where this test runs with SIGINT ignored (nohup, `&` in a script)."""
    env = {**_env(cache), PAUSE_AFTER_EPOCH: "1", PAUSE_DIR: str(hold)}
    return subprocess.Popen([sys.executable, "-m", "covidscreen", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_until_held(hold: Path, proc: subprocess.Popen, limit: float = LIVENESS_S) -> int:
    """Until the process is held after its epoch checkpoint (it writes ``hold/paused`` and waits there); the epoch.
    Not a race: once the marker exists the process stays there until it is signalled."""
    deadline = time.monotonic() + limit
    while not (hold / "paused").exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"training ended before it was held after epoch 1 (rc {proc.returncode}):\n{out}\n{err}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"training was not held after epoch 1 within {limit} s (a stuck process, not a slow one)")
        time.sleep(0.05)
    return int((hold / "paused").read_text())


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("faults") / "data", n_per_class=12, size=40)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data_dir) -> Path:
    """The reference: the same config trained without interruption."""
    return fit(_cfg(data_dir, tmp_path_factory.mktemp("faults") / "reference"), progress=False)


def test_sigkill_mid_epoch_then_resume_gives_the_same_metrics(tmp_path, data_dir, uninterrupted):
    run, cache = tmp_path / "run", Path(os.environ["COVIDSCREEN_CACHE"])
    proc = _start(["train", "--config", str(_config_file(tmp_path, data_dir)), "--output", str(run)], cache,
                  tmp_path / "hold")
    assert _wait_until_held(tmp_path / "hold", proc) == 1
    assert read_state_record(run / "resume")["epoch"] == 1
    proc.send_signal(signal.SIGKILL)  # held after epoch 1: certainly mid-training, never after it
    proc.wait(timeout=LIVENESS_S)
    assert proc.returncode == -signal.SIGKILL
    assert read_state_record(run / "resume")["epoch"] == 1  # the last complete epoch, never a partial one
    assert not (run / "metrics.json").exists()

    # the command a user types next, through main() in this process (which never trained: nothing is in memory);
    # the interrupted training was the subprocess above, and the SIGINT test below starts another
    done = run_cli_in_process("train", "--resume", str(run), cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert "resume: epoch" in done.stdout
    _same_results(uninterrupted, run)
    assert not (run / "resume").exists()  # removed once the run is complete
    assert (run / "report.html").is_file() and (run / "model_card.md").is_file()


def test_sigint_saves_the_last_epoch_names_the_command_and_resumes(tmp_path, data_dir, uninterrupted):
    run, cache = tmp_path / "run", Path(os.environ["COVIDSCREEN_CACHE"])
    proc = _start(["train", "--config", str(_config_file(tmp_path, data_dir)), "--output", str(run)], cache,
                  tmp_path / "hold")
    assert _wait_until_held(tmp_path / "hold", proc) == 1
    proc.send_signal(signal.SIGINT)  # held after epoch 1: the interrupt certainly lands mid-training
    out, err = proc.communicate(timeout=LIVENESS_S)
    assert proc.returncode == 130, err
    assert "Traceback" not in err + out
    saved = read_state_record(run / "resume")["epoch"]
    assert saved == 1
    assert f"epoch {saved} is saved in {run / 'resume'}" in err
    assert f"covidscreen train --resume {run}" in err

    # `finish` refuses a run whose training has not ended, and says how to continue it
    with pytest.raises(CheckpointError, match="train --resume"):
        finish(run)
    resume_training(run, progress=False)
    _same_results(uninterrupted, run)


def test_full_disk_while_the_checkpoint_is_written_keeps_the_previous_one(tmp_path, data_dir, monkeypatch,
                                                                           uninterrupted):
    run = tmp_path / "run"
    real_fsync = os.fsync

    def fsync_with_full_disk(fd: int) -> None:  # the disk fills up while epoch 2's tensors are written
        if "epoch-002" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(runtime.os, "fsync", fsync_with_full_disk)
    with pytest.raises(DiskFullError) as info:
        fit(_cfg(data_dir, run), progress=False)
    msg = str(info.value)
    assert "epoch-002.safetensors" in msg and "MB" in msg and "epoch 1 is kept" in msg
    assert f"covidscreen train --resume {run}" in msg
    assert sorted(p.name for p in (run / "resume").iterdir()) == ["epoch-001.safetensors", "state.json"]
    tree, record = load_state(run / "resume")  # sha256-checked: complete
    assert record["epoch"] == 1 and len(tree["progress"]["history"]) == 1

    monkeypatch.setattr(runtime.os, "fsync", real_fsync)  # space was freed
    resume_training(run, progress=False)
    _same_results(uninterrupted, run)


def test_images_deleted_or_truncated_during_the_run_are_left_out_and_listed(tmp_path, monkeypatch):
    root = make_image_folder(tmp_path / "data", n_per_class=12, size=40)
    run = tmp_path / "run"
    table = pd.read_csv(root / "metadata.csv")
    split = {}
    real_epoch = train_module.train_one_epoch

    def epoch_then_break_files(*args, desc="", **kw):
        if desc.startswith("epoch 2") and not split:  # after caching, before evaluation and audit
            s = pd.read_csv(run / "split.csv")
            split.update(dict(zip(s["image"], s["split"], strict=True)))
            tests = [i for i in s["image"] if split[i] == "test"]
            trains = [i for i in s["image"] if split[i] == "train"]
            (root / tests[0]).unlink()
            (root / tests[1]).write_bytes((root / tests[1]).read_bytes()[:60])  # truncated mid-run
            (root / trains[0]).unlink()
            split.update(deleted=tests[0], truncated=tests[1], train_deleted=trains[0])
        return real_epoch(*args, desc=desc, **kw)

    monkeypatch.setattr(train_module, "train_one_epoch", epoch_then_break_files)
    fit(_cfg(root, run), progress=False)  # goes on: no exception

    skipped = pd.read_csv(run / "skipped.csv").set_index("path")
    deleted, truncated = str(root / split["deleted"]), str(root / split["truncated"])
    assert skipped.loc[deleted, "stage"] == "evaluation" and "vanished" in skipped.loc[deleted, "error"]
    assert skipped.loc[truncated, "stage"] == "evaluation" and "changed" in skipped.loc[truncated, "error"]
    assert skipped.loc[str(root / split["train_deleted"]), "stage"] == "training data changed"
    metrics = json.loads((run / "metrics.json").read_text())
    n_test = sum(v == "test" for k, v in split.items() if k in set(table["image"]))
    assert metrics["n_test"] == n_test - 2
    preds = pd.read_csv(run / "predictions.csv")
    assert not preds["image"].isin([split["deleted"], split["truncated"]]).any()
    audit = json.loads((run / "audit.json").read_text())
    assert str(root / split["train_deleted"]) in {r["path"] for r in audit["left_out"]}
    report = (run / "report.html").read_text()
    assert "Images left out" in report and split["deleted"] in report

    # finish redoes evaluation, audit and report on the run's own split; the broken files are left out again
    fingerprint = json.loads((run / "model.json").read_text())["split_fingerprint"]
    (run / "report.html").unlink()
    monkeypatch.setattr(train_module, "train_one_epoch", real_epoch)
    finish(run, progress=False)
    again = json.loads((run / "metrics.json").read_text())
    assert again["n_test"] == n_test - 2 and (run / "report.html").is_file()
    assert json.loads((run / "model.json").read_text())["split_fingerprint"] == fingerprint
    assert set(pd.read_csv(run / "skipped.csv")["path"]) >= {deleted, truncated}


def test_a_run_with_an_epoch_checkpoint_left_is_not_finished(tmp_path):
    from covidscreen.config import TrainConfig, to_dict
    from covidscreen.workflows.resume import is_finished

    cfg = TrainConfig(output=str(tmp_path / "r"), epochs=2).validate()
    run = tmp_path / "r"
    (run / "resume").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg)))
    for name in ("metrics.json", "model.json"):
        (run / name).write_text("{}")
    assert not is_finished(run, cfg)  # report or model card were cut short: grids and folds finish it again
    (run / "resume").rmdir()
    assert is_finished(run, cfg)


def test_a_run_from_before_the_precision_setting_continues_in_float32_on_a_cpu(tmp_path):
    from covidscreen.config import TrainConfig, to_dict
    from covidscreen.workflows.finish import run_config

    stored = to_dict(TrainConfig(device="cpu"))
    del stored["precision"]  # a config.yaml written before the setting existed: it trained in float32 on a CPU
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(stored))
    assert run_config(tmp_path).precision == "fp32"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({**stored, "precision": "auto"}))
    assert run_config(tmp_path).precision == "auto"  # a run that chose: kept
