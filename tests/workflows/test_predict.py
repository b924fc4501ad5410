"""The predict job and the one engine choice that predict, serve and the DICOM node share."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from covidscreen.errors import CheckpointError, CovidscreenError, DataError
from covidscreen.inference.ensemble import write_manifest
from covidscreen.inference.run import load_run
from covidscreen.workflows import predict as job
from tests.serving.runs import make_run, xray_png


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    exported = make_run(root / "exported", onnx=True)
    plain = make_run(root / "plain")
    ens = root / "ens"
    write_manifest(ens, [load_run(exported), load_run(plain)], {"default": 0.5, "youden": 0.5}, "test")
    images = root / "images"
    images.mkdir()
    for i in range(3):
        xray_png(images / f"{i}.png", side=80, seed=i)
    (images / "bad.png").write_bytes(b"not a png")
    return {"exported": exported, "plain": plain, "ens": ens, "images": images}


def test_auto_backend_is_onnx_only_where_an_export_can_serve(runs, monkeypatch):
    assert job.choose_backend(load_run(runs["exported"]), "auto") == "onnx"
    assert job.choose_backend(load_run(runs["plain"]), "auto") == "torch"  # never exported
    assert job.choose_backend(load_run(runs["ens"]), "auto") == "torch"  # an ensemble runs in PyTorch
    assert job.choose_backend(load_run(runs["plain"]), "onnx") == "onnx"  # asked for: Predictor says what is missing
    monkeypatch.setattr(job, "_has_onnxruntime", lambda: False)
    assert job.choose_backend(load_run(runs["exported"]), "auto") == "torch"
    with pytest.raises(DataError, match="backend 'tensorrt' is unknown; use one of auto, torch, onnx"):
        job.choose_backend(load_run(runs["plain"]), "tensorrt")


def test_open_predictor_takes_every_decision_of_the_interfaces(runs):
    onnx = job.open_predictor(runs["exported"], "auto", "cpu", "sensitivity_0.95")
    assert onnx.backend == "onnx" and onnx.onnx is not None and onnx.threshold == 0.2
    ens = job.open_predictor(runs["ens"], "auto", "cpu")
    assert ens.backend == "torch" and ens.run.kind == "ensemble" and ens.threshold == 0.5
    with pytest.raises(DataError, match="operating point 'nope' is not in this run"):
        job.open_predictor(runs["plain"], "torch", "cpu", "nope")
    with pytest.raises(CheckpointError, match="has no ONNX export"):
        job.open_predictor(runs["plain"], "onnx", "cpu")
    sha = load_run(runs["plain"]).weights_sha256
    assert job.open_predictor(runs["plain"], "torch", "cpu", expect_sha256=sha).run.weights_sha256 == sha
    with pytest.raises(CheckpointError):
        job.open_predictor(runs["plain"], "torch", "cpu", expect_sha256="0" * 64)


def test_the_job_writes_json_streams_csv_and_adds_screen_columns(runs, tmp_path):
    inputs = [str(runs["images"])]
    table = job.predict_files_job(runs["plain"], inputs, device="cpu").table
    assert len(table) == 4 and (table["error"] != "").sum() == 1
    out = tmp_path / "p.json"
    done = job.predict_files_job(runs["plain"], inputs, out, device="cpu")
    assert json.loads(out.read_text()) == json.loads(table.to_json(orient="records"))
    assert done.summary() == f"4 file(s), 1 unreadable: {out}"
    csv = tmp_path / "p.csv"
    first = job.predict_files_job(runs["plain"], inputs, csv, device="cpu")
    assert first.streamed and first.summary() == f"4 file(s) scored, 1 unreadable, 0 already in {csv}"
    again = job.predict_files_job(runs["plain"], inputs, csv, resume=True, device="cpu")
    assert (again.written, again.skipped) == (0, 4)
    seen = []

    def screen(predictor, preds: pd.DataFrame) -> pd.DataFrame:
        seen.append(predictor.run.path)
        return preds.assign(extra=1)

    screened = tmp_path / "s.csv"
    job.predict_files_job(runs["plain"], inputs, screened, device="cpu", screen=screen)
    assert seen == [runs["plain"]] and pd.read_csv(screened)["extra"].tolist() == [1, 1, 1, 1]


def test_impossible_combinations_are_refused_before_any_work(runs, tmp_path):
    with pytest.raises(CovidscreenError, match="use a .csv or .json file name"):
        job.predict_files_job(runs["plain"], [str(runs["images"])], tmp_path / "p.txt")
    with pytest.raises(CovidscreenError, match="--resume needs a CSV --output"):
        job.predict_files_job(runs["plain"], [str(runs["images"])], resume=True)
    with pytest.raises(CovidscreenError, match="--strip screens the whole table in one process"):
        job.predict_files_job(runs["plain"], [str(runs["images"])], tmp_path / "p.csv", resume=True,
                              screen=lambda p, t: t)


def test_the_outcome_text_is_the_summary_or_the_table():
    table = pd.DataFrame({"path": ["a.png"], "error": [""]})
    assert job.PredictOutcome(table=table, output=Path("p.json")).text() == "1 file(s), 0 unreadable: p.json\n"
    assert job.PredictOutcome(table=table).text() == table.to_csv(index=False)  # no --output: the table itself
    assert job.PredictOutcome().text() == ""  # a rank other than 0 of torchrun prints nothing
    streamed = job.PredictOutcome(output=Path("p.csv"), written=2, skipped=1, streamed=True)
    assert streamed.text() == "2 file(s) scored, 0 unreadable, 1 already in p.csv\n"
