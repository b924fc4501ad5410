"""``torchrun --nproc_per_node=2 -m covidscreen train`` and ``predict`` on CPU (gloo, loopback), against one process."""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from covidscreen.inference.predictor import Predictor
from covidscreen.training.distributed import state_digest
from tests.conftest import LIVENESS_S, make_image_folder
from tests.test_cli import run_cli_in_process

pytestmark = pytest.mark.slow  # torchrun with two ranks, and one process to compare with

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _env() -> dict:
    # loopback only; one intra-op thread per rank so that two ranks share the two cores instead of fighting
    return {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "covidscreen",
           *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=LIVENESS_S, env=_env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _single(*args: str) -> subprocess.CompletedProcess:
    """The same command in one process: run by main() in this one (the ranks above are the subprocesses; a new
    interpreter here would only add its imports)."""
    proc = run_cli_in_process(*args)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    root = make_image_folder(tmp / "data", n_per_class=16, size=40)
    cfg = tmp / "cfg.yaml"
    cfg.write_text("model: mobilenet_v2_035\npretrained: false\nimage_size: 32\nepochs: 2\nbatch_size: 8\n"
                   "samples_per_epoch: null\nsplit: [0.5, 0.25, 0.25]\ntrain_stages: null\naudit: false\n"
                   f"bootstrap: 0\ncache_dir: {tmp / 'cache'}\n")
    common = ("train", "--config", str(cfg), "--data", str(root), "--device", "cpu")
    scratch = set(Path(tempfile.gettempdir()).glob("covidscreen-rank*"))
    ddp = _torchrun(*common, "--output", str(tmp / "ddp"))
    ddp.leftover = set(Path(tempfile.gettempdir()).glob("covidscreen-rank*")) - scratch
    _single(*common, "--output", str(tmp / "one"))
    return root, tmp / "ddp", tmp / "one", ddp


def test_ranks_train_one_identical_checkpoint(runs):
    _, ddp, _, proc = runs
    info = json.loads((ddp / "distributed.json").read_text())
    assert info["world_size"] == 2 and info["backend"] == "gloo" and info["global_batch_size"] == 8
    digests = info["replica_state_sha256"]
    assert len(digests) == 2 and digests[0] == digests[1]
    # the checkpoint rank 0 wrote loads, and holds the weights every rank ended with
    assert state_digest(Predictor(ddp, device="cpu").model) == digests[0]
    assert proc.stdout.count("epoch 1/2:") == 1  # only rank 0 logs
    assert not proc.leftover  # the other rank's scratch folder (its copies of the per-epoch files) is removed


def test_metrics_match_one_process_within_noise(runs):
    _, ddp, one, _ = runs
    m_ddp, m_one = (json.loads((r / "metrics.json").read_text()) for r in (ddp, one))
    assert m_ddp["split_counts"] == m_one["split_counts"]
    h_ddp, h_one = pd.read_csv(ddp / "history.csv"), pd.read_csv(one / "history.csv")
    assert (h_ddp["train_images"] == h_one["train_images"]).all()  # same images per epoch, split across ranks
    # same data, seed, global batches and averaged gradients; only BatchNorm statistics (per rank: half batches)
    # and the augmentation draws differ
    assert abs(h_ddp["train_loss"].iloc[0] - h_one["train_loss"].iloc[0]) < 0.15
    assert abs(m_ddp["val"]["covid_vs_rest"]["roc_auc"] - m_one["val"]["covid_vs_rest"]["roc_auc"]) <= 0.25


def test_sharded_predict_equals_unsharded(runs, tmp_path):
    root, ddp, _, _ = runs
    _torchrun("predict", str(ddp), str(root / "images"), "--output", str(tmp_path / "sharded.csv"), "--device", "cpu")
    _single("predict", str(ddp), str(root / "images"), "--output", str(tmp_path / "one.csv"), "--device", "cpu")
    sharded, one = pd.read_csv(tmp_path / "sharded.csv"), pd.read_csv(tmp_path / "one.csv")
    assert len(one) == 32
    assert sharded["path"].tolist() == one["path"].tolist()
    assert sharded["prediction"].tolist() == one["prediction"].tolist()
    np.testing.assert_allclose(sharded["prob_covid"], one["prob_covid"], atol=1e-6)


def _assert_close(a, b, path="metrics"):
    """Two JSON values equal, floats within 1e-6."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _assert_close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert a == pytest.approx(b, abs=1e-6, nan_ok=True), path
    else:
        assert a == b, path


@pytest.mark.parametrize("external", [False, True], ids=["test-split", "data-folder"])
def test_sharded_evaluate_equals_unsharded(runs, tmp_path, external):
    root, ddp, _, _ = runs
    data = ("--data", str(root)) if external else ()
    proc = _torchrun("evaluate", str(ddp), *data, "--output", str(tmp_path / "sharded"), "--device", "cpu")
    assert proc.stdout.count("report:") == 1  # only rank 0 reports
    _single("evaluate", str(ddp), *data, "--output", str(tmp_path / "one"), "--device", "cpu")
    sharded, one = (pd.read_csv(tmp_path / d / "predictions.csv") for d in ("sharded", "one"))
    assert len(one) == (32 if external else 8)
    assert sharded["image"].tolist() == one["image"].tolist()
    assert sharded["prediction"].tolist() == one["prediction"].tolist()
    np.testing.assert_allclose(sharded["prob_covid"], one["prob_covid"], atol=1e-6)
    m_sharded, m_one = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("sharded", "one"))
    _assert_close(m_sharded, m_one)
    assert (tmp_path / "sharded" / "report.html").is_file()
